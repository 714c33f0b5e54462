"""FourierProjector (torus translations) and SymmetricProjector (S_n), checked exactly in float64."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lightning_equi.groups import (
    CyclicGroup,
    SymmetricGroup,
    TorusTranslations,
    pair_representation,
    regular,
    standard,
    trivial,
)
from lightning_equi.subspace.base import Projector, TensorAction, group_average
from lightning_equi.subspace.fourier import FourierProjector
from lightning_equi.subspace.permutation import SymmetricProjector, set_partitions

F64 = torch.float64


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum()


def _check_orthogonal_projection(proj: Projector, action: TensorAction, elements: torch.Tensor) -> None:
    """Idempotent, self-adjoint, and its range is fixed by ``elements``."""
    w, v = torch.randn(proj.shape, dtype=F64), torch.randn(proj.shape, dtype=F64)
    pw = proj.project(w)
    torch.testing.assert_close(proj.project(pw), pw, rtol=0, atol=1e-12)
    torch.testing.assert_close(_inner(pw, v), _inner(w, proj.project(v)), rtol=1e-12, atol=1e-12)
    moved = action.act(elements, pw)
    torch.testing.assert_close(moved, pw.expand_as(moved), rtol=0, atol=1e-12)


def _trace(proj: Projector) -> float:
    """``tr Pi_E = dim E`` for an orthogonal projection, from the projections of the unit tensors."""
    eye = torch.eye(math.prod(proj.shape), dtype=F64)
    return sum(float(proj.project(e.reshape(proj.shape)).reshape(-1)[i]) for i, e in enumerate(eye))


# ---------------------------------------------------------------------------------------------- torus


def _torus_action(grid, c_in, c_out, bias=False) -> TensorAction:
    G = TorusTranslations(grid)
    P = G.order
    if bias:
        return TensorAction((c_out * P,), [(c_out * regular(G), 1)])
    return TensorAction((c_out * P, c_in * P), [(c_out * standard(G), 1), (c_in * standard(G), 1)])


def _subgroup_average(action: TensorAction, w: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Mean of ``rho_bar(t) w`` over the shifts ``t`` that are zero off ``dims`` (the reference)."""
    els = action.group.elements()
    off = [d for d in range(els.shape[1]) if d not in dims]
    sub = els[(els[:, off] == 0).all(dim=1)]
    return action.act(sub, w).mean(0)


def _circular_convolution(grid, c_in, c_out) -> torch.Tensor:
    """A random element of E built directly: ``W[co, p, ci, q] = K[co, ci, p - q mod grid]``."""
    G = TorusTranslations(grid)
    pos = G.elements()
    diff = G.index((pos[:, None, :] - pos[None, :, :]).reshape(-1, len(grid))).reshape(G.order, G.order)
    kernel = torch.randn(c_out, c_in, G.order, dtype=F64)
    w = kernel[:, :, diff]  # (co, ci, p, q)
    return w.permute(0, 2, 1, 3).reshape(c_out * G.order, c_in * G.order)


@pytest.mark.parametrize("method", ["reindex", "fft"])
@pytest.mark.parametrize(("grid", "c_in", "c_out"), [((5,), 1, 1), ((3, 4), 2, 3), ((2, 3, 2), 1, 2)])
def test_fourier_equals_group_average(grid, c_in, c_out, method):
    for bias in (False, True):
        action = _torus_action(grid, c_in, c_out, bias)
        proj = FourierProjector.from_action(action, method=method)
        assert proj is not None and proj.kind == "fourier" and proj.exact
        w = torch.randn(action.shape, dtype=F64)
        torch.testing.assert_close(proj.project(w), group_average(action, w), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["reindex", "fft"])
@pytest.mark.parametrize(
    ("grid", "dims"), [((3, 4), (1,)), ((3, 4), (0,)), ((2, 3, 2), (0, 2)), ((4, 3), (0,))]
)
def test_fourier_subgroup_of_axes(grid, dims, method):
    """Translations along some axes only (the paper's row-wise case): average over that subgroup."""
    for bias in (False, True):
        c_in = 1 if bias else 2
        action = _torus_action(grid, c_in, 2, bias)
        proj = FourierProjector(action.shape, grid, c_in, 2, dims=dims, method=method)
        w = torch.randn(action.shape, dtype=F64)
        torch.testing.assert_close(proj.project(w), _subgroup_average(action, w, dims), rtol=0, atol=1e-12)
        if method == "reindex":  # the trace takes one projection per entry
            assert proj.dim == pytest.approx(_trace(proj), abs=1e-9)


@pytest.mark.parametrize("method", ["reindex", "fft"])
def test_fourier_is_orthogonal_projection_onto_fixed_points(method):
    grid, c_in, c_out = (3, 5), 2, 2
    action = _torus_action(grid, c_in, c_out)
    proj = FourierProjector.from_action(action, method=method)
    G = action.group
    elements = torch.cat([G.generators(), G.sample(4, generator=torch.Generator().manual_seed(1))])
    _check_orthogonal_projection(proj, action, elements)
    conv = _circular_convolution(grid, c_in, c_out)
    torch.testing.assert_close(proj.project(conv), conv, rtol=0, atol=1e-12)


def test_fourier_dim_of_single_channel_torus_map():
    proj = FourierProjector((12, 12), grid=(3, 4))
    assert proj.dim == 3 * 4 == pytest.approx(_trace(proj), abs=1e-9)
    two = FourierProjector((2 * 12, 3 * 12), grid=(3, 4), in_channels=3, out_channels=2)
    assert two.dim == 2 * 3 * 12 == pytest.approx(_trace(two), abs=1e-9)
    bias = FourierProjector((2 * 12,), grid=(3, 4), out_channels=2)
    assert bias.dim == 2 == pytest.approx(_trace(bias), abs=1e-9)


@pytest.mark.parametrize("dims", [None, (0,), (1,)])
def test_fourier_fft_formula_equals_diagonal_average(dims):
    shape, grid = (3 * 30, 2 * 30), (6, 5)
    fast = FourierProjector(shape, grid, 2, 3, dims=dims, method="reindex")
    paper = FourierProjector(shape, grid, 2, 3, dims=dims, method="fft")
    w = torch.randn(shape, dtype=F64)
    torch.testing.assert_close(paper.project(w), fast.project(w), rtol=0, atol=1e-12)


def test_fourier_paper_formula_with_dense_dft():
    """``F^* diag(F A F^*) F`` with an explicit unitary DFT matrix on the flattened 3 x 4 grid."""
    grid = (3, 4)
    proj = FourierProjector((12, 12), grid)
    dft = [torch.fft.fft(torch.eye(n, dtype=torch.complex128), norm="ortho") for n in grid]
    F = torch.kron(dft[0], dft[1])  # row-major flattening: the DFT of the grid is the Kronecker product
    a = torch.randn(12, 12, dtype=F64)
    fa = F @ a.to(F.dtype) @ F.conj().T
    expected = (F.conj().T @ torch.diag(torch.diagonal(fa)) @ F).real
    torch.testing.assert_close(proj.project(a), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["reindex", "fft"])
def test_fourier_float32_and_in_place(method):
    proj = FourierProjector((2 * 20, 2 * 20), grid=(4, 5), in_channels=2, out_channels=2, method=method)
    w = torch.randn(proj.shape)
    out = proj.project(w)
    assert out.dtype == torch.float32 and out.shape == w.shape
    torch.testing.assert_close(out, proj.project(w.double()).float(), rtol=1e-5, atol=1e-6)
    proj.project_(w)
    torch.testing.assert_close(w, out)
    assert float(proj.distance(w)) < 1e-5
    transposed = torch.randn(proj.shape[::-1]).T  # a non-contiguous parameter view
    torch.testing.assert_close(proj.project(transposed), proj.project(transposed.contiguous()))


def test_fourier_from_action_rejects_other_actions():
    G = TorusTranslations((3, 4))
    invariant = TensorAction((2, 12), [(2 * trivial(G), 1), (regular(G), 1)])
    assert FourierProjector.from_action(invariant) is None
    mixed = TensorAction((24, 12), [(regular(G) + 12 * trivial(G), 1), (regular(G), 1)])
    assert FourierProjector.from_action(mixed) is None
    C = CyclicGroup(4)
    assert FourierProjector.from_action(TensorAction((8, 4), [(2 * regular(C), 1), (regular(C), 1)])) is None
    split = TensorAction((12, 3, 4), [(regular(G), 1), (regular(G), 2)])
    assert FourierProjector.from_action(split) is None


def test_fourier_bad_inputs():
    with pytest.raises(ValueError, match="has shape \\(24, 12\\)"):
        FourierProjector((24, 24), grid=(3, 4), in_channels=1, out_channels=2)
    with pytest.raises(ValueError, match="in_channels=1"):
        FourierProjector((24,), grid=(3, 4), in_channels=2, out_channels=2)
    with pytest.raises(ValueError, match="dims must be distinct grid axes"):
        FourierProjector((12, 12), grid=(3, 4), dims=(2,))
    with pytest.raises(ValueError, match="dims must be distinct grid axes"):
        FourierProjector((12, 12), grid=(3, 4), dims=(1, 1))
    with pytest.raises(ValueError, match="grid must be"):
        FourierProjector((12, 12), grid=(0, 4))
    with pytest.raises(ValueError, match="method must be"):
        FourierProjector((12, 12), grid=(3, 4), method="dft")
    with pytest.raises(ValueError, match="shape must be"):
        FourierProjector((12, 12, 1), grid=(3, 4))
    with pytest.raises(ValueError, match="projector was built for"):
        FourierProjector((12, 12), grid=(3, 4)).project(torch.randn(12, 13))


# ---------------------------------------------------------------------------------------------- S_n


def _set_action(n: int, out_order: int, in_order: int, c_out: int, c_in: int, bias=False) -> TensorAction:
    G = SymmetricGroup(n)
    reps = {0: trivial(G), 1: standard(G), 2: pair_representation(G)}
    if bias:
        return TensorAction((c_out * n**out_order,), [(c_out * reps[out_order], 1)])
    shape = (c_out * n**out_order, c_in * n**in_order)
    return TensorAction(shape, [(c_out * reps[out_order], 1), (c_in * reps[in_order], 1)])


def _pattern_labels(n: int, r: int) -> torch.Tensor:
    """Equality pattern of every index tuple in ``[n]^r`` as an integer (independent of the projector)."""
    if r == 0:
        return torch.zeros(1, dtype=torch.long)
    tuples = torch.tensor(list(itertools.product(range(n), repeat=r)), dtype=torch.long)
    code = torch.zeros(tuples.shape[0], dtype=torch.long)
    for a, b in itertools.combinations(range(r), 2):
        code = code * 2 + (tuples[:, a] == tuples[:, b]).long()
    return torch.unique(code, return_inverse=True)[1]


def _random_equivariant(n, out_order, in_order, c_out, c_in) -> torch.Tensor:
    """A random element of E: per channel pair, random constants on the equality patterns."""
    labels = _pattern_labels(n, out_order + in_order).reshape(n**out_order, n**in_order)
    values = torch.randn(c_out, c_in, int(labels.max()) + 1, dtype=F64)
    w = values[:, :, labels]  # (co, ci, out index, in index)
    return w.permute(0, 2, 1, 3).reshape(c_out * n**out_order, c_in * n**in_order)


ORDERS = list(itertools.product(range(3), range(3)))


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_symmetric_equals_group_average(n):
    for out_order, in_order in ORDERS:
        action = _set_action(n, out_order, in_order, 2, 3)
        proj = SymmetricProjector.from_action(action)
        assert proj is not None
        w = torch.randn(action.shape, dtype=F64)
        torch.testing.assert_close(proj.project(w), group_average(action, w), rtol=0, atol=1e-12)
    for order in (1, 2):
        action = _set_action(n, order, 0, 3, 1, bias=True)
        proj = SymmetricProjector.from_action(action)
        w = torch.randn(action.shape, dtype=F64)
        torch.testing.assert_close(proj.project(w), group_average(action, w), rtol=0, atol=1e-12)


# Bell numbers B(out_order + in_order): the Maron et al. counts for n >= out_order + in_order.
BELL = {0: 1, 1: 1, 2: 2, 3: 5, 4: 15}


@pytest.mark.parametrize("n", [4, 5])
def test_symmetric_dims_match_maron(n):
    expected = {(1, 1): 2, (2, 2): 15, (0, 2): 2, (0, 1): 1, (1, 0): 1, (2, 0): 2, (2, 1): 5, (1, 2): 5}
    for (out_order, in_order), count in expected.items():
        proj = SymmetricProjector((2 * n**out_order, 3 * n**in_order), n, in_order, out_order, 3, 2)
        assert proj.dim == 6 * count == 6 * BELL[out_order + in_order]
    assert [len(set_partitions(r)) for r in range(5)] == [BELL[r] for r in range(5)]


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_symmetric_dims_small_n_equal_trace_and_pattern_count(n):
    for out_order, in_order in ORDERS:
        proj = SymmetricProjector((n**out_order, n**in_order), n, in_order, out_order)
        patterns = int(_pattern_labels(n, out_order + in_order).max()) + 1
        assert proj.dim == patterns == pytest.approx(_trace(proj), abs=1e-9)
    # Stirling: partitions of 4 positions into <= n blocks.
    assert SymmetricProjector((n * n, n * n), n, 2, 2).dim == {1: 1, 2: 8, 3: 14, 4: 15}[n]


@pytest.mark.parametrize("n", [5, 7])
def test_symmetric_is_orthogonal_projection_onto_fixed_points(n):
    G = SymmetricGroup(n)
    elements = torch.cat([G.generators(), G.sample(3, generator=torch.Generator().manual_seed(2))])
    for out_order, in_order in ORDERS:
        action = _set_action(n, out_order, in_order, 2, 2)
        proj = SymmetricProjector.from_action(action)
        _check_orthogonal_projection(proj, action, elements)
        w = _random_equivariant(n, out_order, in_order, 2, 2)
        torch.testing.assert_close(proj.project(w), w, rtol=0, atol=1e-12)


def test_symmetric_set_layer_is_identity_plus_all_ones():
    """R^n -> R^n: the projection of W is a I + b 11^T with a, b the means on and off the diagonal."""
    n = 6
    proj = SymmetricProjector((n, n), n, 1, 1)
    w = torch.randn(n, n, dtype=F64)
    on, off = torch.diagonal(w).mean(), (w.sum() - torch.diagonal(w).sum()) / (n * n - n)
    expected = off * torch.ones(n, n, dtype=F64) + (on - off) * torch.eye(n, dtype=F64)
    torch.testing.assert_close(proj.project(w), expected, rtol=0, atol=1e-12)


def test_symmetric_float32_and_in_place():
    n = 6
    proj = SymmetricProjector((4 * n * n, 3 * n * n), n, 2, 2, 3, 4)
    w = torch.randn(proj.shape)
    out = proj.project(w)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, proj.project(w.double()).float(), rtol=1e-5, atol=1e-6)
    proj.project_(w)
    torch.testing.assert_close(w, out)
    transposed = torch.randn(proj.shape[::-1]).T  # a non-contiguous parameter view
    torch.testing.assert_close(proj.project(transposed), proj.project(transposed.contiguous()))


def test_symmetric_from_action_rejects_other_actions():
    G = SymmetricGroup(3)
    mixed = TensorAction((4, 3), [(standard(G) + trivial(G), 1), (standard(G), 1)])
    assert SymmetricProjector.from_action(mixed) is None
    reg = TensorAction((6, 3), [(regular(G), 1), (standard(G), 1)])
    assert SymmetricProjector.from_action(reg) is None
    T = TorusTranslations((3,))
    assert SymmetricProjector.from_action(TensorAction((3, 3), [(regular(T), 1), (regular(T), 1)])) is None
    # n copies of standard is not pair_representation, although both have dimension n^2.
    copies = TensorAction((9, 9), [(3 * standard(G), 1), (pair_representation(G), 1)])
    proj = SymmetricProjector.from_action(copies)
    assert (proj.out_order, proj.out_channels, proj.in_order) == (1, 3, 2)


def test_symmetric_bad_inputs():
    with pytest.raises(ValueError, match="has shape \\(8, 48\\)"):
        SymmetricProjector((8, 47), 4, 2, 1, 3, 2)
    with pytest.raises(ValueError, match="in_order and out_order must be 0, 1 or 2"):
        SymmetricProjector((4, 64), 4, 3, 1)
    with pytest.raises(ValueError, match="in_order=0 and in_channels=1"):
        SymmetricProjector((4,), 4, 1, 1)
    with pytest.raises(ValueError, match="n must be >= 1"):
        SymmetricProjector((1, 1), 0, 0, 0)
    with pytest.raises(ValueError, match="projector was built for"):
        SymmetricProjector((4, 4), 4, 1, 1).project(torch.randn(4, 5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_rounds_the_float32_projection(dtype):
    projectors = [
        FourierProjector((24, 24), (4, 3), 2, 2),
        FourierProjector((24, 24), (4, 3), 2, 2, method="fft"),
        SymmetricProjector((32, 48), 4, 2, 2, 3, 2),
    ]
    for proj in projectors:
        w = torch.randn(proj.shape).to(dtype)
        out = proj.project(w)
        assert out.dtype == dtype
        torch.testing.assert_close(out, proj.project(w.float()).to(dtype), rtol=0, atol=0)


def test_symmetric_in_place_writes_the_same_projection():
    for out_order, in_order in ORDERS:
        proj = SymmetricProjector.from_action(_set_action(4, out_order, in_order, 2, 3))
        w = torch.randn(proj.shape, dtype=F64)
        expected = proj.project(w)
        assert proj.project_(w) is w
        torch.testing.assert_close(w, expected, rtol=0, atol=0)
