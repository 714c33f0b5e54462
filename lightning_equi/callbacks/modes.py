"""The training mode as one flag: ``nom``, ``aug``, ``equi``, ``reg`` or ``aug+reg`` -> the list of callbacks.

* ``nom``: plain training (the monitor only, to watch the model drift away from E);
* ``aug``: :class:`HaarAugmentation` (and the monitor);
* ``equi``: :class:`EquivariantProjection` (and the monitor);
* ``reg``: :class:`RelaxedEquivariance`, the penalty ``gamma/2 ||Pi_perp A||^2`` (and the monitor);
* ``aug+reg``: :class:`HaarAugmentation` and :class:`RelaxedEquivariance` (and the monitor).

The monitor comes first, so it reads the probe batch before augmentation and the gradient before
projection.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_equi.actions import ActionConfig, action_names_for, make_action
from lightning_equi.callbacks.equivariance_monitor import EquivarianceMonitor
from lightning_equi.callbacks.equivariant_projection import EquivariantProjection
from lightning_equi.callbacks.haar_augmentation import HaarAugmentation
from lightning_equi.callbacks.messages import NO_SPEC_MESSAGE, binds_late, group_or_none
from lightning_equi.callbacks.relaxed_equivariance import RelaxedEquivariance
from lightning_equi.groups import Group, get_group
from lightning_equi.subspace import InferredSpec, ModelProjection, SymmetrySpec, resolve_spec

__all__ = ["MODES", "build_callbacks"]

MODES = {
    "nom": "plain training on the nominal risk",
    "aug": "data augmentation with Haar-distributed group elements (HaarAugmentation)",
    "equi": "weights kept in the equivariant subspace E by projection (EquivariantProjection)",
    "reg": "weights pulled towards E by the penalty gamma/2 ||Pi_perp A||^2 (RelaxedEquivariance)",
    "aug+reg": "Haar augmentation and the penalty together (HaarAugmentation, RelaxedEquivariance)",
}


def _options(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


_AUG = _options(HaarAugmentation) - {"group", "inputs", "targets"}
_EQUI = _options(EquivariantProjection) - {"spec", "group"}
_MONITOR = _options(EquivarianceMonitor) - {"spec", "inputs", "outputs", "group"}
_REG = _options(RelaxedEquivariance) - {"spec", "group"}


def build_callbacks(
    mode: str,
    group: str | Group | None = None,
    spec: SymmetrySpec | ModelProjection | None = None,
    inputs: ActionConfig = "image",
    targets: ActionConfig = None,
    monitor: bool = True,
    model: nn.Module | None = None,
    **kwargs: Any,
) -> list[Callback]:
    """The callbacks that train in ``mode``.

    Args:
        mode: ``"nom"``, ``"aug"``, ``"equi"``, ``"reg"`` or ``"aug+reg"``.
        group: the group, by name; ``aug`` needs it unless ``spec`` or ``model.symmetry_spec()`` gives it.
        spec: the model's :class:`~lightning_equi.subspace.spec.SymmetrySpec`; ``None`` uses the model's
            ``symmetry_spec()`` method, else, given ``group`` and a single ``inputs`` action, a spec
            inferred from the model when the callbacks bind it
            (:class:`~lightning_equi.subspace.InferredSpec`: zero lines; ``outputs``, or ``targets``,
            says whether the output is invariant or moves).
        inputs: the action on the inputs (``"image"``, an Action, or ``{batch key: action}``); checked
            now against the group when it is known (``group``, ``spec`` or ``model``).
        targets: the action on the targets (``None`` for invariant targets); with ``outputs``
            unset, the monitor uses it for the model's outputs.
        monitor: add an :class:`EquivarianceMonitor`.
        model: optional: the model, whose spec (``spec``, else its ``symmetry_spec()``) is then bound
            and validated at once (for ``equi`` and the monitor), and whose ``symmetry_spec()`` gives
            the group when ``group`` and ``spec`` are unset.
        kwargs: options of the callbacks, by name: ``per_sample``, ``copies``, ``orbit``, ``seed``
            (HaarAugmentation), ``reproject_weights``, ``check_atol`` (EquivariantProjection),
            ``gamma``, ``penalty`` (``"proximal"`` or ``"additive"``), ``log_penalty`` (RelaxedEquivariance),
            ``every_n_steps``, ``probe_batch``, ``log_functional_error``, ``probe_size``, ...
            (EquivarianceMonitor). ``outputs`` sets the monitor's action on the model's outputs: one
            action, or one per entry of a model that returns a tuple, list or dict (``None`` for an
            invariant entry).

    Raises:
        MisconfigurationException: for an unknown mode (listing the valid ones), ``aug`` without an
            action on the data or without a group, ``equi`` without a spec (saying how to declare one),
            an unknown group, a group that differs from the spec's (given as ``spec`` or by
            ``model.symmetry_spec()``), a spec that does not fit ``model``, or an unknown option. The
            callbacks are given the group too, and refuse at setup a model whose spec is for another.

    Example:
        >>> [type(cb).__name__ for cb in build_callbacks("aug", group="C4", inputs="image", seed=0)]
        ['EquivarianceMonitor', 'HaarAugmentation']
        >>> build_callbacks("nom", monitor=False)
        []
    """
    if mode not in MODES:
        valid = "\n".join(f"  {k:<5} {v}" for k, v in MODES.items())
        raise MisconfigurationException(f"unknown mode {mode!r}. Valid modes:\n{valid}")
    outputs = kwargs.pop("outputs", targets if not isinstance(targets, Mapping) else None)
    unknown = sorted(set(kwargs) - _AUG - _EQUI - _MONITOR - _REG)
    if unknown:
        raise MisconfigurationException(
            f"unknown option(s) {unknown} for build_callbacks; valid: "
            f"{sorted(_AUG | _EQUI | _MONITOR | _REG)}"
        )
    relaxed = mode in ("reg", "aug+reg")
    misplaced = sorted(k for k in kwargs if k in _REG and not relaxed)
    if misplaced:  # a gamma outside a relaxed mode would be silently ignored
        raise MisconfigurationException(
            f"option(s) {misplaced} apply to modes 'reg' and 'aug+reg' only (mode={mode!r}); pass "
            "mode='reg' or 'aug+reg', or drop them"
        )
    group = group_or_none(group)
    if spec is not None and not isinstance(spec, (SymmetrySpec, ModelProjection)):
        raise MisconfigurationException(
            f"`spec` must be a SymmetrySpec, a ModelProjection or None, got {type(spec).__name__}"
        )
    declared, source = spec, "the spec"
    if spec is None and callable(getattr(model, "symmetry_spec", None)):
        declared, source = model.symmetry_spec(), f"{type(model).__name__}.symmetry_spec()"
        if not isinstance(declared, (SymmetrySpec, ModelProjection)):
            raise MisconfigurationException(
                f"{source} returned {type(declared).__name__}, expected a SymmetrySpec or a ModelProjection"
            )
    if declared is not None and group is not None and group != declared.group:
        raise MisconfigurationException(
            f"group={group.name!r} but {source} is for {declared.group.name}; give one group (or leave "
            "group unset to use the spec's)"
        )
    if group is None and declared is not None:
        group = declared.group  # the group the spec declares
    _check_inputs(inputs, group)
    if declared is None and group is not None and inputs is not None and not isinstance(inputs, Mapping):
        # zero lines: the spec is inferred from the model when the callbacks bind it (a model's own
        # symmetry_spec() still wins there, in resolve_spec)
        spec = declared = InferredSpec(group, inputs=inputs, outputs=outputs)
        source = "the inferred spec"
    late = isinstance(model, LightningModule) and binds_late(model)  # layers built in its setup()
    if (
        model is not None
        and declared is not None
        and not late
        and (monitor or mode in ("equi", "reg", "aug+reg"))
    ):
        try:  # bind now, so that a spec error surfaces here rather than at the fit's setup
            resolve_spec(model, declared)
        except (TypeError, ValueError) as err:
            raise MisconfigurationException(f"mode={mode!r}: {source} does not fit the model: {err}") from err
    callbacks: list[Callback] = []
    if monitor:
        single = inputs is not None and not isinstance(inputs, Mapping)
        options = {k: v for k, v in kwargs.items() if k in _MONITOR}
        options.setdefault("log_functional_error", single)
        callbacks.append(
            EquivarianceMonitor(
                spec=spec, inputs=inputs if single else None, outputs=outputs, group=group, **options
            )
        )
    if mode in ("aug", "aug+reg"):
        if inputs is None and targets is None:
            raise MisconfigurationException(
                f"mode={mode!r} needs the action of the group on the data: pass inputs='image' (or 'points', "
                "'set', 'graph', an Action, or {batch key: action}) and, for equivariant targets, targets=..."
            )
        if group is None:
            raise MisconfigurationException(
                f"mode={mode!r} needs the group to sample from: pass group='C4' (or another name), spec=..., "
                "or model=... with a symmetry_spec() method"
            )
        options = {k: v for k, v in kwargs.items() if k in _AUG}
        callbacks.append(HaarAugmentation(group.name, inputs=inputs, targets=targets, **options))
    if relaxed:
        if spec is None and model is not None and not callable(getattr(model, "symmetry_spec", None)):
            raise MisconfigurationException(
                NO_SPEC_MESSAGE.format(who=f"mode={mode!r}", name=type(model).__name__)
            )
        options = {k: v for k, v in kwargs.items() if k in _REG}
        callbacks.append(RelaxedEquivariance(spec=spec, group=group, **options))
    elif mode == "equi":
        if spec is None and model is not None and not callable(getattr(model, "symmetry_spec", None)):
            raise MisconfigurationException(
                NO_SPEC_MESSAGE.format(who="mode='equi'", name=type(model).__name__)
            )
        options = {k: v for k, v in kwargs.items() if k in _EQUI}
        callbacks.append(EquivariantProjection(spec=spec, group=group, **options))
    return callbacks


def _check_inputs(inputs: ActionConfig, group: str | Group | None) -> None:
    """Refuse now, naming ``inputs=``, an input action that does not act by the group (the default
    ``"image"`` on an S_n model would otherwise fail at fit start, inside the action)."""
    if group is None or inputs is None:
        return
    group = get_group(group)
    configs = inputs.items() if isinstance(inputs, Mapping) else [(None, inputs)]
    for key, config in configs:
        if config is None:
            continue
        try:
            make_action(config, group)
        except (TypeError, ValueError) as err:
            where = "inputs" if key is None else f"inputs[{key!r}]"
            raise MisconfigurationException(
                f"build_callbacks({where}={config!r}): {err}. Pass {where}= one of "
                f"{action_names_for(group)} (the actions by {group.name}) or an Action"
            ) from err
