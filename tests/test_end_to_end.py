"""Models projected onto E are equivariant as functions, and Proposition 1 holds numerically.

The group acts on images by ``torch.rot90`` (and ``torch.flip`` first, for mirrors), the convention of
``grid_representation``, and on regular fields by the channel permutation of ``regular(G)``; on sets
by the permutation of ``standard(S_n)``. Every check runs over every group element.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_equi.groups import FiniteGroup, get_group, regular, standard
from lightning_equi.subspace import SymmetrySpec, equivariant_init_

# --------------------------------------------------------------------------------------------------
# group actions on data


def act_image(group: FiniteGroup, g: Tensor, x: Tensor, fields: int = 0) -> Tensor:
    """One element ``g`` on a batch of images ``(B, C, H, W)``: the pixel grid, then (if ``fields``)
    the channels as ``fields`` regular fields."""
    f, k = (int(g[0]), int(g[1])) if g.dim() else (0, int(g))
    quarter = 4 // group.n
    y = torch.flip(x, (-1,)) if f else x
    y = torch.rot90(y, k * quarter, dims=(-2, -1))
    if fields:
        y = y[:, (fields * regular(group)).permutation(g[None])[0]]
    return y


def act_set(group: FiniteGroup, g: Tensor, x: Tensor) -> Tensor:
    """S_n on flattened ``(d, n)`` node features ``(B, d * n)``: ``d`` standard fields."""
    d = x.shape[1] // group.n
    return x[:, (d * standard(group)).permutation(g[None])[0]]


# --------------------------------------------------------------------------------------------------
# models


class PlanarCNN(nn.Module):
    """trivial image -> regular fields -> regular fields -> invariant logits (spatial mean pooling)."""

    def __init__(self, order: int, fields: int = 2, classes: int = 3) -> None:
        super().__init__()
        c = fields * order
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.head = nn.Linear(c, classes)

    def features(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv2(torch.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(-2, -1)))


def planar_spec(model: PlanarCNN, group: str) -> SymmetrySpec:
    return (
        SymmetrySpec(group)
        .layers(nn.Conv2d, fields="regular")
        .layer(model.conv1, in_fields="trivial", out_fields="regular")
        .layer(model.head, in_fields="regular", out_fields="trivial")
    )


class SetMLP(nn.Module):
    """S_n on ``d`` node features: two DeepSets layers (dense) and an invariant head."""

    def __init__(self, n: int, d_in: int = 2, hidden: int = 3) -> None:
        super().__init__()
        self.n = n
        self.l1 = nn.Linear(d_in * n, hidden * n)
        self.l2 = nn.Linear(hidden * n, hidden * n)
        self.head = nn.Linear(hidden * n, 1)

    def features(self, x: Tensor) -> Tensor:
        return torch.tanh(self.l2(torch.tanh(self.l1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def symmetry_spec(self) -> SymmetrySpec:
        return (
            SymmetrySpec(f"S{self.n}")
            .layers(nn.Linear, fields="standard")
            .layer(self.head, "standard", "trivial")
        )


def _randomise_bn(bn: nn.BatchNorm2d) -> None:
    with torch.no_grad():  # make the affine map and statistics non-trivial before projecting
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)


# --------------------------------------------------------------------------------------------------
# functional equivariance


@pytest.mark.parametrize("group_name", ["C4", "D4"])
def test_projected_cnn_is_equivariant_for_every_element(group_name: str) -> None:
    group = get_group(group_name)
    model = PlanarCNN(group.n if group_name == "C4" else 2 * group.n, fields=2 if group_name == "C4" else 1)
    _randomise_bn(model.bn1)
    projection = equivariant_init_(model, planar_spec(model, group_name))
    assert projection.is_equivariant(atol=1e-6)
    x = torch.randn(3, 1, 7, 7)
    fields = model.conv1.out_channels // group.order
    for train in (True, False):  # batch statistics, then the running statistics
        model.train(train)
        if not train:
            projection.project_parameters_()  # the training forwards moved the running statistics
        fx = model.features(x)
        for g in group.elements():
            fgx = model.features(act_image(group, g, x))
            torch.testing.assert_close(fgx, act_image(group, g, fx, fields))
            torch.testing.assert_close(model.head(fgx.mean((-2, -1))), model.head(fx.mean((-2, -1))))


def test_negative_control_one_unprojected_layer_breaks_equivariance() -> None:
    group = get_group("C4")
    model = PlanarCNN(4)
    equivariant_init_(model, planar_spec(model, "C4"))
    nn.init.normal_(model.conv2.weight)  # leave E in one layer only
    x = torch.randn(4, 1, 9, 9)
    g = torch.tensor(1)
    error = (model.features(act_image(group, g, x)) - act_image(group, g, model.features(x), 2)).abs().max()
    assert error > 1e-2


def test_running_statistics_must_be_projected_for_eval_mode_equivariance() -> None:
    group = get_group("C4")
    model = PlanarCNN(4)
    projection = equivariant_init_(model, planar_spec(model, "C4"))
    model.bn1.momentum = 1.0  # the running statistics become those of the last batch
    batch = torch.randn(8, 1, 9, 9)
    batch[:, :, :3] += 1.0  # brighter at the top: the batch statistics are not symmetric
    model(batch)  # a training forward
    assert projection.distances(buffers=True)["bn1.running_mean"] > 1e-2
    model.eval()
    x, g = torch.randn(2, 1, 9, 9), torch.tensor(1)
    error = model.features(act_image(group, g, x)) - act_image(group, g, model.features(x), 2)
    assert error.abs().max() > 1e-2
    projection.project_parameters_()
    torch.testing.assert_close(
        model.features(act_image(group, g, x)), act_image(group, g, model.features(x), 2)
    )


def test_projected_set_mlp_is_equivariant_for_every_permutation() -> None:
    group = get_group("S4")
    model = SetMLP(4)
    equivariant_init_(model)  # from model.symmetry_spec()
    x = torch.randn(5, 2 * 4)
    for g in group.elements():
        gx = act_set(group, g, x)
        torch.testing.assert_close(model.features(gx), act_set(group, g, model.features(x)))
        torch.testing.assert_close(model(gx), model(x))
    nn.init.normal_(model.l2.weight)  # negative control
    g = torch.tensor([1, 0, 2, 3])
    assert (model.features(act_set(group, g, x)) - act_set(group, g, model.features(x))).abs().max() > 1e-2


def test_dense_translation_layer_is_a_circular_convolution() -> None:
    layer = nn.Linear(2 * 36, 3 * 36)
    equivariant_init_(layer, SymmetrySpec("T6x6").layer(layer, "regular", "regular"))
    x = torch.randn(4, 2, 6, 6)
    for shift in [(1, 0), (0, 1), (2, 5)]:
        y = layer(torch.roll(x, shift, dims=(-2, -1)).flatten(1)).reshape(4, 3, 6, 6)
        torch.testing.assert_close(
            y, torch.roll(layer(x.flatten(1)).reshape(4, 3, 6, 6), shift, dims=(-2, -1))
        )


def test_conv1d_under_reversal_conv3d_and_transposed_conv_under_rotations() -> None:
    d1 = get_group("D1")
    conv1d = nn.Conv1d(2, 4, 5, padding=2)
    equivariant_init_(conv1d, SymmetrySpec(d1).layer(conv1d, "regular", "regular"))
    x, mirror = torch.randn(3, 2, 11), torch.tensor([[1, 0]])
    swap_in, swap_out = regular(d1).permutation(mirror)[0], (2 * regular(d1)).permutation(mirror)[0]
    torch.testing.assert_close(conv1d(x.flip(-1)[:, swap_in]), conv1d(x).flip(-1)[:, swap_out])

    c4 = get_group("C4")
    conv3d = nn.Conv3d(4, 8, 3, padding=1)
    deconv = nn.ConvTranspose2d(4, 8, 3, stride=1, padding=1)
    for layer in (conv3d, deconv):
        equivariant_init_(layer, SymmetrySpec(c4).layer(layer, "regular", "regular"))
    g = torch.tensor(1)
    v = torch.randn(2, 4, 3, 7, 7)
    rot = lambda t, m: torch.rot90(t, 1, dims=(-2, -1))[:, (m * regular(c4)).permutation(g[None])[0]]  # noqa: E731
    torch.testing.assert_close(conv3d(rot(v, 1)), rot(conv3d(v), 2))
    torch.testing.assert_close(deconv(rot(v[:, :, 0], 1)), rot(deconv(v[:, :, 0]), 2))


# --------------------------------------------------------------------------------------------------
# Proposition 1: at A in E, grad R_aug(A) = Pi_E grad R(A), with augmentation over all of G


def _gradients(model: nn.Module, loss: Tensor) -> dict[str, Tensor]:
    grads = torch.autograd.grad(loss, [p for p in model.parameters()])
    return {n: g for (n, _), g in zip(model.named_parameters(), grads, strict=True)}


def _check_proposition_1(model: nn.Module, spec: SymmetrySpec, loss_at) -> None:
    """``loss_at(g)`` is the loss on the batch transformed by ``g`` (inputs and targets)."""
    model.double()
    projection = equivariant_init_(model, spec)
    nominal = _gradients(model, loss_at(None))
    elements = projection.group.elements()
    augmented = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for g in elements:
        for n, grad in _gradients(model, loss_at(g)).items():
            augmented[n] += grad / len(elements)
    assert projection.gradient_perp_share() == 0  # no .grad was set: autograd.grad only
    off_e = []
    for e in projection.parameters:
        expected = e.projector.project(nominal[e.name])
        off_e.append((nominal[e.name] - expected).norm())
        torch.testing.assert_close(augmented[e.name], expected, rtol=0, atol=1e-10)
    assert torch.stack(off_e).max() > 1e-3  # the nominal gradient did leave E: the check has teeth


def test_proposition_1_c4_cnn_float64() -> None:
    group = get_group("C4")
    model = PlanarCNN(4)
    _randomise_bn(model.bn1)
    x = torch.randn(6, 1, 7, 7, dtype=torch.float64)
    x[:, :, :3] += 1.0  # an asymmetric input distribution, so the nominal gradient leaves E
    y = torch.randint(0, 3, (6,))

    def loss_at(g: Tensor | None) -> Tensor:
        inputs = x if g is None else act_image(group, g, x)
        return F.cross_entropy(model(inputs), y)  # invariant targets

    _check_proposition_1(model, planar_spec(model, "C4"), loss_at)


def test_proposition_1_s4_mlp_float64() -> None:
    group = get_group("S4")
    model = SetMLP(4)
    x = torch.randn(5, 2 * 4, dtype=torch.float64)
    x[:, 0] += 2.0  # node 0 of feature 0 stands out: the nominal gradient is not permutation-symmetric
    y = torch.randn(5, 1, dtype=torch.float64)

    def loss_at(g: Tensor | None) -> Tensor:
        inputs = x if g is None else act_set(group, g, x)
        return F.mse_loss(model(inputs), y)

    _check_proposition_1(model, model.symmetry_spec(), loss_at)


# --------------------------------------------------------------------------------------------------
# equivariant initialisation


@pytest.mark.parametrize("preserve_norm", [False, True])
def test_equivariant_init_lands_in_e_and_is_not_zero(preserve_norm: bool) -> None:
    model = PlanarCNN(4)
    before = {n: p.detach().norm() for n, p in model.named_parameters()}
    projection = equivariant_init_(model, planar_spec(model, "C4"), preserve_norm=preserve_norm)
    assert float(projection.total_distance(buffers=True)) < 1e-6
    for e in projection.parameters:
        norm = e.tensor.detach().norm()
        assert norm > 1e-3 or before[e.name] == 0, e.name  # BatchNorm's bias starts at zero
        if preserve_norm:
            torch.testing.assert_close(norm, before[e.name])
        elif e.name in ("conv1.weight", "conv2.weight"):  # averaging i.i.d. entries shrinks them
            assert norm < before[e.name], e.name
