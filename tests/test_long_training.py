"""Equi over thousands of optimizer steps: re-projection keeps float rounding from accumulating."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback

from lightning_equi.callbacks import EquivariantProjection
from lightning_equi.groups import get_group, standard
from lightning_equi.subspace import resolve_spec
from lightning_equi.testing import IrrepsEquiModel


class _Trace(Callback):
    """The model's relative distance to E after every ``every``-th optimizer step."""

    def __init__(self, every: int) -> None:
        self.every, self.trace = every, []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step % self.every == 0:
            self.trace.append(float(resolve_spec(pl_module).relative_total_distance()))


@pytest.mark.parametrize(("optimizer", "lr"), [("adam", 0.02), ("rmsprop", 0.005)])
def test_equi_stays_in_E_for_thousands_of_adaptive_steps(quiet_trainer, optimizer, lr):
    # C3 acting on the plane by the standard representation: the equivariant weights have entries
    # cos(2 pi k / 3), which an elementwise optimizer moves off E at every step (see the negative
    # control in test_callbacks.py), so this exercises gradient *and* weight re-projection each step
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    model = IrrepsEquiModel(group="C3", optimizer=optimizer, lr=lr, n_samples=64, batch_size=16)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trace = _Trace(every=250)
    quiet_trainer([EquivariantProjection(), trace], max_steps=2000).fit(model)
    assert len(trace.trace) == 8
    assert max(trace.trace) < 1e-6, f"left E during training: {trace.trace}"
    # the weights travelled far from their start (the test is not vacuous) ...
    moved = sum((v - start[k]).square().sum() for k, v in model.state_dict().items()).sqrt()
    size = sum(v.square().sum() for v in start.values()).sqrt()
    assert moved > 0.5 * size, f"the weights hardly moved ({moved:.3g} vs {size:.3g})"
    x = torch.randn(256, 1, 2, generator=torch.Generator().manual_seed(1))
    # ... and the trained function commutes with every rotation of C3 to float32 precision
    G = get_group("C3")
    rho = standard(G)(G.elements(), dtype=torch.float32)  # (3, 2, 2)
    with torch.no_grad():
        fx = model(x)
        for r in rho:
            err = (model(x @ r.T) - fx @ r.T).norm() / fx.norm()
            assert err < 1e-5, f"not equivariant after training: {err:.3g}"


class _LBFGSModel(IrrepsEquiModel):
    """LBFGS evaluates its closure several times per step; each gradient must be projected."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.LBFGS(self.parameters(), lr=0.1, max_iter=5, line_search_fn="strong_wolfe")


def test_equi_stays_in_E_under_a_closure_optimizer(quiet_trainer):
    torch.set_num_threads(1)
    ends = {}
    for mode, callbacks in (("equi", [EquivariantProjection()]), ("nom", [])):
        L.seed_everything(0, verbose=False)
        model = _LBFGSModel(group="C3", n_samples=64, batch_size=16)
        quiet_trainer(callbacks, max_steps=30).fit(model)
        ends[mode] = float(resolve_spec(model).relative_total_distance())
    assert ends["equi"] < 1e-6, ends
    assert ends["nom"] > 0.05, ends  # the negative control: LBFGS alone leaves E
