"""Representations: homomorphism, orthogonality, permutations, Lie algebras, grids, and escnn."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from lightning_equi.groups import (
    O2,
    O3,
    SO2,
    SO3,
    CyclicGroup,
    DihedralGroup,
    FiniteGroup,
    Group,
    Representation,
    SymmetricGroup,
    TorusTranslations,
    direct_sum,
    get_group,
    grid_representation,
    irrep,
    pair_representation,
    regular,
    sign,
    standard,
    trivial,
)

ATOL = 1e-12


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cases() -> dict[str, Representation]:
    C4, C7, D4, D6, S4, S10 = (get_group(n) for n in ("C4", "C7", "D4", "D6", "S4", "S10"))
    T, D2 = TorusTranslations((3, 5)), DihedralGroup(2)
    so2, o2, so3, o3 = SO2(), O2(), SO3(), O3()
    reps = [
        trivial(C4),
        regular(C4),
        standard(C4),
        regular(C7),
        irrep(C7, 2),
        irrep(C7, 3),
        regular(D4),
        standard(D4),
        sign(D4),
        regular(D6),
        irrep(D6, 2),
        regular(T),
        standard(T),
        regular(S4),
        standard(S4),
        sign(S4),
        pair_representation(S4),
        standard(S10),
        sign(S10),
        pair_representation(S10),
        grid_representation(C4, (4, 4)),
        grid_representation(D4, (5, 5)),
        grid_representation(D2, (3, 4)),
        grid_representation(CyclicGroup(2), (2, 5)),
        grid_representation(DihedralGroup(1), (3, 2)),
        trivial(so2),
        standard(so2),
        irrep(so2, 3),
        trivial(o2),
        standard(o2),
        irrep(o2, 2),
        sign(o2),
        trivial(so3),
        standard(so3),
        irrep(so3, 1),
        standard(o3),
        sign(o3),
        trivial(D4) + 2 * standard(D4) + sign(D4),
        regular(C4) + trivial(C4) * 2,
        trivial(so2) + irrep(so2, 2) + standard(so2),
        sign(o2) + standard(o2),
        standard(so3) + trivial(so3) + 3 * standard(so3),
        pair_representation(S4) + standard(S4),
    ]
    return {f"{r.group.name}-{r.name}-{i}": r for i, r in enumerate(reps)}


CASES = _cases()


@pytest.mark.parametrize("key", CASES)
def test_homomorphism_and_orthogonality(key: str) -> None:
    rho = CASES[key]
    G = rho.group
    a, b = G.sample(50, generator=gen(1)), G.sample(50, generator=gen(2))
    ra, rb = rho(a), rho(b)
    assert ra.shape == (50, rho.dim, rho.dim) and ra.dtype == torch.float64
    eye = torch.eye(rho.dim, dtype=torch.float64).expand(50, -1, -1)
    torch.testing.assert_close(rho(G.compose(a, b)), ra @ rb, atol=ATOL, rtol=0)
    torch.testing.assert_close(ra @ ra.transpose(1, 2), eye, atol=ATOL, rtol=0)
    torch.testing.assert_close(rho(G.inverse(a)), ra.transpose(1, 2), atol=ATOL, rtol=0)
    torch.testing.assert_close(rho(G.identity(50)), eye, atol=ATOL, rtol=0)
    assert rho(a, dtype=torch.float32).dtype == torch.float32
    assert rho.lie_algebra().shape[1:] == (rho.dim, rho.dim)


@pytest.mark.parametrize("key", [k for k, r in CASES.items() if r.is_permutation])
def test_permutation_agrees_with_matrices(key: str) -> None:
    rho = CASES[key]
    g = rho.group.sample(20, generator=gen(3))
    src = rho.permutation(g)
    assert src.shape == (20, rho.dim) and src.dtype == torch.long
    assert torch.equal(src.sort(dim=1).values, torch.arange(rho.dim).expand(20, -1))  # a bijection
    v = torch.randn(20, rho.dim, dtype=torch.float64)
    assert torch.equal((rho(g) @ v[:, :, None])[:, :, 0], torch.gather(v, 1, src))


def test_which_representations_are_permutations() -> None:
    C4, S4, so2 = CyclicGroup(4), SymmetricGroup(4), SO2()
    assert regular(C4).is_permutation and trivial(so2).is_permutation and standard(S4).is_permutation
    assert not standard(C4).is_permutation and not sign(S4).is_permutation
    assert (regular(C4) + trivial(C4)).is_permutation and not (regular(C4) + standard(C4)).is_permutation
    with pytest.raises(ValueError, match="representation standard of C4 is not a permutation representation"):
        standard(C4).permutation(C4.identity())


def test_regular_is_the_left_multiplication() -> None:
    for name in ("C5", "D3", "T2x3", "S3"):
        G = get_group(name)
        els = G.elements()
        rho = regular(G)
        for g in els:  # rho(g) e_h = e_{g h}
            images = (rho(g[None])[0] @ torch.eye(G.order, dtype=torch.float64)).argmax(dim=0)
            assert torch.equal(images, G.index(G.compose(g.expand_as(els), els)))


def test_regular_of_a_large_group_needs_no_cayley_table(monkeypatch) -> None:
    import lightning_equi.groups.representations as reps

    small = {name: regular(get_group(name)) for name in ("C7", "D5", "T3x4", "S4")}
    monkeypatch.setattr(reps, "_CAYLEY_CACHE_MAX", 1)  # every group is "large" now
    for name, cached in small.items():
        G = get_group(name)
        g = G.sample(9, generator=torch.Generator().manual_seed(0))
        assert torch.equal(regular(G).permutation(g), cached.permutation(g)), name
    monkeypatch.undo()
    T = TorusTranslations((64, 64))  # order 4096: a table would hold 16.8M indices
    monkeypatch.setattr(FiniteGroup, "cayley_table", lambda *a, **k: pytest.fail("built the Cayley table"))
    g = T.sample(3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(regular(T).permutation(g), standard(T).permutation(g), rtol=0, atol=0)


def test_specific_matrices() -> None:
    C4, D4, S3 = CyclicGroup(4), DihedralGroup(4), SymmetricGroup(3)
    quarter = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(standard(C4)(torch.tensor([1]))[0], quarter, atol=ATOL, rtol=0)
    mirror = torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # x -> -x
    assert torch.equal(standard(D4)(torch.tensor([[1, 0]]))[0], mirror)
    assert torch.equal(sign(D4)(D4.elements())[:, 0, 0], torch.tensor([1.0] * 4 + [-1.0] * 4).double())
    # (g x)[p[i]] = x[i]: the cycle 0 -> 1 -> 2 -> 0 moves x[0] to position 1
    x = torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64)
    assert standard(S3)(torch.tensor([[1, 2, 0]]))[0] @ x == pytest.approx([30.0, 10.0, 20.0])
    assert sign(S3)(S3.elements())[:, 0, 0].tolist() == [1, -1, -1, 1, 1, -1]
    A = torch.arange(9.0, dtype=torch.float64).reshape(3, 3)
    p = torch.tensor([[1, 2, 0]])
    gA = (pair_representation(S3)(p)[0] @ A.reshape(-1)).reshape(3, 3)
    assert torch.equal(gA[p[0][:, None], p[0][None, :]], A)  # (g A)[p_i, p_j] = A[i, j]
    T = TorusTranslations((3, 4))
    img = torch.arange(12.0, dtype=torch.float64).reshape(3, 4)
    shifted = (standard(T)(torch.tensor([[1, 2]]))[0] @ img.reshape(-1)).reshape(3, 4)
    assert torch.equal(shifted, torch.roll(img, (1, 2), dims=(0, 1)))
    assert torch.equal(standard(T)(T.elements()), regular(T)(T.elements()))


def test_direct_sums() -> None:
    D4 = DihedralGroup(4)
    parts = [trivial(D4), standard(D4), standard(D4), sign(D4)]
    rho = trivial(D4) + 2 * standard(D4) + sign(D4)
    assert rho.dim == 6 and [s.name for s in rho.summands] == [p.name for p in parts]
    assert [s.name for s in (standard(D4) * 3).summands] == ["standard"] * 3
    g = D4.elements()
    torch.testing.assert_close(
        rho(g), torch.stack([torch.block_diag(*[p(x[None])[0] for p in parts]) for x in g])
    )
    assert torch.equal(direct_sum(parts)(g), rho(g))
    perm = regular(D4) + trivial(D4)
    assert torch.equal(perm.permutation(g)[:, 8], torch.full((8,), 8))  # offsets
    with pytest.raises(ValueError, match="direct_sum needs at least one representation"):
        direct_sum([])
    with pytest.raises(ValueError, match="direct_sum needs at least one representation"):
        0 * standard(D4)
    with pytest.raises(TypeError, match="unsupported operand"):
        2.5 * standard(D4)
    with pytest.raises(ValueError, match="cannot sum representations of D4 and C4"):
        standard(D4) + standard(CyclicGroup(4))


@pytest.mark.parametrize(
    "factory, error, match",
    [
        (lambda: regular(SO2()), ValueError, "SO2 is continuous and has no finite regular representation"),
        (lambda: regular(SymmetricGroup(6)), ValueError, "regular representation of S6 has dimension 720"),
        (lambda: sign(CyclicGroup(4)), ValueError, "C4 has no sign representation"),
        (lambda: irrep(CyclicGroup(4), 2), ValueError, "frequency 2 of C4 is not a 2-dimensional irrep"),
        (lambda: irrep(DihedralGroup(6), 3), ValueError, r"needs 2k < 6"),
        (lambda: irrep(CyclicGroup(4), -1), ValueError, "frequency must be >= 0, got -1"),
        (lambda: irrep(SO3(), 2), ValueError, "irrep 2 of SO3 is not built in; build it with escnn"),
        (lambda: irrep(SymmetricGroup(4), 1), ValueError, "irrep 1 of S4 is not built in"),
        (lambda: standard(CyclicGroup(4))(torch.tensor(1)), ValueError, r"add a batch dimension"),
    ],
)
def test_representation_errors(factory, error, match: str) -> None:
    with pytest.raises(error, match=match):
        factory()


# ----------------------------------------------------------------------------------- Lie algebras


def _axis_rotation(axis: int, theta: Tensor) -> Tensor:
    """Rotation by ``theta`` about coordinate axis ``axis`` (right-handed), built by hand."""
    c, s = torch.cos(theta), torch.sin(theta)
    R = torch.eye(3, dtype=torch.float64).repeat(theta.shape[0], 1, 1)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    R[:, i, i], R[:, i, j], R[:, j, i], R[:, j, j] = c, -s, s, c
    return R


def _one_parameter_subgroup(G: Group, axis: int, theta: Tensor) -> Tensor:
    if isinstance(G, SO2):
        return theta % (2 * math.pi)
    if isinstance(G, O2):
        return torch.stack([torch.zeros_like(theta), theta % (2 * math.pi)], dim=1)
    return _axis_rotation(axis, theta)


@pytest.mark.parametrize("key", [k for k, r in CASES.items() if not r.group.is_finite])
def test_lie_algebra_generates_the_identity_component(key: str) -> None:
    rho = CASES[key]
    X = rho.lie_algebra()
    assert X.shape == (3 if isinstance(rho.group, SO3) else 1, rho.dim, rho.dim)
    torch.testing.assert_close(X, -X.transpose(1, 2), atol=0, rtol=0)  # orthogonal => antisymmetric
    theta = torch.tensor([0.3, -1.2, 2.5, 4.0], dtype=torch.float64)
    eps = torch.tensor([1e-5, -1e-5], dtype=torch.float64)
    for axis in range(X.shape[0]):
        curve = rho(_one_parameter_subgroup(rho.group, axis, theta))
        torch.testing.assert_close(
            torch.linalg.matrix_exp(theta[:, None, None] * X[axis]), curve, atol=ATOL, rtol=0
        )
        plus, minus = rho(_one_parameter_subgroup(rho.group, axis, eps))
        torch.testing.assert_close((plus - minus) / 2e-5, X[axis], atol=1e-9, rtol=0)  # d rho at 0


def test_lie_algebra_values_and_finite_groups() -> None:
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    assert torch.equal(irrep(SO2(), 3).lie_algebra()[0], 3 * J)
    assert torch.equal(sign(O2()).lie_algebra(), torch.zeros(1, 1, 1, dtype=torch.float64))
    assert regular(CyclicGroup(4)).lie_algebra().shape == (0, 4, 4)
    assert (standard(DihedralGroup(3)) + trivial(DihedralGroup(3))).lie_algebra().shape == (0, 3, 3)
    assert _axis_rotation(2, torch.tensor([math.pi / 2], dtype=torch.float64))[0].round().tolist() == [
        [0, -1, 0],
        [1, 0, 0],
        [0, 0, 1],
    ]


# ------------------------------------------------------------------------------------------- grids


@pytest.mark.parametrize("name, size", [("C4", (3, 3)), ("D4", (4, 4)), ("D2", (3, 5)), ("C2", (4, 3))])
def test_grid_representation_matches_rot90_and_flip(name: str, size: tuple[int, int]) -> None:
    G = get_group(name)
    rho = grid_representation(G, size)
    img = torch.arange(size[0] * size[1], dtype=torch.float64).reshape(size)
    quarter = 4 // G.n
    for g in G.elements():
        f, k = (int(g[0]), int(g[1])) if isinstance(G, DihedralGroup) else (0, int(g))
        expected = torch.rot90(torch.flip(img, (-1,)) if f else img, k * quarter, dims=(-2, -1))
        out = (rho(g[None])[0] @ img.reshape(-1)).reshape(size)
        assert torch.equal(out, expected), g
        assert torch.equal(img.reshape(-1)[rho.permutation(g[None])[0]].reshape(size), expected)


@pytest.mark.parametrize("name, size", [("C4", (5, 5)), ("D4", (4, 4)), ("D2", (3, 4)), ("D1", (2, 5))])
def test_grid_representation_is_the_geometric_action(name: str, size: tuple[int, int]) -> None:
    # (rho(g) K)[p] = K[g^-1 p] with g acting on pixel centres by standard(G), x right and y up
    G = get_group(name)
    h, w = size
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    xy = torch.stack([cols - (w - 1) / 2, (h - 1) / 2 - rows], dim=-1).reshape(-1, 2).double()
    els = G.elements()
    # C_N with N < 4 rotates by 4 // N quarter turns; standard(C_N) rotates by 2 pi / N: the same
    R = standard(G)(els)
    src_xy = torch.einsum("bji,pj->bpi", R, xy)  # R^T p = g^-1 p
    src_col = (src_xy[..., 0] + (w - 1) / 2).round().long()
    src_row = ((h - 1) / 2 - src_xy[..., 1]).round().long()
    assert torch.equal(grid_representation(G, size).permutation(els), src_row * w + src_col)


@pytest.mark.parametrize(
    "name, size, match",
    [
        ("C8", (3, 3), "C8 does not act exactly on a pixel grid: only C1, C2, C4, D1, D2, D4"),
        ("D8", (5, 5), "D8 does not act exactly on a pixel grid"),
        ("SO2", (3, 3), "SO2 does not act exactly on a pixel grid"),
        ("O2", (3, 3), "O2 does not act exactly"),
        ("C3", (3, 3), "C3 does not act exactly"),
        ("C4", (3, 5), "C4 rotates by 90 degrees, which needs a square grid; got 3x5"),
        ("D4", (4, 2), "D4 rotates by 90 degrees, which needs a square grid; got 4x2"),
    ],
)
def test_grid_representation_errors(name: str, size: tuple[int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        grid_representation(get_group(name), size)


# ------------------------------------------------------------------------------------------ escnn


@pytest.fixture(scope="module")
def escnn_group():
    """escnn's ``escnn.group`` module (imported once: it takes a few seconds)."""
    return pytest.importorskip("escnn.group")


def _to_escnn(G: Group, eg, g: Tensor):
    """Our element ``g`` (unbatched) as an element of ``eg``, escnn's version of ``G``."""
    if isinstance(G, CyclicGroup):
        return eg.element(int(g))
    if isinstance(G, DihedralGroup):
        return eg.element((int(g[0]), int(g[1])))
    if isinstance(G, SO2):
        return eg.element(float(g))
    return eg.element((int(g[0]), float(g[1])))  # O2


def _escnn_version(G: Group, escnn_group):
    if isinstance(G, CyclicGroup):
        return escnn_group.cyclic_group(G.n)
    if isinstance(G, DihedralGroup):
        return escnn_group.dihedral_group(G.n)
    return escnn_group.so2_group() if isinstance(G, SO2) else escnn_group.o2_group()


@pytest.mark.escnn
@pytest.mark.parametrize("name", ["C4", "C8", "D4", "D6"])
def test_regular_representation_and_law_match_escnn(name: str, escnn_group) -> None:
    G = get_group(name)
    eg = _escnn_version(G, escnn_group)
    els = G.elements()
    mapped = [_to_escnn(G, eg, g) for g in els]
    assert mapped == list(eg.elements)  # same element order
    ours = regular(G)(els).numpy()
    for i, e in enumerate(mapped):
        theirs = eg.regular_representation(e)
        assert abs(theirs - ours[i]).max() < ATOL and (theirs.round() == ours[i]).all()
    n = G.order
    a, b = els.repeat_interleave(n, dim=0), els.repeat(n, *([1] * (els.dim() - 1)))
    products = G.compose(a, b)
    for x, y, xy in zip(a, b, products, strict=True):
        assert _to_escnn(G, eg, x) @ _to_escnn(G, eg, y) == _to_escnn(G, eg, xy)
    for x in els:
        assert _to_escnn(G, eg, G.inverse(x[None])[0]) == ~_to_escnn(G, eg, x)


@pytest.mark.escnn
@pytest.mark.parametrize("name, k", [("C4", 1), ("C8", 1), ("C8", 3), ("C7", 2), ("SO2", 1), ("SO2", 3)])
def test_rotation_irreps_match_escnn(name: str, k: int, escnn_group) -> None:
    G = get_group(name)
    eg = _escnn_version(G, escnn_group)
    g = G.elements() if G.is_finite else G.sample(20, generator=gen(5))
    ours = (standard(G) if k == 1 else irrep(G, k))(g).numpy()
    theirs = [eg.irrep(k)(_to_escnn(G, eg, x)) for x in g]
    for o, t in zip(ours, theirs, strict=True):
        assert abs(o - t).max() < ATOL


@pytest.mark.escnn
@pytest.mark.parametrize("name, k", [("D4", 1), ("D6", 1), ("D6", 2), ("D7", 3), ("O2", 1), ("O2", 2)])
def test_mirror_irreps_are_escnn_conjugated_by_a_quarter_turn(name: str, k: int, escnn_group) -> None:
    # Our mirror is diag(-1, 1) (x -> -x), escnn's irrep(1, k) uses diag(1, -1): Q = R(pi / 2).
    G = get_group(name)
    eg = _escnn_version(G, escnn_group)
    g = G.elements() if G.is_finite else G.sample(20, generator=gen(6))
    Q = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64).numpy()
    ours = (standard(G) if k == 1 else irrep(G, k))(g).numpy()
    signs = sign(G)(g).numpy()
    for x, o, s in zip(g, ours, signs, strict=True):
        e = _to_escnn(G, eg, x)
        assert abs(o - Q @ eg.irrep(1, k)(e) @ Q.T).max() < ATOL
        assert abs(s - eg.irrep(1, 0)(e)).max() < ATOL  # sign = escnn's (1, 0)
    # and they are not simply equal: the change of basis is needed
    mirror = G.generators()[-1:]  # (1, 0) for D_N and O(2)
    ours_mirror = (standard(G) if k == 1 else irrep(G, k))(mirror).numpy()[0]
    assert abs(ours_mirror - eg.irrep(1, k)(_to_escnn(G, eg, mirror[0]))).max() == pytest.approx(2.0)


@pytest.mark.escnn
def test_grid_representation_matches_escnn_transform(escnn_group) -> None:
    from escnn import gspaces
    from escnn import nn as enn

    gs = gspaces.flipRot2dOnR2(4)
    field = enn.FieldType(gs, [gs.trivial_repr])
    img = torch.randn(1, 1, 5, 5)
    D4 = DihedralGroup(4)
    rho = grid_representation(D4, (5, 5))
    for g in D4.elements():
        theirs = enn.GeometricTensor(img, field).transform(_to_escnn(D4, gs.fibergroup, g)).tensor
        ours = img.reshape(-1)[rho.permutation(g[None])[0]].reshape(1, 1, 5, 5)
        assert torch.equal(theirs, ours), g


def test_representations_pickle_and_deepcopy():
    """Callbacks and DataLoader workers pickle actions, which hold representations."""
    import copy
    import pickle

    from lightning_equi.groups import direct_sum, get_group, grid_representation, irrep, regular, standard

    D4, S = get_group("D4"), get_group("SO2")
    for rep in [
        3 * regular(D4) + standard(D4),
        grid_representation(D4, (3, 3)),
        direct_sum([irrep(S, 2)] * 2),
    ]:
        g = rep.group.sample(6, generator=torch.Generator().manual_seed(1))
        for clone in (pickle.loads(pickle.dumps(rep)), copy.deepcopy(rep)):
            assert torch.equal(clone(g), rep(g))
            assert clone.dim == rep.dim and [s.name for s in clone.summands] == [s.name for s in rep.summands]
            assert torch.equal(clone.lie_algebra(), rep.lie_algebra())
