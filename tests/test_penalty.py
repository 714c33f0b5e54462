"""The equivariance penalty's core (no Lightning): gradient, proximal step, gamma per layer, schedules.

References are independent of the code under test: autograd of ``gamma/2 ||w - P w||^2`` with ``P``
the projector and, separately, a dense float64 matrix built from the group average (the definition of
Pi_E) for finite groups; the optimality condition of the proximal problem; plain float arithmetic.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_equi.groups import (
    SO2,
    CyclicGroup,
    DihedralGroup,
    SymmetricGroup,
    TorusTranslations,
    direct_sum,
    grid_representation,
    pair_representation,
    regular,
    standard,
    trivial,
)
from lightning_equi.schedules import Constant, Cosine, RelaxThenReturn, WarmUp, make_schedule
from lightning_equi.subspace import (
    EquivariancePenalty,
    SymmetrySpec,
    TensorAction,
    make_projector,
    penalty_gradient,
    penalty_value,
    proximal_update_,
)
from lightning_equi.subspace.base import group_average

F64 = torch.float64
C4, D4, T5 = CyclicGroup(4), DihedralGroup(4), TorusTranslations((5,))


def _actions() -> dict[str, TensorAction]:
    grid = grid_representation(C4, (3, 3))
    return {
        "orbit-mean": TensorAction((8, 4, 3, 3), [(2 * regular(C4), 1), (regular(C4), 1), (grid, 2)]),
        "orbit-mean-D4": TensorAction((8, 1), [(regular(D4), 1), (trivial(D4), 1)]),
        "fourier": TensorAction((10, 5), [(2 * standard(T5), 1), (standard(T5), 1)]),
        "closed-form": TensorAction(
            (4, 16), [(standard(SymmetricGroup(4)), 1), (pair_representation(SymmetricGroup(4)), 1)]
        ),
        "basis-SO2": TensorAction(
            (4, 2), [(direct_sum([standard(SO2()), standard(SO2())]), 1), (standard(SO2()), 1)]
        ),
        "basis-C3": TensorAction((3, 2), [(regular(CyclicGroup(3)), 1), (standard(CyclicGroup(3)), 1)]),
    }


_KINDS = {
    "orbit-mean": "orbit-mean",
    "orbit-mean-D4": "orbit-mean",
    "fourier": "fourier",
    "closed-form": "closed-form",
    "basis-SO2": "basis",
    "basis-C3": "basis",
}


def _escnn_projectors() -> dict[str, object]:
    """The projectors derived from escnn types: the band-limited basis, invariant biases, grid irreps."""
    pytest.importorskip("escnn")
    from escnn import gspaces
    from escnn import nn as enn

    from lightning_equi.adapters import to_dense

    out = {}
    for name, gs in (("C8", gspaces.rot2dOnR2(8)), ("SO2", gspaces.rot2dOnR2(-1, maximum_frequency=2))):
        rep = gs.regular_repr if name == "C8" else gs.irrep(1)
        t0, t1 = enn.FieldType(gs, [gs.trivial_repr]), enn.FieldType(gs, 2 * [rep])
        net = enn.SequentialModule(enn.R2Conv(t0, t1, 3, padding=1), enn.R2Conv(t1, t1, 3, padding=1))
        _, projection = to_dense(net)
        for e in projection.parameters:
            out.setdefault(f"escnn-{name}-{e.projector.kind}", e.projector)
    gs = gspaces.rot2dOnR2(8)
    t0, t1 = enn.FieldType(gs, [gs.trivial_repr]), enn.FieldType(gs, [gs.regular_repr])
    _, projection = to_dense(enn.SequentialModule(enn.R2ConvTransposed(t1, t0, 3)))
    for e in projection.parameters:
        out.setdefault(f"escnn-transposed-{type(e.projector).__name__}", e.projector)
    gs = gspaces.rot2dOnR2(4)
    t = enn.FieldType(gs, [gs.irrep(1), gs.regular_repr])
    _, projection = to_dense(enn.SequentialModule(enn.R2Conv(t, t, 3, padding=1)), subspace="grid")
    for e in projection.parameters:
        out.setdefault(f"escnn-C4-grid-{e.projector.kind}", e.projector)
    return out


def _projectors() -> dict[str, object]:
    return {name: make_projector(action) for name, action in _actions().items()}


def _check_gradient(projector, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(projector.shape, generator=gen, dtype=F64)
    gamma = 3.7
    analytic = penalty_gradient(w, projector, gamma)
    leaf = w.clone().requires_grad_(True)
    loss = 0.5 * gamma * (leaf - projector.project(leaf)).pow(2).sum()
    (autograd,) = torch.autograd.grad(loss, leaf)
    torch.testing.assert_close(analytic, autograd, atol=1e-12, rtol=0)
    if projector.dim < w.numel():  # a random tensor is off E: the check is not vacuous
        assert analytic.norm() > 1e-3
    torch.testing.assert_close(penalty_value(w, projector, gamma), loss.detach(), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(_actions()))
def test_analytic_gradient_equals_autograd(name):
    projector = _projectors()[name]
    assert projector.kind == _KINDS[name]  # each projector kind is covered
    _check_gradient(projector, seed=len(name))


@pytest.mark.escnn
def test_analytic_gradient_equals_autograd_for_escnn_projectors():
    projectors = _escnn_projectors()
    kinds = {p.kind for p in projectors.values()}
    assert {"escnn-basis", "invariant-bias"} <= kinds, kinds
    assert any(type(p).__name__ == "TransposedProjector" for p in projectors.values())
    for i, projector in enumerate(projectors.values()):
        _check_gradient(projector, seed=i)


@pytest.mark.parametrize("name", ["orbit-mean", "orbit-mean-D4", "fourier", "closed-form", "basis-C3"])
def test_analytic_gradient_equals_autograd_of_the_dense_group_average(name):
    """Reference independent of the projector: P = 1/|G| sum_g rho_bar(g) as a dense float64 matrix."""
    action = _actions()[name]
    n = math.prod(action.shape)
    eye = torch.eye(n, dtype=F64)
    dense = torch.stack([group_average(action, e.reshape(action.shape)).reshape(-1) for e in eye], 1)
    w = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=F64)
    leaf = w.clone().requires_grad_(True)
    gamma = 0.3
    (autograd,) = torch.autograd.grad(0.5 * gamma * (leaf - dense @ leaf).pow(2).sum(), leaf)
    analytic = penalty_gradient(w.reshape(action.shape), make_projector(action), gamma).reshape(-1)
    torch.testing.assert_close(analytic, autograd, atol=1e-12, rtol=0)


@pytest.mark.parametrize("eta_gamma", [0.5, 1.0, 10.0, 100.0])
def test_proximal_step_solves_the_proximal_problem(eta_gamma):
    """A' = argmin gamma/2 ||Pi_perp A'||^2 + 1/(2 eta) ||A' - A||^2: its gradient vanishes at A'."""
    projector = _projectors()["orbit-mean"]
    a = torch.randn(projector.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    eta = 0.01
    gamma = eta_gamma / eta
    new = a.clone()
    after = proximal_update_(new, projector, gamma, eta)
    residual = penalty_gradient(new, projector, gamma) + (new - a) / eta
    assert residual.norm() <= 1e-10 * a.norm() / eta
    torch.testing.assert_close(projector.project(new), projector.project(a), atol=1e-12, rtol=0)
    torch.testing.assert_close(after, penalty_value(new, projector, gamma), atol=1e-12, rtol=1e-10)


def test_proximal_step_at_gamma_inf_is_the_projection_and_at_zero_the_identity():
    projector = _projectors()["fourier"]
    a = torch.randn(projector.shape, generator=torch.Generator().manual_seed(3))
    w = a.clone()
    proximal_update_(w, projector, math.inf, 0.1)
    assert torch.equal(w, projector.project(a))
    w = a.clone()
    proximal_update_(w, projector, 0.0, 0.1)
    assert torch.equal(w, a)


# ---- a whole model ----------------------------------------------------------------------------------


def _net() -> tuple[nn.Module, object]:
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    spec = SymmetrySpec("C4").layer("0", "regular", "regular").layer("2", "regular", "trivial")
    return net, spec.bind(net)


def test_model_penalty_sums_its_layers_with_their_own_gamma():
    net, projection = _net()
    penalty = EquivariancePenalty(projection, gamma={"0": 2.0, "2.weight": 5.0, "*": 0.5})
    assert penalty.gammas(0) == {"0.weight": 2.0, "0.bias": 2.0, "2.weight": 5.0, "2.bias": 0.5}
    expected = sum(
        0.5 * g * float((e.tensor - e.projector.project(e.tensor)).detach().pow(2).sum())
        for e, g in zip(projection.parameters, (2.0, 2.0, 5.0, 0.5), strict=True)
    )
    assert float(penalty.value()) == pytest.approx(expected, rel=1e-12)
    for e in projection.parameters:
        e.tensor.grad = torch.zeros_like(e.tensor)
    values = penalty.add_gradient_(0, scale=4.0)
    assert float(sum(values.values())) == pytest.approx(expected, rel=1e-12)
    for e in projection.parameters:
        g = penalty.gammas(0)[e.name]
        torch.testing.assert_close(e.tensor.grad, 4.0 * penalty_gradient(e.tensor, e.projector, g))


def test_additive_form_leaves_zero_gamma_layers_bit_for_bit_and_fills_missing_gradients():
    net, projection = _net()
    penalty = EquivariancePenalty(projection, gamma={"0": 0.0, "*": 1.0})
    grad = torch.randn(8, 4, dtype=F64)
    net[0].weight.grad = grad.clone()
    penalty.add_gradient_(0)
    assert torch.equal(net[0].weight.grad, grad)
    torch.testing.assert_close(
        net[2].weight.grad, penalty_gradient(net[2].weight, projection.entries[2].projector, 1.0)
    )


def test_proximal_step_uses_each_parameters_own_step_size():
    net, projection = _net()
    before = {e.name: float(e.projector.distance(e.tensor)) for e in projection.parameters}
    lrs = {"0.weight": 0.1, "0.bias": 0.0, "2.weight": 1.0, "2.bias": 0.5}
    EquivariancePenalty(projection, gamma=10.0).proximal_step_(0, lrs)
    for e in projection.parameters:
        factor = 1 / (1 + 10.0 * lrs[e.name])
        assert float(e.projector.distance(e.tensor)) == pytest.approx(factor * before[e.name], rel=1e-10)


def test_gamma_mappings_that_do_not_fit_the_model_are_refused_naming_the_layers():
    _, projection = _net()
    with pytest.raises(ValueError, match=r"gamma names \['conv9'\].*constrained layers: \['0', '2'\]"):
        EquivariancePenalty(projection, gamma={"conv9": 1.0, "*": 1.0})
    with pytest.raises(ValueError, match=r"no value for the constrained layers \['2'\].*'\*'"):
        EquivariancePenalty(projection, gamma={"0": 1.0})
    with pytest.raises(ValueError, match=r"gamma\['0'\] must be a number >= 0, got -1"):
        EquivariancePenalty(projection, gamma={"0": -1, "*": 1.0})
    with pytest.raises(ValueError, match=r"gamma must be a number >= 0, got 'big'"):
        EquivariancePenalty(projection, gamma="big")


def test_a_provider_value_that_is_not_a_gamma_is_refused_naming_the_layer_and_step():
    _, projection = _net()
    penalty = EquivariancePenalty(projection, gamma={"0": lambda step: 1.0 - step, "*": 1.0})
    penalty.gammas(1)
    with pytest.raises(ValueError, match=r"gamma of '0' at step 2 must be a number >= 0, got -1.0"):
        penalty.gammas(2)
    with pytest.raises(ValueError, match="only the proximal form allows"):
        EquivariancePenalty(projection, gamma=math.inf).add_gradient_(0)


def test_a_provider_is_called_once_per_step_and_its_state_round_trips():
    class Provider:
        def __init__(self) -> None:
            self.calls, self.level = 0, 1.0

        def __call__(self, step: int) -> float:
            self.calls += 1
            return self.level

        def state_dict(self) -> dict:
            return {"level": self.level}

        def load_state_dict(self, state: dict) -> None:
            self.level = state["level"]

    _, projection = _net()
    provider = Provider()
    penalty = EquivariancePenalty(projection, gamma=provider)
    penalty.gammas(0)
    assert provider.calls == 1  # one call for the four parameters
    provider.level = 7.0
    state = penalty.state_dict()
    fresh = Provider()
    other = EquivariancePenalty(projection, gamma=fresh)
    other.load_state_dict(state)
    assert fresh.level == 7.0
    with pytest.raises(ValueError, match="holds the states of 2 gamma provider"):
        other.load_state_dict([{}, {}])


# ---- schedules ---------------------------------------------------------------------------------------


def test_schedules_by_hand():
    assert [WarmUp(8.0, steps=4)(t) for t in (0, 2, 4, 9)] == [0.0, 4.0, 8.0, 8.0]
    c = Cosine(start=0.0, end=2.0, steps=2)
    assert [c(t) for t in (0, 1, 2, 3)] == pytest.approx([0.0, 1.0, 2.0, 2.0])
    r = RelaxThenReturn(relax=1e-2, final=1e2, relax_steps=1, return_steps=4)
    assert [r(t) for t in range(6)] == pytest.approx([1e-2, 1e-2, 1e-1, 1.0, 10.0, 100.0])
    assert RelaxThenReturn(0.0, 4.0, 0, 2)(1) == 2.0  # linear from 0
    assert (
        make_schedule(
            {"kind": "relax_return", "relax": 0.0, "final": math.inf, "relax_steps": 2, "return_steps": 0}
        )(2)
        == math.inf
    )
    assert make_schedule(Constant(2.0)) == Constant(2.0)


def test_schedules_refuse_bad_arguments():
    with pytest.raises(ValueError, match="`steps` must be an int >= 1, got 0"):
        WarmUp(1.0, steps=0)
    with pytest.raises(ValueError, match="no ramp to infinity: pass return_steps=0"):
        RelaxThenReturn(1.0, math.inf, 10, 5)
    with pytest.raises(ValueError, match="start must be a number >= 0"):
        Cosine(start=-1.0, end=1.0, steps=3)
    with pytest.raises(ValueError, match=r"gamma schedule 'warmup': .*unexpected keyword argument 'step'"):
        make_schedule({"kind": "warmup", "gamma": 1.0, "step": 3})
    with pytest.raises(ValueError, match="a schedule's step must be an int >= 0, got -1"):
        Constant(1.0)(-1)


def test_frozen_parameters_are_left_bit_for_bit_by_both_forms():
    net, projection = _net()
    net[0].weight.requires_grad_(False)
    frozen = net[0].weight.detach().clone()
    penalty = EquivariancePenalty(projection, gamma=5.0)
    penalty.add_gradient_(0)
    values = penalty.proximal_step_(0, lr=0.1)
    assert net[0].weight.grad is None and torch.equal(net[0].weight, frozen)
    assert "0.weight" not in values and "2.weight" in values
