"""The escnn digits example, end to end with tiny settings; and the escnn adapters' lazy entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("escnn")
pytest.importorskip("sklearn")
pytest.importorskip("tensorboard")

pytestmark = pytest.mark.escnn

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def escnn_digits():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import escnn_digits
    finally:
        sys.path.remove(str(EXAMPLES))
    return escnn_digits


def test_escnn_digits_c4_four_modes(escnn_digits, tmp_path, capsys):
    argv = ["--group", "C4", "--max-steps", "3", "--width", "2", "--probe", "16", "--out", str(tmp_path)]
    rows = escnn_digits.main(argv)
    table = {row["mode"]: row for row in rows}
    assert list(table) == ["nom", "aug", "equi", "escnn"]
    assert all(row["steps"] == 3 for row in rows)
    # equi stays in E, and E (C4 on the pixel grid) is exactly invariant: float precision
    assert table["equi"]["equi_err_exact"] < 1e-5
    assert table["escnn"]["equi_err_exact"] < 1e-5
    # nom starts from a plain draw and is not projected: far from invariant
    assert table["nom"]["equi_err_exact"] > 100 * table["equi"]["equi_err_exact"]
    assert table["nom"]["equi_err_exact"] > 1e-3
    # the dense modes train the same parameter space; escnn trains its (fewer) coefficients
    assert table["nom"]["params"] == table["aug"]["params"] == table["equi"]["params"]
    assert table["escnn"]["params"] < table["equi"]["params"]
    for mode in table:
        assert list((tmp_path / mode).glob("events.out.tfevents.*")), f"no TensorBoard events for {mode}"
    out = capsys.readouterr().out
    assert "| mode |" in out and "| equi |" in out


def test_rotated_test_digits_are_exact_rotations_for_c4(escnn_digits):
    import torch

    data = escnn_digits.load_digits_images("C4", seed=0)
    assert data["x_train"].shape[1:] == (1, escnn_digits.SIZE, escnn_digits.SIZE)
    # every rotated digit is one of the four quarter turns of its upright version, bit for bit
    x, r = data["x_test"], data["x_rot"]
    turns = torch.stack([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])
    assert bool((turns == r[None]).flatten(2).all(-1).any(0).all())
    # and they are not all upright
    assert not torch.equal(x, r)


def test_adapters_import_lazily_and_require_escnn_patches_numerics():
    code = (
        "import sys, lightning_equi.adapters as a\n"
        "assert 'escnn' not in sys.modules, 'escnn was imported'\n"
        "from lightning_equi import GeometricTensorAction\n"
        "assert GeometricTensorAction is a.GeometricTensorAction\n"
        "assert GeometricTensorAction.__module__ == 'lightning_equi.adapters.escnn_actions'\n"
        "assert 'escnn' not in sys.modules, 'escnn was imported with GeometricTensorAction'\n"
        "a.require_escnn()\n"
        "import escnn.group._numerical as numerical\n"
        "assert numerical.randomized_svd is None, 'the numerics patch was not applied'\n"
        "assert a.to_dense.__module__ == 'lightning_equi.adapters.escnn_convert'\n"
        "assert a.DenseR2Conv.__module__ == 'lightning_equi.adapters.dense_layers'\n"
        "from lightning_equi.adapters import escnn_pickle\n"
        "assert not escnn_pickle._REGISTERED, 'pickling was registered at import'\n"
        "assert a.grid_lint.__module__ == 'lightning_equi.adapters.escnn_lint'\n"
        "assert 'EscnnBasisProjector' in dir(a)\n"
        "try:\n"
        "    a.no_such_name\n"
        "except AttributeError as err:\n"
        "    assert 'no_such_name' in str(err)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_dense_layers_patch_escnn_on_import_and_register_pickling_on_first_use():
    """A user who imports the dense layers and then builds escnn layers of D4 (numerical Clebsch-Gordan
    coefficients) gets the numerics patch; pickling is registered by the first dense layer."""
    code = (
        "import pickle, sys\n"
        "from lightning_equi.adapters.dense_layers import DenseR2Conv\n"
        "from lightning_equi.adapters import escnn_pickle\n"
        "import escnn.group._numerical as numerical\n"
        "assert numerical.randomized_svd is None, 'importing the dense layers did not patch escnn'\n"
        "assert not escnn_pickle._REGISTERED, 'pickling was registered at import'\n"
        "from escnn import gspaces, nn as enn\n"
        "gs = gspaces.flipRot2dOnR2(4)\n"
        "ft = enn.FieldType(gs, [gs.regular_repr])\n"
        "dense = DenseR2Conv(enn.R2Conv(ft, ft, 3))\n"
        "assert escnn_pickle._REGISTERED, 'building a dense layer did not register pickling'\n"
        "assert pickle.loads(pickle.dumps(dense)).in_type == ft\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
