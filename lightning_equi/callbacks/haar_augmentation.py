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

from lightning_equi.actions import ActionConfig, augment, batch_action, check_augmentation
from lightning_equi.groups import Group, get_group

__all__ = ["HaarAugmentation"]


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
            combined with a continuous group, ``copies > 1`` or ``per_sample=False``; at setup, if the
            model's ``symmetry_spec()`` is for another group.

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
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise MisconfigurationException(f"`seed` must be an int or None, got {seed!r}")
        try:
            check_augmentation(self.group, per_sample, copies, orbit)
            self.action = batch_action(self.group, inputs, targets)
        except (TypeError, ValueError) as err:
            raise MisconfigurationException(str(err)) from err
        if orbit and self.group.order > 64:
            rank_zero_warn(
                f"orbit=True makes every batch {self.group.order} times larger ({self.group.name})"
            )
        self.inputs, self.targets = inputs, targets
        self.per_sample, self.copies, self.orbit, self.seed = per_sample, copies, orbit, seed
        self._generator: torch.Generator | None = None
        self._pending_state: Any = None
        self._trainer: Trainer | None = None
        self._checked_targets = False

    @property
    def generator(self) -> torch.Generator | None:
        """The callback's ``torch.Generator`` (created at setup)."""
        return self._generator

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer
        if stage == "fit":
            self._check_model_group(pl_module)
        if self._generator is None:
            self._generator = self._make_generator(trainer.global_rank)
        self._apply_pending_state(trainer)

    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.should_augment(trainer, batch_idx):
            _write_back(batch, self.transform(batch))

    def _check_model_group(self, pl_module: LightningModule) -> None:
        """Augmenting by another group than the one the model declares mixes two symmetries silently."""
        method = getattr(pl_module, "symmetry_spec", None)
        declared = getattr(method(), "group", None) if callable(method) else None
        if isinstance(declared, Group) and declared != self.group:
            raise MisconfigurationException(
                f"HaarAugmentation draws elements of {self.group.name}, but "
                f"{type(pl_module).__name__}.symmetry_spec() is for {declared.name}: augment by the "
                f"model's group (group={declared.name!r}), or change the spec"
            )

    def should_augment(self, trainer: Trainer, batch_idx: int) -> bool:
        """Whether to transform this training batch; always, by default (override, e.g., to augment only
        after a warm-up or on some epochs: the generator then draws only for the batches augmented)."""
        return True

    def transform(self, batch: Any) -> Any:
        """The augmented batch (a new object; the callback writes it back into ``batch``):
        :func:`lightning_equi.actions.augment` with the callback's generator and options."""
        if self._generator is None:  # used outside a Trainer
            self._generator = self._make_generator(0)
        if not self._checked_targets:
            self._checked_targets = True
            self._warn_unacted(batch)
        return augment(
            batch,
            self.group,
            self.action,
            generator=self._generator,
            per_sample=self.per_sample,
            copies=self.copies,
            orbit=self.orbit,
        )

    def _warn_unacted(self, batch: Any) -> None:
        """Once, on the first batch: an entry shaped like a transformed input but left unchanged (a
        segmentation mask with ``targets`` unset) no longer matches its input after augmentation."""
        for key, shape, source in self.action.unacted_like_inputs(batch):
            rank_zero_warn(
                f"HaarAugmentation: batch entry {key!r} (shape {shape}) has the batch size and spatial shape "
                f"of the input entry {source!r}, which {self.group.name} transforms, but no action: it is "
                "left as it is, so a mask or target image no longer matches its transformed input. If it "
                f"transforms with the input, declare targets='image' (or targets={{{key!r}: 'image'}}); "
                f"if it is invariant, say so with targets={{{key!r}: None}}, which silences this warning"
            )

    def _make_generator(self, rank: int) -> torch.Generator:
        base = self.seed if self.seed is not None else torch.initial_seed()
        return torch.Generator().manual_seed(int(base) + rank)

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
