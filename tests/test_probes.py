"""The core pieces the callbacks now stand on: testing elements, exact masks, batch augmentation, the
functional error of a model, probe elements and ``assert_equivariant`` -- each checked against a
reference built another way (rot90/flip of tensors, per-sample loops written out by hand)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_equi.actions import (
    ImageAction,
    PointCloudAction,
    SetAction,
    augment,
    batch_action,
    interpolates,
    make_action,
)
from lightning_equi.groups import get_group
from lightning_equi.metrics import model_equivariance_error, probe_elements, transformed_outputs
from lightning_equi.testing import TOLERANCES, assert_equivariant

PLANAR = ["C1", "C2", "C4", "C8", "C16", "C32", "C30", "D1", "D4", "D8", "D12", "D20", "SO2", "O2"]


def _grid_reference(group, element: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """The element moved onto a square grid by torch.flip/rot90 alone, or None when it is not a grid
    symmetry: a multiple of a quarter turn (after the mirror x -> -x, where there is one)."""
    quarters = float(group.angle(element[None])[0]) / (math.pi / 2)
    if abs(quarters - round(quarters)) > 1e-9:
        return None
    flip = int(group.flip(element[None])[0]) if hasattr(group, "flip") else 0
    out = torch.flip(x, dims=(-1,)) if flip else x
    return torch.rot90(out, round(quarters) % 4, dims=(-2, -1))


# ---- testing elements -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*PLANAR, "SO3", "O3", "T5x5", "S4", "S10"])
def test_testing_elements_are_fixed_valid_and_distinct(name):
    G = get_group(name)
    g = G.testing_elements()
    G.check(g)
    assert torch.equal(g, G.testing_elements())  # deterministic
    for i in range(g.shape[0]):
        others = torch.cat([g[:i], g[i + 1 :]])
        assert others.shape[0] == 0 or not bool(G.equal(g[i : i + 1].expand_as(others), others).any())
    if G.is_finite and G.order <= 16:
        assert g.shape[0] == G.order  # every element of a small group


@pytest.mark.parametrize("name", ["SO3", "O3"])
def test_testing_elements_of_3d_rotations_are_orthogonal_grid_symmetries(name):
    g = get_group(name).testing_elements()
    eye = torch.eye(3, dtype=torch.float64).expand_as(g)
    assert torch.allclose(g @ g.transpose(1, 2), eye)
    assert torch.equal(
        g.abs().sum(dim=1), torch.ones(g.shape[0], 3, dtype=torch.float64)
    )  # signed permutations


# ---- exact masks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PLANAR)
def test_exact_mask_flags_exactly_the_grid_symmetries(name):
    """An element is flagged exact iff flip/rot90 reproduce it; then the action equals that reference."""
    act = ImageAction(name)
    G = act.group
    elements = G.elements() if G.is_finite else torch.cat([G.testing_elements(), G.sample(6)])
    mask = act.exact_mask(elements)
    x = torch.rand(2, 3, 7, 7, dtype=torch.float64)
    for element, flagged in zip(elements, mask.tolist(), strict=True):
        reference = _grid_reference(G, element, x)
        assert flagged == (reference is not None), element
        if reference is not None:
            moved = act(element[None].repeat(2, *[1] * element.dim()), x)
            torch.testing.assert_close(moved, reference, rtol=0, atol=1e-9)


def test_exact_mask_of_other_actions():
    assert bool(SetAction("S5").exact_mask(get_group("S5").sample(4)).all())
    assert not bool(PointCloudAction("SO3").exact_mask(get_group("SO3").sample(3)).any())  # rounding
    act = batch_action("C8", inputs="image", targets="image")
    assert act.exact_mask(torch.arange(8)).tolist() == [True, False] * 4
    assert interpolates(ImageAction("SO2")) and not interpolates(ImageAction("D4"))
    assert not interpolates(PointCloudAction("SO2"))
    # a batch resamples when one of its entries does; an action of one's own says it by `resamples`
    assert interpolates(batch_action("C8", inputs="image")) and not interpolates(batch_action("C4"))

    class Resampling(SetAction):
        resamples = True

    assert interpolates(Resampling("S3")) and not interpolates(None)


# ---- batch augmentation -------------------------------------------------------------------------------


def test_augment_orbit_is_every_quarter_turn_of_every_sample():
    x, y = torch.rand(3, 2, 5, 5), torch.arange(3)
    ox, oy = augment((x, y), "C4", batch_action("C4", inputs="image"), orbit=True)
    assert ox.shape == (12, 2, 5, 5) and oy.tolist() == [0, 1, 2] * 4
    for k in range(4):
        assert torch.equal(ox[3 * k : 3 * k + 3], torch.rot90(x, k, dims=(-2, -1)))


def test_augment_copies_and_per_batch_draws_match_the_generator_by_hand():
    x = torch.rand(4, 1, 6, 6)
    act = batch_action("D4", inputs="image")
    out = augment(x, "D4", act, generator=torch.Generator().manual_seed(3), copies=2)
    g = get_group("D4").sample(8, generator=torch.Generator().manual_seed(3))
    reference = torch.stack([_grid_reference(get_group("D4"), g[i], x[i % 4]) for i in range(8)])
    assert torch.equal(out, reference)
    shared = augment(x, "D4", act, generator=torch.Generator().manual_seed(3), per_sample=False)
    h = get_group("D4").sample(1, generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(shared, _grid_reference(get_group("D4"), h, x))


def test_augment_refuses_options_that_do_not_fit():
    act = batch_action("SO2", inputs="image")
    with pytest.raises(ValueError, match="needs a finite group; SO2 is continuous"):
        augment(torch.rand(2, 1, 4, 4), "SO2", act, orbit=True)
    with pytest.raises(ValueError, match="leave copies=1 and per_sample=True"):
        augment(torch.rand(2, 1, 4, 4), "C4", batch_action("C4"), orbit=True, copies=2)
    with pytest.raises(ValueError, match="`copies` must be an int >= 1"):
        augment(torch.rand(2, 1, 4, 4), "C4", batch_action("C4"), copies=0)
    with pytest.raises(ValueError, match="batch entry 0 is given two actions"):
        batch_action("C4", inputs={0: "image"}, targets={0: "image"})
    with pytest.raises(ValueError, match="unknown action 'imgae'"):
        make_action("imgae", "C4")


def test_augment_repeats_escnn_geometric_tensors():
    pytest.importorskip("escnn")
    from escnn import gspaces
    from escnn import nn as enn

    from lightning_equi.adapters import GeometricTensorAction

    gspace = gspaces.rot2dOnR2(4)
    ftype = enn.FieldType(gspace, [gspace.regular_repr])
    x = enn.GeometricTensor(torch.rand(2, 4, 5, 5), ftype)
    out = augment(x, "C4", GeometricTensorAction(ftype), orbit=True)
    assert isinstance(out, enn.GeometricTensor) and out.tensor.shape == (8, 4, 5, 5)
    for k in range(4):  # escnn's own transform of each sample, an independent reference
        element = gspace.fibergroup.element(k)
        torch.testing.assert_close(out.tensor[2 * k : 2 * k + 2], x.transform(element).tensor)


# ---- the functional error of a model ------------------------------------------------------------------


def test_model_equivariance_error_equals_a_per_sample_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 1, 3, padding=1))
    x = torch.rand(3, 1, 6, 6)
    act = ImageAction("C4")
    g = act.group.elements().repeat_interleave(3, dim=0)
    out = model_equivariance_error(model, x, g, act, act)
    errors = []
    with torch.no_grad():
        for k in range(4):
            for i in range(3):
                fx = model(x[i : i + 1])
                diff = model(torch.rot90(x[i : i + 1], k, dims=(-2, -1))) - torch.rot90(fx, k, dims=(-2, -1))
                errors.append(float(diff.double().norm() / fx.double().norm()))
    assert math.isclose(float(out["total"]), sum(errors) / len(errors), rel_tol=1e-5)
    assert math.isnan(float(out["inexact"]))  # C4 acts exactly: no interpolated part


def test_transformed_outputs_restores_the_mode_and_checks_the_layout():
    model = nn.Sequential(nn.Dropout(0.5), nn.Flatten())
    model.train()
    x = torch.ones(2, 1, 3, 3)
    f_gx, g_fx, fx = transformed_outputs(model, x, torch.tensor([0, 0, 1, 1]), ImageAction("C4"))
    assert model.training and torch.equal(fx, torch.ones(4, 9))  # eval mode inside: no dropout
    with pytest.raises(ValueError, match=r"Expected k \* 2 group elements"):
        transformed_outputs(model, x, torch.tensor([0, 1, 2]), ImageAction("C4"))


def test_probe_elements_cover_small_groups_whole_and_add_grid_elements_otherwise():
    g, exact = probe_elements(ImageAction("D8"), 3)
    assert g.shape == (48, 2) and int(exact.sum()) == 24
    g, exact = probe_elements(SetAction("S10"), 2, draws=5, generator=torch.Generator().manual_seed(0))
    assert g.shape == (10, 10) and bool(exact.all())  # exact everywhere: no extra elements
    g, exact = probe_elements(ImageAction("C32"), 2, draws=3, generator=torch.Generator().manual_seed(0))
    assert g.shape == (6 + 2 * 4,) and exact[6:].all() and g[6:].tolist() == [0, 0, 8, 8, 16, 16, 24, 24]


# ---- assert_equivariant -------------------------------------------------------------------------------


def _mean_of_image(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(1, 2, 3))


def test_assert_equivariant_passes_equivariant_models_and_names_the_failing_element():
    x = torch.rand(4, 2, 6, 6)
    out = assert_equivariant(_mean_of_image, x, "D4")
    assert float(out["max"]) < 1e-6 and out["errors"].shape == (32,)

    # a map that only commutes with the half turn: C2 passes, C4 fails at the quarter turn
    def half_turn_only(t):
        return t + torch.rot90(t, 2, dims=(-2, -1)) + 0.3 * t.transpose(-1, -2)

    assert_equivariant(half_turn_only, x, "C2", act_out="image")
    with pytest.raises(
        AssertionError, match=r"not equivariant under C4: .* at element 1 .*2 of 4 elements fail"
    ):
        assert_equivariant(half_turn_only, x, "C4", act_out="image")


def test_assert_equivariant_checks_only_exact_elements_of_an_interpolating_action():
    x = torch.rand(3, 1, 9, 9)
    out = assert_equivariant(_mean_of_image, x, "SO2", draws=4)  # the mean moves under resampling
    assert out["errors"].shape == (3 * (4 + 4),) and float(out["errors"][:12].max()) > 1e-4
    with pytest.raises(ValueError, match="none of the 1 elements acts exactly"):
        assert_equivariant(_mean_of_image, x, "SO2", elements=torch.tensor([0.3], dtype=torch.float64))


def test_assert_equivariant_tolerance_follows_the_dtype():
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    bump = 1e-7  # far above float64 rounding, below the float32 tolerance

    def almost(t):
        return t.mean(dim=(1, 2, 3)) + bump * t[:, 0, 0, 0]

    assert TOLERANCES[torch.float64] < bump < TOLERANCES[torch.float32]
    with pytest.raises(AssertionError, match="for torch.float64"):
        assert_equivariant(almost, x, "C4")
    assert_equivariant(almost, x, "C4", atol=1e-5)
    assert_equivariant(lambda t: almost(t).float(), x, "C4")  # float32 outputs: float32 tolerance


def test_assert_equivariant_on_a_model_with_several_outputs():
    """A map and its pooled value: the map turns with the image, the pooled value is invariant."""
    x = torch.rand(3, 1, 6, 6)

    def two_outputs(t):
        return {"map": torch.tanh(t), "pooled": t.mean(dim=(1, 2, 3))}

    out = assert_equivariant(two_outputs, x, "D4", act_out={"map": "image", "pooled": None})
    assert float(out["max"]) < 1e-6
    with pytest.raises(AssertionError, match="not equivariant under D4"):  # the map declared invariant
        assert_equivariant(two_outputs, x, "D4", act_out={"map": None, "pooled": None})
    with pytest.raises(ValueError, match=r"outputs\['map'\] acts by C4, but the group is D4"):
        assert_equivariant(two_outputs, x, "D4", act_out={"map": ImageAction("C4"), "pooled": None})
