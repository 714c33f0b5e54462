"""StabilityMonitor: the core's spectrum logged from a Lightning fit, under inference mode, resumed."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_equi.actions import ImageAction
from lightning_equi.callbacks import EquivariantProjection, RelaxedEquivariance, StabilityMonitor
from lightning_equi.groups import get_group, grid_representation
from lightning_equi.stability import FrozenRisk, ParameterSpace, stability_spectrum
from lightning_equi.subspace import SymmetrySpec

D = torch.float64


class Rot(L.LightningModule):
    """C4 on a 3 x 3 pixel grid: two dense grid-equivariant layers and a free BatchNorm; masks as targets."""

    def __init__(self, lr: float = 0.5) -> None:
        super().__init__()
        self.lr = lr
        self.layers = nn.ModuleList([nn.Linear(9, 18, bias=False), nn.Linear(18, 18, bias=False)])
        self.norm = nn.BatchNorm1d(2)

    def forward(self, x: Tensor) -> Tensor:
        h = (x - 0.5).flatten(1)
        for layer in self.layers:
            h = F.leaky_relu(layer(h))
        return self.norm(h.reshape(h.shape[0], 2, 9)).reshape(h.shape[0], 2, 3, 3)

    def loss(self, out: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(out, target)

    def training_step(self, batch, batch_idx):
        return self.loss(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def symmetry_spec(self) -> SymmetrySpec:
        grid = grid_representation(get_group("C4"), (3, 3))
        return SymmetrySpec("C4").layers(nn.Linear, fields=grid).free(self.norm)

    def data_actions(self):
        return [ImageAction("C4"), ImageAction("C4")]


def _data(n: int = 8) -> TensorDataset:
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(n, 1, 3, 3, generator=gen, dtype=D)
    y = (torch.rand(n, 2, 3, 3, generator=gen) < 0.5).to(D)
    return TensorDataset(x, y)


def _trainer(callbacks, max_steps: int, tmp_path, **kw) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        **kw,
    )


def _fit(
    tmp_path, max_steps: int = 4, ckpt_path=None, model=None, monitor=None, equi: bool = True
) -> tuple[Rot, StabilityMonitor, L.Trainer]:
    """Train ``model`` in equi mode (projected SGD, full batch) with ``monitor``."""
    torch.manual_seed(0)
    model = model if model is not None else Rot().double()
    monitor = monitor or StabilityMonitor(every_n_steps=2, tol=1e-10)
    trainer = _trainer([EquivariantProjection()] * equi + [monitor], max_steps, tmp_path)
    trainer.fit(model, DataLoader(_data(), batch_size=8), ckpt_path=ckpt_path)
    return model, monitor, trainer


def test_monitor_logs_the_core_spectrum_of_the_frozen_first_batch(tmp_path) -> None:
    model, monitor, trainer = _fit(tmp_path, max_steps=5)
    assert [h["step"] for h in monitor.history] == [2.0, 4.0, 5.0]  # every 2 steps, then at fit end
    last = monitor.history[-1]
    # independently: the orbit-augmented risk of the same 8 samples at the final weights
    x, y = _data().tensors
    space = ParameterSpace(model, model.symmetry_spec().bind(model))
    risk = FrozenRisk(space, model.loss, (x, y), model.data_actions(), augmentation="orbit")
    ref = stability_spectrum(risk, steps=60, tol=1e-10)
    for key in ("lambda_min_perp", "lambda_max_perp", "lambda_max_E"):
        assert last[key] == pytest.approx(ref[key], rel=1e-8, abs=1e-12), key
    assert last["gamma_crit"] == max(0.0, -last["lambda_min_perp"]) == monitor.gamma()
    assert last["two_over_lr"] == pytest.approx(2 / 0.5)
    assert float(trainer.callback_metrics["stability/lambda_min_perp"]) == pytest.approx(
        last["lambda_min_perp"]
    )
    assert model.training  # the measurement ran in eval mode and gave the mode back


def test_measure_works_under_inference_mode(tmp_path) -> None:
    # the Lightning trap: evaluation hooks run under torch.inference_mode, which enable_grad cannot undo
    model, monitor, _ = _fit(tmp_path, max_steps=2)
    with torch.inference_mode():
        values = monitor.measure(model)
    assert values["lambda_min_perp"] == pytest.approx(monitor.history[-1]["lambda_min_perp"], rel=1e-8)
    fresh = StabilityMonitor()
    fresh._projection, fresh._action, fresh._loss = monitor._projection, monitor._action, model.loss
    with torch.inference_mode():
        fresh._freeze(tuple(t.clone() for t in _data().tensors))  # inference tensors as the frozen batch
        assert fresh.measure(model)["lambda_max_E"] == pytest.approx(values["lambda_max_E"], rel=1e-8)


def test_resume_from_a_checkpoint_logs_what_an_uninterrupted_fit_logs(tmp_path) -> None:
    _, whole, _ = _fit(tmp_path / "a", max_steps=6)
    _, first, trainer = _fit(
        tmp_path / "b", max_steps=4, monitor=StabilityMonitor(every_n_steps=2, at_fit_end=False, tol=1e-10)
    )
    path = tmp_path / "b" / "four.ckpt"
    trainer.save_checkpoint(path)
    torch.manual_seed(1)  # another init: the checkpoint must bring the weights and the frozen batch back
    other = Rot().double()
    resumed = StabilityMonitor(every_n_steps=2, tol=1e-10)
    _fit(tmp_path / "b", max_steps=6, ckpt_path=path, model=other, monitor=resumed)
    assert [h["step"] for h in resumed.history] == [h["step"] for h in whole.history] == [2.0, 4.0, 6.0]
    for a, b in zip(resumed.history, whole.history, strict=True):
        assert a["lambda_min_perp"] == pytest.approx(b["lambda_min_perp"], rel=1e-8)
        assert a["lambda_max_E"] == pytest.approx(b["lambda_max_E"], rel=1e-8)


def test_isotypic_components_and_sampled_augmentation(tmp_path) -> None:
    monitor = StabilityMonitor(every_n_steps=None, isotypic=True, augmentation=2, max_samples=4, steps=30)
    _, monitor, _ = _fit(tmp_path, max_steps=1, monitor=monitor)
    (only,) = monitor.history
    assert {"lambda_min/k=1", "lambda_min/k=2", "lambda_max/k=1", "lambda_max/k=2"} <= set(only)
    assert only["hvps"] <= 4 * 30 + 1


def test_refusals_name_the_option(tmp_path) -> None:
    with pytest.raises(ValueError, match="every_n_steps"):
        StabilityMonitor(every_n_steps=0)
    with pytest.raises(ValueError, match="augmentation"):
        StabilityMonitor(augmentation="all")

    class NoLoss(Rot):
        loss = None

        def training_step(self, batch, batch_idx):
            return F.binary_cross_entropy_with_logits(self(batch[0]), batch[1])

    with pytest.raises(MisconfigurationException, match="pass loss="):
        _fit(tmp_path, model=NoLoss().double(), monitor=StabilityMonitor())

    class NoActions(Rot):
        data_actions = None

    with pytest.raises(MisconfigurationException, match="pass inputs="):
        _fit(tmp_path, model=NoActions().double(), monitor=StabilityMonitor())

    class Perm(Rot):
        def symmetry_spec(self) -> SymmetrySpec:
            return SymmetrySpec("S3").free(self)

    with pytest.raises(MisconfigurationException, match="isotypic=True"):
        _fit(
            tmp_path, model=Perm().double(), monitor=StabilityMonitor(isotypic=True, inputs="set"), equi=False
        )


def test_relaxed_mode_takes_gamma_auto_from_the_monitor(tmp_path) -> None:
    torch.manual_seed(0)
    model = Rot().double()
    monitor = StabilityMonitor(every_n_steps=1, tol=1e-8)
    relaxed = RelaxedEquivariance(gamma="auto")
    trainer = _trainer([relaxed, monitor], 3, tmp_path)
    trainer.fit(model, DataLoader(_data(), batch_size=8))
    assert [h["step"] for h in monitor.history] == [1.0, 2.0, 3.0]
    # the third step's proximal shrink used 1.5 gamma_crit of the measurement after the second step
    (used,) = set(relaxed.penalty_term.last_gammas.values())
    assert used == pytest.approx(1.5 * monitor.history[1]["gamma_crit"]) and used > 0
    assert monitor.gamma_provider(factor=2.0)(0) == 2.0 * monitor.gamma()
    with pytest.raises(MisconfigurationException, match="add StabilityMonitor"):
        _trainer([RelaxedEquivariance(gamma="auto")], 1, tmp_path).fit(
            Rot().double(), DataLoader(_data(), batch_size=8)
        )
