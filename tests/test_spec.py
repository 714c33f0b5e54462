"""SymmetrySpec: declaring the symmetry of plain torch models, binding, and every error message."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_equi.groups import (
    SO2,
    CyclicGroup,
    DihedralGroup,
    TorusTranslations,
    grid_representation,
    irrep,
    regular,
    trivial,
)
from lightning_equi.subspace import (
    ModelProjection,
    SymmetrySpec,
    TensorAction,
    group_average,
    make_projector,
    resolve_spec,
)


class C4CNN(nn.Module):
    def __init__(self, head_in: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(head_in, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.bn(self.conv1(x))))).mean(dim=(-2, -1))
        if self.head.in_features == 4:  # group pooling: max over each regular field
            h = h.reshape(-1, 4, 4).amax(-1)
        return self.head(h)


def c4_spec(model: C4CNN) -> SymmetrySpec:
    return SymmetrySpec("C4").layers(nn.Conv2d, fields="regular").layer("conv1", "trivial", "regular")


def kinds(projection: ModelProjection) -> dict[str, tuple[str, int, bool]]:
    return {e.name: (e.projector.kind, e.projector.dim, e.is_buffer) for e in projection.entries}


# --------------------------------------------------------------------------------------------------
# declaring specs: the projector chosen for each parameter


def test_c4_cnn_with_invariant_pooling_head() -> None:
    model = C4CNN()
    projection = c4_spec(model).layer(model.head, in_fields="regular", out_fields="trivial").bind(model)
    assert kinds(projection) == {
        "conv1.weight": ("orbit-mean", 4 * 9, False),  # one free 3x3 kernel per output field
        "conv1.bias": ("orbit-mean", 4, False),
        "bn.weight": ("orbit-mean", 4, False),  # BatchNorm follows conv1's fields
        "bn.bias": ("orbit-mean", 4, False),
        "bn.running_mean": ("orbit-mean", 4, True),
        "bn.running_var": ("orbit-mean", 4, True),
        "conv2.weight": ("orbit-mean", 16 * 16 * 9 // 4, False),  # C4 acts freely on the entries
        "conv2.bias": ("orbit-mean", 4, False),
        "head.weight": ("orbit-mean", 10 * 4, False),
        "head.bias": ("orbit-mean", 10, False),
    }
    assert projection.free_names == []
    assert projection.entries[0].layer == "conv1"
    # the two hidden-size biases and BatchNorm tensors share one projector (built once)
    by_name = {e.name: e.projector for e in projection.entries}
    assert by_name["bn.weight"] is by_name["bn.running_var"] is by_name["conv2.bias"]


def test_c4_cnn_head_free_or_trivial_after_group_pooling() -> None:
    model = C4CNN(head_in=4)
    free = c4_spec(model).free(model.head).bind(model)
    assert free.free_names == ["head.bias", "head.weight"]
    assert not any(e.layer == "head" for e in free.entries)
    trivial_head = c4_spec(model).layer("head", "trivial", "trivial").bind(model)
    assert kinds(trivial_head)["head.weight"] == ("orbit-mean", 40, False)  # every weight is invariant
    with pytest.raises(ValueError, match=r"free\(\) needs at least one module"):
        c4_spec(model).free()
    one = c4_spec(model).layer("head", "trivial", "trivial").free("head.bias").bind(model)
    assert one.free_names == ["head.bias"] and "head.weight" in kinds(one)


def test_deepsets_mlp_under_sn_uses_closed_form_bases() -> None:
    n = 5
    model = nn.Sequential(
        nn.Linear(2 * n, 3 * n), nn.ReLU(), nn.Linear(3 * n, 3 * n), nn.ReLU(), nn.Linear(3 * n, 1)
    )
    spec = SymmetrySpec(f"S{n}").layers(nn.Linear, fields="standard").layer("4", "standard", "trivial")
    assert kinds(spec.bind(model)) == {
        "0.weight": ("closed-form", 2 * 3 * 2, False),  # lambda I + gamma 11^T per channel pair
        "0.bias": ("closed-form", 3, False),
        "2.weight": ("closed-form", 3 * 3 * 2, False),
        "2.bias": ("closed-form", 3, False),
        "4.weight": ("closed-form", 3, False),  # sum pooling per channel
        "4.bias": ("closed-form", 1, False),
    }


def test_graph_mlp_on_adjacency_pairs() -> None:
    model = nn.Sequential(nn.Linear(16, 2 * 16), nn.ReLU(), nn.Linear(2 * 16, 1))
    spec = SymmetrySpec("S4").layer("0", "pairs", "pairs").layer("2", "pairs", "trivial")
    assert kinds(spec.bind(model))["0.weight"] == ("closed-form", 2 * 15, False)  # Maron et al.: 15 maps


def test_dense_translation_layer_under_torus_uses_fourier() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 36, 3 * 36), nn.ReLU(), nn.Linear(3 * 36, 10))
    spec = SymmetrySpec("T6x6").layer("1", "regular", "regular").layer("3", "regular", "trivial")
    k = kinds(spec.bind(model))
    assert k["1.weight"] == ("fourier", 2 * 3 * 36, False)  # one circular convolution per channel pair
    assert k["1.bias"][1] == 3
    assert k["3.weight"][1] == 10 * 3  # invariant head: constant over the grid


def test_so2_irreps_linear_uses_a_basis_and_is_equivariant() -> None:
    G = SO2()
    rho_in = irrep(G, 1) + trivial(G)
    rho_out = [irrep(G, 1), "irrep1", "trivial", "irrep2"]
    layer = nn.Linear(3, 7)
    projection = SymmetrySpec(G).layer(layer, rho_in, rho_out).bind(layer)
    # Hom(irrep1, irrep1) = span(I, J) into each of the two irrep1 outputs, plus trivial -> trivial
    assert kinds(projection) == {"weight": ("basis", 2 + 2 + 1, False), "bias": ("basis", 1, False)}
    projection.project_parameters_()
    g = G.sample(3, generator=torch.Generator().manual_seed(1))
    out = irrep(G, 1) + irrep(G, 1) + trivial(G) + irrep(G, 2)
    x = torch.randn(3, 3)
    gx = torch.einsum("bij,bj->bi", rho_in(g, torch.float32), x)
    torch.testing.assert_close(layer(gx), torch.einsum("bij,bj->bi", out(g, torch.float32), layer(x)))


def test_projectors_match_the_group_average() -> None:
    model = C4CNN()
    projection = c4_spec(model).layer(model.head, "regular", "trivial").bind(model)
    G = CyclicGroup(4)
    reference = TensorAction(
        (16, 16, 3, 3), [(4 * regular(G), 1), (4 * regular(G), 1), (grid_representation(G, (3, 3)), 2)]
    )
    w = torch.randn(16, 16, 3, 3, dtype=torch.float64)
    entry = next(e for e in projection.entries if e.name == "conv2.weight")
    torch.testing.assert_close(entry.projector.project(w), group_average(reference, w), rtol=0, atol=1e-12)


def test_make_projector_falls_back_to_orbit_mean_and_basis() -> None:
    D4 = DihedralGroup(4)
    assert make_projector(TensorAction((8, 8), [(regular(D4), 1), (regular(D4), 1)])).kind == "orbit-mean"
    assert make_projector(TensorAction((2, 8), [(irrep(D4, 1), 1), (regular(D4), 1)])).kind == "basis"
    T = TorusTranslations((3,))
    assert make_projector(TensorAction((3, 3), [(regular(T), 1), (regular(T), 1)])).kind == "fourier"


def test_symmetry_spec_method_and_resolve_spec() -> None:
    class Net(C4CNN):
        def symmetry_spec(self) -> SymmetrySpec:
            return c4_spec(self).layer(self.head, "regular", "trivial")

    model = Net()
    projection = resolve_spec(model)
    assert len(projection.entries) == 10
    assert resolve_spec(model, projection) is projection
    with pytest.raises(ValueError, match=r"C4CNN has no symmetry spec: pass spec=SymmetrySpec"):
        resolve_spec(C4CNN())
    with pytest.raises(TypeError, match="expected a SymmetrySpec or a ModelProjection"):
        resolve_spec(model, "C4")  # type: ignore[arg-type]


def test_custom_parameter_declaration() -> None:
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.randn(8))

    model = Scale()
    G = CyclicGroup(4)
    projection = SymmetrySpec(G).parameter("gain", TensorAction((8,), [(2 * regular(G), 1)])).bind(model)
    projection.project_parameters_()
    assert torch.equal(model.gain[:4], model.gain[:1].expand(4))
    with pytest.raises(ValueError, match=r"parameter\('gain'\): declared for shape \(4,\)"):
        SymmetrySpec(G).parameter("gain", TensorAction((4,), [(regular(G), 1)])).bind(model)
    with pytest.raises(ValueError, match=r"parameter\('bias'\): the model has no parameter named 'bias'"):
        SymmetrySpec(G).parameter("bias", TensorAction((4,), [(regular(G), 1)])).bind(model)


# --------------------------------------------------------------------------------------------------
# error messages


def test_missing_parameters_are_all_listed_with_the_fix() -> None:
    model = C4CNN()
    with pytest.raises(ValueError, match=r"does not say how the group acts on 2 parameter") as err:
        c4_spec(model).bind(model)
    message = str(err.value)
    assert "head.weight  (Linear(16, 10), shape (10, 16))" in message
    assert "head.bias" in message
    assert "spec.layer('head', in_fields=" in message and "spec.free('head')" in message


def test_wrong_channel_multiple() -> None:
    model = C4CNN()
    with pytest.raises(
        ValueError, match=r"layer 'conv1' .*in_fields: regular fields of C4 have dimension 4, which"
    ):
        SymmetrySpec("C4").layers(nn.Conv2d, fields="regular").free("head").bind(model)
    # freeing the first layer exempts it from the type-wide declaration (its 1 channel is fine)
    projection = (
        SymmetrySpec("C4").layers(nn.Conv2d, fields="regular").norm("bn", "regular").free("conv1", "head")
    ).bind(model)
    assert "conv1.weight" in projection.free_names and "conv2.weight" in kinds(projection)
    model = nn.Linear(24, 8)
    with pytest.raises(ValueError, match=r"is a sum of 3 fields of total dimension 12, but the layer has 24"):
        SymmetrySpec("C4").layer(model, 3 * regular(CyclicGroup(4)), "regular").bind(model)
    model = nn.Linear(6, 8)
    with pytest.raises(
        ValueError, match=r"listed fields have dimensions 4 \+ 1, but the layer has 6 channels"
    ):
        SymmetrySpec("C4").layer(model, ["regular", "trivial"], "regular").bind(model)


def test_wrong_group() -> None:
    model = nn.Linear(8, 8)
    with pytest.raises(ValueError, match=r"representation of D4, but this spec is for C4"):
        SymmetrySpec("C4").layer(model, regular(DihedralGroup(4)), "regular").bind(model)
    with pytest.raises(ValueError, match=r"its action is by D4, but this spec is for C4"):
        SymmetrySpec("C4").parameter("weight", TensorAction((8,), [(regular(DihedralGroup(4)), 1)]))
    with pytest.raises(ValueError, match=r"SO2 has no 'regular' fields"):
        SymmetrySpec("SO2").layer(model, "regular", "regular").bind(model)


def test_unknown_names() -> None:
    model = C4CNN()
    with pytest.raises(ValueError, match=r"unknown field name 'regualr'. Valid names:\n  trivial"):
        c4_spec(model).layer("head", "regualr", "trivial").bind(model)
    with pytest.raises(ValueError, match=r"no submodule named 'hed'; its layers are 'conv1', 'bn'"):
        c4_spec(model).layer("hed", "regular", "trivial").bind(model)
    with pytest.raises(ValueError, match=r"free\('conv3'\): the model has no submodule named 'conv3'"):
        c4_spec(model).free("conv3").bind(model)
    with pytest.raises(ValueError, match=r"is not part of the bound model"):
        c4_spec(model).free(nn.Linear(1, 1)).bind(model)
    with pytest.raises(TypeError, match=r"layers\(\) takes module classes"):
        SymmetrySpec("C4").layers("Conv2d", fields="regular")  # type: ignore[arg-type]


def test_unsupported_layers() -> None:
    model = nn.Sequential(nn.Embedding(10, 4))
    with pytest.raises(ValueError, match=r"cannot derive the action on the parameters of a Embedding"):
        SymmetrySpec("C4").layer("0", "regular", "regular").bind(model)
    conv = nn.Conv2d(4, 4, 3, groups=2)
    with pytest.raises(ValueError, match=r"groups=2\).*in_fields and out_fields cross the boundaries"):
        SymmetrySpec("C4").layer(conv, "regular", "regular").bind(conv)
    conv = nn.Conv2d(8, 8, 3)
    with pytest.raises(
        ValueError, match=r"C8 does not act exactly on a pixel grid.*free would not make it equivariant"
    ):
        SymmetrySpec("C8").layer(conv, "regular", "regular").bind(conv)
    with pytest.raises(
        ValueError, match=r"T4x4 does not act exactly on a pixel grid.*translation-equivariant"
    ):
        SymmetrySpec("T4x4").layer(conv, "trivial", "trivial").bind(conv)
    conv1d = nn.Conv1d(4, 4, 3)
    with pytest.raises(ValueError, match=r"SO2 does not act on a 1-d kernel: C_N, D_N and T<N>"):
        SymmetrySpec("SO2").layer(conv1d, "trivial", "trivial").bind(conv1d)


def test_normalisation_layers() -> None:
    # non-permutation fields: per-channel statistics are not equivariant
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match=r"BatchNorm1d normalises each channel by its own statistics"):
        SymmetrySpec("SO2").layer("0", ["irrep1", "trivial"], "irrep1").bind(model)
    # a norm after a free layer has no fields to follow
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.raises(
        ValueError, match=r"normalises \(the preceding layer '0' is left free.*spec.norm\('1', fields"
    ):
        SymmetrySpec("C4").free("0").bind(model)
    projection = SymmetrySpec("C4").free("0").norm("1", "regular").bind(model)
    assert kinds(projection)["1.weight"] == ("orbit-mean", 1, False)
    # a norm after a layer with a different channel count
    model = nn.Sequential(nn.Linear(4, 8), nn.Flatten(), nn.LayerNorm(4))
    with pytest.raises(ValueError, match=r"the preceding layer '0' writes 8 channels"):
        SymmetrySpec("C4").layer("0", "regular", "regular").bind(model)
    with pytest.raises(ValueError, match=r"LayerNorm over \(4, 3, 3\) is not supported.*GroupNorm\(1, 4\)"):
        model = nn.Sequential(nn.Conv2d(4, 4, 1), nn.LayerNorm((4, 3, 3)))
        SymmetrySpec("C4").layer("0", "regular", "regular").norm("1", "regular").bind(model)
    # GroupNorm: each group of channels must hold whole fields
    model = nn.Sequential(nn.Conv2d(8, 8, 1), nn.GroupNorm(2, 8))
    assert kinds(SymmetrySpec("C4").layer("0", "regular", "regular").bind(model))["1.bias"][1] == 2
    model = nn.Sequential(nn.Conv2d(8, 8, 1), nn.GroupNorm(4, 8))
    with pytest.raises(ValueError, match=r"GroupNorm\(4, 8\) mixes the statistics"):
        SymmetrySpec("C4").layer("0", "regular", "regular").bind(model)
    with pytest.raises(ValueError, match=r"reads and writes the same fields"):
        SymmetrySpec("C4").layer("0", "regular", "regular").layer("1", "regular", "trivial").bind(model)


# --------------------------------------------------------------------------------------------------
# the bound projection


def _bound_cnn() -> tuple[C4CNN, ModelProjection]:
    model = C4CNN()
    return model, c4_spec(model).layer(model.head, "regular", "trivial").bind(model)


def test_buffers_are_projected_and_follow_the_module() -> None:
    model, projection = _bound_cnn()
    projection.project_parameters_()
    x = torch.randn(4, 1, 6, 6)
    x[..., :2, :] += 1.0  # asymmetric batch statistics
    model(x)  # training forward: the running statistics leave E
    assert projection.distances(buffers=True)["bn.running_mean"] > 1e-3
    assert "bn.running_mean" not in projection.distances()  # parameters only by default
    projection.project_buffers_()
    assert projection.is_equivariant(atol=1e-6)
    model(x)
    model.double()  # replaces the buffers: entries look them up again
    projection.project_parameters_()
    assert model.bn.running_mean.dtype == torch.float64
    assert projection.is_equivariant(atol=1e-12)
    assert torch.equal(
        model.bn.running_mean.reshape(4, 4), model.bn.running_mean.reshape(4, 4)[:, :1].expand(4, 4)
    )


def test_distances_gradients_and_snapshot() -> None:
    model, projection = _bound_cnn()
    d = projection.distances()
    assert all(v.dtype == torch.float64 and not v.requires_grad for v in d.values())
    torch.testing.assert_close(
        projection.total_distance(), torch.stack(list(d.values())).square().sum().sqrt()
    )
    layers = projection.layer_distances()
    torch.testing.assert_close(layers["conv1"], (d["conv1.weight"] ** 2 + d["conv1.bias"] ** 2).sqrt())
    rel = projection.relative_distances()
    assert float(rel["head.bias"]) == 0  # trivial fields: already in E
    assert all(0 < float(rel[k]) <= 1 for k in ("conv1.weight", "conv2.weight", "head.weight"))
    assert 0 < float(projection.relative_total_distance()) < 1

    projection.project_parameters_()
    w0 = projection.snapshot()
    assert projection.total_distance() < 1e-6
    loss = model(torch.randn(3, 1, 6, 6) + torch.linspace(0, 1, 6)).square().mean()
    loss.backward()
    share = projection.gradient_perp_share()
    assert 0.01 < float(share) < 1
    with torch.no_grad():  # a nominal step leaves E
        for p in model.parameters():
            p -= 0.1 * p.grad
    moved = projection.distances_from(w0)
    for name in w0:
        torch.testing.assert_close(
            moved["total"][name] ** 2, moved["in_E"][name] ** 2 + moved["perp"][name] ** 2
        )
        # W0 is in E, so the move across E is the distance to E
        torch.testing.assert_close(moved["perp"][name], projection.distances()[name], atol=1e-6, rtol=1e-5)
    projection.project_gradients_()
    assert float(projection.gradient_perp_share()) < 1e-6
    with pytest.raises(KeyError, match=r"\['nope'\] are not constrained tensors"):
        projection.distances_from({"nope": torch.zeros(1)})


def test_summary_and_dimensions() -> None:
    _, projection = _bound_cnn()
    assert projection.dim == 36 + 4 + 4 + 4 + 576 + 4 + 40 + 10
    assert projection.numel == sum(e.tensor.numel() for e in projection.entries if not e.is_buffer)
    text = projection.summary()
    assert "bn.running_var (buffer)" in text and "C4: dim E = 678" in text
