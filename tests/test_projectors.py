"""The orbit-mean and basis projectors onto E, checked against the definition of E in float64."""

from __future__ import annotations

import pytest
import torch

from lightning_equi.groups import (
    O2,
    O3,
    SO2,
    SO3,
    CyclicGroup,
    DihedralGroup,
    Representation,
    SymmetricGroup,
    TorusTranslations,
    direct_sum,
    grid_representation,
    irrep,
    pair_representation,
    regular,
    sign,
    standard,
    trivial,
)
from lightning_equi.subspace.base import TensorAction, group_average
from lightning_equi.subspace.basis import BasisProjector, equivariant_basis
from lightning_equi.subspace.orbit import OrbitMeanProjector, components, orbit_ids

F64 = dict(dtype=torch.float64)


def _fields(group, spec: list[tuple[str, int]]) -> Representation:
    """``[("regular", 2), ("trivial", 1)]`` -> the direct sum, in that order."""
    make = {
        "regular": regular,
        "trivial": trivial,
        "standard": standard,
        "sign": sign,
        **{f"irrep{k}": (lambda G, k=k: irrep(G, k)) for k in range(1, 4)},
    }
    return direct_sum([make[name](group) for name, n in spec for _ in range(n)])


def linear(group, out_spec, in_spec) -> TensorAction:
    rho_out, rho_in = _fields(group, out_spec), _fields(group, in_spec)
    return TensorAction((rho_out.dim, rho_in.dim), [(rho_out, 1), (rho_in, 1)])


def conv(group, out_spec, in_spec, k: int) -> TensorAction:
    rho_out, rho_in = _fields(group, out_spec), _fields(group, in_spec)
    grid = grid_representation(group, (k, k))
    return TensorAction((rho_out.dim, rho_in.dim, k, k), [(rho_out, 1), (rho_in, 1), (grid, 2)])


def bias(group, spec) -> TensorAction:
    rho = _fields(group, spec)
    return TensorAction((rho.dim,), [(rho, 1)])


C3, C4, C8, D4 = CyclicGroup(3), CyclicGroup(4), CyclicGroup(8), DihedralGroup(4)
T34, S4 = TorusTranslations((3, 4)), SymmetricGroup(4)

PERMUTATION_CASES = {
    "C4-linear-reg": linear(C4, [("regular", 3)], [("regular", 2)]),
    "C4-conv-mixed": conv(C4, [("regular", 2), ("trivial", 1)], [("trivial", 1), ("regular", 1)], 3),
    "C4-conv-k4": conv(C4, [("regular", 1)], [("trivial", 2)], 4),
    "C4-bias": bias(C4, [("regular", 2), ("trivial", 3)]),
    "D4-conv-reg": conv(D4, [("regular", 2)], [("trivial", 1), ("regular", 1)], 3),
    "D4-linear-mixed": linear(D4, [("trivial", 2), ("regular", 1)], [("regular", 1), ("trivial", 1)]),
    "D4-bias": bias(D4, [("regular", 1), ("trivial", 1)]),
    "C3-linear-mixed": linear(
        C3, [("regular", 2), ("trivial", 1), ("regular", 1)], [("trivial", 2), ("regular", 3)]
    ),
    "C3-bias": bias(C3, [("trivial", 1), ("regular", 2)]),
    "T3x4-image-map": TensorAction((3, 4, 3, 4), [(standard(T34), 2), (standard(T34), 2)]),
    "T3x4-channels": TensorAction((2, 3, 4), [(2 * trivial(T34), 1), (standard(T34), 2)]),
    "S4-set": TensorAction((4, 4), [(standard(S4), 1), (standard(S4), 1)]),
    "S4-pairs-to-set": TensorAction((4, 16), [(standard(S4), 1), (pair_representation(S4), 1)]),
    "S4-bias": TensorAction((4,), [(standard(S4), 1)]),
}

MATRIX_FINITE_CASES = {
    "C4-linear-irreps": linear(
        C4, [("irrep1", 2), ("trivial", 1)], [("trivial", 1), ("irrep1", 1), ("regular", 1)]
    ),
    "C4-conv-irreps": conv(C4, [("irrep1", 1)], [("trivial", 1), ("irrep1", 1)], 5),
    "C8-linear-irreps": linear(
        C8, [("irrep1", 1), ("irrep3", 1), ("trivial", 1)], [("irrep2", 1), ("irrep1", 2)]
    ),
    "C8-bias-irreps": bias(C8, [("irrep1", 1), ("trivial", 2), ("irrep3", 1)]),
    "D4-conv-standard": conv(D4, [("standard", 1), ("regular", 1)], [("standard", 1), ("sign", 1)], 3),
    "D4-linear-standard": linear(D4, [("standard", 2), ("sign", 1)], [("standard", 1), ("trivial", 1)]),
}

CONTINUOUS_CASES = {
    "SO2-irreps": linear(
        SO2(),
        [("trivial", 1), ("irrep1", 1), ("irrep2", 1), ("irrep3", 1)],
        [("irrep3", 1), ("irrep1", 2), ("trivial", 1), ("irrep2", 1)],
    ),
    "SO2-bias": bias(SO2(), [("irrep1", 1), ("trivial", 2)]),
    "O2-irreps": linear(
        O2(),
        [("trivial", 1), ("sign", 1), ("irrep1", 1), ("irrep2", 1)],
        [("irrep2", 1), ("irrep1", 1), ("sign", 1), ("trivial", 2)],
    ),
    "SO3-standard": linear(SO3(), [("standard", 2)], [("standard", 3), ("trivial", 1)]),
    "O3-standard": linear(O3(), [("standard", 1), ("trivial", 1)], [("standard", 2), ("trivial", 1)]),
    "O3-bias": bias(O3(), [("standard", 1), ("trivial", 1)]),
}

# dim E from theory: Hom_G(rho_in, rho_out) = sum over field pairs
#   SO2: trivial->trivial 1, irrep k -> irrep k 2, otherwise 0
#   O2:  trivial->trivial 1, sign->sign 1, irrep k -> irrep k 1, otherwise 0
#   SO3/O3: standard->standard 1 (the identity), trivial->trivial 1, otherwise 0
EXPECTED_CONTINUOUS_DIM = {
    "SO2-irreps": 1 * 1 + 2 * 2 + 2 + 2,  # trivial, irrep1 (x2 inputs), irrep2, irrep3
    "SO2-bias": 2,
    "O2-irreps": 1 * 2 + 1 + 1 + 1,  # trivial (x2 inputs), sign, irrep1, irrep2
    "SO3-standard": 2 * 3,
    "O3-standard": 1 * 2 + 1,
    "O3-bias": 1,
}

FINITE_CASES = {**PERMUTATION_CASES, **MATRIX_FINITE_CASES}
ALL_CASES = {**FINITE_CASES, **CONTINUOUS_CASES}


def _projector(kind: str, action: TensorAction):
    return OrbitMeanProjector(action) if kind == "orbit" else BasisProjector(action)


def _finite_params():
    out = [pytest.param("orbit", name, id=f"orbit-{name}") for name in PERMUTATION_CASES]
    return out + [pytest.param("basis", name, id=f"basis-{name}") for name in FINITE_CASES]


def _all_params():
    out = [pytest.param("orbit", name, id=f"orbit-{name}") for name in PERMUTATION_CASES]
    return out + [pytest.param("basis", name, id=f"basis-{name}") for name in ALL_CASES]


def _random(shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _test_elements(group, n: int = 24) -> torch.Tensor:
    """Every element of a finite group; Haar samples plus the discrete generators otherwise."""
    if group.is_finite:
        return group.elements()
    g = group.sample(n, generator=torch.Generator().manual_seed(7))
    try:
        return torch.cat([g, group.generators()])
    except NotImplementedError:
        return g


def _character_dim(action: TensorAction) -> int:
    """dim E = 1/|G| sum_g trace(rho_bar(g)) = 1/|G| sum_g prod_f trace(rho_f(g)): an independent count."""
    g = action.group.elements()
    chi = torch.ones(g.shape[0], **F64)
    for rep, _ in action.factors:
        chi = chi * rep(g).diagonal(dim1=-2, dim2=-1).sum(-1)
    return round(float(chi.mean()))


@pytest.mark.parametrize(("kind", "name"), _all_params())
def test_projector_is_the_orthogonal_projection_onto_fixed_points(kind, name):
    action = ALL_CASES[name]
    proj = _projector(kind, action)
    a, b = _random(action.shape, 0), _random(action.shape, 1)
    pa = proj.project(a)
    assert pa.shape == a.shape and pa.dtype == torch.float64
    torch.testing.assert_close(proj.project(pa), pa, rtol=0, atol=1e-12)  # idempotent
    lhs, rhs = (pa * b).sum(), (a * proj.project(b)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-11)  # self-adjoint
    g = _test_elements(action.group)
    moved = action.act(g, pa)
    torch.testing.assert_close(moved, pa.expand_as(moved), rtol=0, atol=1e-12)  # range in E
    assert torch.linalg.vector_norm(pa) > 1e-3 * torch.linalg.vector_norm(a) or proj.dim == 0


@pytest.mark.parametrize(("kind", "name"), _finite_params())
def test_projector_equals_group_average(kind, name):
    action = FINITE_CASES[name]
    proj = _projector(kind, action)
    w = _random(action.shape, 2)
    expected = group_average(action, w)
    torch.testing.assert_close(proj.project(w), expected, rtol=0, atol=1e-12)
    # an element of E is left unchanged
    torch.testing.assert_close(proj.project(expected), expected, rtol=0, atol=1e-12)
    assert proj.dim == _character_dim(action)


@pytest.mark.parametrize("name", list(CONTINUOUS_CASES))
def test_continuous_dim_and_basis(name):
    action = CONTINUOUS_CASES[name]
    proj = BasisProjector(action)
    assert proj.dim == EXPECTED_CONTINUOUS_DIM[name]
    assert sum(t.count * t.size for t in proj.types) == action.shape.numel()  # blocks tile the weight
    assert sum(t.count * t.rank for t in proj.types) == proj.dim
    basis = proj.basis()
    assert basis.shape == (action.shape.numel(), proj.dim)
    torch.testing.assert_close(basis.T @ basis, torch.eye(proj.dim, **F64), rtol=0, atol=1e-12)
    # each basis vector is fixed by the group, and fixed by the projector
    vecs = basis.T.reshape(proj.dim, *action.shape)
    for v in vecs:
        torch.testing.assert_close(proj.project(v), v, rtol=0, atol=1e-12)
    g = _test_elements(action.group)
    for v in vecs:
        moved = action.act(g, v)
        torch.testing.assert_close(moved, v.expand_as(moved), rtol=0, atol=1e-12)
    # ... and is annihilated by the Lie algebra acting on every factor
    _, lies = action.generators()
    for v in vecs:
        for i in range(lies[0].shape[0]):
            total = torch.zeros(action.factor_dims, **F64)
            w = v.reshape(action.factor_dims)
            for f, lie in enumerate(lies):
                total += torch.movedim(torch.tensordot(lie[i], w, dims=([1], [f])), 0, f)
            assert total.abs().max() < 1e-12
    # the dense basis projects like the block-wise projector
    w = _random(action.shape, 3)
    torch.testing.assert_close(
        proj.project(w).reshape(-1), basis @ (basis.T @ w.reshape(-1)), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("l", range(4))
def test_hom_dimensions_of_planar_irreps(k, l):
    assert equivariant_basis(irrep(SO2(), k), irrep(SO2(), l)).shape[1] == (
        0 if k != l else 1 if k == 0 else 2
    )
    assert equivariant_basis(irrep(O2(), k), irrep(O2(), l)).shape[1] == (1 if k == l else 0)


def test_hom_dimensions_of_sign_and_spatial_reps():
    assert equivariant_basis(sign(O2()), sign(O2())).shape[1] == 1
    assert equivariant_basis(sign(O2()), trivial(O2())).shape[1] == 0
    assert equivariant_basis(standard(SO3()), standard(SO3())).shape[1] == 1
    assert equivariant_basis(standard(SO3()), trivial(SO3())).shape[1] == 0
    assert equivariant_basis(standard(SO3())).shape[1] == 0
    assert equivariant_basis(trivial(SO3())).shape[1] == 1
    # SO(3) fixes the cross product (epsilon tensor) in std x std x std; O(3) does not (-I flips it)
    assert equivariant_basis(standard(SO3()), standard(SO3()), standard(SO3())).shape[1] == 1
    assert equivariant_basis(standard(O3()), standard(O3()), standard(O3())).shape[1] == 0


def test_regular_dense_layer_keeps_one_over_order():
    for group in (C4, D4, C3, C8):
        action = linear(group, [("regular", 3)], [("regular", 2)])
        full = action.shape.numel()
        assert OrbitMeanProjector(action).dim * group.order == full
        assert BasisProjector(action).dim * group.order == full


@pytest.mark.parametrize("name", list(PERMUTATION_CASES))
def test_basis_and_orbit_projectors_agree_on_permutation_actions(name):
    action = PERMUTATION_CASES[name]
    orbit, basis = OrbitMeanProjector(action), BasisProjector(action)
    assert orbit.dim == basis.dim
    w = _random(action.shape, 4)
    torch.testing.assert_close(orbit.project(w), basis.project(w), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["C4-conv-mixed", "T3x4-image-map", "S4-pairs-to-set", "D4-bias"])
def test_orbit_ids_are_the_orbits(name):
    action = PERMUTATION_CASES[name]
    src = action.index_permutation(action.group.elements())  # (|G|, P): the orbit of j is src[:, j]
    smallest = src.min(dim=0).values
    expected = torch.unique(smallest, return_inverse=True)[1]
    assert torch.equal(orbit_ids(action), expected)


def test_index_permutation_matches_dense_action():
    action = PERMUTATION_CASES["C4-conv-mixed"]
    w = _random(action.shape, 5)
    g = action.group.elements()
    dense = torch.stack(
        [
            torch.kron(torch.kron(r1, r2), r3)
            for r1, r2, r3 in zip(*[rep(g) for rep, _ in action.factors], strict=True)
        ]
    )
    torch.testing.assert_close(
        action.act(g, w).reshape(g.shape[0], -1), dense @ w.reshape(-1), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("orbit", "C4-conv-mixed"),
        ("orbit", "T3x4-image-map"),
        ("basis", "C4-conv-irreps"),
        ("basis", "SO2-irreps"),
        ("basis", "SO3-standard"),
        ("basis", "D4-conv-reg"),
    ],
)
def test_float32_in_float32_out(kind, name):
    action = ALL_CASES[name]
    proj = _projector(kind, action)
    w = _random(action.shape, 6)
    p32 = proj.project(w.float())
    assert p32.dtype == torch.float32
    p64 = proj.project(w)
    assert (p32.double() - p64).norm() <= 1e-6 * p64.norm()


def test_project_in_place_and_distance():
    action = PERMUTATION_CASES["C4-conv-mixed"]
    for proj in (OrbitMeanProjector(action), BasisProjector(action)):
        w = _random(action.shape, 8)
        expected = proj.project(w)
        torch.testing.assert_close(proj.distance(w), (w - expected).norm(), rtol=0, atol=1e-12)
        out = proj.project_(w)
        assert out is w
        torch.testing.assert_close(w, expected, rtol=0, atol=0)
        strided = _random((action.shape[1], action.shape[0], *action.shape[2:]), 9).transpose(0, 1)
        expected = proj.project(strided)
        torch.testing.assert_close(proj.project_(strided), expected, rtol=0, atol=0)


def test_orbit_projector_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match=r"index_permutation needs permutation .* \['irrep1'\] are not"):
        bias(C4, [("irrep1", 1)]).index_permutation(C4.generators())
    with pytest.raises(ValueError, match="permutation representations on every factor.*BasisProjector"):
        OrbitMeanProjector(linear(C4, [("irrep1", 1)], [("regular", 1)]))
    with pytest.raises(ValueError, match="needs a finite group, got SO2"):
        OrbitMeanProjector(bias(SO2(), [("trivial", 2)]))
    proj = OrbitMeanProjector(bias(C4, [("regular", 1)]))
    with pytest.raises(ValueError, match=r"shape \(5,\), but its projector was built for \(4,\)"):
        proj.project(torch.zeros(5))


def test_basis_projector_refuses_what_it_cannot_do():
    big = grid_representation(C4, (90, 90))  # one field of dimension 8100: 8100^2 > 50M entries
    with pytest.raises(ValueError, match="dense constraint .* exceeds .* Split the representation"):
        BasisProjector(TensorAction((90, 90), [(big, 2)]))
    no_lie = Representation(SO2(), 2, "nolie", lambda g: irrep(SO2(), 1)(g))
    with pytest.raises(ValueError, match="nolie of the continuous group SO2 has no Lie algebra"):
        BasisProjector(TensorAction((2,), [(no_lie, 1)]))
    many = 2000 * regular(C4)  # one field object repeated: solved once
    assert BasisProjector(TensorAction((many.dim,), [(many, 1)])).dim == 2000
    rows, cols = 1000 * trivial(C4), 60 * trivial(C4)
    wide_linear = BasisProjector(TensorAction((rows.dim, cols.dim), [(rows, 1), (cols, 1)]))
    with pytest.raises(ValueError, match="dense basis .* use project"):
        wide_linear.basis()


@pytest.mark.parametrize(
    "reps",
    [
        [regular(D4), trivial(D4), grid_representation(D4, (3, 3))],
        [regular(C4), regular(C4), grid_representation(C4, (2, 2))],
        [regular(C3), trivial(C3)],
        [standard(S4), pair_representation(S4)],
        [standard(T34), standard(T34)],
    ],
    ids=["D4-conv", "C4-conv", "C3-linear", "S4-pairs", "T3x4"],
)
def test_null_space_solve_agrees_with_orbit_indicators(reps):
    from lightning_equi.subspace.basis import _discrete_generators, _field, _null_space_basis, _orbit_basis

    fields = [_field(r, _discrete_generators(r.group)) for r in reps]
    by_orbits, by_solve = _orbit_basis(fields), _null_space_basis(fields)
    assert by_orbits.shape == by_solve.shape
    torch.testing.assert_close(by_orbits @ by_orbits.T, by_solve @ by_solve.T, rtol=0, atol=1e-12)


def test_components_match_a_plain_union_find():
    gen = torch.Generator().manual_seed(11)
    n, gens = 400, []
    for length in (60, 45, 30, 2):  # long cycles need many rounds of label propagation
        cycle = torch.randperm(n, generator=gen)[:length]
        src = torch.arange(n)
        src[cycle] = cycle.roll(1)
        gens.append(src)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for src in gens:
        for i, j in enumerate(src.tolist()):
            a, b = find(i), find(j)
            parent[max(a, b)] = min(a, b)
    roots = [find(i) for i in range(n)]
    order = {r: k for k, r in enumerate(dict.fromkeys(roots))}  # numbered by smallest member
    assert torch.equal(components(torch.stack(gens)), torch.tensor([order[r] for r in roots]))


@pytest.mark.parametrize("seed", range(6))
def test_blockwise_orbit_ids_match_label_propagation_on_the_whole_tensor(seed):
    """Orbits solved per type of block (mixed, interleaved fields) equal those of the whole index map."""
    rng = torch.Generator().manual_seed(seed)
    group = DihedralGroup(4) if seed % 2 else CyclicGroup(4)
    kinds = [trivial(group), regular(group)]

    def fields() -> Representation:
        picks = torch.randint(0, 2, (int(torch.randint(1, 5, (1,), generator=rng)),), generator=rng)
        return direct_sum([kinds[int(i)] for i in picks])

    rho_out, rho_in = fields(), fields()
    action = TensorAction(
        (rho_out.dim, rho_in.dim, 3, 3), [(rho_out, 1), (rho_in, 1), (grid_representation(group, (3, 3)), 2)]
    )
    expected = components(action.index_permutation(group.generators()))
    assert torch.equal(orbit_ids(action), expected)
    proj = OrbitMeanProjector(action)
    assert proj.dim == int(expected.max()) + 1
    w = _random(action.shape, seed)
    torch.testing.assert_close(proj.project(w), group_average(action, w), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Projector.orbit_constant: does an elementwise optimizer update of a projected tensor stay in E?


def _orbit_constant_cases():
    """name -> (projector, the lifted action it projects for, whether it keeps orbits bitwise)."""
    from lightning_equi.subspace.fourier import FourierProjector
    from lightning_equi.subspace.permutation import SymmetricProjector

    dense_t34 = TensorAction((24, 12), [(2 * regular(T34), 1), (regular(T34), 1)])
    bias_t34 = TensorAction((24,), [(2 * regular(T34), 1)])
    pairs = TensorAction((16, 16), [(pair_representation(S4), 1)] * 2)
    c8 = linear(C8, [("irrep1", 1), ("trivial", 1), ("irrep3", 1)], [("regular", 2)])
    c3 = linear(C3, [("regular", 1)], [("irrep1", 1), ("trivial", 1)])
    cases = {
        "orbit-mean-C4-conv": (OrbitMeanProjector, PERMUTATION_CASES["C4-conv-mixed"], True),
        "orbit-mean-D4-linear": (OrbitMeanProjector, PERMUTATION_CASES["D4-linear-mixed"], True),
        "closed-form-S4-pairs-to-set": (
            SymmetricProjector.from_action,
            PERMUTATION_CASES["S4-pairs-to-set"],
            True,
        ),
        "closed-form-S4-pairs": (SymmetricProjector.from_action, pairs, True),
        "fourier-reindex-T3x4": (FourierProjector.from_action, dense_t34, True),
        "fourier-fft-bias-T3x4": (lambda a: FourierProjector.from_action(a, method="fft"), bias_t34, True),
        # E is reached only up to rounding: not bitwise constant on the orbits of a permutation action
        "fourier-fft-T3x4": (lambda a: FourierProjector.from_action(a, method="fft"), dense_t34, False),
        # no orbits of entries: E mixes entries by irrational coefficients (cos 45 deg, cos 120 deg), so an
        # elementwise map leaves it (C4 irreps, D4 standard and SO2 irreps are signed permutations, whose
        # E an odd map such as Adam's keeps)
        "basis-C8-regular-to-irreps": (BasisProjector, c8, False),
        "basis-C3-irreps-to-regular": (BasisProjector, c3, False),
    }
    return {name: (make(action), action, keeps) for name, (make, action, keeps) in cases.items()}


ORBIT_CONSTANT_CASES = _orbit_constant_cases()


def _bitwise_orbit_constant(t: torch.Tensor, action: TensorAction) -> bool:
    """Whether every orbit of entries holds one value, bit for bit (min == max on each orbit)."""
    ids, flat = orbit_ids(action), t.reshape(-1)
    n = int(ids.max()) + 1
    lo = torch.full((n,), torch.inf, dtype=t.dtype).scatter_reduce(0, ids, flat, "amin")
    hi = torch.full((n,), -torch.inf, dtype=t.dtype).scatter_reduce(0, ids, flat, "amax")
    return torch.equal(lo, hi)


def _relative_distance(projector, t: torch.Tensor) -> float:
    t = t.double()
    return float((t - projector.project(t)).norm() / t.norm())


def _elementwise(p: torch.Tensor) -> torch.Tensor:
    """A nonlinear entrywise map, as Adam's update ``m / (sqrt(v) + eps)`` is."""
    return torch.sign(p) * p.abs().sqrt()


def test_projector_says_whether_it_keeps_orbits_bitwise():
    from lightning_equi.subspace.base import Projector
    from lightning_equi.subspace.fourier import FourierProjector
    from lightning_equi.subspace.permutation import SymmetricProjector

    assert Projector.orbit_constant is False  # the safe default for a new projector
    assert OrbitMeanProjector.orbit_constant and SymmetricProjector.orbit_constant
    assert BasisProjector.orbit_constant is False
    assert not FourierProjector((12, 12), grid=(3, 4), method="fft").orbit_constant
    assert FourierProjector((12, 12), grid=(3, 4)).orbit_constant
    # every projector of the package is measured below
    measured = {type(p) for p, _, _ in ORBIT_CONSTANT_CASES.values()}
    assert measured >= {OrbitMeanProjector, SymmetricProjector, FourierProjector, BasisProjector}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(ORBIT_CONSTANT_CASES))
def test_orbit_constant_agrees_with_an_elementwise_update(name, dtype):
    projector, action, expected = ORBIT_CONSTANT_CASES[name]
    assert projector.orbit_constant is expected
    q = _elementwise(projector.project(_random(projector.shape, 31, dtype)))
    if projector.orbit_constant:
        assert _bitwise_orbit_constant(q, action)
        assert _relative_distance(projector, q) < 1e-12  # still in E, to float64 rounding
    elif action.is_permutation:  # in E only up to rounding, which no longer holds bit for bit
        assert not _bitwise_orbit_constant(q, action)
    else:  # visibly out of E
        assert _relative_distance(projector, q) > 1e-2


@pytest.mark.parametrize("name", [n for n, (_, _, keeps) in ORBIT_CONSTANT_CASES.items() if keeps])
def test_adam_keeps_an_orbit_constant_parameter_in_E(name):
    projector, action, _ = ORBIT_CONSTANT_CASES[name]
    w = torch.nn.Parameter(projector.project(_random(projector.shape, 41)))
    opt = torch.optim.Adam([w], lr=0.1)
    for step in range(3):
        w.grad = projector.project(_random(projector.shape, 50 + step))
        opt.step()
    assert _bitwise_orbit_constant(w.detach(), action)
    assert _relative_distance(projector, w.detach()) < 1e-12


def test_adam_leaves_E_for_a_basis_projector_on_irreps():
    projector, _, _ = ORBIT_CONSTANT_CASES["basis-C8-regular-to-irreps"]
    w = torch.nn.Parameter(projector.project(_random(projector.shape, 41)))
    opt = torch.optim.Adam([w], lr=0.1)
    w.grad = projector.project(_random(projector.shape, 50))
    opt.step()
    assert _relative_distance(projector, w.detach()) > 1e-2
