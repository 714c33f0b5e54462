"""Collection of the package's doctests (``--doctest-modules`` over ``lightning_equi``, see pyproject).

escnn is optional: without it the examples of the escnn adapters are not collected (``./run tests``
installs escnn and, with LIGHTNING_EQUI_TESTS_STRICT=1, refuses to run without it; see
tests/conftest.py). Every doctest starts from the same seed and default dtype.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest
import torch

# the escnn adapters' examples build escnn models
collect_ignore_glob = [] if importlib.util.find_spec("escnn") is not None else ["lightning_equi/adapters/*"]


@pytest.fixture(autouse=True)
def _doctest_seed(request: pytest.FixtureRequest) -> Iterator[None]:
    """A doctest runs with torch seeded, on one thread, and leaves the default dtype as it found it."""
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
