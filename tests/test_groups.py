"""Group core: Haar sampling, reproducibility, group laws, element lists, names."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
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
    SymmetricGroup,
    TorusTranslations,
    get_group,
    make_generator,
)

FINITE = ["C1", "C4", "C7", "D1", "D4", "D6", "T3x5", "T28", "S1", "S4", "S5"]
CONTINUOUS = ["SO2", "O2", "SO3", "O3"]
ALL = FINITE + CONTINUOUS + ["S10", "T14x14"]
P_MIN = 1e-3  # fixed seeds: a test either always passes or always fails


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_in_group(G: Group, g: Tensor) -> None:
    """Each element of the batch ``g`` satisfies the constraints of its encoding."""
    G.check(g)
    if isinstance(G, CyclicGroup):
        assert g.dtype == torch.long and ((g >= 0) & (g < G.n)).all()
    elif isinstance(G, DihedralGroup):
        assert g.dtype == torch.long and ((g[:, 0] >= 0) & (g[:, 0] <= 1)).all()
        assert ((g[:, 1] >= 0) & (g[:, 1] < G.n)).all()
    elif isinstance(G, TorusTranslations):
        assert g.dtype == torch.long and ((g >= 0) & (g < torch.tensor(G.shape))).all()
    elif isinstance(G, SymmetricGroup):
        assert torch.equal(g.sort(dim=1).values, G.identity(g.shape[0]))
    elif isinstance(G, SO2):
        assert g.dtype == torch.float64 and ((g >= 0) & (g < 2 * math.pi)).all()
    elif isinstance(G, O2):
        assert g.dtype == torch.float64 and ((g[:, 0] == 0) | (g[:, 0] == 1)).all()
        assert ((g[:, 1] >= 0) & (g[:, 1] < 2 * math.pi)).all()
    elif isinstance(G, SO3):  # and O3
        eye = torch.eye(3, dtype=torch.float64).expand_as(g)
        assert g.dtype == torch.float64
        torch.testing.assert_close(g @ g.transpose(1, 2), eye, atol=1e-12, rtol=0)
        det = torch.linalg.det(g)
        if isinstance(G, O3):
            assert ((det - 1).abs() < 1e-12).logical_or((det + 1).abs() < 1e-12).all()
        else:
            assert ((det - 1).abs() < 1e-12).all()
    else:  # pragma: no cover
        raise AssertionError(f"no membership test for {G}")


# ----------------------------------------------------------------------------------------- Haar


@pytest.mark.slow
@pytest.mark.parametrize("name", ["C1", "C4", "C7", "D4", "D6", "T3x5", "S4"])
def test_finite_haar_is_uniform(name: str) -> None:
    G = get_group(name)
    g = G.sample(100_000, generator=gen(1))
    assert_in_group(G, g)
    counts = torch.bincount(G.index(g), minlength=G.order)
    assert counts.shape == (G.order,)
    if G.order == 1:
        assert counts.item() == 100_000
        return
    assert stats.chisquare(counts.numpy()).pvalue > P_MIN


def test_chisquare_rejects_a_biased_sampler() -> None:
    # The uniformity test above has power: a 1 % bias on one element of C4 is caught.
    counts = torch.bincount(CyclicGroup(4).sample(100_000, generator=gen(1)), minlength=4).numpy()
    counts[0] += 1000
    counts[1] -= 1000
    assert stats.chisquare(counts).pvalue < P_MIN


@pytest.mark.slow
def test_so2_haar() -> None:
    theta = SO2().sample(100_000, generator=gen(2))
    assert_in_group(SO2(), theta)
    assert stats.kstest(theta.numpy(), stats.uniform(0, 2 * math.pi).cdf).pvalue > P_MIN


@pytest.mark.slow
def test_o2_haar() -> None:
    g = O2().sample(100_000, generator=gen(3))
    assert_in_group(O2(), g)
    flips = int(g[:, 0].sum())
    assert stats.binomtest(flips, 100_000, 0.5).pvalue > P_MIN
    uniform = stats.uniform(0, 2 * math.pi).cdf
    for f in (0, 1):  # the angle is uniform given either value of the flip: independence too
        assert stats.kstest(g[g[:, 0] == f, 1].numpy(), uniform).pvalue > P_MIN


def _so3_statistics(R: Tensor) -> dict[str, Tensor]:
    return {"trace": R.diagonal(dim1=1, dim2=2).sum(-1), "r00": R[:, 0, 0], "r12": R[:, 1, 2]}


@pytest.mark.slow
@pytest.mark.parametrize("G", [SO3(), O3()], ids=["SO3", "O3"])
def test_so3_o3_haar_invariance(G: Group) -> None:
    n = 20_000
    g, g2, g3 = (G.sample(n, generator=gen(s)) for s in (4, 5, 6))
    h = G.sample(1, generator=gen(7)).expand(n, 3, 3)
    assert_in_group(G, g)
    right, left = G.compose(g2, h), G.compose(h, g3)  # g h and h g, independent of g
    for key, ref in _so3_statistics(g).items():
        assert stats.ks_2samp(ref.numpy(), _so3_statistics(right)[key].numpy()).pvalue > P_MIN, key
        assert stats.ks_2samp(ref.numpy(), _so3_statistics(left)[key].numpy()).pvalue > P_MIN, key
    det = torch.linalg.det(g)
    if isinstance(G, O3):
        assert stats.binomtest(int((det > 0).sum()), n, 0.5).pvalue > P_MIN
    else:
        torch.testing.assert_close(det, torch.ones(n, dtype=torch.float64), atol=1e-12, rtol=0)


def so3_marginal_pvalues(R: Tensor) -> list[float]:
    """KS p-values against Haar on SO(3): the rotation angle w has CDF (w - sin w) / pi, and every
    entry is uniform on [-1, 1] (a column is uniform on the sphere; Archimedes)."""
    trace = R.diagonal(dim1=1, dim2=2).sum(-1)
    w = torch.arccos(((trace - 1) / 2).clamp(-1, 1))
    angle_cdf = lambda x: (x - torch.sin(torch.as_tensor(x)).numpy()) / math.pi  # noqa: E731
    pvalues = [stats.kstest(w.numpy(), angle_cdf).pvalue]
    for i, j in [(0, 0), (1, 2), (2, 1)]:
        pvalues.append(stats.kstest(R[:, i, j].numpy(), stats.uniform(-1, 2).cdf).pvalue)
    return pvalues


@pytest.mark.slow
def test_so3_haar_known_marginals() -> None:
    assert min(so3_marginal_pvalues(SO3().sample(20_000, generator=gen(8)))) > P_MIN


def test_so3_marginals_reject_a_non_haar_sampler() -> None:
    # Power check: random rotations about the z axis only are not Haar on SO(3).
    theta = SO2().sample(5000, generator=gen(9))
    c, s, z, o = torch.cos(theta), torch.sin(theta), torch.zeros_like(theta), torch.ones_like(theta)
    R = torch.stack([c, -s, z, s, c, z, z, z, o], dim=1).reshape(-1, 3, 3)
    assert_in_group(SO3(), R)
    assert min(so3_marginal_pvalues(R)) < P_MIN


# -------------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("name", ALL)
def test_sampling_is_reproducible_and_resumable(name: str) -> None:
    G = get_group(name)
    a, b = G.sample(64, generator=gen(11)), G.sample(64, generator=gen(11))
    assert torch.equal(a, b)
    if G.order != 1:
        assert not torch.equal(a, G.sample(64, generator=gen(12)))
    g1 = make_generator(13)
    G.sample(5, generator=g1)
    state = g1.get_state()
    expected = torch.cat([G.sample(7, generator=g1), G.sample(9, generator=g1)])
    g2 = torch.Generator()
    g2.set_state(state)
    assert torch.equal(torch.cat([G.sample(7, generator=g2), G.sample(9, generator=g2)]), expected)


@pytest.mark.parametrize("name", ALL)
def test_sampling_devices(name: str) -> None:
    G = get_group(name)
    g = G.sample(16, generator=gen(14), device="cpu")
    assert g.device.type == "cpu" and g.shape == (16, *G.element_shape) and g.dtype == G.element_dtype
    assert_in_group(G, g)
    assert torch.equal(g, G.sample(16, generator=gen(14)))  # default device: the generator's
    meta = G.sample(16, generator=gen(14), device="meta")
    assert meta.device.type == "meta" and meta.shape == g.shape and meta.dtype == g.dtype
    assert_in_group(G, G.sample(3))  # global RNG


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ALL)
def test_sampling_on_cuda(name: str) -> None:
    G = get_group(name)
    # a CPU generator serves any device: same stream as on the CPU, then moved
    g = G.sample(16, generator=gen(15), device="cuda")
    assert g.device.type == "cuda" and torch.equal(g.cpu(), G.sample(16, generator=gen(15)))
    cuda_gen = torch.Generator(device="cuda").manual_seed(15)
    h = G.sample(16, generator=cuda_gen)  # default device: the generator's
    assert h.device.type == "cuda"
    assert_in_group(G, h.cpu())
    assert G.equal(G.compose(h, G.inverse(h)), G.identity(16, device="cuda")).all()


def test_make_generator_does_not_touch_the_global_rng() -> None:
    state = torch.get_rng_state()
    g1, g2 = make_generator(), make_generator()
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(torch.rand(8, generator=g1), torch.rand(8, generator=g2))
    assert torch.equal(torch.rand(4, generator=make_generator(5)), torch.rand(4, generator=gen(5)))


# -------------------------------------------------------------------------------------- group laws


@pytest.mark.parametrize("name", ALL)
def test_group_laws(name: str) -> None:
    G = get_group(name)
    a, b, c = (G.sample(200, generator=gen(s)) for s in (21, 22, 23))
    e = G.identity(200)
    assert_in_group(G, e)
    assert G.equal(G.compose(G.compose(a, b), c), G.compose(a, G.compose(b, c))).all()
    assert G.equal(G.compose(e, a), a).all() and G.equal(G.compose(a, e), a).all()
    assert G.equal(G.compose(a, G.inverse(a)), e).all() and G.equal(G.compose(G.inverse(a), a), e).all()
    assert_in_group(G, G.compose(a, b))
    assert_in_group(G, G.inverse(a))
    assert G.equal(a, a).all()
    if G.order != 1:
        assert not G.equal(a, b).all()


def test_inverse_of_a_tiny_angle_stays_in_range() -> None:
    # torch.remainder(-1e-20, 2 pi) rounds to exactly 2 pi; the encoding is [0, 2 pi).
    tiny = torch.tensor([1e-20, 0.0], dtype=torch.float64)
    assert_in_group(SO2(), SO2().inverse(tiny))
    assert_in_group(O2(), O2().inverse(torch.tensor([[0.0, 1e-20]], dtype=torch.float64)))
    assert_in_group(SO2(), SO2().compose(tiny, -tiny.flip(0)))


def closure(G: FiniteGroup, gens: Tensor) -> Tensor:
    """Indices of the subgroup generated by ``gens`` (breadth-first products)."""
    els = G.elements()
    seen = {int(G.index(G.identity(1)))}
    frontier = list(seen)
    while frontier:
        batch = els[torch.tensor(frontier)]
        new = []
        for s in gens:
            for i in G.index(G.compose(s.expand_as(batch), batch)).tolist():
                if i not in seen:
                    seen.add(i)
                    new.append(i)
        frontier = new
    return torch.tensor(sorted(seen))


@pytest.mark.parametrize("name", FINITE)
def test_finite_group_structure(name: str) -> None:
    G = get_group(name)
    els = G.elements()
    assert els.shape == (G.order, *G.element_shape) and G.is_finite
    assert torch.equal(G.index(els), torch.arange(G.order))
    assert_in_group(G, els)
    assert torch.equal(closure(G, G.generators()), torch.arange(G.order))
    table = G.cayley_table()
    full = torch.arange(G.order)
    assert torch.equal(table.sort(dim=0).values, full[:, None].expand_as(table))  # Latin square
    assert torch.equal(table.sort(dim=1).values, full[None, :].expand_as(table))
    assert int(table[G.index(G.identity(1))].ne(full).sum()) == 0  # identity row


def test_closure_detects_non_generating_sets() -> None:
    # the helper above can fail: r^2 alone generates only half of C4, a mirror alone 2 of D4
    assert closure(CyclicGroup(4), torch.tensor([2])).tolist() == [0, 2]
    assert len(closure(DihedralGroup(4), torch.tensor([[1, 0]]))) == 2


def test_element_conventions() -> None:
    D = DihedralGroup(4)
    r, s = torch.tensor([[0, 1]]), torch.tensor([[1, 0]])
    assert torch.equal(D.compose(r, s), torch.tensor([[1, 1]]))  # (f, k) = r^k s^f
    assert torch.equal(D.compose(s, r), torch.tensor([[1, 3]]))  # s r = r^-1 s
    S = SymmetricGroup(3)  # (a b)[i] = a[b[i]]: b first
    a, b = torch.tensor([[1, 2, 0]]), torch.tensor([[1, 0, 2]])
    assert torch.equal(S.compose(a, b), torch.tensor([[2, 1, 0]]))
    assert S.elements()[:3].tolist() == [[0, 1, 2], [0, 2, 1], [1, 0, 2]]  # lexicographic
    O = O2()
    g = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    assert O.equal(O.compose(g, g), O.identity(1)).all()  # every R(t) S is a mirror
    T = TorusTranslations((3, 4))
    assert T.elements()[:5].tolist() == [[0, 0], [0, 1], [0, 2], [0, 3], [1, 0]]  # row-major


def test_symmetric_group_refuses_to_list_large_groups() -> None:
    with pytest.raises(ValueError, match=r"S9 has 362880 elements; listing them is refused for n > 8"):
        SymmetricGroup(9).elements()
    assert SymmetricGroup(8).order == 40320
    G = SymmetricGroup(10)  # everything but the element list still works
    g = G.sample(4, generator=gen(31))
    assert_in_group(G, g)
    assert ((G.index(g) >= 0) & (G.index(g) < G.order)).all()
    assert torch.equal(G.index(G.identity(1)), torch.tensor([0]))
    assert int(G.index(G.identity(1).flip(1))) == math.factorial(10) - 1  # the last permutation


@pytest.mark.parametrize(
    "name, expected",
    [
        ("C4", "C4"),
        ("D4", "D4"),
        ("SO2", "SO2"),
        ("O2", "O2"),
        ("SO3", "SO3"),
        ("O3", "O3"),
        ("T14x14", "T14x14"),
        ("T28", "T28"),
        ("S10", "S10"),
        ("c4", "C4"),
        ("so(2)", "SO2"),
        ("t14X14", "T14x14"),
        (" s10 ", "S10"),
        ("o_3", "O3"),
    ],
)
def test_get_group_round_trips(name: str, expected: str) -> None:
    G = get_group(name)
    assert G.name == expected
    assert get_group(G.name) == G and get_group(G) is G and hash(get_group(expected)) == hash(G)


def test_get_group_types() -> None:
    assert isinstance(get_group("C4"), CyclicGroup) and get_group("C4").order == 4
    assert isinstance(get_group("D6"), DihedralGroup) and get_group("D6").order == 12
    assert get_group("T14x14").shape == (14, 14) and get_group("T28").shape == (28,)
    assert isinstance(get_group("S10"), SymmetricGroup) and get_group("S10").n == 10
    assert isinstance(get_group("O3"), O3) and not get_group("SO3").is_finite
    assert get_group("C4") != get_group("D4") and get_group("SO3") != get_group("O3")


@pytest.mark.parametrize("name", ["SO4", "C", "Z4", "T3y4", "", "rotations"])
def test_get_group_unknown_name(name: str) -> None:
    with pytest.raises(ValueError, match=r"unknown group name .*Valid names:\n(.|\n)*C<N>(.|\n)*S<n>"):
        get_group(name)


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: CyclicGroup(0), "CyclicGroup needs N >= 1"),
        (lambda: DihedralGroup(0), "DihedralGroup needs N >= 1"),
        (lambda: SymmetricGroup(0), "SymmetricGroup needs n >= 1"),
        (lambda: TorusTranslations((3, 0)), "TorusTranslations needs positive sizes"),
        (lambda: get_group("C0"), "CyclicGroup needs N >= 1"),
    ],
)
def test_invalid_group_sizes(factory, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


def test_check_reports_the_argument_and_expected_shape() -> None:
    with pytest.raises(
        ValueError, match=r"g has shape \(4,\), but a batch of D4 elements has shape \(B, 2\)"
    ):
        DihedralGroup(4).check(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x has shape \(\), .* C4 elements has shape \(B,\); add a batch"):
        CyclicGroup(4).check(torch.tensor(1), argument="x")
    with pytest.raises(
        ValueError, match=r"shape \(2, 3\), but a batch of SO3 elements has shape \(B, 3, 3\)"
    ):
        SO3().check(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="g must be a tensor of C4 elements, got list"):
        CyclicGroup(4).check([1, 2])


def test_continuous_groups_have_no_finite_generating_set() -> None:
    for G in (SO2(), SO3()):
        with pytest.raises(NotImplementedError, match="has no finite generating set"):
            G.generators()
        assert G.order is None and not G.is_finite
    # O(2), O(3): the finite part that, with the Lie algebra, generates the group
    assert O2().equal(O2().generators(), torch.tensor([[1.0, 0.0]], dtype=torch.float64)).all()
    assert torch.equal(O3().generators(), -torch.eye(3, dtype=torch.float64)[None])
