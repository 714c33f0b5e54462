"""Haar Augmentation
=================

Train on the augmented risk (the paper's *Aug* mode): transform each training batch by group
elements drawn from the Haar measure, inputs and targets each by their own action.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, MutableSequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_equi.actions import Action, BatchAction, GraphAction, ImageAction, PointCloudAction, SetAction
from lightning_equi.groups import FiniteGroup, Group, get_group, representation_by_name

__all__ = ["HaarAugmentation", "make_action", "ACTION_NAMES"]

#: names accepted for ``inputs``/``targets``; ``<kind>:<fields>`` also sets the channel fields
ACTION_NAMES = {
    "image": "ImageAction: images, feature maps, masks (B, C, H, W) or (B, H, W)",
    "points": "PointCloudAction: point clouds (B, N, d)",
    "set": "SetAction: sets (B, n, ...) under S_n",
    "graph": "GraphAction: adjacency matrices (B, n, n) under S_n",
}
_KINDS = {"image": ImageAction, "points": PointCloudAction, "set": SetAction, "graph": GraphAction}
_DEFAULT_KEYS = {"inputs": 0, "targets": 1}

ActionConfig = str | Action | Mapping[Any, str | Action | None] | None


def make_action(name: str | Action, group: Group | str) -> Action:
    """The action called ``name`` (see :data:`ACTION_NAMES`): ``"image"``, ``"image:standard"``, ...

    ``<kind>:<fields>`` gives the representation on the channels (``image``) or point features
    (``points``): ``trivial``, ``regular``, ``standard``, ``sign`` or ``irrep<k>``.

    Example:
        >>> make_action("image:standard", "C4")
        ImageAction(C4, exact=True)
    """
    if isinstance(name, Action):
        return name
    if not isinstance(name, str):
        raise TypeError(f"an action is an Action or one of {sorted(ACTION_NAMES)}, got {type(name).__name__}")
    group = get_group(group)
    kind, _, fields = name.strip().lower().partition(":")
    if kind not in _KINDS:
        valid = "\n".join(f"  {k:<8} {v}" for k, v in ACTION_NAMES.items())
        raise MisconfigurationException(
            f"unknown action {name!r}. Valid names (optionally '<name>:<fields>'):\n{valid}"
        )
    if not fields:
        return _KINDS[kind](group)
    if kind not in ("image", "points"):
        raise MisconfigurationException(f"action {kind!r} takes no fields, got {name!r}")
    try:
        rep = representation_by_name(group, fields)
    except ValueError as err:
        raise MisconfigurationException(f"action {name!r}: {err}") from err
    return ImageAction(group, fields=rep) if kind == "image" else PointCloudAction(group, features=rep)


class HaarAugmentation(Callback):
    r"""Transform every training batch by Haar-distributed group elements, in place.

    A callback cannot replace the batch: Lightning passes the object it gave to
    ``on_train_batch_start`` on to ``training_step`` and ignores the hook's return value (and
    ``on_after_batch_transfer`` is a LightningModule/DataModule hook). So the transformed entries are
    written back into the batch *object*: a tensor is re-pointed at the new data with
    ``Tensor.set_`` (which also allows a new batch size, and never writes into the storage the data
    loader produced, which may be shared with the dataset), and dict or list entries that are not
    tensors are replaced. Batches must therefore be tensors, or tuples, lists or dicts of them
    (nested). To augment another batch type, call :func:`lightning_equi.actions.augment` in your
    LightningModule's ``on_after_batch_transfer``.

    Only training batches are transformed; validation and test data are left alone. The batch has
    already been moved to the device when this runs.

    Args:
        group: the group, by name (``"C4"``, ``"D4"``, ``"SO2"``, ``"T14x14"``, ``"S10"``, ...).
        inputs: how the group acts on the inputs: an action name (:data:`ACTION_NAMES`, e.g.
            ``"image"``, ``"image:standard"``), an :class:`~lightning_equi.actions.Action`, or a dict
            ``{batch key or index: action or None}`` for several entries. A single action applies to
            entry ``0`` of a tuple/list batch, or to the batch itself when it is a tensor.
        targets: how the group acts on the targets, as for ``inputs``, at entry ``1``; ``None``
            (invariant targets such as class labels) leaves them unchanged.
        per_sample: draw one element per sample (``True``) or one element for the whole batch.
        copies: the paper's protocol: ``k`` augmented copies of the batch, each with independent
            elements, concatenated along the batch dimension, so a mean loss averages the gradients
            of the ``k`` augmented passes (the batch is ``k`` times larger).
        orbit: exact orbit averaging for a finite group: every sample is transformed by every element
            once (the batch is ``|G|`` times larger). Excludes ``copies > 1`` and ``per_sample=False``.
        seed: seed of the callback's own ``torch.Generator``; rank ``r`` of a distributed run uses
            ``seed + r``. ``None`` takes ``torch.initial_seed()`` (set by ``seed_everything``).

    Raises:
        MisconfigurationException: if the group or an action name is unknown, no action is given, an
            action acts by another group, ``copies`` is not a positive int, or ``orbit=True`` is
            combined with a continuous group, ``copies > 1`` or ``per_sample=False``.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_equi.callbacks import HaarAugmentation
        >>> aug = HaarAugmentation("C4", inputs="image", targets=None, seed=0)
        >>> trainer = Trainer(callbacks=[aug], logger=False)

    The generator's state is saved in the checkpoint, one state per rank, so a resumed run draws the
    same elements as an uninterrupted one.
    """

    def __init__(
        self,
        group: str,
        inputs: ActionConfig = "image",
        targets: ActionConfig = None,
        per_sample: bool = True,
        copies: int = 1,
        orbit: bool = False,
        seed: int | None = None,
    ) -> None:
        try:
            self.group = get_group(group)
        except ValueError as err:
            raise MisconfigurationException(f"`group`: {err}") from err
        if not isinstance(copies, int) or isinstance(copies, bool) or copies < 1:
            raise MisconfigurationException(f"`copies` must be an int >= 1, got {copies!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise MisconfigurationException(f"`seed` must be an int or None, got {seed!r}")
        if orbit:
            if not isinstance(self.group, FiniteGroup):
                raise MisconfigurationException(
                    f"`orbit=True` averages over every element, which needs a finite group; "
                    f"{self.group.name} is continuous: use copies=k to average k Haar draws"
                )
            if copies != 1 or not per_sample:
                raise MisconfigurationException(
                    f"`orbit=True` already transforms every sample by every element of {self.group.name}; "
                    f"leave copies=1 and per_sample=True (got copies={copies}, per_sample={per_sample})"
                )
            if self.group.order > 64:
                rank_zero_warn(
                    f"orbit=True makes every batch {self.group.order} times larger ({self.group.name})"
                )
        self.action = self._batch_action(inputs, targets)
        self.inputs, self.targets = inputs, targets
        self.per_sample, self.copies, self.orbit, self.seed = per_sample, copies, orbit, seed
        self._generator: torch.Generator | None = None
        self._pending_state: Any = None
        self._trainer: Trainer | None = None

    @property
    def generator(self) -> torch.Generator | None:
        """The callback's ``torch.Generator`` (created at setup)."""
        return self._generator

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer
        if self._generator is None:
            self._generator = self._make_generator(trainer.global_rank)
        self._apply_pending_state(trainer)

    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        new = self.transform(batch)
        _write_back(batch, new)

    def transform(self, batch: Any) -> Any:
        """The augmented batch (a new object; the callback writes it back into ``batch``)."""
        if self._generator is None:  # used outside a Trainer
            self._generator = self._make_generator(0)
        n = self.action.batch_size(batch)
        device = _first_device(batch)
        if self.orbit:
            k = self.group.order
            g = self.group.elements(device=device).repeat_interleave(n, dim=0)
        else:
            k = self.copies
            draws = k * n if self.per_sample else k
            g = self.group.sample(draws, generator=self._generator, device=device)
            if not self.per_sample:
                g = g.repeat_interleave(n, dim=0)
        if k > 1:
            batch = _repeat(batch, n, k)
        return self.action(g, batch)

    def _make_generator(self, rank: int) -> torch.Generator:
        base = self.seed if self.seed is not None else torch.initial_seed()
        return torch.Generator().manual_seed(int(base) + rank)

    def _batch_action(self, inputs: ActionConfig, targets: ActionConfig) -> BatchAction:
        entries: dict[Any, Action | None] = {}
        for role, config in (("inputs", inputs), ("targets", targets)):
            if config is None:
                continue
            items = config.items() if isinstance(config, Mapping) else [(_DEFAULT_KEYS[role], config)]
            for key, name in items:
                if key in entries and entries[key] is not None:
                    raise MisconfigurationException(f"batch entry {key!r} is given two actions")
                entries[key] = None if name is None else make_action(name, self.group)
        if not any(a is not None for a in entries.values()):
            raise MisconfigurationException(
                "HaarAugmentation needs an action for at least one batch entry: pass inputs='image' "
                f"(or another of {sorted(ACTION_NAMES)}), an Action, or a dict {{key: action}}"
            )
        for key, act in entries.items():
            if act is not None and act.group != self.group:
                raise MisconfigurationException(
                    f"the action of batch entry {key!r} acts by {act.group.name}, "
                    f"but group={self.group.name!r}"
                )
        if list(entries) == [0] and not isinstance(inputs, Mapping):
            return _TensorOrFirst(entries[0])
        return BatchAction(entries)

    def _apply_pending_state(self, trainer: Trainer) -> None:
        if self._pending_state is None or self._generator is None:
            return
        states, self._pending_state = self._pending_state, None
        rank = trainer.global_rank
        if len(states) != trainer.world_size:
            rank_zero_warn(
                f"HaarAugmentation: the checkpoint holds the generator states of {len(states)} ranks, but "
                f"this run has {trainer.world_size}; ranks without a saved state keep their fresh streams"
            )
        if rank < len(states):
            self._generator.set_state(states[rank])

    @override
    def state_dict(self) -> dict[str, Any]:
        if self._generator is None:
            return {}
        state = self._generator.get_state()
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered = trainer.strategy.all_gather(state.to(trainer.strategy.root_device))
            states = [s.cpu() for s in gathered]
        else:
            states = [state]
        return {"generator_states": states, "seed": self.seed}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict.get("generator_states")
        if states:
            self._pending_state = [torch.as_tensor(s, dtype=torch.uint8).cpu() for s in states]
            if self._trainer is not None:
                self._apply_pending_state(self._trainer)


class _TensorOrFirst(BatchAction):
    """Entry 0 of a tuple/list batch, or the batch itself when it is a tensor."""

    def __init__(self, action: Action) -> None:
        super().__init__({0: action})
        self._single = action

    def batch_size(self, batch: Any) -> int:
        return self._single.batch_size(batch) if isinstance(batch, Tensor) else super().batch_size(batch)

    def apply(self, g: Tensor, batch: Any) -> Any:
        return self._single.apply(g, batch) if isinstance(batch, Tensor) else super().apply(g, batch)


def _first_device(batch: Any) -> torch.device | None:
    if isinstance(batch, Tensor):
        return batch.device
    values = (
        batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else []
    )
    for item in values:
        device = _first_device(item)
        if device is not None:
            return device
    return None


def _repeat(batch: Any, n: int, k: int) -> Any:
    """``k`` copies of every tensor of the batch, concatenated along dim 0 (copy ``c`` at ``c n + i``)."""
    if isinstance(batch, Tensor):
        if batch.dim() == 0 or batch.shape[0] != n:
            raise ValueError(
                f"copies/orbit repeat every tensor of the batch along its first dimension, but a tensor of "
                f"shape {tuple(batch.shape)} does not have the batch size {n} there"
            )
        return batch.repeat(k, *([1] * (batch.dim() - 1)))
    if isinstance(batch, Mapping):
        return type(batch)({key: _repeat(v, n, k) for key, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_repeat(v, n, k) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_repeat(v, n, k) for v in batch)
    raise TypeError(
        "copies/orbit can only repeat tensors and tuples, lists or dicts of tensors, "
        f"got {type(batch).__name__}"
    )


@torch.no_grad()
def _write_back(old: Any, new: Any) -> None:
    """Make the batch object ``old`` hold the data of ``new``, in place (see the class docstring)."""
    if new is old:
        return
    if isinstance(old, Tensor):
        if not isinstance(new, Tensor) or new.dtype != old.dtype:
            raise TypeError(
                f"the action turned a {old.dtype} tensor into {getattr(new, 'dtype', type(new).__name__)}, "
                "which cannot be written back into the batch"
            )
        old.set_(new)
        return
    if isinstance(old, Mapping):
        for key in old:
            if isinstance(old[key], Tensor) or not isinstance(old, MutableMapping):
                _write_back(old[key], new[key])
            else:
                old[key] = new[key]
        return
    if isinstance(old, (list, tuple)):
        for i, (o, n) in enumerate(zip(old, new, strict=True)):
            if isinstance(o, Tensor) or not isinstance(old, MutableSequence):
                _write_back(o, n)
            else:
                old[i] = n
        return
    raise TypeError(
        f"HaarAugmentation cannot write a transformed {type(old).__name__} back into the batch (a callback "
        "cannot replace the batch object); augment it with lightning_equi.actions.augment in the "
        "LightningModule's on_after_batch_transfer instead"
    )
