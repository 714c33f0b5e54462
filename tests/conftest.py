"""Shared test setup (the seed and dtype of every test are set by the repository's conftest.py)."""

from __future__ import annotations

import importlib.util
import os

import pytest

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
