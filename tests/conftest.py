"""Shared test setup: every test starts from the same global RNG state and default dtype."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest
import torch

# The optional dependencies that some test modules skip without. `./run tests` (and so CI) installs
# all of them and sets LIGHTNING_EQUI_TESTS_STRICT=1: there a missing one is an install error, not a skip.
OPTIONAL = ("escnn", "sklearn", "tensorboard")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("LIGHTNING_EQUI_TESTS_STRICT") != "1":
        return
    missing = [name for name in OPTIONAL if importlib.util.find_spec(name) is None]
    if missing:
        raise pytest.UsageError(
            f"LIGHTNING_EQUI_TESTS_STRICT=1 but {missing} cannot be imported: the tests that need them "
            "would be skipped. Reinstall with `rm -rf .venv && ./run setup`, or unset the variable."
        )


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


@pytest.fixture
def quiet_trainer(tmp_path):
    """``quiet_trainer(callbacks, **options)``: a CPU Trainer with no logger, progress bar, summary or
    checkpoints, writing under the test's ``tmp_path``, with Lightning's tiny-data warnings silenced."""
    import warnings

    import lightning as L

    def make(callbacks, **options):
        settings = dict(
            default_root_dir=tmp_path,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        settings.update(options)
        return L.Trainer(callbacks=callbacks, **settings)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        yield make
