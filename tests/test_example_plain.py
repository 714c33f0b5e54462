"""The drop-in example ``examples/plain_digits.py``, end to end with tiny settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("sklearn")
pytest.importorskip("tensorboard")

from lightning_equi.subspace import equivariant_init_  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = ["--quick", "--epochs", "1", "--log-every", "4"]


@pytest.fixture(scope="module")
def plain_digits() -> ModuleType:
    """The example, imported as a module."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import plain_digits
    finally:
        sys.path.remove(str(EXAMPLES))
    return plain_digits


def test_three_modes_from_one_start(plain_digits: ModuleType, tmp_path: Path, capsys) -> None:
    rows = plain_digits.main([*TINY, "--out", str(tmp_path)])
    table = {row["mode"]: row for row in rows}
    assert list(table) == ["nom", "aug", "equi"]
    assert len({row["steps"] for row in rows}) == 1 and rows[0]["steps"] > 0
    # equi stays in E, and a C4-invariant network in E is invariant to float precision
    assert table["equi"]["rel_dist_to_E"] < 1e-6
    assert table["equi"]["equi_error"] < 1e-5
    assert table["equi"]["acc_upright"] == table["equi"]["acc_turned"]
    # the negative control: the same start, trained without projection, leaves E and invariance
    assert table["nom"]["rel_dist_to_E"] > 1e-3
    assert table["nom"]["equi_error"] > 1e-3
    assert table["aug"]["rel_dist_to_E"] > 1e-3
    # the table is printed and written, one row per mode; TensorBoard events per mode
    markdown = (tmp_path / "table.md").read_text().splitlines()
    for mode in table:
        assert sum(line.startswith(f"| {mode} |") for line in markdown) == 1
        assert list((tmp_path / mode).glob("events.out.tfevents.*")), f"no TensorBoard events for {mode}"
    assert json.loads((tmp_path / "table.json").read_text()) == rows
    out = capsys.readouterr().out
    assert "| mode |" in out and "| equi |" in out


def test_group_norm_variant_is_exactly_invariant(plain_digits: ModuleType, tmp_path: Path) -> None:
    (equi,) = plain_digits.main([*TINY, "--norm", "group", "--modes", "equi", "--out", str(tmp_path)])
    assert equi["rel_dist_to_E"] < 1e-6
    assert equi["equi_error"] < 1e-5


def test_user_module_is_ordinary_lightning(plain_digits: ModuleType) -> None:
    cls = plain_digits.DigitsCNN
    own = {name for name, value in vars(cls).items() if callable(value) and not name.startswith("__")}
    # everything the class defines overrides a LightningModule hook, except the one addition
    assert {name for name in own if not hasattr(LightningModule, name)} == {"symmetry_spec"}
    # it trains with a plain Trainer and no callbacks; from a start in E, nothing keeps it there
    model = cls(channels=8)
    projection = equivariant_init_(model)
    assert float(projection.relative_total_distance()) < 1e-7
    data = plain_digits.load_digits_images((16, 16), seed=0)
    train = DataLoader(TensorDataset(data["x_train"][:128], data["y_train"][:128]), batch_size=32)
    trainer = Trainer(
        max_steps=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    val = DataLoader(TensorDataset(data["x_test"][:64], data["y_test"][:64]), batch_size=64)
    trainer.fit(model, train, val)
    assert trainer.global_step == 4
    assert float(projection.relative_total_distance()) > 1e-3


def test_turned_digits_are_exact_quarter_turns(plain_digits: ModuleType) -> None:
    x = torch.rand(5, 1, 8, 8)
    out, g = plain_digits.turned(x)
    assert g.tolist() == [1] * 5 + [2] * 5 + [3] * 5
    expected = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in (1, 2, 3)])
    assert torch.equal(out, expected)


def test_non_square_images_fail_before_training(plain_digits: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    with pytest.raises(
        ValueError, match=r"needs a square image; got H=16 and W=20\. Crop or pad to a square"
    ):
        plain_digits.main(["--quick", "--size", "16", "20", "--out", str(out)])
    assert not out.exists()  # nothing was trained or logged
    with pytest.raises(ValueError, match=r"--size 18: .* multiple of 4; use --size 20"):
        plain_digits.main(["--quick", "--size", "18", "--out", str(out)])
    assert not out.exists()
