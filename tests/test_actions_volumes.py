"""VolumeAction: SO(3)/O(3) on (B, C, D, H, W) volumes, against rot90/flip, slice-wise 2D rotations and
brute-force homomorphism checks; the refusals."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_equi.actions import ImageAction, VolumeAction, interpolates, make_action
from lightning_equi.actions.volumes import _cube_turns
from lightning_equi.groups import get_group, standard
from lightning_equi.metrics import probe_elements


def _turn(axis: int, k: int = 1) -> torch.Tensor:
    """The rotation by k quarter turns about x (0), y (1) or z (2), built by hand."""
    i, j = {0: (1, 2), 1: (2, 0), 2: (0, 1)}[axis]
    c, s = round(math.cos(k * math.pi / 2)), round(math.sin(k * math.pi / 2))
    r = torch.eye(3, dtype=torch.float64)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r[None]


def _rz(theta: float) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("axis", "dims"), [(0, (-2, -3)), (1, (-1, -3)), (2, (-2, -1))])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_quarter_turns_are_rot90_of_the_voxels(axis, dims, k):
    x = torch.rand(2, 3, 4, 4, 4, generator=_gen())
    g = _turn(axis, k).expand(2, 3, 3)
    assert torch.equal(VolumeAction("SO3")(g, x), torch.rot90(x, k, dims=dims))


def test_the_inversion_flips_every_axis_and_a_vector_field_turns_with_the_volume():
    x = torch.rand(1, 2, 3, 4, 5, generator=_gen())
    minus = -torch.eye(3, dtype=torch.float64)[None]
    assert torch.equal(VolumeAction("O3")(minus, x), torch.flip(x, (-3, -2, -1)))
    field = torch.zeros(1, 3, 3, 3, 3)
    field[:, 0] = 1.0  # the constant field e_x
    out = VolumeAction("SO3", fields=standard(get_group("SO3")))(_turn(2), field)
    assert torch.equal(out[:, 1], torch.ones(1, 3, 3, 3)) and not out[:, [0, 2]].any()  # e_x -> e_y


def test_the_24_cube_rotations_and_the_48_with_reflections_act_exactly_as_a_homomorphism():
    turns = _cube_turns()
    assert turns.shape == (24, 3, 3) and len({tuple(t.flatten().tolist()) for t in turns}) == 24
    full = torch.cat([turns, -turns])
    act = VolumeAction("O3")
    assert bool(act.exact_mask(full).all())
    gen = _gen(1)
    n = 48
    g, h = full[torch.randperm(48, generator=gen)[:n]], full[torch.randint(48, (n,), generator=gen)]
    x = torch.rand(n, 2, 3, 3, 3, generator=gen)
    assert torch.equal(act(g, act(h, x)), act(g @ h, x))
    assert torch.equal(act(act.group.inverse(g), act(g, x)), x)


def test_other_rotations_resample_like_the_image_action_slice_by_slice():
    """A turn about z of a volume that is constant along D is the 2D rotation of each slice."""
    img = torch.rand(2, 1, 9, 9, generator=_gen(2))
    vol = img[:, :, None].expand(2, 1, 5, 9, 9).contiguous()
    theta = torch.tensor([0.3, 2.0], dtype=torch.float64)
    g = torch.cat([_rz(float(t)) for t in theta])
    out = VolumeAction("SO3")(g, vol)
    ref = ImageAction("SO2")(theta, img)
    torch.testing.assert_close(out, ref[:, :, None].expand_as(out), atol=1e-5, rtol=1e-5)
    act = VolumeAction("SO3")
    assert not bool(act.exact_mask(g).any()) and interpolates(act)


def test_a_mixed_batch_is_exact_where_it_can_be():
    x = torch.rand(2, 1, 5, 5, 5, generator=_gen(3))
    g = torch.cat([_turn(0), _rz(0.4)])
    out = VolumeAction("SO3")(g, x)
    assert torch.equal(out[0], torch.rot90(x[0], 1, dims=(-2, -3)))
    torch.testing.assert_close(out[1:], VolumeAction("SO3")(g[1:], x[1:]), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_masks_keep_their_dtype_and_their_labels(dtype):
    labels = torch.randint(0, 3, (2, 5, 5, 5), generator=_gen(4))
    mask = labels.to(dtype) if dtype is torch.bool else labels
    for g in (torch.cat([_turn(1), _turn(2)]), torch.cat([_rz(0.5), _rz(1.0)])):
        out = VolumeAction("SO3")(g, mask)
        assert out.dtype == dtype and out.shape == mask.shape
        assert set(out.unique().tolist()) <= set(mask.unique().tolist())


def test_the_testing_elements_are_flagged_exact_so_the_monitor_splits():
    for name, count in (("SO3", 4), ("O3", 5)):
        act = VolumeAction(name)
        assert bool(act.exact_mask(act.group.testing_elements()).all())
        g, exact = probe_elements(act, batch_size=2, draws=3, generator=_gen(5))
        assert g.shape[0] == 2 * (3 + count)
        assert exact.tolist() == [False] * 6 + [True] * (2 * count)


def test_make_action_builds_volume_actions():
    act = make_action("volume:standard", "SO3")
    assert isinstance(act, VolumeAction) and act.fields.dim == 3
    assert isinstance(make_action("volume", "O3"), VolumeAction)


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match="VolumeAction acts by SO3 or O3"):
        VolumeAction("C4")
    with pytest.raises(ValueError, match="interpolation must be one of"):
        VolumeAction("SO3", interpolation="bicubic")
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        VolumeAction("SO3", padding_mode="circular")
    act = VolumeAction("SO3")
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, D, H, W\)"):
        act(_turn(0), torch.rand(1, 4, 4))
    vec = VolumeAction("SO3", fields=standard(get_group("SO3")))
    with pytest.raises(ValueError, match="has 2 channels, but fields standard"):
        vec(_turn(0), torch.rand(1, 2, 3, 3, 3))
    with pytest.raises(ValueError, match="crop or pad to a cube"):
        act(_turn(2), torch.rand(1, 1, 3, 4, 5))  # a turn about z swaps H and W
    assert act(_turn(2, 2), torch.rand(1, 1, 3, 4, 5)).shape == (1, 1, 3, 4, 5)  # a half turn does not
    with pytest.raises(ValueError, match="holds 2 elements but x has batch size 1"):
        act(torch.cat([_turn(0), _turn(1)]), torch.rand(1, 1, 3, 3, 3))
