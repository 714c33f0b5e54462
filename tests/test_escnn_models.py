"""Networks written in escnn's own style, end to end: to_dense equals escnn, equi with Adam stays in E
and equivariant, grid_lint runs, aug and the monitor run, to_escnn round-trips where the subspace allows.

The models are tiny versions of escnn's rotated-MNIST C8 tutorial model (``MaskModule``,
``PointwiseAvgPoolAntialiased``, ``GroupPooling``, a torch head; its ``forward`` takes a plain
tensor) and of an irreps network with gated and norm nonlinearities and ``IIDBatchNorm2d``.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

escnn = pytest.importorskip("escnn")
from escnn import gspaces  # noqa: E402
from escnn import nn as enn  # noqa: E402

from lightning_equi.adapters import escnn_spec, to_dense, to_escnn  # noqa: E402
from lightning_equi.adapters.dense_layers import DenseR2Conv  # noqa: E402
from lightning_equi.adapters.escnn_lint import GridLintWarning, grid_lint  # noqa: E402
from lightning_equi.callbacks import EquivarianceMonitor, build_callbacks  # noqa: E402
from lightning_equi.groups import get_group  # noqa: E402
from lightning_equi.testing import assert_equivariant  # noqa: E402

pytestmark = pytest.mark.escnn
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
warnings.filterwarnings("ignore", message=".*py3nj.*")


# ---- the models, in escnn's style --------------------------------------------------------------------


class C8Tutorial(nn.Module):
    """escnn's rotated-MNIST tutorial model, small: a mask, C8 regular convs, antialiased average
    pooling, group pooling and a torch head; ``forward`` takes a plain tensor."""

    def __init__(self, size: int = 13, n_classes: int = 3) -> None:
        super().__init__()
        gs = gspaces.rot2dOnR2(8)
        self.input_type = t0 = enn.FieldType(gs, [gs.trivial_repr])
        t1 = enn.FieldType(gs, 2 * [gs.regular_repr])
        t2 = enn.FieldType(gs, 2 * [gs.regular_repr])
        self.block1 = enn.SequentialModule(
            enn.MaskModule(t0, size, margin=1),
            enn.R2Conv(t0, t1, 5, padding=2, bias=False),
            enn.InnerBatchNorm(t1),
            enn.ReLU(t1, inplace=True),
        )
        self.pool1 = enn.PointwiseAvgPoolAntialiased(t1, sigma=0.66, stride=2)
        self.block2 = enn.SequentialModule(
            enn.R2Conv(t1, t2, 3, padding=1, bias=False), enn.InnerBatchNorm(t2), enn.ReLU(t2, inplace=True)
        )
        self.gpool = enn.GroupPooling(t2)
        self.fully_net = nn.Sequential(nn.Linear(len(t2), 8), nn.ELU(), nn.Linear(8, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = enn.GeometricTensor(x, self.input_type)
        h = self.gpool(self.block2(self.pool1(self.block1(h))))
        return self.fully_net(h.tensor.mean(dim=(2, 3)))


class SO2Irreps(enn.EquivariantModule):
    """An SO(2) irreps network: gated nonlinearity (its bias on the gates), IID batch norm, norm
    nonlinearity, invariant output; GeometricTensor in, plain invariant tensor out."""

    def __init__(self) -> None:
        super().__init__()
        gs = gspaces.rot2dOnR2(-1, maximum_frequency=4)
        self.in_type = enn.FieldType(gs, [gs.trivial_repr])
        gates = enn.FieldType(gs, 2 * [gs.trivial_repr])
        gated = enn.FieldType(gs, [gs.irrep(1), gs.irrep(2)])
        hidden = enn.FieldType(gs, [gs.irrep(1), gs.irrep(2)])
        self.out_type = enn.FieldType(gs, 2 * [gs.trivial_repr])
        self.net = enn.SequentialModule(
            enn.R2Conv(self.in_type, gates + gated, 5, padding=2),
            enn.GatedNonLinearity1(gates + gated, gates=2 * ["gate"] + 2 * ["gated"]),
            enn.IIDBatchNorm2d(gated),
            enn.R2Conv(gated, hidden, 5, padding=2),
            enn.NormNonLinearity(hidden, "n_relu", bias=True),
            enn.R2Conv(hidden, self.out_type, 3, padding=1),
        )

    def forward(self, x):
        if not isinstance(x, enn.GeometricTensor):
            x = self.in_type(x)
        return self.net(x).tensor.mean(dim=(2, 3))

    def evaluate_output_shape(self, input_shape):
        return input_shape[:1] + (self.out_type.size,)


class C4UNet(enn.EquivariantModule):
    """A small equivariant U-Net: a strided R2Conv down, an R2ConvTransposed up, a skip connection
    (``tensor_directsum``), a scalar map out. GeometricTensor in and out, or plain tensors."""

    def __init__(self, output_padding: int = 0) -> None:
        super().__init__()
        gs = gspaces.rot2dOnR2(4)
        self.in_type = t0 = enn.FieldType(gs, [gs.trivial_repr])
        t1, t2 = enn.FieldType(gs, [gs.regular_repr]), enn.FieldType(gs, 2 * [gs.regular_repr])
        self.out_type = enn.FieldType(gs, [gs.trivial_repr])
        self.enc = enn.SequentialModule(enn.R2Conv(t0, t1, 3, padding=1), enn.ReLU(t1))
        self.down = enn.SequentialModule(enn.R2Conv(t1, t2, 3, stride=2, padding=1), enn.ReLU(t2))
        self.up = enn.R2ConvTransposed(t2, t1, 3, stride=2, padding=1, output_padding=output_padding)
        self.dec = enn.R2Conv(t1 + t1, self.out_type, 3, padding=1)

    def forward(self, x):
        geometric = isinstance(x, enn.GeometricTensor)
        x = x if geometric else self.in_type(x)
        skip = self.enc(x)
        up = self.up(self.down(skip))
        y = self.dec(enn.tensor_directsum([up, skip]))
        return y if geometric else y.tensor

    def evaluate_output_shape(self, input_shape):
        return input_shape[:1] + (1,) + input_shape[2:]


class WideBasic(enn.EquivariantModule):
    """escnn's e2wrn block: bn - relu - conv - bn - relu - conv, plus the input (or its 1x1 conv)."""

    def __init__(self, in_type, out_type) -> None:
        super().__init__()
        self.in_type, self.out_type = in_type, out_type
        inner = out_type
        self.bn1, self.relu1 = enn.InnerBatchNorm(in_type), enn.ReLU(in_type)
        self.conv1 = enn.R2Conv(in_type, inner, 3, padding=1)
        self.bn2, self.relu2 = enn.InnerBatchNorm(inner), enn.ReLU(inner)
        self.conv2 = enn.R2Conv(inner, out_type, 3, padding=1)
        self.shortcut = None if in_type == out_type else enn.R2Conv(in_type, out_type, 1)

    def forward(self, x):
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + (x if self.shortcut is None else self.shortcut(x))

    def evaluate_output_shape(self, input_shape):
        return input_shape[:1] + (self.out_type.size,) + input_shape[2:]


class E2WRNStyle(nn.Module):
    """escnn's e2wrn pattern: D4 residual blocks, a restriction to C4 halfway (RestrictionModule and
    DisentangleModule), C4 residual blocks, group pooling, a torch head; plain tensor in."""

    def __init__(self) -> None:
        super().__init__()
        gs = gspaces.flipRot2dOnR2(4)
        self.in_type = t0 = enn.FieldType(gs, [gs.trivial_repr])
        t1 = enn.FieldType(gs, [gs.regular_repr])
        self.conv1 = enn.R2Conv(t0, t1, 3, padding=1)
        self.block1 = WideBasic(t1, t1)
        restrict = enn.RestrictionModule(t1, (None, 4))
        self.restrict = enn.SequentialModule(restrict, enn.DisentangleModule(restrict.out_type))
        c4 = self.restrict.out_type.gspace
        u1 = enn.FieldType(c4, 2 * [c4.regular_repr])
        self.block2 = enn.SequentialModule(
            enn.R2Conv(self.restrict.out_type, u1, 3, padding=1), enn.ReLU(u1), WideBasic(u1, u1)
        )
        self.pool = enn.GroupPooling(u1)
        self.head = nn.Linear(2, 2)

    def forward(self, x):
        h = self.block1(self.conv1(enn.GeometricTensor(x, self.in_type)))
        h = self.pool(self.block2(self.restrict(h)))
        return self.head(h.tensor.mean(dim=(2, 3)))


def _inputs(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _eval_outputs(model, x):
    model.eval()
    with torch.no_grad():
        out = model(x)
    return out.tensor if isinstance(out, enn.GeometricTensor) else out


class _Lit(L.LightningModule):
    """A dense model trained by Adam on random targets; its spec is read from the model."""

    def __init__(self, net: nn.Module, x: torch.Tensor, n_out: int | tuple) -> None:
        super().__init__()
        self.net = net
        shape = (x.shape[0], *n_out) if isinstance(n_out, tuple) else (x.shape[0], n_out)
        self.x, self.y = x, _inputs(shape, seed=1)

    def forward(self, x):
        return self.net(x)

    def symmetry_spec(self):
        return escnn_spec(self)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=4)


def _fit(lit: _Lit, mode: str, quiet_trainer, steps: int = 3, inputs="image", **kwargs):
    callbacks = build_callbacks(mode, model=lit, inputs=inputs, every_n_steps=1, probe_size=2, **kwargs)
    trainer = quiet_trainer(callbacks, max_steps=steps)
    trainer.fit(lit)
    return trainer


def _monitored(trainer) -> dict[str, float]:
    """The monitor's last logged values."""
    (monitor,) = [cb for cb in trainer.callbacks if isinstance(cb, EquivarianceMonitor)]
    return monitor.history[-1]


# ---- 1. every escnn module converts or is kept ----------------------------------------------------------


def test_c8_tutorial_model_converts_keeps_its_modules_and_trains_in_E(quiet_trainer):
    model = C8Tutorial()
    x = _inputs((4, 1, 13, 13))
    dense, projection = to_dense(model, invariant=["fully_net"])
    assert [type(m).__name__ for m in dense.block1] == ["MaskModule", "DenseR2Conv", "InnerBatchNorm", "ReLU"]
    torch.testing.assert_close(_eval_outputs(dense, x), _eval_outputs(model, x), atol=1e-5, rtol=1e-5)
    summary = projection.summary()
    assert "kept as escnn modules" in summary
    assert "block1.2 (InnerBatchNorm, 4 parameters)" in summary and "block2.1 (InnerBatchNorm" in summary
    assert {"block1.2.batch_norm_[8].weight", "fully_net.0.weight"} <= set(projection.free_names)
    lit = _Lit(dense.train(), x, 3)
    trainer = _fit(lit, "equi", quiet_trainer)
    assert trainer.global_step == 3
    spec = lit.symmetry_spec()
    assert float(spec.relative_total_distance()) < 1e-6
    # exactly C8-equivariant on the quarter turns (C8's 45-degree turns interpolate the image)
    out = assert_equivariant(dense, x, "C8", elements=torch.tensor([0, 2, 4, 6]))
    assert float(out["max"]) < 1e-4
    # the monitor splits the error: quarter turns exact, 45-degree turns interpolated
    logged = _monitored(trainer)
    assert logged["equi/functional_error_exact"] < 1e-4 < logged["equi/functional_error_inexact"]
    # aug runs on the same model (rotated copies of the images, interpolated)
    aug = _Lit(to_dense(model, invariant=["fully_net"])[0], x, 3)
    assert _monitored(_fit(aug, "aug", quiet_trainer))["equi/functional_error_inexact"] > 0


def test_so2_irreps_model_keeps_gated_norm_and_iid_batchnorm_free():
    model = SO2Irreps()
    x = _inputs((3, 1, 9, 9))
    dense, projection = to_dense(model)
    torch.testing.assert_close(_eval_outputs(dense, x), _eval_outputs(model, x), atol=1e-5, rtol=1e-5)
    kept = {name: cls for name, cls, _ in projection.kept}
    assert kept == {"net.1": "GatedNonLinearity1", "net.2": "IIDBatchNorm2d", "net.4": "NormNonLinearity"}
    assert {"net.1.bias", "net.4.log_bias", "net.2.irrep_1_weight"} <= set(projection.free_names)
    assert [e.layer for e in projection.entries if e.name.endswith("weight")] == ["net.0", "net.3", "net.5"]


def test_so2_irreps_model_trains_in_E_is_monitored_augments_and_round_trips(quiet_trainer):
    model = SO2Irreps()
    x = _inputs((4, 1, 9, 9))
    dense, _ = to_dense(model)  # SO(2): escnn's basis span, the only E
    assert grid_lint(dense, (9, 9), warn=False) == []
    lit = _Lit(dense.train(), x, 2)
    trainer = _fit(lit, "equi", quiet_trainer)
    assert float(lit.symmetry_spec().relative_total_distance()) < 1e-6
    assert float(assert_equivariant(dense, x, "SO2")["max"]) < 1e-4  # checked on the quarter turns
    logged = _monitored(trainer)
    assert logged["equi/functional_error_exact"] < 1e-4 < logged["equi/functional_error_inexact"]
    back = to_escnn(dense)
    torch.testing.assert_close(_eval_outputs(back, x), _eval_outputs(dense, x), atol=1e-5, rtol=1e-4)
    aug = _Lit(to_dense(model)[0], x, 2)
    assert _monitored(_fit(aug, "aug", quiet_trainer))["equi/functional_error_inexact"] > 0


def test_every_parametrised_escnn_module_is_kept_and_listed():
    gs = gspaces.rot2dOnR2(-1, maximum_frequency=4)
    trivial, v = gs.trivial_repr, gs.irrep(1)
    t_in = enn.FieldType(gs, [trivial])
    t_g2 = (enn.FieldType(gs, 2 * [trivial]), enn.FieldType(gs, 2 * [v]))
    t_tp, t_out = enn.FieldType(gs, 2 * [v]), enn.FieldType(gs, 2 * [gs.irrep(2)])

    class Net(nn.Module):  # GatedNonLinearity2 takes its gates and gated fields as two tensors
        def __init__(self):
            super().__init__()
            self.conv_gates = enn.R2Conv(t_in, t_g2[0], 3, padding=1)
            self.conv_gated = enn.R2Conv(t_in, t_g2[1], 3, padding=1)
            self.gate = enn.GatedNonLinearity2(t_g2)
            self.tensor = enn.TensorProductModule(t_tp, t_out)
            self.out = enn.R2Conv(t_out, t_in, 3, padding=1)

        def forward(self, x):
            return self.out(self.tensor(self.gate(self.conv_gates(x), self.conv_gated(x))))

    net = Net()
    x = t_in(_inputs((2, 1, 7, 7)))
    dense, projection = to_dense(net)
    kept = [(name, cls) for name, cls, _ in projection.kept]
    assert kept == [("gate", "GatedNonLinearity2"), ("tensor", "TensorProductModule")]
    assert {"gate.bias", "tensor.weights"} <= set(projection.free_names)
    torch.testing.assert_close(_eval_outputs(dense, x), _eval_outputs(net, x), atol=1e-5, rtol=1e-5)


def test_gated_nonlinearity_uniform_is_kept():
    from escnn import group as egroup

    gs = gspaces.rot2dOnR2(-1, maximum_frequency=4)
    gated = egroup.directsum([gs.irrep(0), gs.irrep(1)], name="gate_and_vector")  # gate first
    t_in, t_mid = enn.FieldType(gs, [gs.trivial_repr]), enn.FieldType(gs, 2 * [gated])
    gate = enn.GatedNonLinearityUniform(t_mid)
    net = enn.SequentialModule(
        enn.R2Conv(t_in, t_mid, 3, padding=1), gate, enn.R2Conv(gate.out_type, t_in, 3)
    )
    x = t_in(_inputs((2, 1, 7, 7)))
    dense, projection = to_dense(net)
    assert [(name, cls) for name, cls, _ in projection.kept] == [("1", "GatedNonLinearityUniform")]
    torch.testing.assert_close(_eval_outputs(dense, x), _eval_outputs(net, x), atol=1e-5, rtol=1e-5)


def test_a_subclass_of_r2conv_is_converted_and_comes_back_as_r2conv():
    class MyConv(enn.R2Conv):
        pass

    gs = gspaces.rot2dOnR2(4)
    t0, t1 = enn.FieldType(gs, [gs.trivial_repr]), enn.FieldType(gs, [gs.regular_repr])
    net = enn.SequentialModule(MyConv(t0, t1, 3, padding=1))
    dense, _ = to_dense(net)
    assert isinstance(dense[0], DenseR2Conv)
    back = to_escnn(dense)
    assert type(back[0]) is enn.R2Conv
    x = t0(_inputs((2, 1, 7, 7)))
    torch.testing.assert_close(_eval_outputs(back, x), _eval_outputs(net, x), atol=1e-5, rtol=1e-5)


# ---- 7. escnn as the user has it -----------------------------------------------------------------------


def test_a_model_in_eval_mode_gives_a_copy_in_train_mode_and_stays_in_eval_mode():
    model = C8Tutorial()
    x = _inputs((2, 1, 13, 13))
    model.train()
    model(x)  # moves the batch norms' statistics
    before = _eval_outputs(model, x)  # leaves the model in eval mode
    dense, _ = to_dense(model, invariant=["fully_net"])
    assert all(m.training for m in dense.modules())
    assert not any(m.training for m in model.modules())  # the user's model is left as it was
    torch.testing.assert_close(_eval_outputs(model, x), before, atol=0, rtol=0)
    torch.testing.assert_close(_eval_outputs(dense, x), before, atol=1e-5, rtol=1e-5)


class _TwoPlainModules(enn.EquivariantModule):
    def __init__(self):
        super().__init__()
        gs = gspaces.rot2dOnR2(4)
        self.in_type = enn.FieldType(gs, [gs.trivial_repr])
        self.out_type = enn.FieldType(gs, [gs.regular_repr])
        self.steer = enn.R2Conv(self.in_type, self.out_type, 3)
        self.plain_conv = nn.Conv2d(4, 4, 3)
        self.head = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.steer(x)

    def evaluate_output_shape(self, input_shape):
        return input_shape


def test_the_refusal_names_every_module_it_cannot_handle():
    with pytest.raises(ValueError, match="cannot read the group action") as info:
        to_dense(_TwoPlainModules())
    msg = str(info.value)
    for row in (
        "<model> (",
        "plain_conv (torch.nn.modules.conv.Conv2d)",
        "head (torch.nn.modules.linear.Linear)",
    ):
        assert row in msg
    assert "invariant=['<model>', 'plain_conv', 'head']" in msg


# escnn's own call (group/_numerical.py: null of an np.matrix), which scikit-learn >= 1.6 refuses
# unless the patch is in place
_NULL_OF_A_MATRIX = "import numpy as np; numerical.null(np.asmatrix(np.eye(3)[:2]), False)\n"


def test_import_lightning_equi_after_escnn_patches_the_loaded_escnn(monkeypatch):
    """escnn imported first (it is, in this process): arming the fix patches the loaded module at once."""
    import escnn.group._numerical as numerical
    import numpy as np

    from lightning_equi import _escnn_numerics

    randomized_svd = pytest.importorskip("sklearn.utils.extmath").randomized_svd

    monkeypatch.setattr(numerical, "randomized_svd", randomized_svd)  # as escnn leaves it
    _escnn_numerics.install()  # what `import lightning_equi` runs
    assert numerical.randomized_svd is None
    assert numerical.null(np.asmatrix(np.eye(3)[:2]), False).shape[0] == 3  # no TypeError


def test_import_lightning_equi_before_escnn_patches_escnn_numerics_on_its_import():
    code = (
        "import sys, lightning_equi\n"
        "assert 'escnn' not in sys.modules, 'import lightning_equi imported escnn'\n"
        "import escnn.group._numerical as numerical\n"
        "assert numerical.randomized_svd is None, 'the hook did not patch escnn on its import'\n"
        + _NULL_OF_A_MATRIX
    )
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True)


# ---- 4. grid_lint on every escnn model -------------------------------------------------------------------


def test_grid_lint_runs_models_whose_forward_takes_a_plain_tensor():
    assert grid_lint(C8Tutorial(), (13, 13), warn=False) == []  # its layers are centred at 13
    sys.path.insert(0, str(EXAMPLES))
    try:
        from escnn_digits import SteerableCNN
    finally:
        sys.path.remove(str(EXAMPLES))
    model = SteerableCNN("C4", width=1)
    assert grid_lint(model, (29, 29), warn=False) == []
    with pytest.warns(GridLintWarning, match=r"layer 'features\.3' .*width 28.*exact input sizes: 25, 29"):
        grid_lint(model, (28, 28))
    assert model.training  # left as it was


def test_grid_lint_of_a_model_with_a_mask_of_fixed_size():
    gs = gspaces.rot2dOnR2(4)
    t0, t1 = enn.FieldType(gs, [gs.trivial_repr]), enn.FieldType(gs, [gs.regular_repr])
    net = enn.SequentialModule(enn.MaskModule(t0, 28, margin=1), enn.R2Conv(t0, t1, 3, padding=1, stride=2))
    (msg,) = grid_lint(net, (28, 28), warn=False)
    assert "layer '1'" in msg and "width 28" in msg and "runs at no other square input size" in msg
    with pytest.raises(ValueError, match="runs neither on a GeometricTensor .* nor on a plain tensor"):
        grid_lint(net, (27, 27), warn=False)  # the mask refuses it


def test_grid_lint_of_a_3d_r3conv_model_on_d_h_w():
    gs = gspaces.rot3dOnR3(maximum_frequency=1)
    t0 = enn.FieldType(gs, [gs.trivial_repr])
    t1 = enn.FieldType(gs, [gs.trivial_repr, gs.irrep(1)])
    net = enn.SequentialModule(enn.R3Conv(t0, t1, 3, padding=1, stride=2), enn.NormNonLinearity(t1))
    assert grid_lint(net, (9, 9, 9), warn=False) == []
    (msg,) = grid_lint(net, (8, 8, 8), warn=False)
    assert "layer '0'" in msg and "width 8 on axis -3" in msg and "exact input sizes: 7, 9" in msg
    assert "need a cubic one" in grid_lint(net, (9, 9, 7), warn=False)[0]
    dense, _ = to_dense(net)
    assert grid_lint(dense, (8, 8, 8), warn=False) == [msg.replace("(R3Conv,", "(DenseR3Conv,")]
    with pytest.raises(ValueError, match=r"acts on R\^3: pass \(D, H, W\)"):
        grid_lint(net, (9, 9))


# ---- 3. transposed convolutions ----------------------------------------------------------------------


def test_unet_with_r2convtransposed_converts_trains_in_E_and_comes_back(quiet_trainer):
    from lightning_equi.adapters.dense_layers import DenseR2ConvTransposed

    model = C4UNet()
    x = _inputs((4, 1, 9, 9))
    dense, projection = to_dense(model)
    assert isinstance(dense.up, DenseR2ConvTransposed) and dense.up.weight.shape == (8, 4, 3, 3)
    torch.testing.assert_close(_eval_outputs(dense, x), _eval_outputs(model, x), atol=1e-5, rtol=1e-5)
    export = dense.up.export()
    assert type(export) is nn.ConvTranspose2d
    h = _inputs((2, 8, 5, 5))
    torch.testing.assert_close(export(h), dense.up(h), atol=0, rtol=0)
    # straight after to_dense the weights are escnn's: to_escnn gives back the same function
    back = to_escnn(dense)
    assert type(back.up) is enn.R2ConvTransposed
    torch.testing.assert_close(_eval_outputs(back, x), _eval_outputs(model, x), atol=1e-5, rtol=1e-5)
    assert grid_lint(dense.train(), (9, 9), warn=False) == []
    lit = _Lit(dense, x, (1, 9, 9))
    assert _fit(lit, "equi", quiet_trainer, targets="image").global_step == 3
    assert float(lit.symmetry_spec().relative_total_distance()) < 1e-6
    assert float(dense.up.weight.detach().abs().max()) > 0
    # independent reference: escnn's own transform of the input and of the output feature map
    dense.eval()
    gx = model.in_type(x)
    with torch.no_grad():
        for g in model.in_type.gspace.fibergroup.elements:
            torch.testing.assert_close(
                dense(gx.transform(g)).tensor, dense(gx).transform(g).tensor, atol=1e-5, rtol=1e-4
            )


def test_the_transposed_projector_is_the_group_average_of_the_transposed_weight():
    from lightning_equi.adapters.dense_layers import DenseR2ConvTransposed

    gs = gspaces.rot2dOnR2(4)
    t1, t2 = enn.FieldType(gs, [gs.regular_repr]), enn.FieldType(gs, [gs.regular_repr, gs.trivial_repr])
    up = DenseR2ConvTransposed(enn.R2ConvTransposed(t2, t1, 3, stride=2, padding=1))
    proj = up.projectors()["weight"]
    w = _inputs(tuple(up.weight.shape)).double()
    ref = torch.zeros_like(w)  # 1/|G| sum_g rho_in(g) W(g^-1 .) rho_out(g)^-1, in the (in, out) layout
    scalar = enn.FieldType(gs, [gs.trivial_repr])
    for g in gs.fibergroup.elements:
        wg = scalar(w.reshape(-1, 1, 3, 3)).transform(g).tensor.reshape(w.shape)
        ri = torch.as_tensor(t2.representation(g), dtype=torch.float64)
        ro_inv = torch.as_tensor(t1.representation(~g), dtype=torch.float64)
        ref += torch.einsum("ab,bcxy,cd->adxy", ri, wg, ro_inv)
    torch.testing.assert_close(proj.project(w), ref / 4, atol=1e-10, rtol=0)
    msgs = grid_lint(C4UNet(output_padding=1), (10, 10), warn=False)  # 10 -> 5 -> 10
    assert [m.split(" (")[0] for m in msgs] == ["layer 'down.0'", "layer 'up'"]
    assert "(R2ConvTransposed, kernel 3, stride 2, padding 1, output_padding 1)" in msgs[1]


# ---- 2. two groups in one model ----------------------------------------------------------------------


def test_e2wrn_style_model_restricting_d4_to_c4_is_projected_per_group(quiet_trainer):
    model = E2WRNStyle()
    x = _inputs((4, 1, 9, 9))
    dense, projection = to_dense(model, invariant=["head"])
    torch.testing.assert_close(_eval_outputs(dense, x), _eval_outputs(model, x), atol=1e-5, rtol=1e-5)
    assert projection.group.name == "C4"  # the whole model: the subgroup the restriction ends in
    assert projection.layer_groups == {
        "conv1": "D4",
        "block1.conv1": "D4",
        "block1.conv2": "D4",
        "block2.0": "C4",
        "block2.2.conv1": "C4",
        "block2.2.conv2": "C4",
    }
    assert "D4 -> C4" in projection.summary()
    lit = _Lit(dense.train(), x, 2)
    assert _fit(lit, "equi", quiet_trainer).global_step == 3
    assert float(lit.symmetry_spec().relative_total_distance()) < 1e-6
    assert float(assert_equivariant(dense, x, "C4")["max"]) < 1e-4
    # the D4 part is projected with D4's projectors: it stays D4-equivariant, mirrors included
    # (independent reference: escnn's own transform of the input and of the feature map)
    dense.eval()
    gx = model.in_type(x)
    with torch.no_grad():
        for g in model.in_type.gspace.fibergroup.elements:
            f = lambda t: dense.block1(dense.conv1(t))  # noqa: E731
            torch.testing.assert_close(
                f(gx.transform(g)).tensor, f(gx).transform(g).tensor, atol=1e-5, rtol=1e-4
            )
    assert grid_lint(dense, (9, 9), warn=False) == []
    aug = _Lit(to_dense(model, invariant=["head"])[0], x, 2)
    assert "equi/functional_error" in _monitored(_fit(aug, "aug", quiet_trainer))
    with pytest.raises(ValueError, match="not in span"):
        to_escnn(dense)  # trained in the grid E of each group, larger than escnn's basis span
    # trained in escnn's basis span instead, the model goes back to escnn as the same function
    dense_b, projection_b = to_dense(model, subspace="basis", invariant=["head"])
    with torch.no_grad():
        for p in dense_b.parameters():
            p.add_(0.1 * torch.randn_like(p))
    projection_b.project_parameters_()
    back = to_escnn(dense_b)
    assert type(back.restrict[0]) is enn.RestrictionModule and type(back.block2[0]) is enn.R2Conv
    torch.testing.assert_close(_eval_outputs(back, x), _eval_outputs(dense_b, x), atol=1e-5, rtol=1e-4)


def test_two_groups_without_a_restriction_are_refused_naming_the_layers():
    c4, c8 = gspaces.rot2dOnR2(4), gspaces.rot2dOnR2(8)

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = enn.R2Conv(enn.FieldType(c4, [c4.trivial_repr]), enn.FieldType(c4, [c4.regular_repr]), 3)
            self.b = enn.R2Conv(enn.FieldType(c8, [c8.trivial_repr]), enn.FieldType(c8, [c8.regular_repr]), 3)

    with pytest.raises(ValueError, match=r"groups C4 \(a\) and C8 \(b\).*RestrictionModule"):
        to_dense(Two())


# ---- 5. 3D: volumes, an SO(3) R3Conv model ---------------------------------------------------------------


class SO3Gated(enn.EquivariantModule):
    """An SO(3) R3Conv network with a gated nonlinearity and an invariant output."""

    def __init__(self) -> None:
        super().__init__()
        gs = gspaces.rot3dOnR3(maximum_frequency=1)
        self.in_type = enn.FieldType(gs, [gs.trivial_repr])
        gates, gated = enn.FieldType(gs, [gs.trivial_repr]), enn.FieldType(gs, [gs.irrep(1)])
        self.out_type = enn.FieldType(gs, [gs.trivial_repr])
        self.net = enn.SequentialModule(
            enn.R3Conv(self.in_type, gates + gated, 3, padding=1),
            enn.GatedNonLinearity1(gates + gated, gates=["gate", "gated"]),
            enn.R3Conv(gated, self.out_type, 3, padding=1),
        )

    def forward(self, x):
        if not isinstance(x, enn.GeometricTensor):
            x = self.in_type(x)
        return self.net(x).tensor.mean(dim=(2, 3, 4))

    def evaluate_output_shape(self, input_shape):
        return input_shape[:1] + (1,)


def _smooth_volume(n: int, channels: int, seed: int = 0) -> torch.Tensor:
    """A smooth random volume (low frequencies only), masked to a ball: rotations barely alias it."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, channels, 3, 3, 3, generator=g)
    v = nn.functional.interpolate(coarse, size=(n, n, n), mode="trilinear", align_corners=True)
    r = torch.linspace(-1, 1, n)
    ball = (r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) <= 0.8
    return v * ball


@pytest.mark.parametrize("gname", ["SO3", "O3"])
def test_geometric_tensor_action_on_volumes_matches_escnn_transform(gname):
    from lightning_equi.adapters import GeometricTensorAction
    from lightning_equi.adapters.escnn_groups import escnn_element

    gs = (
        gspaces.rot3dOnR3(maximum_frequency=1)
        if gname == "SO3"
        else gspaces.flipRot3dOnR3(maximum_frequency=1)
    )
    G = gs.fibergroup
    irrep1 = G.irrep(1) if gname == "SO3" else G.irrep(1, 1)
    ft = enn.FieldType(gs, [gs.trivial_repr, irrep1])
    act = GeometricTensorAction(ft)
    group = act.group
    x = ft(_smooth_volume(9, 4))
    tests = group.testing_elements()
    assert bool(act.exact_mask(tests).all())
    for g in tests:  # the cube's rotations (and the inversion): exact, as escnn's own permutation
        ours = act(g[None], x).tensor
        torch.testing.assert_close(ours, x.transform(escnn_element(group, g)).tensor, atol=1e-6, rtol=1e-6)
    g = group.sample(1, generator=torch.Generator().manual_seed(3))  # resampled: trilinear vs escnn's spline
    assert not bool(act.exact_mask(g).any())
    theirs = x.transform(escnn_element(group, g[0])).tensor
    inverse = x.transform(escnn_element(group, group.inverse(g)[0])).tensor
    ours = act(g, x).tensor
    rel = float((ours - theirs).norm() / theirs.norm())
    rel_inverse = float((ours - inverse).norm() / inverse.norm())
    # measured: 0.13-0.16 at 9^3 (0.09-0.10 at 15^3), against 0.8-1.5 for the inverse element
    assert rel < 0.2 and rel < 0.25 * rel_inverse, (rel, rel_inverse)


def test_so3_r3conv_model_converts_trains_in_E_and_is_monitored_in_3d(quiet_trainer):
    model = SO3Gated()
    x = _smooth_volume(7, 1).expand(4, 1, 7, 7, 7) + 0.1 * _inputs((4, 1, 7, 7, 7))
    dense, projection = to_dense(model)
    torch.testing.assert_close(_eval_outputs(dense, x), _eval_outputs(model, x), atol=1e-5, rtol=1e-5)
    assert projection.group.name == "SO3" and [k[1] for k in projection.kept] == ["GatedNonLinearity1"]
    assert grid_lint(dense, (7, 7, 7), warn=False) == []
    lit = _Lit(dense.train(), x, 1)
    trainer = _fit(lit, "equi", quiet_trainer, inputs="volume")
    assert float(lit.symmetry_spec().relative_total_distance()) < 1e-6
    quarter_turns = get_group("SO3").testing_elements()
    assert float(assert_equivariant(dense, x, "SO3", act_in="volume", elements=quarter_turns)["max"]) < 1e-4
    logged = _monitored(trainer)  # the quarter turns exact, Haar draws interpolated
    assert logged["equi/functional_error_exact"] < 1e-4 < logged["equi/functional_error_inexact"]
    aug = _Lit(to_dense(model)[0], x, 1)
    assert _monitored(_fit(aug, "aug", quiet_trainer, inputs="volume"))["equi/functional_error_inexact"] > 0
    back = to_escnn(dense)  # basis subspace: the round trip keeps the function
    torch.testing.assert_close(_eval_outputs(back, x), _eval_outputs(dense, x), atol=1e-5, rtol=1e-4)


# ---- 8. to_escnn of a grid-subspace model ------------------------------------------------------------------


@pytest.mark.parametrize("gname", ["C4", "D4"])
def test_to_escnn_of_a_grid_model_reports_the_change_of_the_output(gname, capsys):
    from lightning_equi.adapters import output_change

    gs = gspaces.rot2dOnR2(4) if gname == "C4" else gspaces.flipRot2dOnR2(4)
    t0, t1 = enn.FieldType(gs, [gs.trivial_repr]), enn.FieldType(gs, 2 * [gs.regular_repr])
    net = enn.SequentialModule(
        enn.R2Conv(t0, t1, 5, padding=2), enn.ReLU(t1), enn.R2Conv(t1, t1, 5, padding=2)
    )
    dense, projection = to_dense(net)  # grid E for C4/D4
    with torch.no_grad():
        for p in dense.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    projection.project_parameters_()  # a point of the grid E, outside escnn's basis span
    probe = t0(_inputs((2, 1, 11, 11)))
    with pytest.raises(ValueError, match=r"weights of 0 \(.*\), 2 \(.*\) .*output on the probe changes by"):
        to_escnn(dense, probe=probe)
    with pytest.warns(UserWarning, match=r"changes by [0-9.]+ \(relative\).*subspace='basis'") as info:
        back = to_escnn(dense, strict=False, probe=probe)
    # the reported figure is the change measured independently, on escnn's own forward
    dense.eval()
    back.eval()
    with torch.no_grad():
        ref, got = dense(probe).tensor, back(probe).tensor
    change = float((got - ref).norm() / ref.norm())
    assert f"changes by {change:.3g} (relative)" in str(info[0].message)
    assert change > 0.05 and output_change(dense, back, probe) == pytest.approx(change)
    with pytest.warns(UserWarning, match="pass probe=<an input batch>"):
        to_escnn(dense, strict=False)
    # trained in escnn's span instead, the round trip keeps the function
    dense_b, projection_b = to_dense(net, subspace="basis")
    with torch.no_grad():
        for p in dense_b.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    projection_b.project_parameters_()
    assert output_change(dense_b, to_escnn(dense_b), probe) < 1e-5
    with capsys.disabled():
        print(f"\n[{gname} grid model -> escnn] relative change of the output on a probe: {change:.3g}")


def test_so3_r3conv_transposed_converts_and_comes_back():
    from lightning_equi.adapters.dense_layers import DenseR3ConvTransposed

    gs = gspaces.rot3dOnR3(maximum_frequency=1)
    t0, t1 = enn.FieldType(gs, [gs.trivial_repr]), enn.FieldType(gs, [gs.trivial_repr, gs.irrep(1)])
    net = enn.SequentialModule(enn.R3ConvTransposed(t1, t0, 3, stride=2, padding=1))
    x = t1(_inputs((2, 4, 4, 4, 4)))
    dense, projection = to_dense(net)
    assert isinstance(dense[0], DenseR3ConvTransposed) and dense[0].weight.shape == (4, 1, 3, 3, 3)
    torch.testing.assert_close(_eval_outputs(dense, x), _eval_outputs(net, x), atol=1e-5, rtol=1e-5)
    assert type(dense[0].export()) is nn.ConvTranspose3d
    with torch.no_grad():
        dense[0].weight.add_(torch.randn(dense[0].weight.shape))
    projection.project_parameters_()
    back = to_escnn(dense)
    assert type(back[0]) is enn.R3ConvTransposed
    torch.testing.assert_close(_eval_outputs(back, x), _eval_outputs(dense, x), atol=1e-5, rtol=1e-4)
