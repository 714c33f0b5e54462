"""Agreement with escnn: element conversions, our image action, and GeometricTensorAction."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

escnn = pytest.importorskip("escnn")
from escnn import gspaces  # noqa: E402
from escnn import nn as enn  # noqa: E402

from lightning_equi.actions import ImageAction  # noqa: E402
from lightning_equi.adapters import (  # noqa: E402
    GeometricTensorAction,
    element_from_escnn,
    escnn_element,
    escnn_group,
    group_from_escnn,
    mirror_offset,
    require_escnn,
)
from lightning_equi.groups import O2, O3, SO2, SO3, CyclicGroup, DihedralGroup, get_group, standard  # noqa: E402

pytestmark = pytest.mark.escnn

QUARTERS_SO2 = torch.tensor([0.0, math.pi / 2, math.pi, 3 * math.pi / 2], dtype=torch.float64)
QUARTERS_O2 = torch.tensor([[f, k * math.pi / 2] for f in (0, 1) for k in range(4)], dtype=torch.float64)


def some_elements(group, n=6):
    if group.is_finite:
        return group.elements()
    return group.sample(n, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("group", [CyclicGroup(5), DihedralGroup(4), SO2(), O2(), SO3(), O3()])
def test_escnn_elements_form_a_homomorphism_and_round_trip(group):
    a = some_elements(group)
    b = a.flip(0)
    ab = group.compose(a, b)
    for i in range(a.shape[0]):
        ea, eb = escnn_element(group, a[i]), escnn_element(group, b[i])
        assert ea @ eb == escnn_element(group, ab[i])
        assert ~ea == escnn_element(group, group.inverse(a[i : i + 1]))
        assert group.equal(element_from_escnn(group, ea), a[i : i + 1]).all()


@pytest.mark.parametrize("group", [CyclicGroup(6), SO2(), SO3(), O3()])
def test_standard_representation_equals_escnn_standard(group):
    G = escnn_group(group)
    esc = G.standard_representation() if not isinstance(group, CyclicGroup) else G.irrep(1)
    g = some_elements(group)
    mats = torch.stack([torch.as_tensor(esc(escnn_element(group, e))) for e in g])
    torch.testing.assert_close(standard(group)(g), mats)


@pytest.mark.parametrize(
    "gspace",
    [
        gspaces.rot2dOnR2(4),
        gspaces.flipRot2dOnR2(4),
        gspaces.flipRot2dOnR2(4, axis=0.0),
        gspaces.flip2dOnR2(),
        gspaces.flipRot2dOnR2(3),
        gspaces.flipRot2dOnR2(-1),
        gspaces.flipRot2dOnR2(-1, axis=0.3),
    ],
    ids=lambda gs: gs.name,
)
def test_gspace_elements_move_the_plane_as_standard_does(gspace):
    group = group_from_escnn(gspace)
    g = some_elements(group)
    base = torch.stack([torch.as_tensor(gspace.basespace_action(escnn_element(group, e, gspace))) for e in g])
    torch.testing.assert_close(standard(group)(g), base)
    for i in range(g.shape[0]):
        assert group.equal(
            element_from_escnn(group, escnn_element(group, g[i], gspace), gspace), g[i : i + 1]
        ).all()


def test_escnn_dihedral_irrep_mirror_is_conjugate_to_ours():
    # escnn's D_N irrep (1, 1) mirrors y -> -y; ours x -> -x: conjugate by the quarter turn J
    group = DihedralGroup(4)
    G = escnn_group(group)
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    for g in group.elements():
        esc = torch.as_tensor(G.irrep(1, 1)(escnn_element(group, g)))
        torch.testing.assert_close(standard(group)(g[None])[0], J @ esc @ J.T)


@pytest.mark.parametrize(
    ("gspace", "name"), [(gspaces.rot2dOnR2(4), "C4"), (gspaces.rot2dOnR2(-1), "SO2")], ids=["C4", "SO2"]
)
def test_vector_field_image_action_matches_escnn_transform(gspace, name):
    group = get_group(name)
    act = ImageAction(group, fields=standard(group))
    ft = enn.FieldType(gspace, [gspace.irrep(1)])
    x = torch.randn(3, 2, 7, 7, dtype=torch.float64)
    els = group.elements() if group.is_finite else QUARTERS_SO2
    for e in els:
        ref = ft(x).transform(escnn_element(group, e)).tensor
        torch.testing.assert_close(act(e.expand(3), x), ref, rtol=0, atol=1e-12)


def _field_type(gspace):
    G = gspace.fibergroup
    reps = [gspace.trivial_repr, gspace.basespace_action]
    reps.append(gspace.regular_repr if G.order() > 0 else gspace.irrep(*G.irreps()[-1].id))
    if G.order() > 0 and len(G.irreps()) > 2:
        reps.append(gspace.irrep(*G.irreps()[-1].id))
    return enn.FieldType(gspace, reps)


@pytest.mark.parametrize(
    "gspace",
    [
        gspaces.rot2dOnR2(4),
        gspaces.flipRot2dOnR2(4),
        gspaces.flipRot2dOnR2(4, axis=0.0),
        gspaces.flip2dOnR2(),
        gspaces.flipRot2dOnR2(2),
        gspaces.rot2dOnR2(-1),
        gspaces.flipRot2dOnR2(-1),
    ],
    ids=lambda gs: gs.name,
)
def test_geometric_tensor_action_matches_escnn_transform(gspace):
    ft = _field_type(gspace)
    act = GeometricTensorAction(ft)
    group = act.group
    x = ft(torch.randn(2, ft.size, 6, 6, dtype=torch.float64))
    if group.is_finite:
        els = group.elements()
    else:
        els = QUARTERS_SO2 if isinstance(group, SO2) else QUARTERS_O2
    for e in els:
        ref = x.transform(escnn_element(group, e, gspace)).tensor
        out = act(e.expand(2, *e.shape), x)
        assert isinstance(out, enn.GeometricTensor) and out.type == ft
        if act.exact:
            assert torch.equal(out.tensor, ref)
        else:
            torch.testing.assert_close(out.tensor, ref, rtol=0, atol=1e-12)


def test_geometric_tensor_action_is_per_sample_and_a_homomorphism():
    gspace = gspaces.flipRot2dOnR2(4)
    ft = _field_type(gspace)
    act = GeometricTensorAction(ft)
    group = act.group
    x = ft(torch.randn(16, ft.size, 5, 5, dtype=torch.float64))
    g = group.sample(16, generator=torch.Generator().manual_seed(0))
    h = group.sample(16, generator=torch.Generator().manual_seed(1))
    out = act(g, x).tensor
    for b in range(16):
        ref = (
            enn.GeometricTensor(x.tensor[b : b + 1], ft).transform(escnn_element(group, g[b], gspace)).tensor
        )
        assert torch.equal(out[b : b + 1], ref)
    torch.testing.assert_close(
        act(g, act(h, x)).tensor, act(group.compose(g, h), x).tensor, rtol=0, atol=1e-12
    )


def test_geometric_tensor_action_without_base_space_and_gradients():
    gspace = gspaces.no_base_space(escnn.group.so2_group(3))
    ft = enn.FieldType(gspace, [gspace.irrep(1), gspace.irrep(2), gspace.trivial_repr])
    act = GeometricTensorAction(ft)
    x = torch.randn(4, ft.size, dtype=torch.float64, requires_grad=True)
    g = SO2().sample(4, generator=torch.Generator().manual_seed(0))
    out = act(g, ft(x)).tensor
    for b in range(4):
        ref = torch.as_tensor(ft.representation(escnn_element(SO2(), g[b]))) @ x[b]
        torch.testing.assert_close(out[b], ref)
    out.sum().backward()
    assert x.grad is not None


def test_group_from_escnn_and_its_refusals():
    assert group_from_escnn(escnn.group.so3_group()) == SO3()
    assert group_from_escnn(gspaces.flipRot2dOnR2(6)) == DihedralGroup(6)
    assert group_from_escnn(gspaces.trivialOnR2()) == CyclicGroup(1)
    with pytest.raises(TypeError, match="expected an escnn Group or GSpace, got str"):
        group_from_escnn("C4")
    with pytest.raises(ValueError, match=r"not one of the D4 mirrors .* flipRot2dOnR2\(4\)"):
        group_from_escnn(gspaces.flipRot2dOnR2(4, axis=math.pi / 8))
    with pytest.raises(ValueError, match="no lightning_equi group matches escnn's"):
        group_from_escnn(escnn.group.klein4_group())
    with pytest.raises(ValueError, match="escnn has no group matching T4x4"):
        escnn_group("T4x4")
    with pytest.raises(ValueError, match=r"g must be one D4 element of shape \(2,\)"):
        escnn_element("D4", torch.tensor([[1, 0], [0, 1]]))
    assert math.cos(mirror_offset(gspaces.flipRot2dOnR2(4), DihedralGroup(4))) == pytest.approx(1.0)
    assert math.cos(mirror_offset(gspaces.flipRot2dOnR2(4, axis=0.0), DihedralGroup(4))) == pytest.approx(
        -1.0
    )


def test_geometric_tensor_action_refusals():
    gs = gspaces.rot2dOnR2(4)
    ft = enn.FieldType(gs, [gs.regular_repr])
    act = GeometricTensorAction(ft)
    g = torch.zeros(2, dtype=torch.long)
    with pytest.raises(TypeError, match="field_type must be an escnn.nn.FieldType, got GSpace2D"):
        GeometricTensorAction(gs)
    with pytest.raises(TypeError, match="x must be an escnn GeometricTensor, got Tensor"):
        act(g, torch.zeros(2, 4, 5, 5))
    other = enn.FieldType(gs, [gs.trivial_repr] * 4)
    with pytest.raises(ValueError, match="x has field type .* but the action was built for"):
        act(g, other(torch.zeros(2, 4, 5, 5)))
    with pytest.raises(ValueError, match="square image; got H=4 and W=5"):
        act(g, ft(torch.zeros(2, 4, 4, 5)))
    with pytest.raises(ValueError, match="C8 cannot act exactly"):
        GeometricTensorAction(
            enn.FieldType(gspaces.rot2dOnR2(8), [gspaces.rot2dOnR2(8).trivial_repr]), exact=True
        )
    gs3 = gspaces.rot3dOnR3()
    with pytest.raises(ValueError, match="only the rotations of the cube act exactly"):
        GeometricTensorAction(enn.FieldType(gs3, [gs3.trivial_repr]), exact=True)
    assert GeometricTensorAction(enn.FieldType(gs3, [gs3.trivial_repr])).spatial.group.name == "SO3"


def test_geometric_tensor_action_exact_mask_is_its_base_space_actions():
    gs8 = gspaces.rot2dOnR2(8)
    act8 = GeometricTensorAction(enn.FieldType(gs8, [gs8.regular_repr]))
    assert not act8.exact
    # quarter turns move the pixel grid exactly, the other rotations of C8 interpolate
    assert act8.exact_mask(torch.arange(8)).tolist() == [k % 2 == 0 for k in range(8)]
    assert torch.equal(act8.exact_mask(torch.arange(8)), act8.spatial.exact_mask(torch.arange(8)))
    gs4 = gspaces.flipRot2dOnR2(4)
    act4 = GeometricTensorAction(enn.FieldType(gs4, [gs4.regular_repr]))
    assert act4.exact_mask(act4.group.elements()).all()
    # no base space: only fibers, which are always exact
    gs0 = gspaces.no_base_space(escnn.group.o2_group())
    act0 = GeometricTensorAction(enn.FieldType(gs0, [gs0.irrep(1, 1)]))
    mask = act0.exact_mask(act0.group.sample(5, generator=torch.Generator().manual_seed(0)))
    assert mask.dtype == torch.bool and mask.shape == (5,) and mask.all()


def test_missing_escnn_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "escnn", None)
    with pytest.raises(ImportError, match=r"pip install --no-deps escnn==1\.0\.11"):
        require_escnn()
    with pytest.raises(ImportError, match=r"\./run setup"):
        escnn_group("C4")


# SO(2)/O(2) fiber matrices in batched torch, against escnn's own representations


def _named(G, name, build):
    """escnn representation ``name`` of ``G``, built once (escnn refuses a second one of the same name)."""
    return G.representations[name] if name in G.representations else build(name)


def _random_basis(G, rep, seed):
    # an invertible, non-orthogonal change of basis: exercises change_of_basis_inv as well
    Q = np.random.default_rng(seed).normal(size=(rep.size, rep.size)) + 2 * np.eye(rep.size)
    return _named(
        G, f"lightning_equi_test_{rep.name}_basis{seed}", lambda n: escnn.group.change_basis(rep, Q, n)
    )


def _planar_field_type(case):
    kind, L, axis = case
    if kind == "SO2":
        gs = gspaces.rot2dOnR2(-1, L)
        G = gs.fibergroup
        o2 = escnn.group.o2_group(L)
        reps = [
            gs.trivial_repr,
            gs.irrep(1),
            gs.irrep(L),
            G.bl_regular_representation(L),
            G.spectral_quotient_representation(2, *G.bl_irreps(L)),
            G.irrep(1).tensor(G.irrep(2)),  # irreps 1 and 3 with a rotated basis
            o2.restrict_representation((None, -1), o2.bl_regular_representation(2)),
            _random_basis(G, G.bl_regular_representation(2), 0),
            G.bl_regular_representation(L),
        ]
    elif kind == "O2":
        gs = gspaces.flipRot2dOnR2(-1, L) if axis is None else gspaces.flipRot2dOnR2(-1, L, axis=axis)
        G = gs.fibergroup
        so2 = escnn.group.so2_group(L)
        reps = [
            gs.trivial_repr,
            gs.irrep(1, 0),
            gs.irrep(1, 1),
            gs.irrep(1, L),
            gs.basespace_action,  # a rotated basis for axis != pi/2
            G.bl_regular_representation(L),
            G.bl_quotient_representation(L, (0.0, 1)),  # O(2)/flips
            G.bl_quotient_representation(L, (None, -1)),  # O(2)/SO(2)
            G.induced_representation((None, -1), so2.irrep(2)),
            _random_basis(G, G.bl_regular_representation(1), 1),
            gs.irrep(1, 1),
        ]
    else:  # no base space
        G = escnn.group.so2_group(L) if kind == "SO2-fibers" else escnn.group.o2_group(L)
        gs = gspaces.no_base_space(G)
        reps = [G.trivial_representation, G.bl_regular_representation(L), _random_basis(G, G.irreps()[-1], 2)]
    return enn.FieldType(gs, reps)


PLANAR_CASES = [
    ("SO2", 1, None),
    ("SO2", 3, None),
    ("SO2", 6, None),
    ("O2", 1, None),
    ("O2", 4, None),
    ("O2", 3, 0.3),
    ("O2", 2, 0.0),
    ("SO2-fibers", 3, None),
    ("O2-fibers", 3, None),
]


@pytest.mark.parametrize("case", PLANAR_CASES, ids=lambda c: f"{c[0]}-L{c[1]}-axis{c[2]}")
def test_planar_fiber_matrices_equal_escnn_representation(case):
    ft = _planar_field_type(case)
    act = GeometricTensorAction(ft)
    group = act.group
    assert act._planar is not None and act._table is None
    quarters = QUARTERS_SO2 if isinstance(group, SO2) else QUARTERS_O2
    g = torch.cat([group.sample(24, generator=torch.Generator().manual_seed(3)), quarters])
    gspace = ft.gspace if ft.gspace.dimensionality == 2 else None
    ref = torch.stack(
        [torch.as_tensor(ft.representation(escnn_element(group, e, gspace)), dtype=torch.float64) for e in g]
    )
    out = act.fiber_matrices(g)
    assert out.dtype == torch.float64 and out.shape == (g.shape[0], ft.size, ft.size)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    # the action itself: the base space as before, the fibers by escnn's matrices one sample at a time
    hw = (5, 5) if ft.gspace.dimensionality == 2 else ()
    x = ft(torch.randn(g.shape[0], ft.size, *hw, dtype=torch.float64))
    t = x.tensor if act.spatial is None else act.spatial(g, x.tensor)
    old = torch.einsum("bij,bj...->bi...", act._escnn_matrices(g), t)
    torch.testing.assert_close(act(g, x).tensor, old, rtol=0, atol=1e-10)


@pytest.mark.parametrize("case", [c for c in PLANAR_CASES if c[0].endswith("fibers")], ids=lambda c: c[0])
def test_planar_fibers_match_escnn_transform_and_compose(case):
    # without a base space escnn's own transform is a per-sample reference for any angle
    ft = _planar_field_type(case)
    act = GeometricTensorAction(ft)
    group = act.group
    g = group.sample(8, generator=torch.Generator().manual_seed(4))
    h = group.sample(8, generator=torch.Generator().manual_seed(5))
    x = ft(torch.randn(8, ft.size, dtype=torch.float64))
    out = act(g, x).tensor
    for b in range(8):
        ref = enn.GeometricTensor(x.tensor[b : b + 1], ft).transform(escnn_element(group, g[b])).tensor
        torch.testing.assert_close(out[b : b + 1], ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        act(g, act(h, x)).tensor, act(group.compose(g, h), x).tensor, rtol=0, atol=1e-10
    )
    torch.testing.assert_close(act(group.inverse(g), act(g, x)).tensor, x.tensor, rtol=0, atol=1e-10)


def test_planar_fibers_follow_the_data_dtype():
    gs = gspaces.rot2dOnR2(-1, 3)
    ft = enn.FieldType(gs, [gs.fibergroup.bl_regular_representation(3)] * 3)
    act = GeometricTensorAction(ft)
    g = SO2().sample(4, generator=torch.Generator().manual_seed(6))
    x = torch.randn(4, ft.size, 6, 6, dtype=torch.float64)
    out32 = act(g, ft(x.float())).tensor
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), act(g, ft(x)).tensor, rtol=0, atol=1e-5)


def test_dihedral_fibers_without_base_space_match_escnn_transform():
    # no_base_space has no plane, so the mirror converts as escnn's canonical one (no axis offset)
    G = escnn.group.dihedral_group(4)
    gs = gspaces.no_base_space(G)
    ft = enn.FieldType(gs, [G.regular_representation, G.irrep(1, 1)])
    act = GeometricTensorAction(ft)
    x = ft(torch.randn(1, ft.size, dtype=torch.float64))
    for e in act.group.elements():
        ref = x.transform(escnn_element(act.group, e)).tensor
        torch.testing.assert_close(act(e[None], x).tensor, ref, rtol=0, atol=1e-12)


def test_planar_fibers_refuse_a_representation_that_is_not_its_decomposition():
    G = escnn.group.so2_group(2)

    def build(name):
        # claims irrep 1 but maps every element to the identity
        return escnn.group.Representation(G, name, [(1,)], np.eye(2), representation=lambda e: np.eye(2))

    bad = _named(G, "lightning_equi_test_inconsistent", build)
    ft = enn.FieldType(gspaces.no_base_space(G), [G.trivial_representation, bad])
    with pytest.raises(
        ValueError, match=r"'lightning_equi_test_inconsistent' of SO2 is not change_of_basis @"
    ):
        GeometricTensorAction(ft)


@pytest.mark.parametrize(
    ("make", "name"), [(lambda: escnn.group.dihedral_group(4), "D4"), (escnn.group.o2_group, "O2")]
)
def test_no_base_space_gspaces_convert_without_a_mirror_axis(make, name):
    gspace = gspaces.no_base_space(make())
    group = group_from_escnn(gspace)
    assert group == get_group(name)
    assert mirror_offset(gspace, group) == 0.0  # no plane: the fiber group's own elements
    for g in some_elements(group):
        e = escnn_element(group, g, gspace)
        assert e == escnn_element(group, g)
        back = element_from_escnn(group, e, gspace)
        torch.testing.assert_close(back[0].double(), g.double(), rtol=0, atol=1e-12)
