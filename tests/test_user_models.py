"""Models of the kinds users bring, written by hand (torchvision is not installable here): each bound with
named fields in a few lines, equivariant after projection and after training in ``equi``, checked against
actions written independently of the library (``rot90``, ``flip``, ``roll``, index permutations), with
a negative control; and the refusals and warnings these models meet, each with ``match=``.
"""

from __future__ import annotations

import itertools
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_equi.actions import ImageAction, SetAction
from lightning_equi.callbacks import EquivarianceMonitor, build_callbacks
from lightning_equi.metrics import model_equivariance_error, output_action, transformed_outputs
from lightning_equi.subspace import SymmetrySpec


class _Wrap(L.LightningModule):
    """A plain torch network, its spec, random data and a loss: the Lightning side of every model here."""

    def __init__(self, net: nn.Module, spec: SymmetrySpec, x: torch.Tensor, loss) -> None:
        super().__init__()
        self.net, self._spec, self._x, self._loss = net, spec, x, loss

    def forward(self, x):
        return self.net(x)

    def symmetry_spec(self) -> SymmetrySpec:
        return self._spec

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self._loss(self(x))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self._x), batch_size=4)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


# ---- 1. a graph MLP with edge, node and graph outputs (S_n) ----------------------------------------

N, D, H = 4, 3, 5


class GraphMLP(nn.Module):
    """Node features ``(B, n, d)`` -> ``{"edge": (B, n, n, 1), "node": (B, n, 2), "graph": (B, 1)}``.

    Dense layers on the channel-major flattening ``x.transpose(1, 2).flatten(1)`` (``d`` standard
    fields of S_n), edges from inner products of the node embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(D * N, H * N)
        self.node = nn.Linear(H * N, 2 * N)
        self.graph = nn.Linear(H * N, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.fc1(x.transpose(1, 2).flatten(1)))  # (B, H * n), channel-major
        u = h.reshape(-1, H, N).transpose(1, 2)  # (B, n, H)
        return {
            "edge": (u @ u.transpose(1, 2))[..., None],
            "node": self.node(h).reshape(-1, 2, N).transpose(1, 2),
            "graph": self.graph(h),
        }


def _graph_spec(net: GraphMLP) -> SymmetrySpec:
    return (
        SymmetrySpec(f"S{N}")
        .layers(nn.Linear, fields="standard")
        .layer(net.graph, in_fields="standard", out_fields="trivial")
    )


GRAPH_OUTPUTS = {"edge": "graph", "node": "set", "graph": None}


def _permutation_reference(net: nn.Module, x: torch.Tensor) -> float:
    """The worst relative error over every permutation, by index permutations of the tensors."""
    worst = 0.0
    out = net(x)
    for perm in itertools.permutations(range(N)):
        p = torch.tensor(perm)
        moved = net(x[:, p])
        worst = max(
            worst,
            _relative(moved["edge"], out["edge"][:, p][:, :, p]),
            _relative(moved["node"], out["node"][:, p]),
            _relative(moved["graph"], out["graph"]),
        )
    return worst


def test_graph_mlp_with_several_outputs_is_equivariant_after_projection_and_training(quiet_trainer):
    torch.manual_seed(0)
    net = GraphMLP()
    x = torch.randn(8, N, D)
    with torch.no_grad():
        assert _permutation_reference(net, x) > 0.1  # negative control: a plain init is not equivariant
    model = _Wrap(net, _graph_spec(net), x, lambda out: sum(v.square().mean() for v in out.values()))
    callbacks = build_callbacks("equi", inputs="set", outputs=GRAPH_OUTPUTS, every_n_steps=1, probe_size=4)
    quiet_trainer(callbacks, max_steps=4).fit(model)
    with torch.no_grad():
        assert _permutation_reference(net, x) < 1e-5
    monitor = callbacks[0]
    last = monitor.history[-1]
    assert last["equi/functional_error"] < 1e-5
    assert set(k for k in last if k.startswith("equi/functional_error/")) == {
        "equi/functional_error/edge",
        "equi/functional_error/node",
        "equi/functional_error/graph",
    }


def test_the_monitor_reports_the_entry_declared_with_the_wrong_action(quiet_trainer):
    """Negative control: the node outputs declared invariant, the monitor's per-entry error points at them."""
    torch.manual_seed(0)
    net = GraphMLP()
    model = _Wrap(net, _graph_spec(net), torch.randn(8, N, D), lambda out: out["graph"].square().mean())
    wrong = dict(GRAPH_OUTPUTS, node=None)
    callbacks = build_callbacks("equi", inputs="set", outputs=wrong, every_n_steps=1, probe_size=4)
    with pytest.warns(UserWarning, match="not equivariant on the probe batch"):
        quiet_trainer(callbacks, max_steps=1).fit(model)
    last = callbacks[0].history[-1]
    assert last["equi/functional_error/node"] > 0.1
    assert last["equi/functional_error/edge"] < 1e-5 and last["equi/functional_error/graph"] < 1e-5


def test_model_equivariance_error_of_a_structured_output_against_a_per_entry_loop():
    torch.manual_seed(0)
    net = GraphMLP()
    x = torch.randn(3, N, D)
    act = SetAction(f"S{N}")
    g = act.group.sample(6 * 3)
    outputs = output_action(GRAPH_OUTPUTS, act.group)
    out = model_equivariance_error(net, x, g, act, outputs)
    # the reference: one sample and one element at a time, entries compared on their own
    per_entry: dict[str, list[float]] = {"edge": [], "node": [], "graph": []}
    worst = []
    with torch.no_grad():
        for j in range(g.shape[0]):
            xi = x[j % 3 : j % 3 + 1]
            src = torch.argsort(g[j])  # out[:, p[i]] = x[:, i]: read position j from p^-1[j]
            moved, fx = net(xi[:, src]), net(xi)
            errors = {
                "edge": _relative(moved["edge"], fx["edge"][:, src][:, :, src]),
                "node": _relative(moved["node"], fx["node"][:, src]),
                "graph": _relative(moved["graph"], fx["graph"]),
            }
            for k, v in errors.items():
                per_entry[k].append(v)
            worst.append(max(errors.values()))
    assert float(out["total"]) == pytest.approx(sum(worst) / len(worst), rel=1e-6)
    for k, values in per_entry.items():
        assert float(out[f"entry/{k}"]) == pytest.approx(sum(values) / len(values), rel=1e-6, abs=1e-12)


class _SegAndAux(nn.Module):
    """A U-Net-like head returning a map and an invariant auxiliary output, as a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y, y.mean(dim=(1, 2, 3))


def test_structured_outputs_refused_when_the_actions_do_not_describe_them():
    act = ImageAction("C4")
    x, g = torch.rand(2, 1, 6, 6), torch.arange(4).repeat_interleave(2)
    net = _SegAndAux()
    with pytest.raises(ValueError, match=r"one output action .* cannot act .* outputs=\[<action or None>"):
        transformed_outputs(net, x, g, act, act)
    with pytest.raises(
        ValueError, match=r"gives 3 actions, one per entry, but the model returns a tuple of 2"
    ):
        transformed_outputs(net, x, g, act, [act, None, None])
    with pytest.raises(ValueError, match=r"names the entries \['a', 'b'\]"):
        transformed_outputs(net, x, g, act, {"a": act, "b": None})
    with pytest.raises(ValueError, match=r"outputs\[1\]: unknown action 'imag'"):
        output_action(["image", "imag"], "C4")
    with pytest.raises(TypeError, match=r"entry '1' of the model's output is a str"):
        model_equivariance_error(lambda t: (t, "label"), x, g, act, [act, None])
    with pytest.raises(ValueError, match=r"entry '1' of the model's output is a 0-d tensor"):
        model_equivariance_error(lambda t: (t, t.sum()), x, g, act, [act, None])
    out = model_equivariance_error(net, x, g, act, [act, None])  # the spec is not projected: not equivariant
    assert set(out) == {"total", "exact", "inexact", "entry/0", "entry/1"}


def test_the_monitor_refuses_a_tuple_output_against_one_action_before_the_first_step(quiet_trainer):
    net = _SegAndAux()
    spec = SymmetrySpec("C4").layer(net.conv, "trivial", "trivial")
    model = _Wrap(net, spec, torch.rand(8, 1, 6, 6), lambda out: out[0].square().mean())
    monitor = EquivarianceMonitor(outputs="image", every_n_steps=1)
    with pytest.raises(MisconfigurationException, match=r"outputs='image'.*a tuple of 2 tensors"):
        quiet_trainer([monitor], max_steps=2).fit(model)
    assert model.global_step == 0


# ---- 7. inputs= left at "image" on an S_n model ----------------------------------------------------


def test_inputs_left_at_image_on_a_set_model_names_the_argument(quiet_trainer):
    net = GraphMLP()
    model = _Wrap(net, _graph_spec(net), torch.randn(8, N, D), lambda out: out["graph"].square().mean())
    with pytest.raises(
        MisconfigurationException, match=r"EquivarianceMonitor\(inputs='image'\).*\['set', 'graph'\]"
    ):
        quiet_trainer([EquivarianceMonitor()], max_steps=1).fit(model)
    with pytest.raises(
        MisconfigurationException, match=r"build_callbacks\(inputs='image'\).*\['set', 'graph'\]"
    ):
        build_callbacks("equi", model=model)
    with pytest.raises(MisconfigurationException, match=r"build_callbacks\(inputs\['x'\]='points'\)"):
        build_callbacks("aug", group="S4", inputs={"x": "points"})
    with pytest.raises(MisconfigurationException, match=r"outputs\['node'\].*\['set', 'graph'\]"):
        quiet_trainer([EquivarianceMonitor(inputs="set", outputs={"node": "image"})], max_steps=1).fit(model)


# ---- the architectures: one helper trains each in equi ---------------------------------------------


def _train_equi(quiet_trainer, net, spec, x, inputs, outputs=None, steps=3) -> EquivarianceMonitor:
    """Project and train ``net`` for a few Adam steps in mode equi; return the monitor (it moved)."""
    model = _Wrap(net, spec, x, lambda out: (out - 1).square().mean())
    callbacks = build_callbacks("equi", inputs=inputs, outputs=outputs, every_n_steps=1, probe_size=4)
    quiet_trainer(callbacks, max_steps=steps).fit(model)
    monitor = callbacks[0]
    assert monitor.history[-1]["equi/dist_from_start/total"] > 1e-3  # training moved the weights
    assert monitor.history[-1]["equi/functional_error"] < 1e-4
    return monitor


def _d4_images(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 images of the dihedral group of the square, by rot90 and flip (no library code)."""
    turns = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    return turns + [torch.flip(t, (-1,)) for t in turns]


def _c4_images(x: torch.Tensor) -> list[torch.Tensor]:
    return [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]


def _invariance_error(net: nn.Module, x: torch.Tensor, images=_d4_images) -> float:
    was_training = net.training
    net.eval()
    with torch.no_grad():
        fx = net(x)
        error = max(_relative(net(gx), fx) for gx in images(x))
    net.train(was_training)
    return error


def _map_equivariance_error(net: nn.Module, x: torch.Tensor) -> float:
    """For a map of scalar images to scalar images: ``f(g x)`` against ``g f(x)``, g in D4."""
    was_training = net.training
    net.eval()
    with torch.no_grad():
        fx = net(x)
        error = max(_relative(net(gx), gfx) for gx, gfx in zip(_d4_images(x), _d4_images(fx), strict=True))
    net.train(was_training)
    return error


# ---- 3. a depthwise-separable block with GroupNorm (MobileNet/ConvNeXt style) -----------------------


class DepthwiseSeparable(nn.Module):
    """stem, depthwise 3x3 (groups = channels), GroupNorm, pointwise 1x1, grouped 3x3, pool, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.gn = nn.GroupNorm(2, 8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(self.pw(self.gn(self.dw(h))))
        h = torch.relu(self.grouped(h))
        return self.head(h.mean(dim=(2, 3)))


def _dw_spec(net: DepthwiseSeparable, group: str = "C4") -> SymmetrySpec:
    return (
        SymmetrySpec(group)
        .layers(nn.Conv2d, fields="regular")  # depthwise and grouped convolutions included
        .layer(net.stem, "trivial", "regular")
        .layer(net.head, "regular", "trivial")
    )


def test_depthwise_separable_block_is_equivariant_after_projection_and_training(quiet_trainer):
    torch.manual_seed(0)
    net = DepthwiseSeparable()
    x = torch.randn(8, 1, 7, 7)
    assert _invariance_error(net, x, _c4_images) > 1e-2  # negative control: the plain init
    _train_equi(quiet_trainer, net, _dw_spec(net), x, "image")
    assert _invariance_error(net, x, _c4_images) < 1e-5


def test_depthwise_convolution_left_free_is_not_equivariant():
    """Negative control for the refusal's old hint: freeing the depthwise layer breaks equivariance."""
    torch.manual_seed(0)
    net = DepthwiseSeparable()
    x = torch.randn(4, 1, 7, 7)
    _dw_spec(net).bind(net).project_parameters_()
    assert _invariance_error(net, x, _c4_images) < 1e-5
    net = DepthwiseSeparable()
    _dw_spec(net).free(net.dw).norm(net.gn, "regular").bind(net).project_parameters_()
    assert _invariance_error(net, x, _c4_images) > 1e-3


def test_grouped_convolutions_refuse_fields_that_do_not_fit_and_never_suggest_free():
    spec = SymmetrySpec("C4")
    crossing = nn.Conv2d(8, 8, 3, groups=4)  # 2 channels per group, regular fields have 4
    with pytest.raises(ValueError, match=r"groups=4\).*cross the boundaries.*spec.parameter") as info:
        spec.layer(crossing, "regular", "regular").bind(crossing)
    assert "free" not in str(info.value)
    depthwise = nn.Conv2d(4, 4, 3, groups=4)
    with pytest.raises(ValueError, match=r"depthwise convolution filters each channel alone.*permutation"):
        SymmetrySpec("C4").layer(depthwise, ["standard", "standard"], ["standard", "standard"]).bind(
            depthwise
        )
    differing = nn.Conv2d(8, 8, 1, groups=2)  # group 0 reads a regular field, group 1 four scalars
    with pytest.raises(ValueError, match=r"its in_fields differ between groups"):
        SymmetrySpec("C4").layer(differing, ["regular"] + ["trivial"] * 4, "regular").bind(differing)
    unmoved = nn.Conv2d(4, 4, 3, groups=4)  # scalars in, a regular field out: kernels cannot follow
    with pytest.raises(ValueError, match=r"does not map the depthwise weight to a depthwise weight"):
        SymmetrySpec("C4").layer(unmoved, "trivial", "regular").bind(unmoved)
    multiplied = nn.Conv2d(8, 16, 3, groups=8)  # two outputs per channel, laid out field after field
    with pytest.raises(ValueError, match=r"channel multiplier \(2 outputs per channel\).*pointwise 1x1"):
        SymmetrySpec("C4").layer(multiplied, "regular", "regular").bind(multiplied)


def test_a_grouped_convolution_against_its_dense_equivalent():
    """The projected grouped weight, written out block-diagonally, is a fixed point of the dense
    layer's action (hand-built: rot90 of the kernel, cyclic shift of each regular field)."""
    torch.manual_seed(0)
    for conv in (nn.Conv2d(8, 16, 3, groups=2), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 8, 3, groups=2)):
        SymmetrySpec("C4").layer(conv, "regular", "regular").bind(conv).project_parameters_()
        dense = torch.zeros(conv.out_channels, conv.in_channels, 3, 3)
        o, i = conv.out_channels // conv.groups, conv.in_channels // conv.groups
        for k in range(conv.groups):
            dense[k * o : (k + 1) * o, k * i : (k + 1) * i] = conv.weight.detach()[k * o : (k + 1) * o]

        def shift(t: torch.Tensor, axis: int) -> torch.Tensor:  # one step of every regular field
            n = t.shape[axis] // 4
            return torch.roll(t.unflatten(axis, (n, 4)), 1, dims=axis + 1).flatten(axis, axis + 1)

        moved = torch.rot90(shift(shift(dense, 0), 1), 1, dims=(-2, -1))
        assert torch.allclose(moved, dense, atol=1e-6), conv


# ---- 4. a norm layer after a layer declared by parameter() or left free ----------------------------


def test_norm_after_a_parameter_layer_says_so_and_names_spec_norm():
    from lightning_equi.groups import get_group, regular
    from lightning_equi.subspace import TensorAction

    C4 = get_group("C4")
    net = nn.Sequential(nn.Linear(4, 4, bias=False), nn.LayerNorm(4))
    spec = SymmetrySpec(C4).parameter("0.weight", TensorAction((4, 4), [(regular(C4), 1), (regular(C4), 1)]))
    with pytest.raises(
        ValueError, match=r"preceding layer '0' is declared by spec.parameter.*spec.norm\('1'"
    ) as info:
        spec.bind(net)
    assert "free" not in str(info.value)
    assert spec.norm("1", "regular").bind(net).dim > 0


# ---- the other architectures of the issue (already declarable; kept as acceptance tests) -----------


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class ResNetStyle(nn.Module):
    """A ResNet-18 in miniature: stem, a block per stage (two stride-2 stages), pooling, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layers = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 16, 2), BasicBlock(16, 16, 2))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.layers(self.stem(x)).mean(dim=(2, 3)))


def test_resnet_style_network(quiet_trainer):
    torch.manual_seed(0)
    net = ResNetStyle()
    x = torch.randn(8, 3, 9, 9)  # side 9: 9 -> 5 -> 3, windows of stride 2 commute with D4 (8 = 2^3)
    assert _invariance_error(net, x) > 1e-2
    spec = (
        SymmetrySpec("D4")
        .layers(nn.Conv2d, fields="regular")
        .layer(net.stem[0], "trivial", "regular")
        .layer(net.fc, "regular", "trivial")
    )
    _train_equi(quiet_trainer, net, spec, x, "image")
    assert _invariance_error(net, x) < 1e-5


class UNet(nn.Module):
    """Encoder, a strided down-sampling, a transposed-convolution up-sampling, skip concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(1, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1)
        self.dec = nn.Conv2d(16, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        skip = torch.relu(self.enc(x))
        h = torch.relu(self.up(torch.relu(self.down(skip))))
        return self.out(torch.relu(self.dec(torch.cat([h, skip], dim=1))))


def test_d4_unet_with_transposed_convolutions_and_skips(quiet_trainer):
    torch.manual_seed(0)
    net = UNet()
    x = torch.randn(8, 1, 9, 9)
    assert _map_equivariance_error(net, x) > 1e-2
    spec = (
        SymmetrySpec("D4")
        .layers((nn.Conv2d, nn.ConvTranspose2d), fields="regular")
        .layer(net.enc, "trivial", "regular")
        .layer(net.out, "regular", "trivial")
    )
    _train_equi(quiet_trainer, net, spec, x, "image", outputs="image")
    assert _map_equivariance_error(net, x) < 1e-5


class DeepSets(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(D, 8), nn.ReLU(), nn.Linear(8, 8))
        self.rho = nn.Linear(8, 2)

    def forward(self, x):  # (B, n, d) -> (B, 2)
        return self.rho(torch.relu(self.phi(x).sum(dim=1)))


def test_deepsets(quiet_trainer):
    torch.manual_seed(0)
    net = DeepSets()
    x = torch.randn(8, N, D)
    # per-element layers read and write invariant features: S_n acts only on the set axis
    spec = SymmetrySpec(f"S{N}").layers(nn.Linear, fields="trivial")
    _train_equi(quiet_trainer, net, spec, x, "set")
    with torch.no_grad():
        fx = net(x)
        assert max(_relative(net(x[:, list(p)]), fx) for p in itertools.permutations(range(N))) < 1e-5
        # negative control: the reference sees a pooling that is not symmetric
        weighted = lambda t: net.rho(torch.relu((net.phi(t) * torch.arange(1.0, N + 1)[:, None]).sum(1)))  # noqa: E731
        assert (
            max(_relative(weighted(x[:, list(p)]), weighted(x)) for p in itertools.permutations(range(N)))
            > 1e-2
        )


class FlatCNN(nn.Module):
    """Circular convolutions, then the flattened map ``(C, H, W)`` into ``nn.Linear`` (torus translations)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular")
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_cnn_with_a_flattened_map_into_linear(quiet_trainer):
    torch.manual_seed(0)
    net = FlatCNN()
    x = torch.randn(8, 1, 6, 6)
    rolls = lambda t: [torch.roll(t, (a, b), dims=(-2, -1)) for a in range(6) for b in range(6)]  # noqa: E731
    assert _invariance_error(net, x, rolls) > 1e-2
    # the convolution already commutes with translations; the dense layer reads 4 regular fields
    spec = SymmetrySpec("T6x6").free(net.conv).layer(net.fc, "regular", "trivial")
    _train_equi(quiet_trainer, net, spec, x, "image")
    assert _invariance_error(net, x, rolls) < 1e-5


# ---- 2. 1-D signals under cyclic shifts, and under shifts with mirrors -----------------------------

L1 = 12


def _shifts_and_mirrors(x: torch.Tensor, mirrors: bool = True) -> list[torch.Tensor]:
    """Every shift of a cyclic signal and (with ``mirrors``) every shifted mirror ``i -> -i`` (roll, flip)."""
    mirrored = torch.roll(torch.flip(x, (-1,)), 1, dims=-1)  # x[(-i) mod L]
    bases = [x, mirrored] if mirrors else [x]
    return [torch.roll(b, k, dims=-1) for b in bases for k in range(x.shape[-1])]


def test_signal_action_against_roll_and_flip():
    from lightning_equi.actions import SignalAction

    x = torch.randn(3, 2, L1)
    act = SignalAction(f"D{L1}")
    elements = act.group.elements()
    references = _shifts_and_mirrors(x)  # same order: (0, k) then (1, k)
    for e, ref in zip(elements, references, strict=True):
        assert torch.equal(act(e[None].expand(3, 2), x), ref)
    g, h = act.group.sample(3), act.group.sample(3)
    assert torch.equal(act(g, act(h, x)), act(act.group.compose(g, h), x))  # a homomorphism
    assert torch.equal(
        SignalAction("C5")(torch.tensor([2]), torch.arange(5.0)[None]), torch.roll(torch.arange(5.0), 2)[None]
    )
    assert torch.equal(SignalAction("D1")(torch.tensor([[1, 0]]), x[:1]), torch.flip(x[:1], (-1,)))
    with pytest.raises(
        ValueError, match=r"D12 acts on a cyclic grid of 12 samples, but the signal has 5.*D5"
    ):
        act(torch.tensor([[0, 0]]), torch.zeros(1, 1, 5))
    with pytest.raises(ValueError, match=r"SO2 does not act on a 1-D signal"):
        SignalAction("SO2")


def test_mirror_fields_swap_their_channels_on_mirrors_only():
    from lightning_equi.actions import make_action

    act = make_action("signal:mirror", f"D{L1}")
    x = torch.randn(2, 2, L1)
    shift, mirror = torch.tensor([[0, 3], [0, 3]]), torch.tensor([[1, 0], [1, 0]])
    assert torch.equal(act(shift, x), torch.roll(x, 3, dims=-1))
    assert torch.equal(act(mirror, x), _shifts_and_mirrors(x)[L1].flip(1))
    with pytest.raises(ValueError, match=r"C12 has no mirror on a 1-D signal.*'trivial' fields"):
        make_action("signal:mirror", f"C{L1}")


class Sequence1d(nn.Module):
    """A sequence-to-sequence convolutional net with circular padding, and an invariant head."""

    def __init__(self, padding_mode: str = "circular") -> None:
        super().__init__()
        conv = lambda a, b: nn.Conv1d(a, b, 3, padding=1, padding_mode=padding_mode)  # noqa: E731
        self.convs = nn.ModuleList([conv(1, 8), conv(8, 8), conv(8, 1)])

    def forward(self, x):
        for conv in self.convs[:-1]:
            x = torch.relu(conv(x))
        return self.convs[-1](x)


def _sequence_spec(net: Sequence1d, group: str) -> SymmetrySpec:
    """The natural declaration: the shifts are carried by the convolutions, the mirrors by the kernels
    and the fields ('mirror': channel pairs the mirrors swap)."""
    return (
        SymmetrySpec(group)
        .layers(nn.Conv1d, fields="mirror")
        .layer(net.convs[0], "trivial", "mirror")
        .layer(net.convs[-1], "mirror", "trivial")
    )


def _sequence_error(net: nn.Module, x: torch.Tensor, mirrors: bool = True) -> float:
    net.eval()
    with torch.no_grad():
        fx = net(x)
        pairs = zip(_shifts_and_mirrors(x, mirrors), _shifts_and_mirrors(fx, mirrors), strict=True)
        error = max(_relative(net(gx), gfx) for gx, gfx in pairs)
    net.train()
    return error


def test_conv1d_under_shifts_and_mirrors(quiet_trainer):
    torch.manual_seed(0)
    net = Sequence1d()
    x = torch.randn(8, 1, L1)
    assert _sequence_error(net, x) > 1e-2  # a plain init commutes with shifts, not with mirrors
    assert _sequence_error(net, x, mirrors=False) < 1e-5
    _train_equi(quiet_trainer, net, _sequence_spec(net, f"D{L1}"), x, "signal", outputs="signal")
    assert _sequence_error(net, x) < 1e-5


def test_conv1d_under_cyclic_shifts(quiet_trainer):
    torch.manual_seed(0)
    net = Sequence1d()
    x = torch.randn(8, 1, L1)
    # the shifts act on the grid only: scalar fields, and the convolutions are unconstrained
    spec = SymmetrySpec(f"C{L1}").layers(nn.Conv1d, fields="trivial")
    _train_equi(quiet_trainer, net, spec, x, "signal", outputs="signal")
    assert _sequence_error(net, x, mirrors=False) < 1e-5
    with pytest.warns(UserWarning, match=r"pads with zeros.*padding_mode='circular'"):
        zero = Sequence1d(padding_mode="zeros")
        SymmetrySpec(f"C{L1}").layers(nn.Conv1d, fields="trivial").bind(zero)
    assert _sequence_error(zero, x, mirrors=False) > 1e-2  # negative control: zero padding at the ends


def test_freeing_conv1d_under_mirrors_is_not_equivariant():
    """Negative control for the old hint ("leave it free, a convolution is translation-equivariant")."""
    torch.manual_seed(0)
    net = Sequence1d()
    x = torch.randn(4, 1, L1)
    _sequence_spec(net, f"D{L1}").free(net.convs[1]).bind(net).project_parameters_()
    assert _sequence_error(net, x) > 1e-2


def test_conv1d_geometry_warnings_name_the_fix():
    spec = SymmetrySpec(f"D{L1}").layers(nn.Conv1d, fields="mirror")
    with pytest.warns(UserWarning, match=r"stride 2 keeps one sample in 2.*stride=1"):
        spec.bind(nn.Conv1d(2, 2, 3, stride=2, padding=1, padding_mode="circular"))
    with pytest.warns(UserWarning, match=r"window of 4 taps is not centred.*odd kernel_size"):
        spec.bind(nn.Conv1d(2, 2, 4, padding=1, padding_mode="circular"))
    with pytest.warns(UserWarning, match=r"window of 3 taps is not centred.*padding=1"):
        SymmetrySpec("D1").layers(nn.Conv1d, fields="regular").bind(nn.Conv1d(2, 2, 3))


# ---- 6. sets flattened element-major ---------------------------------------------------------------


class DenseSet(nn.Module):
    """A dense S_n model on ``x.flatten(1)`` of ``(B, n, d)``: element-major, features side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(N * D, N * H)
        self.fc2 = nn.Linear(N * H, 1)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x.flatten(1))))


def _set_invariance(net: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        fx = net(x)
        return max(_relative(net(x[:, list(p)]), fx) for p in itertools.permutations(range(N)))


def test_a_set_flattened_element_major_with_a_declared_layout(quiet_trainer):
    torch.manual_seed(0)
    net = DenseSet()
    x = torch.randn(8, N, D)
    # negative control: the default layout is channel-major, which this flattening is not
    SymmetrySpec(f"S{N}").layers(nn.Linear, fields="standard").layer(net.fc2, "standard", "trivial").bind(
        net
    ).project_parameters_()
    assert _set_invariance(net, x) > 0.1
    spec = (
        SymmetrySpec(f"S{N}")
        .layers(nn.Linear, fields="standard", layout="interleaved")
        .layer(net.fc2, "standard", "trivial", layout="interleaved")
    )
    _train_equi(quiet_trainer, net, spec, x, "set")
    assert _set_invariance(net, x) < 1e-5


def test_layout_refusals():
    with pytest.raises(ValueError, match=r"(?s)layout must be one of these names.*interleaved"):
        SymmetrySpec("S3").layer("fc", "standard", "trivial", layout="element-major")
    fc = nn.Linear(4, 1)
    spec = SymmetrySpec("S3").layer(fc, ["standard", "trivial"], "trivial", layout="interleaved")
    with pytest.raises(ValueError, match=r"interleaves copies of one field type.*layout='fields'"):
        spec.bind(fc)


# ---- 5. geometry no projection fixes, warned at bind given an example input ------------------------


def test_resnet_at_a_side_where_strided_windows_do_not_commute(quiet_trainer):
    from lightning_equi.subspace import GridWarning

    torch.manual_seed(0)
    net = ResNetStyle()
    spec = (
        SymmetrySpec("D4")
        .layers(nn.Conv2d, fields="regular")
        .layer(net.stem[0], "trivial", "regular")
        .layer(net.fc, "regular", "trivial")
    )
    # two stride-2 stages: exact at sides n with n - 1 divisible by 4
    with pytest.warns(
        GridWarning,
        match=r"layer 'layers.1.conv1' \(Conv2d, kernel 3, stride 2, padding 1\) sees width 32"
        r".*exact input sides: 29, 33",
    ):
        spec.bind(net, example_input=(3, 32, 32)).project_parameters_()
    assert _invariance_error(net, torch.randn(4, 3, 32, 32)) > 1e-5  # the warning was right (float32: ~1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GridWarning)
        spec.bind(net, example_input=torch.randn(2, 3, 33, 33))
    assert _invariance_error(net, torch.randn(4, 3, 33, 33)) < 1e-5
    # the monitor says so too, on its probe, before the first step
    model = _Wrap(net, spec, torch.randn(8, 3, 32, 32), lambda out: out.square().mean())
    with pytest.warns(
        GridWarning, match=r"at the probe's input size the network cannot be equivariant under D4"
    ):
        quiet_trainer([EquivarianceMonitor(every_n_steps=1)], max_steps=1).fit(model)


def test_transposed_convolution_with_output_padding_is_warned_at_bind():
    from lightning_equi.subspace import GridWarning

    torch.manual_seed(0)

    class Up(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.Conv2d(1, 8, 3, stride=2, padding=1)
            self.up = nn.ConvTranspose2d(8, 1, 3, stride=2, padding=1, output_padding=1)

        def forward(self, x):
            return self.up(torch.relu(self.down(x)))

    up = Up()
    spec = SymmetrySpec("C4").layers((nn.Conv2d, nn.ConvTranspose2d), fields="regular")
    spec = spec.layer(up.down, "trivial", "regular").layer(up.up, "regular", "trivial")
    with pytest.warns(
        GridWarning,
        match=r"'up' \(ConvTranspose2d.*output_padding 1\) adds 1 sample.*exact at no input size"
        r".*output_padding=0",
    ):
        spec.bind(up, example_input=(1, 9, 9)).project_parameters_()
    x = torch.randn(4, 1, 9, 9)
    with torch.no_grad():
        error = _relative(up(torch.rot90(x, 1, dims=(-2, -1))), torch.rot90(up(x), 1, dims=(-2, -1)))
    assert error > 1e-2  # negative control: not equivariant, as warned


def test_signals_augment_by_name_like_the_other_actions():
    from lightning_equi.actions import augment, batch_action

    x, y = torch.randn(4, 1, L1), torch.arange(4)
    ox, oy = augment((x, y), f"D{L1}", batch_action(f"D{L1}", inputs="signal"), orbit=True)
    assert ox.shape == (2 * L1 * 4, 1, L1) and torch.equal(oy[:4], y)
    references = _shifts_and_mirrors(x)  # element j of the orbit at j B + i, in the group's order
    assert all(torch.equal(ox[j * 4 : (j + 1) * 4], ref) for j, ref in enumerate(references))
