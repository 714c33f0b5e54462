"""Stability Monitor
=================

Log the extreme eigenvalues of the augmented Hessian on E-perp while a model trains: whether E is a
stable set of the augmented gradient flow where the model is now, and how large a penalty would make it
stable. A thin adapter over :mod:`lightning_equi.stability`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from typing_extensions import override

from lightning_equi.actions import ActionConfig, BatchAction, batch_action
from lightning_equi.callbacks.messages import NO_SPEC_MESSAGE, binds_late
from lightning_equi.stability import FrozenRisk, ParameterSpace, stability_spectrum
from lightning_equi.subspace import ModelProjection, SymmetrySpec, resolve_spec

__all__ = ["StabilityMonitor"]

PREFIX = "stability/"


class StabilityMonitor(Callback):
    r"""Log ``lambda_min`` and ``lambda_max`` of the augmented Hessian on E-perp, ``lambda_max`` on E,
    ``gamma_crit = max(0, -lambda_min)`` and the discrete-time bound ``2 / eta``.

    Near E the deviation ``d = Pi_perp A`` of augmented gradient descent at step ``eta`` evolves as
    ``d <- (I - eta M) d``, ``M = Pi_perp H_aug Pi_perp``: E repels along eigenvectors of ``M`` with
    ``lambda < 0`` (a penalty ``gamma/2 ||Pi_perp A||^2`` with ``gamma > gamma_crit`` makes it attract) and
    descent oscillates out along those with ``lambda > 2 / eta``. The operator is *frozen*: the first
    ``max_samples`` samples of the first training batch (or ``batch``), cloned once and saved in the
    checkpoint, transformed by every element of a finite group (``augmentation="orbit"``) or by ``m``
    seeded draws each (``augmentation=m``), the model evaluated in eval mode (BatchNorm on its running
    statistics, dropout off). Each measurement is one Lanczos run on E-perp and one on E (at most
    ``steps`` Hessian-vector products each, forward-over-reverse), plus one per isotypic component with
    ``isotypic=True`` (cyclic groups and tori).

    It measures every ``every_n_steps`` optimizer steps (``None``: never during training) and at fit end
    (``at_fit_end``), inside ``torch.inference_mode(False)`` and ``torch.enable_grad()`` (so it works from
    any hook, whatever ``Trainer(inference_mode=...)``). Values go to every logger under ``stability/``,
    into ``trainer.callback_metrics`` and into :attr:`history`; :meth:`gamma` returns the latest
    ``gamma_crit`` (a provider for a penalty's strength).

    Args:
        every_n_steps: measure every this many optimizer steps; ``None``: only at fit end.
        at_fit_end: measure once more when the fit ends.
        spec: the symmetry spec (else the model's ``symmetry_spec()``, else the ``spec`` another callback
            of the Trainer was configured with).
        loss: ``loss(outputs, targets)``, a mean over samples; ``None``: the model's ``loss`` method.
        inputs, targets: the actions on the batch entries, as for
            :class:`~lightning_equi.callbacks.HaarAugmentation`; both ``None``: the model's
            ``data_actions()``.
        augmentation: ``"orbit"`` or an int ``m`` (frozen draws per sample).
        batch: the batch ``(inputs, targets)`` to freeze; ``None``: the first training batch.
        max_samples: at most this many samples of the batch.
        steps, tol: Lanczos' maximum number of HVPs per run and residual tolerance.
        isotypic: also per isotypic component (finite abelian groups).
        chunk: samples per HVP evaluation (memory), ``None`` for all at once.
        seed: the seed of the draws and of the Lanczos start vectors.

    Example:
        >>> mon = StabilityMonitor(every_n_steps=100, inputs="image", augmentation="orbit")
        >>> mon.gamma() is None  # nothing measured yet
        True
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        at_fit_end: bool = True,
        spec: SymmetrySpec | ModelProjection | None = None,
        loss: Callable[[Any, Any], Tensor] | None = None,
        inputs: ActionConfig = None,
        targets: ActionConfig = None,
        augmentation: str | int = "orbit",
        batch: tuple[Any, Any] | None = None,
        max_samples: int = 64,
        steps: int = 60,
        tol: float = 1e-6,
        isotypic: bool = False,
        chunk: int | None = None,
        seed: int = 0,
    ) -> None:
        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps < 1):
            raise ValueError(f"every_n_steps must be None or an int >= 1, got {every_n_steps!r}")
        if augmentation != "orbit" and not (isinstance(augmentation, int) and augmentation >= 1):
            raise ValueError(f"augmentation must be 'orbit' or an int >= 1, got {augmentation!r}")
        self.every_n_steps, self.at_fit_end = every_n_steps, bool(at_fit_end)
        self.spec, self.loss, self.inputs, self.targets = spec, loss, inputs, targets
        self.augmentation, self.batch, self.max_samples = augmentation, batch, int(max_samples)
        self.steps, self.tol, self.isotypic, self.chunk, self.seed = steps, tol, isotypic, chunk, int(seed)
        self.history: list[dict[str, float]] = []
        self._frozen: tuple[Any, Any] | None = None
        self._last_step = -1
        self._projection: ModelProjection | None = None

    # ---- what other code reads --------------------------------------------------------------------

    def gamma(self) -> float | None:
        """The latest ``gamma_crit`` (``None`` before the first measurement)."""
        return self.history[-1]["gamma_crit"] if self.history else None

    def gamma_provider(self, factor: float = 1.5, default: float = 0.0) -> CriticalGamma:
        """A gamma schedule ``step -> factor * gamma_crit`` of the latest measurement (``default`` before
        the first): what ``RelaxedEquivariance(gamma="auto")`` uses. ``factor > 1`` makes E attract at the
        last measured point (every eigenvalue of ``M + gamma`` on E-perp positive)."""
        return CriticalGamma(self, factor, default)

    # ---- hooks ------------------------------------------------------------------------------------

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.history, self._frozen, self._last_step, self._projection = [], None, -1, None
        if not binds_late(pl_module):
            self._setup_binding(trainer, pl_module)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._projection is None or self._projection.model is not pl_module:
            self._setup_binding(trainer, pl_module)

    def _setup_binding(self, trainer: Trainer, pl_module: LightningModule) -> None:
        spec = self.spec
        if spec is None and not callable(getattr(pl_module, "symmetry_spec", None)):
            configured = (getattr(cb, "spec", None) for cb in trainer.callbacks if cb is not self)
            spec = next((s for s in configured if isinstance(s, (SymmetrySpec, ModelProjection))), None)
            if spec is None:
                raise MisconfigurationException(
                    NO_SPEC_MESSAGE.format(who="StabilityMonitor", name=type(pl_module).__name__)
                )
        try:
            self._projection = resolve_spec(pl_module, spec)
        except (TypeError, ValueError) as err:
            raise MisconfigurationException(f"StabilityMonitor: {err}") from err
        group = self._projection.group
        if self.inputs is None and self.targets is None:
            data_actions = getattr(pl_module, "data_actions", None)
            if not callable(data_actions):
                raise MisconfigurationException(
                    f"StabilityMonitor: how {group.name} acts on the batch is not known: pass inputs= (an "
                    "action name such as 'image', or an Action) and targets= if they transform too, or give "
                    "the model a data_actions() method"
                )
            self._action = BatchAction(list(data_actions()))
        else:
            try:
                self._action = batch_action(group, self.inputs, self.targets)
            except (TypeError, ValueError) as err:
                raise MisconfigurationException(f"StabilityMonitor(inputs=, targets=): {err}") from err
        self._loss = self.loss if self.loss is not None else getattr(pl_module, "loss", None)
        if not callable(self._loss):
            raise MisconfigurationException(
                f"StabilityMonitor: {type(pl_module).__name__} has no loss(outputs, targets) method; pass "
                "loss=... (a mean over samples, e.g. torch.nn.functional.cross_entropy)"
            )
        if self.isotypic:
            try:
                ParameterSpace(pl_module, self._projection).isotypic_components()
            except ValueError as err:
                raise MisconfigurationException(f"StabilityMonitor(isotypic=True): {err}") from err

    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._frozen is None:
            self._freeze(self.batch if self.batch is not None else batch)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps is not None and step != self._last_step and step % self.every_n_steps == 0:
            self._measure_and_log(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_fit_end and self._frozen is not None and trainer.global_step != self._last_step:
            self._measure_and_log(trainer, pl_module)

    # ---- measuring --------------------------------------------------------------------------------

    def _freeze(self, batch: Any) -> None:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise MisconfigurationException(
                "StabilityMonitor freezes a batch (inputs, targets); this batch is a "
                f"{type(batch).__name__}: pass batch=(inputs, targets)"
            )
        with torch.inference_mode(False):
            self._frozen = tuple(
                t[: self.max_samples].detach().clone().cpu() if isinstance(t, Tensor) else t for t in batch
            )

    def measure(self, pl_module: LightningModule) -> dict[str, float]:
        """The spectrum at the model's current parameters on the frozen batch (see the class docstring)."""
        if self._frozen is None or self._projection is None:
            raise RuntimeError("StabilityMonitor.measure: no frozen batch yet (the fit has not started)")
        with torch.inference_mode(False), torch.enable_grad():
            dtype = next((p.dtype for p in pl_module.parameters() if p.is_floating_point()), None)
            batch = tuple(
                t.to(pl_module.device, dtype=dtype if t.is_floating_point() else None)
                if isinstance(t, Tensor)
                else t
                for t in self._frozen
            )
            space = ParameterSpace(pl_module, self._projection)
            risk = FrozenRisk(
                space, self._loss, batch, self._action, self.augmentation, self.seed, self.chunk
            )
            return stability_spectrum(
                risk, steps=self.steps, tol=self.tol, seed=self.seed, isotypic=self.isotypic
            )

    def _measure_and_log(self, trainer: Trainer, pl_module: LightningModule) -> None:
        values = self.measure(pl_module)
        lr = _learning_rate(trainer)
        if lr is not None and lr > 0:
            values["two_over_lr"] = 2.0 / lr
        step = trainer.global_step
        self._last_step = step
        self.history.append({"step": float(step), **values})
        metrics = {PREFIX + k: v for k, v in values.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})

    # ---- checkpoint -------------------------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "frozen": self._frozen,
            "history": [dict(h) for h in self.history],
            "last_step": self._last_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._frozen = state_dict.get("frozen")
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self._last_step = int(state_dict.get("last_step", -1))


class CriticalGamma:
    """``step -> factor * gamma_crit`` from a :class:`StabilityMonitor` (``default`` before it has measured).

    Stateless: the monitor's history, which it reads, is saved in the monitor's own checkpoint state.

    Example:
        >>> provider = StabilityMonitor().gamma_provider(factor=2.0, default=0.5)
        >>> provider(0)
        0.5
    """

    def __init__(self, monitor: StabilityMonitor, factor: float = 1.5, default: float = 0.0) -> None:
        if not factor >= 0 or not default >= 0:
            raise ValueError(f"factor and default must be >= 0, got factor={factor!r}, default={default!r}")
        self.monitor, self.factor, self.default = monitor, float(factor), float(default)

    def __call__(self, step: int) -> float:
        gamma = self.monitor.gamma()
        return self.default if gamma is None else self.factor * gamma

    def __repr__(self) -> str:
        return f"CriticalGamma(factor={self.factor}, default={self.default})"


def _learning_rate(trainer: Trainer) -> float | None:
    """The step size of the first optimizer's first parameter group (``None`` without an optimizer)."""
    optimizers = getattr(trainer, "optimizers", None) or []
    if not optimizers:
        return None
    return float(optimizers[0].param_groups[0]["lr"])
