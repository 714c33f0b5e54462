"""Relaxed Equivariance
====================

Train near, not in, the subspace E of equivariant layers (mode *reg*, and *aug+reg* with Haar
augmentation): the penalty ``gamma_k / 2 ||Pi_perp A_k||^2`` of
:class:`~lightning_equi.subspace.EquivariancePenalty`, applied in a Trainer as an added gradient or as a
proximal step after the optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_equi.callbacks.messages import NO_SPEC_MESSAGE, binds_late, group_or_none
from lightning_equi.groups import Group
from lightning_equi.subspace import (
    PENALTY_FORMS,
    EquivariancePenalty,
    ModelProjection,
    SymmetrySpec,
    resolve_spec,
)
from lightning_equi.subspace.penalty import GammaConfig

__all__ = ["RelaxedEquivariance"]

_SHARDED = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)


class RelaxedEquivariance(Callback):
    r"""Pull the constrained layers towards E with the penalty ``sum_k gamma_k / 2 ||Pi_perp A_k||^2``.

    * ``penalty="proximal"`` (default): after each optimizer step (a ``torch.optim`` step post-hook,
      so it runs exactly when the optimizer stepped, and not on a step that mixed precision skipped)
      ``A_k <- Pi_E A_k + Pi_perp A_k / (1 + eta gamma_k)``, with ``eta`` the learning rate of the
      parameter group that holds ``A_k``. Stable for every ``eta gamma``, and the same penalty whatever
      the optimizer (decoupled, as AdamW's weight decay); ``gamma = inf`` projects onto E after each
      step, which is *equi* from the projected start.
    * ``penalty="additive"``: in ``on_before_optimizer_step`` (after gradient accumulation, DDP's
      averaging and the AMP unscaling, before clipping, so the penalty is clipped with the data
      gradient) ``gamma_k Pi_perp A_k`` is added to each constrained gradient: the gradient of the
      penalty, without a second backward pass. This is the paper's penalty for plain SGD; explicit SGD
      diverges in E-perp once ``eta gamma > 2``, and through Adam's preconditioner it is another penalty.
      Under ``16-mixed`` precision Lightning leaves the gradients of a fused optimizer scaled (the
      optimizer unscales them itself), so the added gradient is scaled by the same loss scale.

    ``gamma = 0`` leaves training bit for bit as without the callback (nom, or aug with augmentation).
    The penalty is logged as ``reg/penalty`` (after the step for the proximal form, at the weights the
    gradient was taken for the additive one) and a single gamma as ``reg/gamma``. The step index ``t``
    of the schedules is ``trainer.global_step`` (the number of optimizer steps taken before this one),
    restored with the checkpoint, so a resumed run continues every schedule where it stopped; the
    state of a stateful gamma provider (``state_dict``) is written into the checkpoint too.

    Args:
        spec: the :class:`~lightning_equi.subspace.SymmetrySpec` of the model or a
            :class:`~lightning_equi.subspace.ModelProjection` bound to it; ``None`` uses the model's
            ``symmetry_spec()`` method.
        gamma: a number >= 0, a schedule ``step -> gamma`` (:mod:`lightning_equi.schedules`, or any
            callable provider), or a mapping of layer or parameter names to these (``"*"`` for the other
            layers); see :class:`~lightning_equi.subspace.EquivariancePenalty`. ``math.inf`` needs the
            proximal form. ``"auto"``: ``gamma_provider()`` of a callback of the Trainer that offers one
            (:class:`~lightning_equi.callbacks.StabilityMonitor`: ``1.5 gamma_crit`` from its latest
            measurement of the augmented Hessian on E-perp, 0 before the first).
        penalty: ``"proximal"`` or ``"additive"`` (see above).
        log_penalty: log ``reg/penalty`` (and ``reg/gamma``) every step.
        group: optional: the group the run is meant for; a spec for another group is refused at setup.

    Raises:
        MisconfigurationException: for an unknown ``penalty``, a gamma that is not a number >= 0, a
            schedule or a mapping of them, ``gamma=inf`` with the additive form, and at setup: a sharded
            strategy, a model without a spec, a spec for another group or that does not fit the model,
            a mapping that names layers the model does not constrain or leaves some out.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_equi.callbacks import RelaxedEquivariance
        >>> from lightning_equi.schedules import WarmUp
        >>> trainer = Trainer(callbacks=[RelaxedEquivariance(gamma=WarmUp(100.0, steps=500))], logger=False)
    """

    def __init__(
        self,
        spec: SymmetrySpec | ModelProjection | None = None,
        gamma: GammaConfig | Literal["auto"] = 1.0,
        penalty: Literal["proximal", "additive"] = "proximal",
        log_penalty: bool = True,
        group: str | Group | None = None,
    ) -> None:
        if penalty not in PENALTY_FORMS:
            raise MisconfigurationException(
                f"`penalty` must be one of {PENALTY_FORMS} ('proximal': stable for every lr * gamma and "
                f"any optimizer; 'additive': the gradient gamma * Pi_perp A, plain SGD), got {penalty!r}"
            )
        if spec is not None and not isinstance(spec, (SymmetrySpec, ModelProjection)):
            raise MisconfigurationException(
                f"`spec` must be a SymmetrySpec, a ModelProjection or None (use the model's "
                f"`symmetry_spec()`), got {type(spec).__name__}"
            )
        _check_gamma_config(gamma, penalty)
        if not isinstance(log_penalty, bool):
            raise MisconfigurationException(f"`log_penalty` must be a bool, got {log_penalty!r}")
        self.spec, self.gamma, self.penalty, self.log_penalty = spec, gamma, penalty, log_penalty
        self.group = group_or_none(group)
        self._projection: ModelProjection | None = None
        self._penalty: EquivariancePenalty | None = None
        self._trainer: Trainer | None = None
        self._handles: list[RemovableHandle] = []
        self._values: dict[str, Tensor] = {}  # the penalty per parameter at the last step
        self._fresh = False  # a step happened since the last log
        self._gamma_now: float | None = None  # the single gamma of the last step, for the log
        self._restored_states: list[dict[str, Any]] | None = None
        self._auto_gamma: Any = None  # gamma="auto": the provider found among the Trainer's callbacks

    @property
    def projection(self) -> ModelProjection | None:
        """The bound :class:`~lightning_equi.subspace.ModelProjection` (set at setup or fit start)."""
        return self._projection

    def _gamma_config(self) -> Any:
        if not _is_auto(self.gamma):
            return self.gamma
        if self._auto_gamma is None:
            raise MisconfigurationException(
                "RelaxedEquivariance(gamma='auto'): the provider is taken from the Trainer's callbacks at "
                "setup; call resolve() only after Trainer.fit has started"
            )
        return self._auto_gamma

    @property
    def penalty_term(self) -> EquivariancePenalty | None:
        """The :class:`~lightning_equi.subspace.EquivariancePenalty` applied (set at setup or fit start)."""
        return self._penalty

    def resolve(self, pl_module: LightningModule) -> EquivariancePenalty:
        """Bind the spec to ``pl_module`` and build the penalty (once per model).

        Raises:
            MisconfigurationException: naming the fix, if the model has no spec, the spec is for another
                group or does not fit the model, or ``gamma`` names layers the model does not constrain.
        """
        if self._penalty is not None and self._projection is not None and self._projection.model is pl_module:
            return self._penalty
        if self.spec is None and not callable(getattr(pl_module, "symmetry_spec", None)):
            raise MisconfigurationException(
                NO_SPEC_MESSAGE.format(who="RelaxedEquivariance", name=type(pl_module).__name__)
            )
        try:
            self._projection = resolve_spec(pl_module, self.spec, group=self.group)
            self._penalty = EquivariancePenalty(self._projection, self._gamma_config())
        except (TypeError, ValueError) as err:
            raise MisconfigurationException(f"RelaxedEquivariance: {err}") from err
        return self._penalty

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if isinstance(trainer.strategy, _SHARDED):
            raise MisconfigurationException(
                "RelaxedEquivariance does not support the sharded strategy "
                f"{type(trainer.strategy).__name__}: each rank holds flattened shards of the parameters, "
                "which cannot be projected layer by layer. Use strategy='ddp' (or a single device)."
            )
        self._projection, self._penalty = None, None
        if _is_auto(self.gamma):
            self._auto_gamma = _gamma_provider(trainer, self)
        if not binds_late(pl_module):
            self.resolve(pl_module)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        penalty = self.resolve(pl_module)
        if self._restored_states is not None:
            try:
                penalty.load_state_dict(self._restored_states)
            except ValueError as err:
                raise MisconfigurationException(f"RelaxedEquivariance: {err}") from err
            self._restored_states = None
        self._trainer = trainer
        self._values, self._fresh = {}, False
        self._remove_hooks()
        if self.penalty == "proximal":
            self._handles = [opt.register_step_post_hook(self._after_step) for opt in trainer.optimizers]

    @override
    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer
    ) -> None:
        if self.penalty != "additive":
            return
        penalty = self.resolve(pl_module)
        step = trainer.global_step
        values = penalty.add_gradient_(
            step, scale=_loss_scale(trainer, optimizer), only=_parameter_ids(optimizer)
        )
        self._record(step, values)

    def _after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        penalty, trainer = self._penalty, self._trainer
        if penalty is None or trainer is None:
            return
        found_inf = getattr(optimizer, "found_inf", None)  # a fused optimizer's step skipped by AMP
        if found_inf is not None and bool(found_inf):
            return
        lrs = {}
        by_id = {id(e.tensor): e.name for e in penalty.entries}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) in by_id:
                    lrs[by_id[id(p)]] = float(group["lr"])
        step = trainer.global_step
        self._record(step, penalty.proximal_step_(step, lrs, only=_parameter_ids(optimizer)))

    def _record(self, step: int, values: dict[str, Tensor]) -> None:
        self._values.update(values)
        self._fresh = True
        if not isinstance(self.gamma, Mapping) and self._penalty is not None:
            # one gamma for all, as the step used it (a stateful provider asked again could move on)
            self._gamma_now = next(iter(self._penalty.last_gammas.values()), None)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.log_penalty or not self._fresh:
            return
        self._fresh = False
        if self._values:
            total = torch.stack([v.to(pl_module.device) for v in self._values.values()]).sum()
        else:
            total = torch.zeros((), dtype=torch.float64, device=pl_module.device)
        pl_module.log("reg/penalty", total.float(), on_step=True, on_epoch=False, batch_size=1)
        if self._gamma_now is not None:
            pl_module.log("reg/gamma", float(self._gamma_now), on_step=True, on_epoch=False, batch_size=1)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_hooks()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()
        self._trainer = None

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @override
    def state_dict(self) -> dict[str, Any]:
        states = self._penalty.state_dict() if self._penalty is not None else self._restored_states
        return {"penalty": self.penalty, "gamma": repr(self.gamma), "providers": states or []}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("penalty", self.penalty) != self.penalty:
            raise MisconfigurationException(
                f"RelaxedEquivariance: the checkpoint was trained with penalty={state_dict['penalty']!r}, "
                f"this callback has penalty={self.penalty!r}; resume with the form it was trained with"
            )
        self._restored_states = list(state_dict.get("providers") or [])
        if self._penalty is not None:  # bound at setup: restore now (fit start restores otherwise)
            try:
                self._penalty.load_state_dict(self._restored_states)
            except ValueError as err:
                raise MisconfigurationException(f"RelaxedEquivariance: {err}") from err
            self._restored_states = None


def _is_auto(gamma: Any) -> bool:
    return isinstance(gamma, str) and gamma == "auto"


def _gamma_provider(trainer: Trainer, me: Callback) -> Any:
    """``gamma="auto"``: the ``gamma_provider()`` of another callback of the Trainer (read by duck typing:
    no callback imports another's module)."""
    offering = [
        cb for cb in trainer.callbacks if cb is not me and callable(getattr(cb, "gamma_provider", None))
    ]
    if not offering:
        raise MisconfigurationException(
            "RelaxedEquivariance(gamma='auto') takes gamma from a callback that measures it: add "
            "StabilityMonitor(every_n_steps=...) to the Trainer's callbacks, or give gamma a number or a "
            "schedule"
        )
    return offering[0].gamma_provider()


def _check_gamma_config(gamma: Any, penalty: str) -> None:
    """Refuse now what the penalty would refuse at setup, when it does not need the model."""
    if _is_auto(gamma):
        return
    values = gamma.values() if isinstance(gamma, Mapping) else [gamma]
    for value in values:
        if callable(value):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
            raise MisconfigurationException(
                f"`gamma` must be a number >= 0, a schedule (callable step -> gamma) or a dict of layer "
                f"names to these, got {gamma!r}"
            )
        if math.isinf(value) and penalty != "proximal":
            raise MisconfigurationException(
                "`gamma=inf` needs penalty='proximal' (it projects onto E after each step); the additive "
                "gradient gamma * Pi_perp A would be infinite"
            )


def _parameter_ids(optimizer: Optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def _loss_scale(trainer: Trainer, optimizer: Optimizer) -> float:
    """The factor the gradients still carry in ``on_before_optimizer_step``: the AMP loss scale when
    Lightning skipped unscaling, which it does for optimizers that unscale in their own step (fused
    ones, ``_step_supports_amp_scaling``; Lightning's ``_optimizer_handles_unscaling``), else 1."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return 1.0
    if getattr(optimizer, "_step_supports_amp_scaling", False):
        return float(scaler.get_scale())
    return 1.0
