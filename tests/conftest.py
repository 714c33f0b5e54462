"""Shared test setup: every test starts from the same global RNG state and default dtype."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_dtype() -> Iterator[None]:
    """Seed torch's global RNG, use one thread, and restore what a test may have changed."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.manual_seed(0)
    # Tiny test models run fastest on one thread, and a loaded 2-core machine oversubscribes otherwise.
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
