"""The eq_aug_reg experiment (#16): its C4 CNN, its data and its three studies at toy sizes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lightning_equi.experiments import eq_aug_reg as E
from lightning_equi.subspace import equivariant_init_, resolve_spec

pytest.importorskip("sklearn")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_cnn_in_E_is_invariant_to_quarter_turns_and_off_E_it_is_not():
    torch.manual_seed(0)
    model = E.OmegaCNN().double()
    x = torch.randn(5, 1, 16, 16, dtype=torch.float64)
    turned = lambda k: model(torch.rot90(x, k, dims=(-2, -1)))  # noqa: E731
    assert max(float((turned(k) - model(x)).abs().max()) for k in (1, 2, 3)) > 1e-3
    equivariant_init_(model, model.symmetry_spec())
    for k in (1, 2, 3):
        torch.testing.assert_close(turned(k), model(x), atol=1e-12, rtol=0)


def test_perturbation_is_perpendicular_to_E():
    model = E.OmegaCNN()
    equivariant_init_(model, model.symmetry_spec())
    inside = {e.name: e.projector.project(e.tensor).clone() for e in resolve_spec(model).parameters}
    E.perturb_perp_(model, 1e-3, seed=0)
    projection = resolve_spec(model)
    assert 1e-3 < float(projection.total_distance()) < 1e-1
    for e in projection.parameters:  # the E part is unchanged
        torch.testing.assert_close(e.projector.project(e.tensor), inside[e.name], atol=1e-7, rtol=0)


def test_rotation_bias_draws_the_orientations_it_says():
    data = E.TensorDataset(torch.zeros(4000, 1, 4, 4), torch.zeros(4000, dtype=torch.long))
    x = torch.zeros(4000, 1, 4, 4)
    x[:, :, 0, 0] = 1.0  # a marker in the top-left corner shows the turn
    turned = E.rotation_biased(E.TensorDataset(x, data.tensors[1]), 0.4, seed=0).tensors[0]
    upright = float(turned[:, 0, 0, 0].mean())
    assert abs(upright - (0.4 + 0.6 / 4)) < 0.03


def test_the_three_studies_at_toy_sizes(tmp_path):
    out = tmp_path / "reg"
    attractor = E.run_attractor(
        out, seeds=1, steps=20, gammas=(10.0, 100.0), record_every=5, echo=lambda s: None
    )
    summary = attractor["summary"]
    assert summary["equi"] < 1e-6 and all(d > 0 for d in summary["nom+reg"])
    assert math.isfinite(summary["slope_nom+reg"])
    divergence = E.run_divergence(out, steps=15, eta_gammas=(1.0, 10.0), echo=lambda s: None)
    by = {(r["eta_gamma"], r["penalty"]): r for r in divergence["runs"]}
    assert by[10.0, "additive"]["diverged"] and not by[10.0, "proximal"]["diverged"]
    accuracy = E.run_accuracy(out, seeds=1, steps=10, gammas=(1.0,), echo=lambda s: None)
    equi = next(r for r in accuracy["runs"] if r["arm"] == "equi")
    assert equi["equivariance_error"] < 1e-5
    for name in ("attractor", "divergence", "accuracy"):
        assert (out / f"{name}.png").stat().st_size > 1000
        assert json.loads((out / f"{name}.json").read_text())["runs"]
