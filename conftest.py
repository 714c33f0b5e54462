"""Collection of the package's doctests (``--doctest-modules`` over ``lightning_equi``, see pyproject).

escnn is optional: without it the examples of the escnn adapters are not collected (``./run tests``
installs escnn and, with LIGHTNING_EQUI_TESTS_STRICT=1, refuses to run without it; see
tests/conftest.py). Every test and doctest starts from the same seed and default dtype.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest
import torch

# the escnn adapters' examples build escnn models
collect_ignore_glob = [] if importlib.util.find_spec("escnn") is not None else ["lightning_equi/adapters/*"]


@pytest.fixture(autouse=True)
def _seed_and_dtype() -> Iterator[None]:
    """Every test and doctest starts with torch seeded, on one thread, and leaves the default dtype
    and thread count as it found them."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.manual_seed(0)
    # Tiny test models run fastest on one thread, and a loaded 2-core machine oversubscribes otherwise.
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
