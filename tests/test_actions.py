"""Actions of group elements on data: conventions, homomorphism, inverses, containers, refusals."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
from collections import namedtuple

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_equi.actions import (
    BatchAction,
    FiberAction,
    GraphAction,
    ImageAction,
    PointCloudAction,
    SetAction,
    augment,
)
from lightning_equi.groups import (
    O2,
    O3,
    SO2,
    SO3,
    CyclicGroup,
    DihedralGroup,
    SymmetricGroup,
    TorusTranslations,
    get_group,
    grid_representation,
    pair_representation,
    regular,
    standard,
    trivial,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pair(group, n, seed=0):
    """Two independent batches of Haar elements."""
    return group.sample(n, generator=gen(seed)), group.sample(n, generator=gen(seed + 1))


def coords(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates x (column, right) and y (row, up) centred on the image, float64."""
    c = (size - 1) / 2
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return cols.double() - c, c - rows.double()


def smooth_images(b: int, size: int = 49, seed: int = 0) -> torch.Tensor:
    """Band-limited images (a few low frequencies) fading to zero well inside the frame."""
    x, y = coords(size)
    g = gen(seed)
    out = torch.zeros(b, 1, size, size, dtype=torch.float64)
    for _ in range(4):
        k = (torch.rand(b, 2, generator=g, dtype=torch.float64) - 0.5) * 0.3
        phase = torch.rand(b, 1, 1, generator=g, dtype=torch.float64) * 2 * math.pi
        out[:, 0] += torch.cos(k[:, :1, None] * x + k[:, 1:, None] * y + phase)
    window = torch.exp(-(x**2 + y**2) / (2 * (size / 5) ** 2))
    return out * window


def disk(size: int, radius: float) -> torch.Tensor:
    x, y = coords(size)
    return x**2 + y**2 <= radius**2


def slow_rot90(group, g, x):
    """Float64 reference: one torch.rot90/flip per sample."""
    quarter = 4 // group.n
    outs = []
    for i in range(x.shape[0]):
        f, k = (int(g[i, 0]), int(g[i, 1])) if isinstance(group, DihedralGroup) else (0, int(g[i]))
        xi = torch.flip(x[i], (-1,)) if f else x[i]
        outs.append(torch.rot90(xi, k * quarter, dims=(-2, -1)))
    return torch.stack(outs)


# ---------------------------------------------------------------- images, exact


@pytest.mark.parametrize(
    ("name", "shape"),
    [("C1", (5, 6)), ("C2", (5, 6)), ("C4", (5, 5)), ("D1", (5, 6)), ("D2", (4, 7)), ("D4", (6, 6))],
)
def test_exact_image_actions_match_rot90_flip_and_grid_representation(name, shape):
    group = get_group(name)
    act = ImageAction(group)
    assert act.exact
    x = torch.randn(16, 3, *shape)
    g = group.sample(16, generator=gen())
    out = act(g, x)
    assert torch.equal(out, slow_rot90(group, g, x))
    # the same permutation of pixels as grid_representation: out[p] = x[src[p]]
    src = grid_representation(group, shape).permutation(g)
    assert torch.equal(out.flatten(2), torch.gather(x.flatten(2), 2, src[:, None].expand(-1, 3, -1)))


@pytest.mark.parametrize("name", ["C2", "C4", "D1", "D2", "D4", "T5x5"])
def test_exact_image_actions_are_homomorphisms_bit_for_bit(name):
    group = get_group(name)
    act = ImageAction(group)
    x = torch.randn(32, 2, 5, 5)
    g, h = pair(group, 32)
    assert torch.equal(act(g, act(h, x)), act(group.compose(g, h), x))
    assert torch.equal(act(group.inverse(g), act(g, x)), x)
    assert torch.equal(act(group.identity(32), x), x)
    if name in ("C4", "D4", "T5x5"):  # non-commutative or generic: the wrong order must differ
        bad = act(group.compose(h, g), x) if name == "D4" else act(g, x)
        assert not torch.equal(act(g, act(h, x)), bad)


def test_d4_mirror_acts_first_and_is_x_to_minus_x():
    x = torch.randn(1, 1, 4, 4)
    act = ImageAction("D4")
    assert torch.equal(act(torch.tensor([[1, 0]]), x), torch.flip(x, (-1,)))
    assert torch.equal(act(torch.tensor([[1, 1]]), x), torch.rot90(torch.flip(x, (-1,)), 1, dims=(-2, -1)))


def test_torus_action_is_roll_and_matches_representation():
    group = TorusTranslations((4, 6))
    act = ImageAction(group)
    x = torch.randn(8, 2, 4, 6)
    g = group.sample(8, generator=gen())
    out = act(g, x)
    for i in range(8):
        shifts = (int(g[i, 0]), int(g[i, 1]))
        assert torch.equal(out[i], torch.roll(x[i], shifts, dims=(-2, -1)))
    src = standard(group).permutation(g)
    assert torch.equal(out.flatten(2), torch.gather(x.flatten(2), 2, src[:, None].expand(-1, 2, -1)))


def test_one_dimensional_torus_and_channelless_inputs():
    group = TorusTranslations(7)
    act = ImageAction(group)
    x = torch.randn(5, 7)
    g = group.sample(5, generator=gen())
    out = act(g, x)
    assert torch.equal(out, torch.stack([torch.roll(x[i], int(g[i, 0]), dims=-1) for i in range(5)]))
    masks = torch.randint(4, (6, 5, 5))
    c4 = ImageAction("C4")
    k = torch.arange(6) % 4
    assert torch.equal(c4(k, masks), c4(k, masks[:, None])[:, 0])


def test_masks_keep_their_dtype_and_follow_the_image():
    x = torch.randn(16, 1, 9, 9)
    mask = (x[:, 0] > 0).long() * 3
    for name in ("D4", "T9x9"):
        group = get_group(name)
        act = ImageAction(group)
        g = group.sample(16, generator=gen())
        out = act(g, mask)
        assert out.dtype == torch.long
        assert torch.equal(out, (act(g, x)[:, 0] > 0).long() * 3)
    boolean = ImageAction("C4")(torch.arange(16) % 4, mask > 0)
    assert boolean.dtype == torch.bool


def per_sample_reference(group, g, x):
    """One torch.flip/rot90 or torch.roll per sample, on the last two (or torus) axes."""
    if isinstance(group, TorusTranslations):
        dims = tuple(range(-len(group.shape), 0))
        return torch.stack([torch.roll(x[i], tuple(g[i].tolist()), dims) for i in range(len(g))])
    quarter, outs = 4 // group.n, []
    for i in range(len(g)):
        f, k = g[i].tolist() if isinstance(group, DihedralGroup) else (0, int(g[i]))
        xi = torch.flip(x[i], (-1,)) if f else x[i]
        outs.append(torch.rot90(xi, k * quarter, dims=(-2, -1)))
    return torch.stack(outs)


def every_element_shuffled(group, repeats: int = 3, seed: int = 0) -> torch.Tensor:
    """Each element ``repeats`` times, in a random order (so a batch mixes all of them)."""
    els = group.elements().repeat(repeats, *([1] * (group.elements().dim() - 1)))
    return els[torch.randperm(len(els), generator=gen(seed))]


EXACT_CASES = [
    ("C1", (5, 6)),
    ("C2", (5, 6)),
    ("C2", (4, 4)),
    ("C4", (5, 5)),
    ("C4", (6, 6)),
    ("D1", (4, 7)),
    ("D2", (5, 6)),
    ("D4", (5, 5)),
    ("D4", (6, 6)),
    ("T5x6", (5, 6)),
    ("T4x4", (4, 4)),
    ("T7", (7,)),
    ("T2x3x4", (2, 3, 4)),
]


@pytest.mark.parametrize(("name", "shape"), EXACT_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int64, torch.uint8, torch.bool])
def test_exact_gather_is_bit_identical_to_rot90_flip_roll_for_every_element(name, shape, dtype):
    group = get_group(name)
    act = ImageAction(group)
    g = every_element_shuffled(group)
    x = torch.randn(len(g), 3, *shape, generator=gen(1), dtype=torch.float64)
    x = (x > 0) if dtype == torch.bool else (x * 50).to(dtype) if not dtype.is_floating_point else x.to(dtype)
    out = act(g, x)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, per_sample_reference(group, g, x))
    # channel-less masks (B, *spatial) take the same path
    assert torch.equal(act(g, x[:, 1]), per_sample_reference(group, g, x[:, 1]))


@pytest.mark.parametrize("name", ["C4", "D4", "D2", "T6x6"])
def test_exact_gather_handles_channels_last_and_strided_inputs(name):
    group = get_group(name)
    act = ImageAction(group)
    g = every_element_shuffled(group, repeats=1)
    x = torch.randn(len(g), 5, 6, 6, generator=gen(2))
    reference = per_sample_reference(group, g, x)
    last = x.contiguous(memory_format=torch.channels_last)
    out = act(g, last)
    assert torch.equal(out, reference)
    assert out.is_contiguous(memory_format=torch.channels_last)  # the layout is kept, as before
    wide = torch.randn(len(g), 5, 6, 12, generator=gen(3))
    strided = wide[..., ::2]  # neither contiguous nor channels-last
    assert torch.equal(act(g, strided), per_sample_reference(group, g, strided))
    single = x[:, :1].contiguous(memory_format=torch.channels_last)  # C = 1: both layouts at once
    assert torch.equal(act(g, single), reference[:, :1])


@pytest.mark.parametrize("name", ["C4", "D4", "D2"])
def test_exact_gather_with_regular_and_vector_fields_on_the_channel_axis(name):
    group = get_group(name)
    g = every_element_shuffled(group)
    # integer data on a regular field: the channel permutation is an exact gather too
    reg = regular(group)
    labels = torch.randint(100, (len(g), reg.dim, 6, 6), generator=gen(4))
    src = reg.permutation(g)  # (B, dim): out[j] = x[src[j]]
    moved = per_sample_reference(group, g, labels)
    expected = torch.gather(moved, 1, src[:, :, None, None].expand_as(moved))
    out = ImageAction(group, fields=reg)(g, labels)
    assert out.dtype == torch.int64
    assert torch.equal(out, expected)
    # vectors: rotated positions, then each vector rotated by standard(g)
    vec = torch.randn(len(g), 2, 5, 5, generator=gen(5), dtype=torch.float64)
    out = ImageAction(group, fields=standard(group))(g, vec)
    reference = torch.einsum("bij,bjhw->bihw", standard(group)(g), per_sample_reference(group, g, vec))
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-15)


def test_exact_gather_refuses_non_square_quarter_turns_even_through_apply():
    act = ImageAction("D4")
    g = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="D4 rotates by quarter turns, which needs a square image"):
        act.apply(g, torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="square image; got H=4 and W=5"):
        act(g, torch.zeros(2, 1, 4, 5))
    # a half turn and mirrors keep any rectangle
    half = ImageAction("D2")(torch.tensor([[0, 1], [1, 1]]), torch.arange(40.0).reshape(2, 1, 4, 5))
    assert torch.equal(half[0, 0], torch.rot90(torch.arange(20.0).reshape(4, 5), 2))


class _CountOps(TorchDispatchMode):
    """Records the aten operators dispatched inside the block (each one costs a dispatch)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("name", "most"), [("C4", 8), ("D4", 12), ("T6x6", 18), ("T40x40", 18)])
def test_exact_action_is_a_handful_of_ops_whatever_the_elements(name, most):
    group = get_group(name)
    act = ImageAction(group)
    shape = group.shape if isinstance(group, TorusTranslations) else (6, 6)
    x = torch.randn(16, 2, *shape, generator=gen(10))
    act(group.identity(len(x)), x)  # builds the table
    ops = []
    for g in (group.identity(len(x)), every_element_shuffled(group, repeats=16 // group.order + 1)[:16]):
        with _CountOps() as mode:
            out = act(g, x)
        assert torch.equal(out, per_sample_reference(group, g, x))
        ops.append(mode.ops)
    assert ops[0] == ops[1]  # no per-element loop
    assert len(ops[1]) <= most, ops[1]
    assert ops[1].count("aten.gather.default") == 1


@pytest.mark.parametrize("name", ["C4", "D2", "T5x5", "T5", "SO2", "O2"])
def test_an_empty_batch_stays_empty(name):
    group = get_group(name)
    shape = group.shape if isinstance(group, TorusTranslations) else (5, 5)
    for dtype in (torch.float32, torch.int64):
        x = torch.zeros(0, 2, *shape, dtype=dtype)
        out = ImageAction(group)(group.sample(0), x)
        assert out.shape == x.shape and out.dtype == dtype


def test_pixel_tables_and_scales_are_cached_per_shape_and_bounded_and_not_pickled(monkeypatch):
    import lightning_equi.actions.images as images

    act = ImageAction("D4")
    g = every_element_shuffled(DihedralGroup(4), repeats=1)
    x = torch.randn(8, 1, 5, 5)
    first = act(g, x)
    table = next(iter(act._tables.values()))
    assert table.shape == (8, 25) and table.dtype == torch.long
    assert torch.equal(act(g, x), first) and next(iter(act._tables.values())) is table  # reused
    monkeypatch.setattr(images, "_MAX_TABLES", 2)
    for size in (3, 4, 6, 7):
        y = torch.randn(8, 1, size, size)
        assert torch.equal(act(g, y), per_sample_reference(DihedralGroup(4), g, y))
    assert [key[0] for key in act._tables] == [(6, 6), (7, 7)]  # the oldest were dropped
    assert torch.equal(act(g, x), first)  # and are rebuilt identically
    clone = pickle.loads(pickle.dumps(act))
    assert clone._tables == {}
    assert torch.equal(clone(g, x), first)
    # the resampling keeps its per-size grid constants the same way
    so2 = ImageAction("SO2")
    theta = SO2().sample(8, generator=gen())
    rotated = so2(theta, x)
    assert list(so2._grids) == [((5, 5), x.device, x.dtype)] and so2._tables == {}
    clone = pickle.loads(pickle.dumps(so2))
    assert clone._grids == {}
    assert torch.equal(clone(theta, x), rotated)


# ---------------------------------------------------------------- images, interpolated


def test_interpolated_quarter_turns_agree_with_rot90():
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    exact = ImageAction("D4")(torch.tensor([[0, 1], [1, 1], [1, 2], [0, 3]]), x)
    c8 = ImageAction("D8")(torch.tensor([[0, 2], [1, 2], [1, 4], [0, 6]]), x)
    o2 = ImageAction("O2")(
        torch.tensor([[0, 1], [1, 1], [1, 2], [0, 3]], dtype=torch.float64)
        * torch.tensor([1, math.pi / 2], dtype=torch.float64),
        x,
    )
    forced = ImageAction("D4", exact=False)(torch.tensor([[0, 1], [1, 1], [1, 2], [0, 3]]), x)
    for other in (c8, o2, forced):
        torch.testing.assert_close(other, exact, rtol=0, atol=1e-12)


def test_non_square_resampling_rotates_pixels_not_normalised_coordinates():
    # a quarter turn of a 6 x 10 image by resampling: the centred 6 x 6 block rotates like rot90
    x = torch.randn(1, 1, 6, 10, dtype=torch.float64)
    out = ImageAction("SO2")(torch.tensor([math.pi / 2], dtype=torch.float64), x)
    torch.testing.assert_close(out[..., 2:8], torch.rot90(x[..., 2:8], 1, dims=(-2, -1)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["C8", "D6", "SO2", "O2"])
def test_interpolated_actions_are_homomorphisms_to_interpolation_error(name):
    group = get_group(name)
    act = ImageAction(group)
    assert not act.exact
    x = smooth_images(8)
    inside = disk(49, 18)
    g, h = pair(group, 8)
    two_steps = act(g, act(h, x))[..., inside]
    one_step = act(group.compose(g, h), x)[..., inside]
    scale = x.abs().max()
    assert (two_steps - one_step).abs().max() < 0.02 * scale
    assert (act(group.inverse(g), act(g, x)) - x)[..., inside].abs().max() < 0.02 * scale
    torch.testing.assert_close(act(group.identity(8), x), x, rtol=0, atol=1e-12)
    # negative control: a wrong composition is far off
    wrong = act(group.compose(g, group.compose(h, h)), x)[..., inside]
    assert (two_steps - wrong).abs().max() > 0.2 * scale


def test_interpolated_masks_use_nearest_and_keep_labels():
    labels = torch.randint(5, (4, 12, 12))
    out = ImageAction("SO2")(SO2().sample(4, generator=gen()), labels)
    assert out.dtype == torch.long
    assert set(out.unique().tolist()) <= set(range(5))


def test_padding_mode_and_interpolation_are_used():
    x = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    g = torch.tensor([math.pi / 4], dtype=torch.float64)
    assert ImageAction("SO2", padding_mode="zeros")(g, x)[0, 0, 0, 0] < 0.5
    assert ImageAction("SO2", padding_mode="border")(g, x)[0, 0, 0, 0] == 1
    y = smooth_images(1, 17)
    near = ImageAction("SO2", interpolation="nearest", padding_mode="border")(g, y)
    assert set(near.flatten().tolist()) <= set(y.flatten().tolist())


def reference_theta(group, g, shape):
    """The previous construction: ``D M^T D`` from ``standard(group)`` in float64, rescaled."""
    h, w = shape
    m_inv = standard(group)(g).transpose(1, 2)
    flip_y = torch.tensor([1.0, -1.0], dtype=torch.float64)
    a = flip_y[None, :, None] * m_inv * flip_y[None, None, :]
    scale = torch.tensor([w / 2, h / 2], dtype=torch.float64)
    a = a * scale[None, None, :] / scale[None, :, None]
    return torch.cat([a, a.new_zeros(len(g), 2, 1)], dim=2)


def reference_resample(group, g, x, mode="bilinear", padding_mode="zeros"):
    """The previous implementation: ``F.affine_grid`` of :func:`reference_theta`, cast to the data."""
    import torch.nn.functional as F

    theta = reference_theta(group, g, x.shape[-2:]).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


@pytest.mark.parametrize("name", ["SO2", "O2", "C8", "D6", "D4"])
@pytest.mark.parametrize("shape", [(17, 17), (12, 20), (15, 9)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_resampling_is_bit_identical_to_the_float64_matrix_construction(name, shape, dtype):
    group = get_group(name)
    g = group.sample(16, generator=gen(6))
    # multiples of pi/4 on even sizes put nearest-neighbour samples on exact ties
    g = torch.cat([g, group.elements()]) if group.is_finite else g
    x = torch.randn(len(g), 2, *shape, generator=gen(7), dtype=torch.float64).to(dtype)
    for interpolation, padding in (("bilinear", "zeros"), ("nearest", "border"), ("bicubic", "reflection")):
        act = ImageAction(group, exact=False, interpolation=interpolation, padding_mode=padding)
        out = act(g, x)
        assert out.dtype == dtype
        assert torch.equal(out, reference_resample(group, g, x, interpolation, padding))
    grid = ImageAction(group, exact=False)._grid(g, *shape, dtype)
    assert grid.dtype == dtype
    theta = reference_theta(group, g, shape).to(dtype)
    assert torch.equal(grid, torch.nn.functional.affine_grid(theta, [len(g), 1, *shape], align_corners=False))


def test_resampled_masks_match_the_float64_construction_exactly():
    group = O2()
    g = group.sample(16, generator=gen(8))
    labels = torch.randint(7, (16, 1, 13, 18), generator=gen(9))
    out = ImageAction(group)(g, labels)
    assert out.dtype == torch.int64
    assert torch.equal(out, reference_resample(group, g, labels.double(), "nearest").round().long())
    flags = ImageAction(group)(g, labels > 3)
    assert flags.dtype == torch.bool
    assert torch.equal(flags, reference_resample(group, g, (labels > 3).double(), "nearest") > 0.5)


# ---------------------------------------------------------------- field types on the channels


def test_constant_vector_field_rotates_with_its_position():
    act = ImageAction("C4", fields=standard(CyclicGroup(4)))
    v = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    v[:, 0] = 1.0  # (vx, vy) = (1, 0): pointing right
    out = act(torch.tensor([1]), v)
    torch.testing.assert_close(out[0, :, 2, 2], torch.tensor([0.0, 1.0], dtype=torch.float64))  # up


@pytest.mark.parametrize(("name", "g"), [("C4", [1]), ("SO2", [math.pi / 2])])
def test_position_dependent_vector_field_follows_x_right_y_up(name, g):
    # v(p) = (x, 0); rotated by R(pi/2): R v(R^-1 p) = R (y, 0) = (0, y)
    group = get_group(name)
    act = ImageAction(group, fields=standard(group))
    x, y = coords(7)
    v = torch.stack([x, torch.zeros_like(x)])[None]
    g = torch.tensor(g, dtype=group.element_dtype)
    out = act(g, v)
    torch.testing.assert_close(out[0], torch.stack([torch.zeros_like(y), y]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["C4", "D4", "D2"])
def test_vector_and_regular_fields_compose_and_match_a_slow_reference(name):
    group = get_group(name)
    fields = standard(group) + regular(group) + trivial(group)
    act = ImageAction(group, fields=fields)
    x = torch.randn(16, fields.dim, 6, 6, dtype=torch.float64)
    g, h = pair(group, 16)
    out = act(g, x)
    reference = torch.einsum("bij,bjhw->bihw", fields(g), slow_rot90(group, g, x))
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-12)
    torch.testing.assert_close(act(g, act(h, x)), act(group.compose(g, h), x), rtol=0, atol=1e-12)
    torch.testing.assert_close(act(group.inverse(g), out), x, rtol=0, atol=1e-12)


def test_regular_fields_are_a_bit_exact_permutation():
    group = DihedralGroup(4)
    act = ImageAction(group, fields=2 * regular(group))
    x = torch.randn(16, 16, 4, 4)
    g, h = pair(group, 16)
    assert torch.equal(act(g, act(h, x)), act(group.compose(g, h), x))
    spatial = ImageAction(group)(g, x)
    assert torch.equal(act(g, x), torch.einsum("bij,bjhw->bihw", (2 * regular(group))(g).float(), spatial))


def test_fields_on_a_continuous_group_use_matrices():
    group = O2()
    act = ImageAction(group, fields=standard(group))
    x = smooth_images(4).repeat(1, 2, 1, 1)
    g = group.sample(4, generator=gen())
    out = act(g, x)
    torch.testing.assert_close(
        out, torch.einsum("bij,bjhw->bihw", standard(group)(g), ImageAction(group)(g, x))
    )


# ---------------------------------------------------------------- image refusals


def test_image_action_refusals():
    with pytest.raises(ValueError, match="C8 cannot act exactly.*exact=False"):
        ImageAction("C8", exact=True)
    with pytest.raises(ValueError, match="always exact; pass exact=None"):
        ImageAction("T4x4", exact=False)
    with pytest.raises(ValueError, match="ImageAction acts by .* got SO3"):
        ImageAction("SO3")
    with pytest.raises(ValueError, match="interpolation must be one of"):
        ImageAction("SO2", interpolation="cubic")
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        ImageAction("SO2", padding_mode="circular")
    with pytest.raises(ValueError, match="fields is a representation of C8, but the action's group is C4"):
        ImageAction("C4", fields=regular(CyclicGroup(8)))
    with pytest.raises(TypeError, match="fields must be a Representation"):
        ImageAction("C4", fields="regular")
    act = ImageAction("C4")
    with pytest.raises(ValueError, match="square image; got H=4 and W=5"):
        act(torch.zeros(2, dtype=torch.long), torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\) or \(B, H, W\)"):
        act(torch.zeros(2, dtype=torch.long), torch.zeros(2, 1, 1, 4, 4))
    with pytest.raises(ValueError, match="g holds 3 elements but x has batch size 2"):
        act(torch.zeros(3, dtype=torch.long), torch.zeros(2, 1, 4, 4))
    with pytest.raises(
        ValueError, match=r"g has shape \(2, 2\), but a batch of C4 elements has shape \(B,?\)"
    ):
        act(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 1, 4, 4))
    with pytest.raises(TypeError, match="g has dtype torch.float64, but C4 elements are torch.int64"):
        act(torch.zeros(2, dtype=torch.float64), torch.zeros(2, 1, 4, 4))
    with pytest.raises(TypeError, match="x must be a tensor for ImageAction"):
        act(torch.zeros(2, dtype=torch.long), [torch.zeros(1, 4, 4)] * 2)
    vec = ImageAction("C4", fields=standard(CyclicGroup(4)))
    with pytest.raises(ValueError, match="x has 3 channels, but fields standard of C4 has dimension 2"):
        vec(torch.zeros(2, dtype=torch.long), torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\) for C4"):
        vec(torch.zeros(2, dtype=torch.long), torch.zeros(2, 4, 4))
    with pytest.raises(TypeError, match="needs floating-point data; got torch.int64"):
        vec(torch.zeros(2, dtype=torch.long), torch.zeros(2, 2, 4, 4, dtype=torch.long))
    with pytest.raises(
        ValueError, match=r"T4x4 translates a grid of shape \(4, 4\).*TorusTranslations\(\(5, 5\)\)"
    ):
        ImageAction("T4x4")(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 1, 5, 5))


def test_actions_pickle():
    group = DihedralGroup(4)
    act = BatchAction([ImageAction(group, fields=regular(group)), ImageAction(group), None])
    clone = pickle.loads(pickle.dumps(act))
    batch = (torch.randn(4, 8, 5, 5), torch.randint(3, (4, 5, 5)), torch.arange(4))
    g = group.sample(4, generator=gen())
    for a, b in zip(act(g, batch), clone(g, batch), strict=True):
        assert torch.equal(a, b)
    so2 = ImageAction("SO2", fields=standard(SO2()))
    field, theta = torch.randn(3, 2, 9, 9), SO2().sample(3, generator=gen())
    assert torch.equal(pickle.loads(pickle.dumps(so2))(theta, field), so2(theta, field))


def test_fiber_action_tabulates_finite_groups_and_matches_the_representation():
    group = DihedralGroup(3)
    rep = standard(group) + regular(group)
    fiber = FiberAction(rep)
    g = group.sample(10, generator=gen())
    x = torch.randn(10, rep.dim, 3, dtype=torch.float64)
    torch.testing.assert_close(fiber(g, x, axis=1), torch.einsum("bij,bjn->bin", rep(g), x))
    torch.testing.assert_close(fiber.matrices(g), rep(g))


# ---------------------------------------------------------------- point clouds


@pytest.mark.parametrize("group", [SO3(), O3()])
def test_point_clouds_rotate_as_x_r_transpose_and_compose(group):
    act = PointCloudAction(group, features=standard(group) + trivial(group))
    pos, feats = torch.randn(6, 10, 3, dtype=torch.float64), torch.randn(6, 10, 4, dtype=torch.float64)
    g, h = pair(group, 6)
    out_pos, out_feats = act(g, (pos, feats))
    torch.testing.assert_close(out_pos, torch.einsum("bij,bnj->bni", g, pos))
    torch.testing.assert_close(out_feats[..., :3], torch.einsum("bij,bnj->bni", g, feats[..., :3]))
    assert torch.equal(out_feats[..., 3], feats[..., 3])
    twice = act(g, act(h, (pos, feats)))
    once = act(group.compose(g, h), (pos, feats))
    for a, b in zip(twice, once, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(act(group.inverse(g), act(g, (pos, feats)))[0], pos)


@pytest.mark.parametrize("name", ["C5", "D4", "SO2", "O2"])
def test_planar_point_clouds_match_the_image_convention(name):
    # a point at pixel (row, col) of a quarter-turn-invariant image goes where the image moves it
    group = get_group(name)
    act = PointCloudAction(group)
    pos = torch.randn(8, 5, 2, dtype=torch.float64)
    g, h = pair(group, 8)
    torch.testing.assert_close(act(g, pos), torch.einsum("bij,bnj->bni", standard(group)(g), pos))
    torch.testing.assert_close(act(g, act(h, pos)), act(group.compose(g, h), pos))


def test_point_clouds_take_dicts_and_lists():
    group = SO3()
    act = PointCloudAction(group, features=standard(group))
    pos, feats = torch.randn(2, 4, 3, dtype=torch.float64), torch.randn(2, 4, 3, dtype=torch.float64)
    g = group.sample(2, generator=gen())
    out = act(g, {"pos": pos, "x": feats})
    assert isinstance(out, dict)
    lst = act(g, [pos, feats])
    assert isinstance(lst, list)
    torch.testing.assert_close(out["x"], lst[1])


def test_point_cloud_refusals():
    with pytest.raises(ValueError, match="PointCloudAction acts by SO3, O3, C_N, D_N, SO2 or O2, got S3"):
        PointCloudAction("S3")
    act = PointCloudAction("SO3")
    g = SO3().sample(2)
    with pytest.raises(ValueError, match=r"pos must have shape \(B, N, 3\) for SO3"):
        act(g, torch.zeros(2, 4, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="no features= given"):
        act(g, (torch.zeros(2, 4, 3), torch.zeros(2, 4, 3)))
    with pytest.raises(TypeError, match="pos must be floating point"):
        act(g, torch.zeros(2, 4, 3, dtype=torch.long))
    feat = PointCloudAction("SO3", features=standard(SO3()))
    with pytest.raises(TypeError, match="x is a tensor, but features= was given"):
        feat(g, torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="feats have 2 channels, but features standard has dimension 3"):
        feat(g, (torch.zeros(2, 4, 3), torch.zeros(2, 4, 2)))
    with pytest.raises(ValueError, match="exactly the keys"):
        feat(g, {"pos": torch.zeros(2, 4, 3), "feats": torch.zeros(2, 4, 3)})
    with pytest.raises(ValueError, match="features is a representation of SO2"):
        PointCloudAction("SO3", features=standard(SO2()))


# ---------------------------------------------------------------- sets and graphs


def test_set_action_matches_standard_representation_and_composes():
    group = SymmetricGroup(6)
    act = SetAction(group)
    x = torch.randn(10, 6, 3)
    g, h = pair(group, 10)
    out = act(g, x)
    assert torch.equal(out, torch.einsum("bij,bjd->bid", standard(group)(g).float(), x))
    for b in range(10):  # out[p[i]] = x[i]
        assert torch.equal(out[b, g[b]], x[b])
    assert torch.equal(act(g, act(h, x)), act(group.compose(g, h), x))
    assert torch.equal(act(group.inverse(g), out), x)
    assert not torch.equal(act(g, act(h, x)), act(group.compose(h, g), x))


def test_graph_action_matches_pair_representation_and_composes():
    group = SymmetricGroup(5)
    act = GraphAction(group)
    adj = torch.randn(8, 5, 5)
    g, h = pair(group, 8)
    out = act(g, adj)
    assert torch.equal(
        out.flatten(1), torch.einsum("bij,bj->bi", pair_representation(group)(g).float(), adj.flatten(1))
    )
    assert torch.equal(act(g, act(h, adj)), act(group.compose(g, h), adj))
    assert torch.equal(act(group.inverse(g), out), adj)


def test_graph_containers_and_edge_features():
    group = SymmetricGroup(4)
    act, sets = GraphAction(group), SetAction(group)
    adj, edges, feats = torch.randn(3, 4, 4), torch.randn(3, 4, 4, 2), torch.randn(3, 4, 5)
    g, h = pair(group, 3)
    out = act(g, (adj, feats))
    assert isinstance(out, tuple)
    assert torch.equal(out[0], act(g, adj)) and torch.equal(out[1], sets(g, feats))
    out = act(g, {"adj": adj, "x": feats})
    assert set(out) == {"adj", "x"} and torch.equal(out["x"], sets(g, feats))
    assert set(act(g, {"adj": adj})) == {"adj"}
    assert isinstance(act(g, [adj, feats]), list)
    moved = act(g, edges)
    assert torch.equal(moved[..., 1], act(g, edges[..., 1]))
    assert torch.equal(act(g, act(h, (adj, feats)))[1], act(group.compose(g, h), (adj, feats))[1])


def test_set_and_graph_refusals():
    with pytest.raises(ValueError, match="SetAction acts by a symmetric group S<n>, got C4"):
        SetAction("C4")
    with pytest.raises(ValueError, match="GraphAction acts by a symmetric group"):
        GraphAction(CyclicGroup(3))
    g = SymmetricGroup(4).sample(2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 4, ...\) for S4, got \(2, 5, 1\)"):
        SetAction("S4")(g, torch.zeros(2, 5, 1))
    act = GraphAction("S4")
    with pytest.raises(ValueError, match=r"adj must have shape \(B, 4, 4, ...\) for S4, got \(2, 4, 5\)"):
        act(g, torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match=r"node features must have shape \(2, 4, ...\)"):
        act(g, (torch.zeros(2, 4, 4), torch.zeros(2, 3, 1)))
    with pytest.raises(ValueError, match="must have the key 'adj'"):
        act(g, {"adjacency": torch.zeros(2, 4, 4)})
    with pytest.raises(TypeError, match="x must be adj, \\(adj, feats\\)"):
        act(g, "graph")


# ---------------------------------------------------------------- batches


def test_batch_action_applies_one_element_per_sample_to_every_entry():
    group = CyclicGroup(4)
    act = BatchAction({"image": ImageAction(group), "mask": ImageAction(group), "label": None})
    image = torch.randn(8, 3, 6, 6)
    batch = {"image": image, "mask": (image[:, 0] > 0).long(), "label": torch.arange(8), "name": "x"}
    g = act.sample(batch, generator=gen())
    out = act(g, batch)
    assert out["label"] is batch["label"] and out["name"] == "x"
    assert torch.equal(out["mask"], (out["image"][:, 0] > 0).long())
    assert torch.equal(out["image"], ImageAction(group)(g, image))


def test_batch_action_preserves_tuple_list_and_namedtuple():
    group = DihedralGroup(4)
    img = ImageAction(group)
    x, y = torch.randn(4, 1, 5, 5), torch.arange(4)
    g = group.sample(4, generator=gen())
    tup = BatchAction([img, None])(g, (x, y))
    assert type(tup) is tuple and tup[1] is y and torch.equal(tup[0], img(g, x))
    lst = BatchAction({0: img})(g, [x, y])
    assert type(lst) is list and torch.equal(lst[0], tup[0])
    Sample = namedtuple("Sample", ["x", "y"])
    nt = BatchAction({0: img})(g, Sample(x, y))
    assert type(nt) is Sample and torch.equal(nt.x, tup[0])
    whole = BatchAction(img)(g, x)
    assert torch.equal(whole, tup[0])


def test_augment_is_reproducible_and_uses_haar_elements():
    x = torch.randn(64, 1, 4, 4)
    a = augment((x,), "C4", [ImageAction("C4")], generator=gen(3))[0]
    b = augment((x,), "C4", [ImageAction("C4")], generator=gen(3))[0]
    assert torch.equal(a, b)
    # every sample is one of the four rotations of itself, and all four occur
    rots = torch.stack([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])
    which = (rots == a[None]).flatten(2).all(dim=2).float().argmax(dim=0)
    assert ((rots == a[None]).flatten(2).all(dim=2).any(dim=0)).all()
    assert set(which.tolist()) == {0, 1, 2, 3}


def test_batch_refusals():
    c4 = ImageAction("C4")
    with pytest.raises(ValueError, match="must share one group, got 0: C4, 1: D4"):
        BatchAction([c4, ImageAction("D4")])
    with pytest.raises(ValueError, match="names no Action"):
        BatchAction([None, None])
    with pytest.raises(TypeError, match=r"actions\['x'\] must be an Action or None, got str"):
        BatchAction({"x": "C4"})
    with pytest.raises(TypeError, match="actions must be an Action, a dict or a list"):
        BatchAction("C4")
    g = torch.zeros(2, dtype=torch.long)
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"the batch has no entry 'mask'; its entries are \['image'\]"):
        BatchAction({"mask": c4})(g, {"image": x})
    with pytest.raises(ValueError, match="the batch has no entry 3; it is a tuple of 2"):
        BatchAction({3: c4})(g, (x, x))
    with pytest.raises(ValueError, match="actions has 2 positions, but the batch is 3"):
        BatchAction([c4, None])(g, (x, x, x))
    with pytest.raises(ValueError, match="different batch sizes"):
        BatchAction([c4, c4])(g, (x, torch.zeros(3, 1, 4, 4)))
    with pytest.raises(TypeError, match="but the batch is a Tensor"):
        BatchAction({0: c4})(g, x)
    with pytest.raises(ValueError, match="group is D4, but the actions act by C4: pass group='C4'"):
        augment((x,), "D4", [c4])


def test_importing_actions_does_not_import_escnn():
    code = (
        "import sys, lightning_equi.actions, lightning_equi.adapters; "
        "assert 'escnn' not in sys.modules, 'escnn was imported'; "
        "assert 'lightning' not in sys.modules, 'lightning was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
