"""Shared test setup: every test starts from the same global RNG state and default dtype."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_dtype() -> Iterator[None]:
    """Seed torch's global RNG and restore the default dtype a test may have changed."""
    dtype = torch.get_default_dtype()
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(dtype)
