"""#12 item 7: every misconfiguration of the ``lightning-equi`` command ends in its own ``error:`` line
(exit code 2, no traceback), and a ``symmetry_spec()`` returning a ModelProjection is accepted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from torch import nn

from lightning_equi.callbacks import EquivariantProjection
from lightning_equi.cli import EquiCLI, main
from lightning_equi.subspace import ModelProjection, SymmetrySpec
from lightning_equi.testing import BoringEquiModel

BORING_EQUI = "lightning_equi.testing.BoringEquiModel"


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning-equi"])


def _quiet(tmp_path: Path, steps: int = 2) -> list[str]:
    return [
        f"--trainer.max_steps={steps}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


def _error(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("mode", ["nom", "aug", "equi"])
def test_an_unknown_group_is_an_error_line(capsys, tmp_path, mode):
    err = _error(capsys, ["fit", "--model", BORING_EQUI, "--mode", mode, "--group", "Z4", *_quiet(tmp_path)])
    assert "lightning-equi: error: --mode " + mode in err
    assert "unknown group name 'Z4'" in err


class ProjectionModel(BoringEquiModel):
    """Declares its symmetry with a ready ModelProjection (as escnn_spec does)."""

    def symmetry_spec(self) -> ModelProjection:
        return super().symmetry_spec().bind(self)


class WrongLayerModel(BoringEquiModel):
    def symmetry_spec(self) -> SymmetrySpec:
        return super().symmetry_spec().layer("net.9", "regular", "trivial")


class DictBatchModel(BoringEquiModel):
    """Dict batches: the monitor cannot take its probe from entry 0, which it says once the fit runs."""

    def train_dataloader(self):
        x, y = self.make_data(__import__("torch").Generator().manual_seed(0))
        return [{"x": x[:8], "y": y[:8]}]

    def training_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self(batch["x"]), batch["y"])


def test_a_model_projection_from_symmetry_spec_is_accepted(tmp_path):
    cli = EquiCLI(args=["fit", "--model", f"{__name__}.ProjectionModel", "--mode", "equi", *_quiet(tmp_path)])
    (projection,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, EquivariantProjection)]
    assert projection.projection.is_equivariant()
    assert cli.trainer.global_step == 2


def test_a_spec_that_does_not_fit_the_model_is_an_error_line(capsys, tmp_path):
    err = _error(
        capsys, ["fit", "--model", f"{__name__}.WrongLayerModel", "--mode", "equi", *_quiet(tmp_path)]
    )
    assert "lightning-equi: error: --mode equi:" in err and "no submodule named 'net.9'" in err


def test_a_misconfiguration_met_during_the_fit_is_an_error_line(capsys, tmp_path):
    err = _error(capsys, ["fit", "--model", f"{__name__}.DictBatchModel", "--mode", "nom", *_quiet(tmp_path)])
    assert "lightning-equi: error: EquivarianceMonitor probes a tensor input, but got dict" in err
