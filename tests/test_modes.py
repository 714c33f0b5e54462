"""The mode flag: build_callbacks("nom" | "aug" | "equi", ...) and its errors."""

from __future__ import annotations

import pickle

import pytest
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_equi.callbacks import (
    MODES,
    EquivarianceMonitor,
    EquivariantProjection,
    HaarAugmentation,
    build_callbacks,
)
from lightning_equi.subspace import SymmetrySpec
from lightning_equi.testing import BoringEquiModel


def _types(callbacks) -> list[type]:
    return [type(cb) for cb in callbacks]


def test_modes_build_their_callbacks_monitor_first():
    assert _types(build_callbacks("nom")) == [EquivarianceMonitor]
    assert _types(build_callbacks("aug", group="C4")) == [EquivarianceMonitor, HaarAugmentation]
    assert _types(build_callbacks("equi")) == [EquivarianceMonitor, EquivariantProjection]
    assert build_callbacks("nom", monitor=False) == []
    assert _types(build_callbacks("equi", monitor=False)) == [EquivariantProjection]


def test_options_reach_the_right_callback():
    monitor, aug = build_callbacks(
        "aug", group="D4", inputs="image", targets="image", copies=3, seed=5, every_n_steps=7, probe_size=2
    )
    assert (aug.copies, aug.seed, aug.group.name) == (3, 5, "D4")
    assert (monitor.every_n_steps, monitor.probe_size, monitor.outputs) == (7, 2, "image")
    monitor, projection = build_callbacks("equi", reproject_weights=True, check_atol=1e-3)
    assert (projection.reproject_weights, projection.check_atol) == (True, 1e-3)


def test_group_comes_from_the_spec():
    spec = SymmetrySpec("C4")
    _, aug = build_callbacks("aug", spec=spec)
    assert aug.group.name == "C4"


def test_aug_group_comes_from_the_models_symmetry_spec():
    _, aug = build_callbacks("aug", model=BoringEquiModel(), monitor=True)
    assert aug.group.name == "C4"
    with pytest.raises(
        MisconfigurationException, match=r"group='C2' but BoringEquiModel.symmetry_spec\(\) is for C4"
    ):
        build_callbacks("aug", group="C2", model=BoringEquiModel())  # two groups: refused (#12)


def test_callbacks_pickle_for_ddp_spawn():
    for mode in MODES:
        pickle.loads(pickle.dumps(build_callbacks(mode, group="C4", seed=0)))


def test_unknown_mode_lists_the_valid_ones():
    with pytest.raises(
        MisconfigurationException, match=r"(?s)unknown mode 'augment'. Valid modes:.*nom.*aug.*equi"
    ):
        build_callbacks("augment")


def test_aug_without_data_actions():
    with pytest.raises(
        MisconfigurationException, match=r"mode='aug' needs the action of the group on the data"
    ):
        build_callbacks("aug", group="C4", inputs=None, targets=None)


def test_aug_without_group():
    with pytest.raises(MisconfigurationException, match=r"mode='aug' needs the group to sample from"):
        build_callbacks("aug", inputs="image")


def test_equi_without_spec_says_how_to_declare_one():
    class Plain(nn.Module):
        pass

    with pytest.raises(
        MisconfigurationException,
        match=r"(?s)mode='equi' needs the symmetry spec.*Plain has no.*SymmetrySpec\(",
    ):
        build_callbacks("equi", model=Plain())
    build_callbacks("equi", model=BoringEquiModel())  # declares symmetry_spec()


def test_group_and_spec_must_agree():
    with pytest.raises(MisconfigurationException, match=r"group='D4' but the spec is for C4"):
        build_callbacks("equi", group="D4", spec=SymmetrySpec("C4"))


def test_unknown_option():
    with pytest.raises(MisconfigurationException, match=r"unknown option\(s\) \['copy'\].*valid:.*'copies'"):
        build_callbacks("aug", group="C4", copy=2)
