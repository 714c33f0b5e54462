"""Equivariant Projection
======================

Train on the subspace E of equivariant layers (the paper's *Equi* mode): start in E and project
every gradient onto E before the optimizer step, so training is gradient descent on
``R_eq(A) = R(Pi_E A)``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_equi.callbacks.messages import NO_SPEC_MESSAGE
from lightning_equi.subspace import (
    ModelProjection,
    PooledBatchNorms,
    SymmetrySpec,
    pool_batch_statistics,
    resolve_spec,
)

__all__ = ["EquivariantProjection"]

_REPROJECT = ("auto", True, False)
_SHARDED = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)


class EquivariantProjection(Callback):
    r"""Keep a model in the subspace E of equivariant layers while it trains.

    * At fit start the symmetry spec is bound to the model
      (:func:`~lightning_equi.subspace.spec.resolve_spec`: the ``spec`` argument, else the model's
      ``symmetry_spec()`` method), the weights and running statistics are projected onto E (an
      equivariant initialisation: drawn as usual, then projected) and the model is checked to be in E.
      When resuming from a checkpoint written with this callback, the restored weights are only checked.
    * In ``on_before_optimizer_step`` every gradient is projected onto E. Lightning calls this hook
      once per optimizer step: after gradient accumulation, after the AMP scaler unscaled the
      gradients and DDP averaged them, before gradient clipping.
    * After each optimizer step (a ``torch.optim`` step post-hook, so it runs exactly when the
      optimizer stepped, whatever the accumulation, manual optimization or AMP skipped steps) the
      running statistics are projected, and the weights too when the update may leave E: optimizers
      that are not linear in the gradient (Adam, AdamW, RMSprop, ...) acting on representations that
      are not permutations, weight decay, or clipping by value.
    * BatchNorm layers compute their batch statistics pooled over each field's channels (escnn's
      ``InnerBatchNorm``; :func:`~lightning_equi.subspace.batchnorm.pool_batch_statistics`) while the
      fit runs: per-channel statistics of data that is not symmetric differ inside a field, which
      makes the layer non-equivariant in training mode and the trained network differ from the one
      evaluated with running statistics. The layers get their own forward back when the fit ends.

    Args:
        spec: the :class:`~lightning_equi.subspace.SymmetrySpec` of the model, or a ready
            :class:`~lightning_equi.subspace.ModelProjection` bound to the model or one of its
            submodules (as returned by ``adapters.to_dense``); ``None`` uses the model's
            ``symmetry_spec()`` method.
        reproject_weights: ``"auto"`` re-projects the weights after a step unless every optimizer is
            plain SGD (momentum and Nesterov allowed, no weight decay), every projector says it is
            ``orbit_constant`` and clipping is not by value (then the projected gradient keeps the
            weights in E bit for bit); the rule is :meth:`needs_reprojection`. ``True`` always;
            ``False`` never (running statistics are projected in every case).
        check_atol: the largest distance to E, per parameter, accepted by the check at fit start.
        pool_batch_stats: pool BatchNorm batch statistics over each field (see above); ``False``
            keeps each layer's per-channel statistics.
        verbose: log the decision taken for ``reproject_weights="auto"``.

    Raises:
        MisconfigurationException: if ``reproject_weights`` or ``check_atol`` is invalid, or, at setup,
            if the strategy shards parameters (FSDP, DeepSpeed, model parallel): projecting shards
            would be wrong, so it is refused.
        RuntimeError: at fit start, if the projected model is not in E (a spec that does not match
            the model).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_equi.callbacks import EquivariantProjection
        >>> trainer = Trainer(callbacks=[EquivariantProjection()], logger=False)
    """

    def __init__(
        self,
        spec: SymmetrySpec | ModelProjection | None = None,
        reproject_weights: Literal["auto"] | bool = "auto",
        check_atol: float = 1e-5,
        pool_batch_stats: bool = True,
        verbose: bool = False,
    ) -> None:
        if not (reproject_weights == "auto" or isinstance(reproject_weights, bool)):
            raise MisconfigurationException(
                f"`reproject_weights` must be one of {_REPROJECT}, got {reproject_weights!r}"
            )
        if not isinstance(check_atol, (int, float)) or isinstance(check_atol, bool) or check_atol < 0:
            raise MisconfigurationException(f"`check_atol` must be a float >= 0, got {check_atol!r}")
        if spec is not None and not isinstance(spec, (SymmetrySpec, ModelProjection)):
            raise MisconfigurationException(
                f"`spec` must be a SymmetrySpec, a ModelProjection (e.g. from adapters.to_dense) or None "
                f"(use the model's `symmetry_spec()`), "
                f"got {type(spec).__name__}"
            )
        self.spec = spec
        self.reproject_weights = reproject_weights
        if not isinstance(pool_batch_stats, bool):
            raise MisconfigurationException(f"`pool_batch_stats` must be a bool, got {pool_batch_stats!r}")
        self.check_atol = float(check_atol)
        self.pool_batch_stats = pool_batch_stats
        self.verbose = verbose
        self._pooled: PooledBatchNorms | None = None
        self._projection: ModelProjection | None = None
        self._reproject: bool = reproject_weights is True
        self._initialized = False  # weights projected at the start of a fit
        self._restored = False  # state loaded from a checkpoint written with this callback
        self._handles: list[RemovableHandle] = []

    @property
    def projection(self) -> ModelProjection | None:
        """The bound :class:`~lightning_equi.subspace.ModelProjection` (set at fit start)."""
        return self._projection

    def resolve(self, pl_module: LightningModule) -> ModelProjection:
        """Bind the spec to ``pl_module`` once (other callbacks, such as the monitor, share it)."""
        if isinstance(self.spec, ModelProjection):
            if self._projection is None:
                _check_projection_belongs(self.spec, pl_module)
                self._projection = self.spec
            return self._projection
        if self._projection is None or self._projection.model is not pl_module:
            if self.spec is None and not callable(getattr(pl_module, "symmetry_spec", None)):
                raise MisconfigurationException(
                    NO_SPEC_MESSAGE.format(who="EquivariantProjection", name=type(pl_module).__name__)
                )
            self._projection = resolve_spec(pl_module, self.spec)
        return self._projection

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if isinstance(trainer.strategy, _SHARDED):
            raise MisconfigurationException(
                f"EquivariantProjection does not support the sharded strategy "
                f"{type(trainer.strategy).__name__}: each rank holds flattened shards of the parameters, "
                "which cannot be projected layer by layer. Use strategy='ddp' (or a single device)."
            )

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        projection = self.resolve(pl_module)
        if not self._restored:  # a resumed run keeps its restored weights bit for bit
            projection.project_parameters_()
        self._initialized, self._restored = True, False
        self._check_in_subspace(projection)
        if self.reproject_weights == "auto":
            self._reproject = self.needs_reprojection(trainer, projection)
            if self.verbose:
                rank_zero_info(
                    f"EquivariantProjection: re-project weights after each step: {self._reproject}"
                )
        else:
            self._reproject = bool(self.reproject_weights)
        self._remove_hooks()
        self._handles = [opt.register_step_post_hook(self._after_step) for opt in trainer.optimizers]
        if self.pool_batch_stats:
            self._pooled = pool_batch_statistics(projection)

    @override
    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer
    ) -> None:
        self.resolve(pl_module).project_gradients_()

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_hooks()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()

    def _after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        projection = self._projection
        if projection is None:
            return
        if self._reproject:
            projection.project_parameters_()
            return
        with torch.no_grad():
            for entry in projection.entries:
                if entry.is_buffer:
                    entry.projector.project_(entry.tensor)

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._pooled is not None:
            self._pooled.remove()
            self._pooled = None

    def _check_in_subspace(self, projection: ModelProjection) -> None:
        if projection.is_equivariant(self.check_atol):
            return
        worst = sorted(projection.distances().items(), key=lambda kv: -float(kv[1]))[:3]
        listing = ", ".join(f"{name}: {float(d):.3g}" for name, d in worst)
        raise RuntimeError(
            f"the model is not in the equivariant subspace after projection (largest distances to E: "
            f"{listing}; check_atol={self.check_atol}). The symmetry spec does not describe this model: "
            "check the fields declared for these layers."
        )

    def needs_reprojection(self, trainer: Trainer, projection: ModelProjection) -> bool:
        """The rule of ``reproject_weights="auto"`` (override to change it): re-project the weights after
        each step unless plain SGD without weight decay or value clipping updates tensors whose
        projectors are ``orbit_constant`` (then the projected gradient keeps them in E bit for bit)."""
        if trainer.gradient_clip_val and trainer.gradient_clip_algorithm == "value":
            return True
        # a projector whose output is bitwise constant on orbits is kept so by elementwise optimizers
        if not all(entry.projector.orbit_constant for entry in projection.entries):
            return True
        for opt in trainer.optimizers:
            if type(opt) is not torch.optim.SGD:
                return True
            if any(group.get("weight_decay", 0) for group in opt.param_groups):
                return True
        return False

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"initialized": self._initialized}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = bool(state_dict.get("initialized", False))


def _check_projection_belongs(projection: ModelProjection, pl_module: LightningModule) -> None:
    """A projection bound to another model would project tensors that are not trained here."""
    ours = {id(m) for m in pl_module.modules()}
    strangers = sorted({e.layer or "<root>" for e in projection.entries if id(e.module) not in ours})
    if strangers:
        raise MisconfigurationException(
            f"the ModelProjection passed as spec= was bound to a model that is not part of "
            f"{type(pl_module).__name__} (layers {strangers[:5]}); bind it to the trained module, e.g. "
            "`dense, projection = to_dense(escnn_model)` and train a LightningModule that holds `dense`"
        )
