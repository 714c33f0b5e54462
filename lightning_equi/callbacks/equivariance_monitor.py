"""Equivariance Monitor
===================

Log how far a model is from the equivariant subspace E while it trains, per layer and in total, how
far it moved from its start (along E and across it), and its functional equivariance error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_equi.actions import Action, ImageAction, action_names_for, interpolates, make_action
from lightning_equi.callbacks.layout import TAGS, custom_scalars_layout, trajectory_figure
from lightning_equi.callbacks.messages import NO_SPEC_MESSAGE, binds_late, group_or_none
from lightning_equi.groups import Group
from lightning_equi.metrics import (
    EquivarianceError,
    OutputActions,
    entry_errors,
    output_action,
    output_entries,
    probe_elements,
    transformed_outputs,
)
from lightning_equi.subspace import GridWarning, ModelProjection, SymmetrySpec, grid_warnings, resolve_spec
from lightning_equi.subspace.sharding import is_dtensor

__all__ = ["EquivarianceMonitor", "TAGS"]


class EquivarianceMonitor(Callback):
    r"""Log distances to the equivariant subspace E and the functional equivariance error.

    Every ``every_n_steps`` optimizer steps (the rule is :meth:`should_measure`, which a subclass may
    override), at the end of every training epoch and once at the start, the callback measures the
    model with its symmetry spec (``spec``, else the model's ``symmetry_spec()``, else the ``spec``
    given to an :class:`EquivariantProjection` in the same Trainer; the monitor binds it itself) and
    logs the values below. They go to every logger directly, at step
    ``trainer.global_step`` (independent of ``Trainer(log_every_n_steps)``), and into
    ``trainer.callback_metrics`` (so ``EarlyStopping``/``ModelCheckpoint`` can monitor them). With a
    TensorBoard logger it also writes a custom-scalars layout (one chart per quantity comparing all
    layers) and, at fit end, a figure of the distance to E against the distance from the start.

    The functional error is measured on a fixed probe: the first ``probe_size`` inputs of the first
    training batch (or ``probe_batch``), each transformed by every element of a finite group of order
    at most 16, else by ``probe_elements`` Haar draws, plus the group's testing elements that act
    exactly when the input action interpolates (:func:`lightning_equi.metrics.probe_elements`). Each
    element is flagged exact or not by the action (``exact_mask``), so whenever both kinds occur (C8,
    D8, SO2, O2 on pixel grids) the error is also split into its exact and interpolated parts. The
    model is evaluated in eval mode, without gradients
    (:func:`lightning_equi.metrics.transformed_outputs`).

    The gradient's share outside E is read in ``on_after_backward``, before any callback's
    ``on_before_optimizer_step`` (where :class:`EquivariantProjection` projects it), so the monitor
    logs the same figures whatever the order of the callbacks and whether the projection is present.
    Under gradient accumulation it is computed after each backward of a step that will be logged, the
    last (the accumulated gradient) being kept.
    The probe, its elements, the start ``A0`` and the history are saved in the checkpoint, so a resumed
    run logs what an uninterrupted one would. They belong to one fit: the spec is bound afresh at each
    fit's ``setup`` and a callback reused for another fit (or another model) starts a new history. The
    probe is cast to the model's dtype (a run resumed under another precision), and an empty batch is
    skipped when taking it.

    Args:
        every_n_steps: log every this many optimizer steps.
        probe_batch: the probe inputs (a tensor), a function ``(trainer, pl_module) -> Tensor`` called at
            train start, or ``None`` for the first training batch.
        log_functional_error: measure the functional equivariance error.
        inputs: the action on the model's inputs (an action name such as ``"image"``, or an Action); a
            single action reads entry 0 of a tuple/list batch, or the batch itself.
        outputs: the action on the model's outputs; ``None`` for invariant outputs. A model whose
            ``forward`` returns a tuple, list or dict takes one action per entry (``["image", None]``,
            ``{"node": "set", "graph": None}``; ``None`` for an invariant entry), or one action that acts
            on the whole structure (``"graph"`` on an ``(adj, features)`` pair).
        spec: the model's :class:`~lightning_equi.subspace.spec.SymmetrySpec` (see above).
        probe_size: the number of probe samples.
        probe_elements: Haar draws per probe sample for infinite or large groups.
        log_layers: log per-layer values (else only totals).
        seed: seed of the probe elements (rank ``r`` uses ``seed + r``).
        group: optional: the group the run is meant for; a spec for another group is refused at setup.

    Raises:
        MisconfigurationException: if an argument is out of range; at setup, if the model has no
            symmetry spec, the spec is for another group than ``group`` or does not fit the model; at fit
            start, if the start ``A0`` restored from a checkpoint does not match the model's constrained
            parameters (names and shapes).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_equi.callbacks import EquivarianceMonitor
        >>> trainer = Trainer(callbacks=[EquivarianceMonitor(every_n_steps=10)], logger=False)

    Logged metrics:
        ``<layer>`` is a module name of the model (``"conv1"``, ``"net.0"``) or ``total``.

        ==========================================  ==================================================
        ``equi/dist_to_E/<layer>``                  ``||A - Pi_E A||`` (Frobenius)
        ``equi/rel_dist_to_E/<layer>``              ``||A - Pi_E A|| / ||A||``
        ``equi/dist_from_start/<layer>``            ``||A - A0||``
        ``equi/dist_from_start_in_E/<layer>``       ``||Pi_E (A - A0)||``
        ``equi/dist_from_start_perp/<layer>``       ``||(I - Pi_E)(A - A0)||``
        ``equi/grad_perp_share``                    share of the gradient outside E (before projection)
        ``equi/functional_error``                   mean ``||f(g x) - g f(x)|| / ||f(x)||``
        ``equi/functional_error_exact``             over elements acting exactly (when both kinds)
        ``equi/functional_error_inexact``           over interpolating elements (when both kinds)
        ``equi/functional_error/<entry>``           per entry of a structured output (the total is
                                                    the mean over samples of the worst entry's error)
        ``equi/trajectory`` (TensorBoard image)     distance to E against distance from start
        ==========================================  ==================================================
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        probe_batch: Tensor | Callable[[Trainer, LightningModule], Tensor] | None = None,
        log_functional_error: bool = True,
        inputs: str | Action = "image",
        outputs: OutputActions = None,
        spec: SymmetrySpec | ModelProjection | None = None,
        probe_size: int = 8,
        probe_elements: int = 4,
        log_layers: bool = True,
        seed: int = 0,
        group: str | Group | None = None,
    ) -> None:
        for name, value in (
            ("every_n_steps", every_n_steps),
            ("probe_size", probe_size),
            ("probe_elements", probe_elements),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise MisconfigurationException(f"`{name}` must be an int >= 1, got {value!r}")
        if probe_batch is not None and not (isinstance(probe_batch, Tensor) or callable(probe_batch)):
            raise MisconfigurationException(
                f"`probe_batch` must be None, a tensor or a function (trainer, pl_module) -> Tensor, "
                f"got {type(probe_batch).__name__}"
            )
        if spec is not None and not isinstance(spec, (SymmetrySpec, ModelProjection)):
            raise MisconfigurationException(
                f"`spec` must be a SymmetrySpec, a ModelProjection or None, got {type(spec).__name__}"
            )
        if log_functional_error and inputs is None:
            raise MisconfigurationException(
                "log_functional_error=True needs `inputs`, the action on the model's inputs (e.g. 'image')"
            )
        self.every_n_steps, self.probe_batch = every_n_steps, probe_batch
        self.log_functional_error, self.inputs, self.outputs, self.spec = (
            log_functional_error,
            inputs,
            outputs,
            spec,
        )
        self.probe_size, self.probe_elements, self.log_layers, self.seed = (
            probe_size,
            probe_elements,
            log_layers,
            seed,
        )
        self.group = group_or_none(group)
        self.history: list[dict[str, float]] = []
        self.metric = EquivarianceError(nan_strategy="warn")
        self._entry_metrics: dict[str, EquivarianceError] = {}  # per entry of a structured output
        self._projection: ModelProjection | None = None
        self._w0: dict[str, Tensor] | None = None
        self._probe: dict[str, Tensor] | None = None
        self._grad_share: Tensor | None = None
        self._last_step = -1
        self._act_in: Action | None = None
        self._act_out: Action | None = None
        self._warned_not_equivariant = False

    @property
    def projection(self) -> ModelProjection | None:
        """The :class:`~lightning_equi.subspace.ModelProjection` measured (bound at fit start)."""
        return self._projection

    # ---- rules (override to change when the monitor measures) -----------------------------------

    def should_measure(self, trainer: Trainer) -> bool:
        """Whether to measure after the optimizer step that made ``trainer.global_step``; by default every
        ``every_n_steps`` steps, once per step (also at epoch ends, whatever this says)."""
        step = trainer.global_step
        return step != self._last_step and step % self.every_n_steps == 0

    def should_measure_gradient(self, trainer: Trainer) -> bool:
        """Whether the gradient of the coming optimizer step is measured (that step will be logged)."""
        return (trainer.global_step + 1) % self.every_n_steps == 0

    # ---- hooks ------------------------------------------------------------------------------------

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # the state belongs to one fit of one model: a callback reused for another fit starts afresh
        # (a checkpoint restored after this hook brings back the state of the fit it resumes)
        self.history, self._w0, self._probe, self._grad_share = [], None, None, None
        self._last_step, self._warned_not_equivariant, self._projection = -1, False, None
        if not binds_late(pl_module):
            self._setup_binding(trainer, pl_module)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._projection is None or self._projection.model is not pl_module:
            self._setup_binding(trainer, pl_module)  # a model that builds its layers in setup()
        if self._w0 is not None:  # restored from a checkpoint: it must describe this model
            try:
                self._projection.check_snapshot(self._w0)
            except ValueError as err:
                raise MisconfigurationException(
                    f"EquivarianceMonitor: the checkpoint's {err}. The model or its symmetry spec changed "
                    "since the checkpoint was written (a layer freed, declared or resized); resume with the "
                    "spec it was trained with, or start a new fit without ckpt_path"
                ) from None
        self.metric = self.metric.to(pl_module.device)

    def _setup_binding(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._projection = self._bind(trainer, pl_module)
        group = self._projection.group
        if self.log_functional_error:
            try:
                self._act_in = make_action(self.inputs, group)
            except (TypeError, ValueError) as err:
                raise MisconfigurationException(
                    f"EquivarianceMonitor(inputs={self.inputs!r}): {err}. Pass inputs= one of "
                    f"{action_names_for(group)} (the actions by {group.name}) or an Action, or "
                    "log_functional_error=False to measure only the weights"
                ) from err
            try:
                self._act_out = output_action(self.outputs, group)
            except (TypeError, ValueError) as err:
                raise MisconfigurationException(
                    f"EquivarianceMonitor: {err}. Pass outputs= one of {action_names_for(group)} (the "
                    f"actions by {group.name}), an Action, None for invariant outputs, or one of these per "
                    "entry of a structured output"
                ) from err

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._w0 is None:
            self._w0 = self._projection.snapshot()
        if self.log_functional_error and self._probe is None and self.probe_batch is not None:
            probe = (
                self.probe_batch
                if isinstance(self.probe_batch, Tensor)
                else self.probe_batch(trainer, pl_module)
            )
            self._set_probe(trainer, probe)
            if self._probe is not None:  # else empty: taken from the first non-empty batch
                self._check_outputs(pl_module)
                self._check_geometry(pl_module)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                logger.experiment.add_custom_scalars(custom_scalars_layout())
        if not self.history:
            self._measure_and_log(trainer, pl_module, in_hook=False)

    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.log_functional_error and self._probe is None:
            if isinstance(batch, Tensor):
                self._set_probe(trainer, batch)
            elif isinstance(batch, (list, tuple)) and batch:
                self._set_probe(trainer, batch[0])
            else:
                raise MisconfigurationException(
                    f"EquivarianceMonitor takes its probe from entry 0 of a tuple/list batch, but the batch "
                    f"is a {type(batch).__name__}: pass probe_batch=<inputs tensor or function>"
                )
            if self._probe is None:
                return  # an empty batch: the probe (and its checks) come with the next one
            self._check_outputs(pl_module)
            self._check_geometry(pl_module)

    @override
    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.should_measure_gradient(trainer):
            self._grad_share = self._projection.gradient_perp_share()

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.should_measure(trainer):
            self._measure_and_log(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self._measure_and_log(trainer, pl_module)
        self.history[-1]["epoch_end"] = 1.0

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero and self.history:
                logger.experiment.add_figure(
                    "equi/trajectory", self.figure(), global_step=trainer.global_step
                )
                logger.experiment.flush()

    # ---- measuring --------------------------------------------------------------------------------

    def measure(self, pl_module: LightningModule) -> dict[str, Tensor]:
        """All the quantities of the table above, now, as float64 tensors keyed by tag."""
        report = self._projection.report(self._w0, layers=self.log_layers)
        out = {f"equi/{key}": value for key, value in report.items()}
        if self._grad_share is not None:
            out["equi/grad_perp_share"] = self._grad_share
            self._grad_share = None
        if self.log_functional_error and self._probe is not None:
            out.update(self._functional_error(pl_module))
        return out

    def figure(self) -> Any:
        """A matplotlib figure of ``||A - Pi_E A||`` against ``||A - A0||`` over the history."""
        return trajectory_figure(self.history)

    def _bind(self, trainer: Trainer, pl_module: LightningModule) -> ModelProjection:
        """The monitor's own binding of the spec. No other callback's state is read: only, when neither
        the monitor nor the model has a spec, the public ``spec`` another callback of the Trainer was
        configured with (``EquivariantProjection(spec=...)``)."""
        spec = self.spec
        if spec is None and not callable(getattr(pl_module, "symmetry_spec", None)):
            configured = (getattr(cb, "spec", None) for cb in trainer.callbacks if cb is not self)
            spec = next((s for s in configured if isinstance(s, (SymmetrySpec, ModelProjection))), None)
            if spec is None:
                message = NO_SPEC_MESSAGE.format(who="EquivarianceMonitor", name=type(pl_module).__name__)
                raise MisconfigurationException(message + " To train without it, leave the monitor out.")
        try:
            return resolve_spec(pl_module, spec, group=self.group)
        except (TypeError, ValueError) as err:
            raise MisconfigurationException(f"EquivarianceMonitor: {err}") from err

    def _measure_and_log(self, trainer: Trainer, pl_module: LightningModule, in_hook: bool = True) -> None:
        values = self.measure(pl_module)
        self._diagnose(values, pl_module)
        step = trainer.global_step
        self._last_step = step
        floats = {k: float(v) for k, v in values.items()}
        self.history.append({"step": float(step), "epoch": float(trainer.current_epoch), **floats})
        for logger in trainer.loggers:
            logger.log_metrics(floats, step=step)
        if in_hook:  # pl_module.log is not allowed in on_train_start
            pl_module.log_dict({k: v.float() for k, v in values.items()}, logger=False, sync_dist=False)

    def _diagnose(self, values: dict[str, Tensor], pl_module: LightningModule) -> None:
        """Warn once when the weights are in E but the network is not equivariant on the probe: then
        something other than the weights breaks equivariance, which no projection can fix."""
        if self._warned_not_equivariant or "equi/functional_error" not in values:
            return
        # every tensor in E up to the rounding of its dtype (a total would let a large layer in E hide
        # a small one far from it, and a fixed threshold calls a float64 model 1e-7 away "in E")
        in_E = self._projection.within_rounding()
        exact = values.get("equi/functional_error_exact", values["equi/functional_error"])
        # only resampling an image makes a large error natural; rotating coordinates only rounds them
        interpolated = not bool(self._probe["exact"].any()) and interpolates(self._act_in)
        if not in_E or interpolated or not float(exact) > _NOT_EQUIVARIANT:
            return
        # "in E up to rounding" is a per-tensor relative bound: a network that amplifies a departure
        # of 1e-6 (BatchNorm, a large head init) can still err by 1e-3. Only when the network with its
        # tensors projected exactly onto E errs too is the cause outside the weights.
        if not self._error_in_E(pl_module) > _NOT_EQUIVARIANT:
            return
        self._warned_not_equivariant = True
        distance = float(values["equi/rel_dist_to_E/total"])
        rank_zero_warn(
            f"EquivarianceMonitor: the weights are in E (relative distance {distance:.1e}) but the network "
            f"is not equivariant on the probe batch (functional error {float(exact):.2g} over group "
            "elements that act exactly). Something besides the weights breaks equivariance: a pointwise "
            "nonlinearity on fields that are not permutation representations (e.g. ReLU after 'standard' "
            "or 'irrep<k>' fields: use a norm nonlinearity or regular fields), a stride, padding or "
            "pooling that does not commute with the group at this input size (run "
            "lightning_equi.subspace.lint_model(model, group, example_input, inputs=...) on a plain torch "
            "model, lightning_equi.adapters.grid_lint on an escnn one: both name the layer and the exact "
            "input sizes), a BatchNorm whose running statistics the spec leaves free, a layer the "
            "spec marks free, a dense layer declared with "
            "fields or a layout that do not match how its input was flattened (x.flatten(1) of a set "
            "(B, n, d) is layout='interleaved'; the default is x.transpose(1, 2).flatten(1)), or "
            "`inputs`/`outputs` actions that do not match the spec's first and last layers."
        )

    def _error_in_E(self, pl_module: LightningModule) -> float:
        """The functional error on the exactly acting probe elements with every constrained tensor
        projected onto E, the tensors restored afterwards (sharded tensors: not checked, inf)."""
        entries = self._projection.entries
        if any(is_dtensor(e.tensor) for e in entries):
            return math.inf
        saved = [e.tensor.detach().clone() for e in entries]
        try:
            self._projection.project_parameters_()
            values = self._functional_error(pl_module)
        finally:
            with torch.no_grad():
                for e, tensor in zip(entries, saved, strict=True):
                    e.tensor.copy_(tensor)
        return float(values.get("equi/functional_error_exact", values["equi/functional_error"]))

    def _functional_error(self, pl_module: LightningModule) -> dict[str, Tensor]:
        device = pl_module.device
        x, g = self._probe_inputs(pl_module), self._probe["g"].to(device)
        exact = self._probe["exact"].bool().to(device)
        try:
            f_gx, g_fx, fx = transformed_outputs(pl_module, x, g, self._act_in, self._act_out)
            self.metric.reset()
            self.metric.update(f_gx, g_fx, fx, exact)
            entries = {} if isinstance(fx, Tensor) else entry_errors(f_gx, g_fx, fx)  # checks the entries
        except (TypeError, ValueError) as err:
            # structures the outputs option does not describe: said once, at the first measurement
            raise MisconfigurationException(f"EquivarianceMonitor (outputs={self.outputs!r}): {err}") from err
        result = self.metric.compute()
        out = {"equi/functional_error": result["total"]}
        if not (math.isnan(float(result["exact"])) or math.isnan(float(result["inexact"]))):
            out["equi/functional_error_exact"] = result["exact"]
            out["equi/functional_error_inexact"] = result["inexact"]
        if entries:
            # one metric per entry, so each entry's error is summed over ranks like the total
            parts = [output_entries(t) for t in (f_gx, g_fx, fx)]
            for name in entries:
                metric = self._entry_metrics.get(name)
                if metric is None:
                    metric = self._entry_metrics[name] = EquivarianceError(nan_strategy="warn").to(device)
                metric.reset()
                metric.update(parts[0][name], parts[1][name], parts[2][name], exact)
                out[f"equi/functional_error/{name}"] = metric.compute()["total"]
        return out

    def _probe_inputs(self, pl_module: LightningModule) -> Tensor:
        """The probe inputs on the model's device, in its dtype (a run resumed under another precision
        restores a probe taken in the first one)."""
        x = self._probe["x"].to(pl_module.device)
        dtype = _floating_dtype(pl_module)
        return x.to(dtype) if x.is_floating_point() and dtype is not None else x

    def _check_outputs(self, pl_module: LightningModule) -> None:
        """Evaluate the probe once with its first elements, so that outputs the ``outputs`` option does
        not describe (a tuple against one image action, a dict with other keys) fail before the first
        optimizer step, not at the first measurement."""
        if self._probe is None:
            return  # an empty batch: checked with the probe of the next one
        batch = self._probe["x"].shape[0]
        x, g = self._probe_inputs(pl_module), self._probe["g"][:batch].to(pl_module.device)
        try:
            f_gx, g_fx, fx = transformed_outputs(pl_module, x, g, self._act_in, self._act_out)
            entry_errors(f_gx, g_fx, fx)
        except (TypeError, ValueError) as err:
            raise MisconfigurationException(f"EquivarianceMonitor (outputs={self.outputs!r}): {err}") from err

    def _check_geometry(self, pl_module: LightningModule) -> None:
        """Warn, before the first step, about strided or transposed layers that do not commute with the
        group at the probe's size (:func:`lightning_equi.subspace.grid_warnings`): no projection fixes
        them, and the functional error would only show it later."""
        if not isinstance(self._act_in, ImageAction):
            return
        messages = grid_warnings(
            pl_module, self._projection.group, self._probe["x"][:1].to(pl_module.device), warn=False
        )
        if messages:
            rank_zero_warn(
                f"EquivarianceMonitor: at the probe's input size the network cannot be equivariant under "
                f"{self._projection.group.name}, whatever its weights:\n  " + "\n  ".join(messages),
                category=GridWarning,
            )

    def _set_probe(self, trainer: Trainer, x: Any) -> None:
        if not isinstance(x, Tensor):
            raise MisconfigurationException(
                f"EquivarianceMonitor probes a tensor input, but got {type(x).__name__}: pass probe_batch=..."
            )
        if x.dim() == 0 or x.shape[0] == 0:
            return  # an empty batch probes nothing: the probe is taken from the next batch
        x = x[: self.probe_size].detach().clone()
        generator = torch.Generator().manual_seed(self.seed + trainer.global_rank)
        g, exact = probe_elements(self._act_in, x.shape[0], self.probe_elements, generator)
        self._probe = {"x": x.cpu(), "g": g.cpu(), "exact": exact.cpu()}

    @override
    def state_dict(self) -> dict[str, Any]:
        # whole tensors: a sharded checkpoint keeps the callbacks' state from rank 0 only, so a DTensor
        # start (FSDP2) is gathered here (every rank calls this) and laid out again when measured
        return {
            "w0": None if self._w0 is None else {k: _whole(v).cpu() for k, v in self._w0.items()},
            "probe": self._probe,
            "history": [dict(h) for h in self.history],
            "last_step": self._last_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._w0 = state_dict.get("w0")
        self._probe = state_dict.get("probe")
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self._last_step = int(state_dict.get("last_step", -1))


def _whole(tensor: Tensor) -> Tensor:
    """A detached whole copy of ``tensor``: gathered for a DTensor (a collective)."""
    tensor = tensor.detach()
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def _floating_dtype(module: torch.nn.Module) -> torch.dtype | None:
    """The dtype of the module's first floating-point parameter (the dtype its inputs must have)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


# "not equivariant": far above float32 rounding of a forward pass
_NOT_EQUIVARIANT = 1e-3
