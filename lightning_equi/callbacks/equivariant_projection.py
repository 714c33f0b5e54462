"""Equivariant Projection
======================

Train on the subspace E of equivariant layers (the paper's *Equi* mode): start in E and project
every gradient onto E before the optimizer step, so training is gradient descent on
``R_eq(A) = R(Pi_E A)``.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal

import torch
from lightning.fabric.utilities.apply_func import apply_to_collection, move_data_to_device
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_equi.callbacks.messages import NO_SPEC_MESSAGE, binds_late, group_or_none
from lightning_equi.groups import Group
from lightning_equi.subspace import (
    ModelProjection,
    PooledBatchNorms,
    SymmetrySpec,
    initialize_in_E_,
    pool_batch_statistics,
    recompute_running_statistics,
    resolve_spec,
    tensor_distance,
)

__all__ = ["EquivariantProjection"]

_REPROJECT = ("auto", True, False)
_INIT = ("rescale", "project")
# flat-parameter strategies: FSDP1 discards gradient edits made on its flat shards (they are restored
# from a saved copy after summon_full_params), DeepSpeed partitions flat buffers of its own
_REFUSED = {
    FSDPStrategy: "FSDP1 keeps flattened shards of several parameters, whose gradient edits it discards",
    DeepSpeedStrategy: "DeepSpeed partitions flattened buffers of several parameters",
}


class EquivariantProjection(Callback):
    r"""Keep a model in the subspace E of equivariant layers while it trains.

    * At setup the symmetry spec is bound to the model and validated
      (:func:`~lightning_equi.subspace.spec.resolve_spec`: the ``spec`` argument, else the model's
      ``symmetry_spec()`` method), afresh for every fit. At fit start the weights and running
      statistics are checked to be finite and brought into E (``init``: an equivariant
      initialisation, drawn as usual, then projected and by default rescaled to keep each layer's
      scale) and the model is checked to be in E. Tensors already in E are left bit for bit; when
      resuming from a checkpoint written with this callback, the restored weights are only checked.
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
    * Their running statistics are recomputed at the current weights (``recalibrate_bn``) before each
      validation of the fit and when training ends, from the inputs of the model's last training
      forwards: the moving average lags behind weights that still move, and an invariant head turns
      that lag into a shift of every logit (see :mod:`lightning_equi.subspace.batchnorm`).

    Args:
        spec: the :class:`~lightning_equi.subspace.SymmetrySpec` of the model, or a ready
            :class:`~lightning_equi.subspace.ModelProjection` bound to the model or one of its
            submodules (as returned by ``adapters.to_dense``); ``None`` uses the model's
            ``symmetry_spec()`` method.
        reproject_weights: ``"auto"`` re-projects the weights after a step unless every optimizer is
            plain SGD (momentum and Nesterov allowed, no weight decay), every projector says it is
            ``orbit_constant`` and clipping is not by value (then the projected gradient keeps the
            weights in E bit for bit); the rule is :meth:`needs_reprojection`. ``True`` always;
            ``False`` never (running statistics are projected in every case). A tensor that the step
            left in E to rounding is not rewritten
            (:meth:`~lightning_equi.subspace.Projector.project_unless_in_E_`), so re-projection never
            moves a weight by rounding alone.
        init: how the weights enter E at fit start. ``"rescale"`` (default): project, then rescale each
            tensor to its norm before projection, a variance-preserving start for a freshly initialised
            model (projection alone keeps ``dim E / dim L`` of a random weight's energy: half the norm
            of a regular C4 convolution). ``"project"``: the plain orthogonal projection, the paper's
            protocol and the choice for pretrained weights (the nearest equivariant model; rescaling
            would inflate it). See :mod:`lightning_equi.subspace.initialization`.
        recalibrate_bn: how many of the last training forwards (their inputs, kept by the callback and
            in its checkpoint state) recompute the pooled BatchNorm running statistics at the current
            weights before each validation and at the end of training; ``0`` keeps the moving averages.
            It needs ``pool_batch_stats`` and a ``training_step`` that calls the module itself
            (``self(x)``); without such calls it warns once.
        check_atol: the largest distance to E, per parameter, accepted by the check at fit start.
        pool_batch_stats: pool BatchNorm batch statistics over each field (see above); ``False``
            keeps each layer's per-channel statistics.
        verbose: log the decision taken for ``reproject_weights="auto"``.
        group: optional: the group the run is meant for; a spec for another group is refused at setup.

    Raises:
        MisconfigurationException: if ``reproject_weights``, ``check_atol`` or ``group`` is invalid, or,
            at setup, if the strategy flattens parameters into shards (``FSDPStrategy``, i.e. FSDP1,
            and ``DeepSpeedStrategy``): projecting those would be wrong, so it is refused
            (``ModelParallelStrategy``, FSDP2, is supported: see below); also at setup, if the model
            has no spec, the spec is for another group than ``group`` or does not fit the model (a
            model that builds its layers in its own ``setup`` or ``configure_model`` is bound at fit
            start instead).
        RuntimeError: at fit start, if a constrained weight holds NaN or inf (named, with the number
            of such entries), or if the projected model is not in E (a spec that does not match the
            model), or if the weights restored from a checkpoint are not in E.

    Under ``ModelParallelStrategy`` (FSDP2: ``fully_shard`` in ``configure_model``) the parameters and
    gradients are DTensors sharded along one axis: each rank projects its shard in place, with no
    communication, when the shard holds whole orbits (use
    :func:`~lightning_equi.subspace.sharding.shard_placement_fn` to shard each parameter on such an
    axis), and otherwise gathers the parameter, projects it and keeps its own part (one all-gather per
    such parameter and step). Parameters are looked up on the trained module at every step. At fit
    start the constrained tensors are gathered once to bring them into E.

    Frozen parameters (``requires_grad=False``) that the spec constrains are projected at fit start
    like the others (a warning names them when that changes them); leave them out with
    ``spec.free(...)`` to keep them as they are.

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
        init: Literal["rescale", "project"] = "rescale",
        recalibrate_bn: int = 4,
        group: str | Group | None = None,
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
        self.group = group_or_none(group)
        self.reproject_weights = reproject_weights
        if not isinstance(pool_batch_stats, bool):
            raise MisconfigurationException(f"`pool_batch_stats` must be a bool, got {pool_batch_stats!r}")
        if init not in _INIT:
            raise MisconfigurationException(
                f"`init` must be one of {_INIT} ('rescale': a fresh model, 'project': pretrained weights or "
                f"the paper's protocol), got {init!r}"
            )
        if not isinstance(recalibrate_bn, int) or isinstance(recalibrate_bn, bool) or recalibrate_bn < 0:
            raise MisconfigurationException(
                f"`recalibrate_bn` must be an int >= 0 (a number of batches; 0 keeps the moving averages), "
                f"got {recalibrate_bn!r}"
            )
        self.check_atol = float(check_atol)
        self.pool_batch_stats = pool_batch_stats
        self.init = init
        self.recalibrate_bn = recalibrate_bn
        # (args, kwargs) of the module's last training forwards, to recompute the statistics from
        self._inputs: deque[tuple[tuple, dict[str, Any]]] = deque(maxlen=max(recalibrate_bn, 1))
        self._recording: RemovableHandle | None = None
        self._recalibrating = False
        self._calibrated_step: int | None = None
        self._warned_no_inputs = False
        # the moving averages replaced by the recalibration at the end of training, so
        # that a run resumed from that point continues them as an uninterrupted run would
        self._averages: dict[str, Tensor] = {}
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
        """Bind the spec to ``pl_module`` (once per model; at setup during a fit).

        Raises:
            MisconfigurationException: naming the fix, if the model has no spec, the spec is for another
                group than ``group``, or does not fit the model (a layer it does not have, ...).
        """
        if self._projection is not None and self._projection.model is pl_module:
            return self._projection
        if isinstance(self.spec, ModelProjection):
            _check_projection_belongs(self.spec, pl_module)
        elif self.spec is None and not callable(getattr(pl_module, "symmetry_spec", None)):
            raise MisconfigurationException(
                NO_SPEC_MESSAGE.format(who="EquivariantProjection", name=type(pl_module).__name__)
            )
        try:
            self._projection = resolve_spec(pl_module, self.spec, group=self.group)
        except (TypeError, ValueError) as err:
            raise MisconfigurationException(f"EquivariantProjection: {err}") from err
        return self._projection

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        for refused, why in _REFUSED.items():
            if isinstance(trainer.strategy, refused):
                raise MisconfigurationException(
                    f"EquivariantProjection does not support the sharded strategy "
                    f"{type(trainer.strategy).__name__}: {why}, which cannot be projected layer by layer. "
                    "Use ModelParallelStrategy (FSDP2: fully_shard in configure_model, each parameter a "
                    "DTensor, projected on its shard) or strategy='ddp'."
                )
        # each fit binds afresh (the callback may be reused for another model); a checkpoint restored
        # after this hook sets _restored again
        self._projection, self._restored = None, False
        if not binds_late(pl_module):
            self.resolve(pl_module)  # spec errors now, before the model summary and any training

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        projection = self.resolve(pl_module)
        _check_finite(projection, "restored from the checkpoint" if self._restored else "at fit start")
        projected = not self._restored  # a resumed run keeps its restored weights bit for bit
        if projected:
            # sharded parameters (FSDP2) are gathered once here, one tensor copy on every rank
            with projection.gathered() as whole:
                _warn_frozen(whole, self.check_atol)
                initialize_in_E_(whole, preserve_norm=self.init == "rescale")
        elif self._averages:  # written by a fit that ended here (cleared when a fit starts)
            # resumed where a fit ended: training goes on from the moving averages, not the recalibration
            tensors = {e.name: e.tensor for e in projection.entries if e.is_buffer}
            with torch.no_grad():
                for name, value in self._averages.items():
                    if name in tensors:
                        tensors[name].copy_(value)
        self._averages = {}
        self._initialized, self._restored = True, False
        self._check_in_subspace(projection, projected)
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
            if self.recalibrate_bn and self._pooled.layers:
                self._recording = pl_module.register_forward_pre_hook(self._record, with_kwargs=True)
        self._calibrated_step = None

    @override
    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer
    ) -> None:
        self.resolve(pl_module).project_gradients_()

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.training or trainer.state.fn == "fit":  # not the sanity check, not validate()
            if not trainer.sanity_checking:
                self.recalibrate(trainer, pl_module)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        projection = self._projection
        averages = (
            {}
            if projection is None
            else {e.name: e.tensor.clone() for e in projection.entries if e.is_buffer}
        )
        if self.recalibrate(trainer, pl_module):
            self._averages = averages

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_hooks()

    def recalibrate(self, trainer: Trainer, pl_module: LightningModule) -> bool:
        """Recompute the pooled BatchNorm running statistics at the current weights from the inputs of
        the last ``recalibrate_bn`` training forwards (once per optimizer step; see the class); return
        whether they were recomputed."""
        if self._pooled is None or not self.recalibrate_bn or not self._pooled.layers:
            return False
        if self._calibrated_step == trainer.global_step:  # the weights have not moved since
            return False
        if not self._inputs:
            if not self._warned_no_inputs and trainer.global_step > 0:
                self._warned_no_inputs = True
                rank_zero_warn(
                    f"EquivariantProjection(recalibrate_bn={self.recalibrate_bn}): no training forward of "
                    f"{type(pl_module).__name__} itself was seen, so the BatchNorm running statistics of "
                    f"{self._pooled.layers} were not recomputed at the current weights and lag behind them. "
                    "Call the module (`self(x)`) in training_step, or pass recalibrate_bn=0 to keep the "
                    "moving averages knowingly."
                )
            return False
        inputs = [move_data_to_device(item, pl_module.device) for item in self._inputs]
        self._recalibrating = True
        try:
            recompute_running_statistics(list(self._pooled.installed.values()), pl_module, inputs)
        finally:
            self._recalibrating = False
        if self._projection is not None:
            self._projection.project_buffers_()
        self._calibrated_step = trainer.global_step
        return True

    def _record(self, module: LightningModule, args: tuple, kwargs: dict[str, Any]) -> None:
        # a strategy that wraps the module (DDP) calls it with training_step's arguments through a
        # forward redirected on the instance: only the module's own forward is replayed
        redirected = "forward" in module.__dict__
        if module.training and torch.is_grad_enabled() and not self._recalibrating and not redirected:
            detach = lambda t: t.detach()  # noqa: E731
            self._inputs.append(
                (apply_to_collection(args, Tensor, detach), apply_to_collection(kwargs, Tensor, detach))
            )

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()

    def _after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        projection = self._projection
        if projection is None:
            return
        # a tensor the step left in E to rounding is not rewritten: re-projecting it would only add
        # rounding (an ulp per step for an FFT projector), compounding over a run; projectors exact on
        # E (identity_on_E) project in place, all together in a fixed number of kernels
        projection.project_tensors_(
            [e.tensor if self._reproject or e.is_buffer else None for e in projection.entries],
            unless_in_E=True,
        )

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._recording is not None:
            self._recording.remove()
            self._recording = None
        if self._pooled is not None:
            self._pooled.remove()
            self._pooled = None

    def _check_in_subspace(self, projection: ModelProjection, projected: bool) -> None:
        if projection.is_equivariant(self.check_atol):
            return
        worst = sorted(projection.distances(buffers=True).items(), key=lambda kv: -float(kv[1]))[:3]
        listing = ", ".join(f"{name}: {float(d):.3g}" for name, d in worst)
        if projected:
            raise RuntimeError(
                f"the model is not in the equivariant subspace after projection (largest distances to E: "
                f"{listing}; check_atol={self.check_atol}). The symmetry spec does not describe this "
                "model: check the fields declared for these layers."
            )
        raise RuntimeError(
            f"the weights restored from the checkpoint are not in the equivariant subspace (largest "
            f"distances to E: {listing}; check_atol={self.check_atol}); resuming does not project them. "
            "The checkpoint was written by another run (without EquivariantProjection, or with another "
            "spec): resume with the spec it was trained with, or start a new fit from its weights "
            "(load them, then fit without ckpt_path) to have them projected."
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
        # the recorded inputs travel with the checkpoint, so that a resumed run recomputes the same
        # statistics as an uninterrupted one
        return {
            "initialized": self._initialized,
            "bn_inputs": list(self._inputs),
            "bn_averages": self._averages,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = bool(state_dict.get("initialized", False))
        self._inputs.clear()
        self._inputs.extend(state_dict.get("bn_inputs", []))
        self._averages = dict(state_dict.get("bn_averages") or {})


def _check_finite(projection: ModelProjection, when: str) -> None:
    """NaN or inf would spread through the projection (and hide in a sorted list of distances)."""
    bad = projection.non_finite()
    if bad:
        listing = ", ".join(f"{name} ({n} of {_numel(projection, name)} entries)" for name, n in bad.items())
        raise RuntimeError(
            f"EquivariantProjection: non-finite values (NaN or inf) in the weights {when}: {listing}. "
            "Projecting them would spread them over whole orbits; re-initialise these layers (or load "
            "finite weights) before the fit."
        )


def _numel(projection: ModelProjection, name: str) -> int:
    return next(e.tensor.numel() for e in projection.entries if e.name == name)


def _warn_frozen(projection: ModelProjection, atol: float) -> None:
    """Frozen parameters in the spec are projected like the others: say so when that changes them."""
    moved = [
        e.name
        for e in projection.parameters
        if not e.tensor.requires_grad and float(tensor_distance(e.tensor, e.projector)) > atol
    ]
    if moved:
        rank_zero_warn(
            f"EquivariantProjection projects the frozen parameters {moved} (requires_grad=False) onto E "
            "at fit start, which changes them, since the symmetry spec constrains them; leave them "
            f"unchanged with spec.free({', '.join(repr(n) for n in moved[:3])}) (they are then not "
            "constrained), or symmetrise them on purpose and silence this warning"
        )


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
