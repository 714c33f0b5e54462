"""The ``lightning-equi`` command (EquiCLI): the mode flag from the command line and from YAML."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import LearningRateMonitor

from lightning_equi.callbacks import EquivarianceMonitor, EquivariantProjection, HaarAugmentation
from lightning_equi.cli import EquiCLI, ModeConfigError, main
from lightning_equi.subspace import resolve_spec

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "configs" / "boring_equi.yaml"
BORING_EQUI = "lightning_equi.testing.BoringEquiModel"
NO_SPEC = "lightning.pytorch.demos.boring_classes.BoringModel"
MODE_TYPES = {"nom": [], "aug": [HaarAugmentation], "equi": [EquivariantProjection]}


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when both ``args`` and ``sys.argv`` (pytest's own here) are given."""
    monkeypatch.setattr(sys, "argv", ["lightning-equi"])


def _quiet(tmp_path: Path, steps: int = 3) -> list[str]:
    """Trainer options for a short, silent run under ``tmp_path``."""
    return [
        f"--trainer.max_steps={steps}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


def _types(callbacks: list) -> list[type]:
    return [type(cb) for cb in callbacks]


@pytest.mark.parametrize("mode", ["nom", "aug", "equi"])
def test_each_mode_fits_with_its_callbacks(mode: str, tmp_path: Path) -> None:
    args = ["fit", "--model", BORING_EQUI, "--mode", mode, "--monitor_every_n_steps", "1", "--seed_aug", "7"]
    cli = EquiCLI(args=[*args, *_quiet(tmp_path)])
    expected = [EquivarianceMonitor, *MODE_TYPES[mode]]  # monitor first: it sees the raw batch and gradient
    assert _types(cli.mode_callbacks) == expected
    present = [cb for cb in cli.trainer.callbacks if type(cb) in expected]
    assert present == cli.mode_callbacks  # the very objects, in order, on the Trainer
    assert cli.trainer.global_step == 3
    distance = resolve_spec(cli.model).total_distance().item()
    if mode == "equi":
        projection = cli.mode_callbacks[-1].projection
        assert projection.is_equivariant(atol=1e-5, buffers=False)
        assert distance < 1e-5
    else:
        assert distance > 1e-2  # negative control: the default init is far from E and nothing projects
    if mode == "aug":
        aug = cli.mode_callbacks[-1]
        assert (aug.group.name, aug.seed) == ("C4", 7)


def test_yaml_config_keeps_its_callbacks_and_the_flag_overrides_the_mode(tmp_path: Path) -> None:
    args = ["fit", "--config", str(CONFIG), "--mode", "aug", "--trainer.max_steps=2"]
    args += [f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"]
    cli = EquiCLI(args=args)
    types = _types(cli.trainer.callbacks)
    assert LearningRateMonitor in types  # configured under trainer.callbacks: kept
    assert types.index(LearningRateMonitor) < types.index(EquivarianceMonitor) < types.index(HaarAugmentation)
    assert EquivariantProjection not in types  # mode: equi in the file, aug on the command line
    monitor, aug = cli.mode_callbacks
    assert (monitor.every_n_steps, aug.seed, aug.copies, aug.group.name) == (5, 1, 1, "C4")
    saved = next(tmp_path.rglob("config.yaml")).read_text()
    assert "mode: aug" in saved and "seed_aug: 1" in saved  # the run's config records the mode


def test_single_configured_callback_and_mode_options(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {BORING_EQUI}\n"
        "mode: aug\n"
        "group: C4\n"
        "monitor: false\n"
        "mode_options: {copies: 2, per_sample: false}\n"
        "trainer:\n"
        "  callbacks:\n"
        "    class_path: lightning.pytorch.callbacks.LearningRateMonitor\n"
    )
    cli = EquiCLI(args=["--config", str(config), "--trainer.logger=false"], run=False)
    assert _types(cli.mode_callbacks) == [HaarAugmentation]
    assert (cli.mode_callbacks[0].copies, cli.mode_callbacks[0].per_sample) == (2, False)
    assert LearningRateMonitor in _types(cli.trainer.callbacks)


def test_dict_inputs_parse_with_integer_keys() -> None:
    cli = EquiCLI(
        args=["--model", BORING_EQUI, "--mode", "aug", "--inputs", "{0: image, 1: null}", "--monitor=false"],
        run=False,
    )
    assert cli.config.inputs == {0: "image", 1: None}
    assert _types(cli.mode_callbacks) == [HaarAugmentation]


def test_no_spec_means_no_monitor_in_nom() -> None:
    cli = EquiCLI(args=["--model", NO_SPEC, "--trainer.logger=false"], run=False)
    assert cli.mode_callbacks == []


def test_unknown_mode_fails_while_parsing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model", BORING_EQUI, "--mode", "augment", *_quiet(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "augment" in err and "'nom', 'aug', 'equi'" in err
    assert not list(tmp_path.iterdir())  # nothing ran


def test_aug_without_an_action_exits_with_the_fix(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model", BORING_EQUI, "--mode", "aug", "--inputs", "null", *_quiet(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lightning-equi: error: --mode aug: mode='aug' needs the action of the group on the data" in err
    assert "--inputs" in err


def test_equi_without_a_spec_fails_before_training(tmp_path: Path) -> None:
    with pytest.raises(ModeConfigError, match=r"--mode equi: .*BoringModel has no symmetry_spec\(\) method"):
        EquiCLI(args=["fit", "--model", NO_SPEC, "--mode", "equi", *_quiet(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_group_that_differs_from_the_spec_is_refused() -> None:
    with pytest.raises(ModeConfigError, match=r"group='D4' but the spec is for C4"):
        EquiCLI(args=["--model", BORING_EQUI, "--mode", "aug", "--group", "D4"], run=False)


def test_mode_options_cannot_shadow_the_named_flags() -> None:
    with pytest.raises(ModeConfigError, match=r"mode_options sets 'seed'=3: use --seed_aug instead"):
        EquiCLI(args=["--model", BORING_EQUI, "--mode", "aug", "--mode_options", "{seed: 3}"], run=False)
    with pytest.raises(ModeConfigError, match=r"unknown option\(s\) \['copiess'\]"):
        EquiCLI(args=["--model", BORING_EQUI, "--mode", "aug", "--mode_options", "{copiess: 3}"], run=False)


def test_console_entry_runs_in_a_subprocess(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "lightning_equi.cli", "fit", "--model", BORING_EQUI, "--mode", "equi"]
    command += ["--trainer.max_steps", "2", f"--trainer.default_root_dir={tmp_path}"]
    command += ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    out = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "`max_steps=2` reached" in out.stderr + out.stdout
    saved = next(tmp_path.rglob("config.yaml")).read_text()
    assert "mode: equi" in saved and BORING_EQUI in saved
    assert list(tmp_path.rglob("*.ckpt"))  # the default checkpointing still runs after the mode's callbacks
