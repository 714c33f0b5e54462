"""Zero-line symmetry: the spec inferred by tracing plain torch models (lightning_equi.subspace.inference).

Five architectures written here (torchvision is not installable beside the pinned torch): a ResNet-18-style
network with BasicBlocks and strided downsampling, a U-Net with skip concatenation and transposed
convolutions, DeepSets and a graph MLP under S_n, a 1-D conv net under flips and cyclic shifts, and the
paper's dense layers on a flattened map. For each: the inferred spec binds to the same projectors as a
hand-written one, and training with the inferred spec keeps the network equivariant, checked with the
package's helpers and with torch.rot90/flip/roll or permutations written out here.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_equi.callbacks import build_callbacks
from lightning_equi.subspace import InferredSpec, SymmetrySpec, resolve_spec
from lightning_equi.testing import assert_equivariant


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# the architectures


class BasicBlock(nn.Module):
    """ResNet's BasicBlock: two 3x3 convolutions, a shortcut (1x1 strided convolution when the shape
    changes), addition, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-18's layout (2 BasicBlocks per stage, strided downsampling) at a chosen width."""

    def __init__(self, widths: tuple[int, ...] = (8, 16), blocks: int = 1, classes: int = 5, cin: int = 1):
        super().__init__()
        self.stem = nn.Conv2d(cin, widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        stages, c = [], widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                stages.append(BasicBlock(c, w, 2 if (i > 0 and b == 0) else 1))
                c = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = self.stages(x)
        return self.fc(torch.flatten(self.pool(x), 1))


class UNet(nn.Module):
    """Two levels: conv blocks, max pooling, a transposed convolution up, skip concatenation, a 1x1 head."""

    def __init__(self, c: int = 4, classes: int = 2) -> None:
        super().__init__()

        def block(a: int, b: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.GroupNorm(1, b), nn.ReLU())

        self.down1, self.down2 = block(1, c), block(c, 2 * c)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.dec = block(2 * c, c)
        self.head = nn.Conv2d(c, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = self.down1(x)
        y = self.down2(self.pool(s))
        y = self.dec(torch.cat([self.up(y), s], dim=1))
        return self.head(y)


class DeepSets(nn.Module):
    """phi on each element, a sum over the set, rho on the pooled features."""

    def __init__(self, d: int = 3, h: int = 16) -> None:
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.LayerNorm(h))
        self.rho = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.rho(self.phi(x).sum(dim=1))


class GraphMLP(nn.Module):
    """The paper's permutation model: dense layers on the flattened adjacency of an n-node graph."""

    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(n * n, 2 * n), nn.Linear(2 * n, 2 * n), nn.Linear(2 * n, 1)

    def forward(self, a: Tensor) -> Tensor:
        x = F.relu(self.fc1(a.flatten(1)))
        return self.out(F.relu(self.fc2(x)))


class SignalNet(nn.Module):
    """1-D convolutions with circular padding, global average pool, a linear head."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, c, 3, padding=1, padding_mode="circular"),
            nn.BatchNorm1d(c),
            nn.ReLU(),
            nn.Conv1d(c, c, 5, padding=2, padding_mode="circular"),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
            nn.Linear(c, 3),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class DenseOnMap(nn.Module):
    """A convolution, then its spatial map flattened into nn.Linear (the paper's dense layers)."""

    def __init__(self, size: int = 6, c: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, c, 3, padding=1)
        self.fc = nn.Linear(c * size * size, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv(x))
        x = F.relu(self.fc(x.view(x.size(0), -1)))
        return self.out(x)


class PixelMLP(nn.Module):
    """The paper's rot model: dense layers on the flattened image, mask logits per pixel."""

    def __init__(self, size: int = 6) -> None:
        super().__init__()
        p = size * size
        self.fc1, self.fc2 = nn.Linear(p, 2 * p), nn.Linear(2 * p, p)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


# --------------------------------------------------------------------------------------------------
# helpers


def _same_projection(model: nn.Module, a: SymmetrySpec, b: SymmetrySpec) -> None:
    """Both specs bind every parameter to the same subspace: equal names, kinds, dims, and the same
    projection of a random tensor."""
    pa, pb = a.bind(model), b.bind(model)
    assert [e.name for e in pa.entries] == [e.name for e in pb.entries]
    gen = torch.Generator().manual_seed(0)
    for ea, eb in zip(pa.entries, pb.entries, strict=True):
        assert (ea.projector.kind, ea.projector.dim) == (eb.projector.kind, eb.projector.dim), ea.name
        t = torch.randn(ea.tensor.shape, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(ea.projector.project(t), eb.projector.project(t), msg=ea.name)


class _Task(L.LightningModule):
    """A plain LightningModule around a plain model: no symmetry_spec()."""

    def __init__(self, net: nn.Module, loss: str = "ce") -> None:
        super().__init__()
        self.net, self.loss_kind = net, loss

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        out = self(x)
        if self.loss_kind == "ce":
            return F.cross_entropy(out, y)
        return F.mse_loss(out, y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _fit(task: L.LightningModule, x: Tensor, y: Tensor, make_trainer, steps: int = 4, **options) -> list:
    callbacks = build_callbacks("equi", monitor=False, **options)
    make_trainer(callbacks, max_steps=steps).fit(task, DataLoader(TensorDataset(x, y), batch_size=4))
    return callbacks


def _moved(task: nn.Module, before: dict[str, Tensor]) -> bool:
    return any(not torch.equal(before[n], p) for n, p in task.state_dict().items() if n in before)


# --------------------------------------------------------------------------------------------------
# ResNet


def test_resnet_spec_equals_the_hand_written_one() -> None:
    net = ResNet()
    inferred = SymmetrySpec.infer(net, "C4", inputs="image")
    by_hand = (
        SymmetrySpec("C4")
        .layers(nn.Conv2d, fields="regular")
        .layer("stem", "trivial", "regular")
        .layer("fc", "regular", "trivial")
    )
    _same_projection(net, inferred, by_hand)
    text = inferred.declarations()
    assert ".layer('stem', 'trivial', 'regular')" in text
    assert ".layer('stages.1.shortcut.0', 'regular', 'regular')" in text
    assert ".norm('stages.1.shortcut.1', 'regular')" in text


def test_resnet_trained_with_inferred_spec_is_invariant(quiet_trainer) -> None:
    torch.manual_seed(0)
    task = _Task(ResNet())
    x, y = torch.randn(8, 1, 17, 17), torch.randint(0, 5, (8,))  # 17 - 1 divisible by 2: exact strides
    before = {n: t.clone() for n, t in task.state_dict().items()}
    (projection,) = _fit(task, x, y, quiet_trainer, group="C4", inputs="image")
    assert _moved(task, before)
    assert projection.projection.within_rounding()
    task.eval()
    assert_equivariant(task, x, "C4", "image")
    with torch.no_grad():
        out = task(x)
        for k in range(1, 4):  # an independent reference: quarter turns of the image
            torch.testing.assert_close(task(torch.rot90(x, k, dims=(-2, -1))), out, atol=1e-5, rtol=1e-5)


def test_resnet_at_a_size_where_strides_do_not_commute_is_flagged() -> None:
    from lightning_equi.subspace import GridWarning

    with pytest.warns(
        GridWarning, match=r"layer 'stages.1.conv1' .*sees width 16.*exact input sides: 15, 17"
    ):
        SymmetrySpec.infer(ResNet(), "C4", inputs="image", example_input=(1, 16, 16))


# --------------------------------------------------------------------------------------------------
# U-Net


def test_unet_spec_and_equivariant_segmentation(quiet_trainer) -> None:
    torch.manual_seed(1)
    net = UNet(c=8)  # regular fields of D4 have 8 channels
    inferred = SymmetrySpec.infer(net, "D4", inputs="image", outputs="image")
    text = inferred.declarations()
    # the decoder reads the direct sum of the upsampled fields and the skip's
    assert ".layer('dec.0', 'regular', 'regular')" in text and ".layer('head', 'regular', 'trivial')" in text
    by_hand = (
        SymmetrySpec("D4")
        .layers((nn.Conv2d, nn.ConvTranspose2d), fields="regular")
        .layer("down1.0", "trivial", "regular")
        .layer("head", "regular", "trivial")
    )
    _same_projection(net, inferred, by_hand)
    task = _Task(net, loss="mse")
    x = torch.randn(8, 1, 8, 8)
    _fit(task, x, torch.randn(8, 2, 8, 8), quiet_trainer, group="D4", inputs="image", outputs="image")
    task.eval()
    assert_equivariant(task, x, "D4", "image", act_out="image")
    with torch.no_grad():
        out = task(x)
        torch.testing.assert_close(task(x.flip(-1)), out.flip(-1), atol=1e-5, rtol=1e-5)
        turned = task(torch.rot90(x, 1, dims=(-2, -1)))
        torch.testing.assert_close(turned, torch.rot90(out, 1, dims=(-2, -1)), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# sets and graphs


def test_deepsets_under_permutations(quiet_trainer) -> None:
    torch.manual_seed(2)
    net = DeepSets()
    inferred = SymmetrySpec.infer(net, "S5", inputs="set")
    # per-element layers read invariant features: nothing to constrain
    by_hand = SymmetrySpec("S5").layers(nn.Linear, fields="trivial").norm("phi.3", "trivial")
    _same_projection(net, inferred, by_hand)
    task = _Task(net, loss="mse")
    x = torch.randn(8, 5, 3)
    _fit(task, x, torch.randn(8, 1), quiet_trainer, group="S5", inputs="set")
    task.eval()
    assert_equivariant(task, x, "S5", "set")
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        torch.testing.assert_close(task(x[:, perm]), task(x), atol=1e-5, rtol=1e-5)


def test_graph_mlp_under_permutations(quiet_trainer) -> None:
    torch.manual_seed(3)
    net = GraphMLP()
    inferred = SymmetrySpec.infer(net, "S4", inputs="graph")
    by_hand = (
        SymmetrySpec("S4")
        .layer("fc1", "pairs", "standard")
        .layer("fc2", "standard", "standard")
        .layer("out", "standard", "trivial")
    )
    _same_projection(net, inferred, by_hand)
    task = _Task(net, loss="mse")
    a = torch.randn(8, 4, 4)
    _fit(task, a, torch.randn(8, 1), quiet_trainer, group="S4", inputs="graph")
    assert_equivariant(task, a, "S4", "graph")
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        torch.testing.assert_close(task(a[:, perm][:, :, perm]), task(a), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# 1-D signals


@pytest.mark.parametrize(("group", "hidden"), [("C2", "regular"), ("D8", "mirror"), ("C8", "trivial")])
def test_signal_net_under_flips_and_cyclic_shifts(group: str, hidden: str, quiet_trainer) -> None:
    torch.manual_seed(4)
    net = SignalNet()
    inferred = SymmetrySpec.infer(net, group, inputs="signal")
    by_hand = (
        SymmetrySpec(group)
        .layers(nn.Conv1d, fields=hidden)
        .layer("net.0", "trivial", hidden)
        .layer("net.7", hidden, "trivial")
    )
    _same_projection(net, inferred, by_hand)
    task = _Task(net)
    x = torch.randn(8, 1, 8)
    _fit(task, x, torch.randint(0, 3, (8,)), quiet_trainer, group=group, inputs="signal")
    task.eval()
    assert_equivariant(task, x, group, "signal")
    with torch.no_grad():
        out = task(x)
        if group != "C8":
            torch.testing.assert_close(task(x.flip(-1)), out, atol=1e-5, rtol=1e-5)
        if group != "C2":
            torch.testing.assert_close(task(torch.roll(x, 3, dims=-1)), out, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# flattened maps into nn.Linear


def test_pixel_mlp_equals_the_papers_grid_spec() -> None:
    net = PixelMLP()
    inferred = SymmetrySpec.infer(net, "C4", inputs="image", outputs="image", example_input=(6, 6))
    assert ".layer('fc1', 'grid6x6', 'grid6x6')" in inferred.declarations()
    _same_projection(net, inferred, SymmetrySpec("C4").layers(nn.Linear, fields="grid6x6"))


def test_flattened_regular_map_into_linear(quiet_trainer) -> None:
    torch.manual_seed(5)
    net = DenseOnMap()
    inferred = SymmetrySpec.infer(net, "C4", inputs="image")  # the sides follow from in_features
    with_shape = SymmetrySpec.infer(net, "C4", inputs="image", example_input=(1, 6, 6))
    _same_projection(net, inferred, with_shape)
    task = _Task(net)
    x = torch.randn(8, 1, 6, 6)
    _fit(task, x, torch.randint(0, 2, (8,)), quiet_trainer, group="C4", inputs="image")
    assert_equivariant(task, x, "C4", "image")
    with torch.no_grad():
        torch.testing.assert_close(task(torch.rot90(x, 1, dims=(-2, -1))), task(x), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# zero-line entry points, and a declared spec winning


def test_resolve_spec_infers_only_without_a_declared_spec() -> None:
    net = ResNet()
    projection = resolve_spec(net, group="C4", inputs="image")
    assert projection.dim == SymmetrySpec.infer(net, "C4").bind(net).dim

    class Declared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(x)

        def symmetry_spec(self) -> SymmetrySpec:
            return SymmetrySpec("C4").layer("fc", "regular", "regular")

    declared = Declared()
    # the model's own spec wins over a spec that was only to be inferred
    assert resolve_spec(declared, InferredSpec("C4", inputs="image")).dim == 5
    with pytest.raises(ValueError, match=r"has no symmetry spec: .*or give group= and inputs="):
        resolve_spec(ResNet())


# --------------------------------------------------------------------------------------------------
# refusals


class _BadResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.a(x)) + x  # a regular field + the 4 scalar channels of the image
        return self.fc(h.mean((2, 3)))


class _Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:  # control flow on the input's values: fx cannot follow it
            return self.fc(x)
        return x


class _TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.conv(x)
        return y, y.mean((2, 3))


class _Slicing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)[:, :2].mean((2, 3))


class PositionalEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pos = nn.Parameter(torch.zeros(1, 4, 6, 6))
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc((self.conv(x) + self.pos).mean((2, 3)))


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (_BadResidual(), r"op 'add' .*different fields: .*regular.* and .*trivial.*A residual connection"),
        (_Odd(), r"layer 'conv' \(Conv2d\(1, 6.*writes 6 channels, which regular fields of C4 "
         r"\(dimension 4\) do not divide: use 4 or 8 channels"),
        (_Branchy(), r"torch.fx cannot trace _Branchy.forward .*Declare the spec by hand"),
        (_Slicing(), r"op 'getitem' .*indexes or slices a tensor the group moves"),
        (_TwoOutputs(), r"the model returns a tuple; inference follows a model with one output tensor"),
        (PositionalEmbedding(), r"combines the parameter 'pos' with a tensor the group moves: a positional "
         r"embedding"),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3)), r"outputs=None asks for an invariant output.*"
         r"pass outputs= the action on the output \('image' for a map"),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.LSTM(4, 4)), r"layer '1' \(LSTM\): inference does not know how "
         r"LSTM acts on fields"),
    ],
)  # fmt: skip
def test_refusals_name_the_layer_and_the_fix(model: nn.Module, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SymmetrySpec.infer(model, "C4", inputs="image")


def test_build_callbacks_refuses_an_untraceable_model_at_once() -> None:
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    with pytest.raises(MisconfigurationException, match=r"torch.fx cannot trace"):
        build_callbacks("equi", group="C4", inputs="image", model=_Branchy())


def test_build_callbacks_infers_and_a_declared_spec_wins(quiet_trainer) -> None:
    from lightning_equi.callbacks import EquivarianceMonitor, EquivariantProjection
    from lightning_equi.testing import BoringEquiModel, PlainCNNModel

    monitor, projection = build_callbacks("equi", group="C4", inputs="image", model=PlainCNNModel())
    assert isinstance(monitor, EquivarianceMonitor) and isinstance(projection, EquivariantProjection)
    assert isinstance(projection.spec, InferredSpec) and monitor.spec is projection.spec
    model = PlainCNNModel()
    quiet_trainer([monitor, projection], max_steps=3).fit(model)
    assert projection.projection.within_rounding()
    assert float(monitor.history[-1]["equi/functional_error"]) < 1e-5
    assert_equivariant(model, torch.randn(4, 1, 6, 6), "C4", "image")
    # a model with its own symmetry_spec(): that spec is used, not an inferred one
    declared = build_callbacks("equi", group="C4", inputs="image", model=BoringEquiModel())
    assert declared[-1].spec is None


def test_cli_zero_line_yaml(tmp_path, monkeypatch) -> None:
    import sys

    from lightning_equi.cli import EquiCLI

    monkeypatch.setattr(sys, "argv", ["lightning-equi"])
    config = tmp_path / "run.yaml"
    config.write_text("model: lightning_equi.testing.PlainCNNModel\nmode: equi\ngroup: C4\n")
    quiet = [
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
        "--trainer.max_steps=3",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
    ]
    cli = EquiCLI(args=["fit", "--config", str(config), *quiet])
    monitor, projection = cli.mode_callbacks
    assert cli.trainer.global_step == 3
    assert projection.projection.within_rounding()
    assert_equivariant(cli.model, torch.randn(4, 1, 6, 6), "C4", "image")


def test_the_readme_example_of_inference_runs_and_prints_what_it_says() -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text[text.index("## Zero lines: inferring the spec of a plain torch model") :]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102  (asserts the rot90 invariance itself)
    printed = "\n".join(line[2:] for line in block.splitlines() if line.startswith("# "))
    assert scope["spec"].declarations() == printed


def test_zero_line_training_resumes_exactly(quiet_trainer, tmp_path) -> None:
    from lightning_equi.testing import PlainCNNModel

    # stopped by max_epochs (a run stopped by max_steps at an epoch's end resumes with a restarted epoch
    # in Lightning 2.6, with or without these callbacks: see tests/test_callbacks.py)
    def run(epochs: int, ckpt: str | None = None) -> tuple[PlainCNNModel, L.Trainer]:
        L.seed_everything(0, verbose=False)
        model = PlainCNNModel(optimizer="adam", lr=0.01)
        trainer = quiet_trainer(
            build_callbacks("equi", group="C4", inputs="image"), max_steps=-1, max_epochs=epochs
        )
        trainer.fit(model, ckpt_path=ckpt)
        return model, trainer

    whole, _ = run(3)
    _, first = run(2)
    first.save_checkpoint(tmp_path / "half.ckpt")
    resumed, trainer = run(3, ckpt=str(tmp_path / "half.ckpt"))
    assert trainer.global_step == 12
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{name} differs after resuming"
