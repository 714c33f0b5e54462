"""One group element per sample, applied to several entries of a batch (an image and its mask, ...).

A :class:`BatchAction` maps entries of a batch (keys of a dict, positions of a tuple or list) to
actions of one common group; entries mapped to ``None`` or not named (invariant targets such as
class labels) pass through unchanged. The container type of the batch is preserved.
:func:`batch_action` builds one from the ``inputs``/``targets`` options of the callbacks, and
:func:`augment` is the whole batch-level augmentation (Haar draws per sample or per batch, ``k``
augmented copies, exact orbit averaging) that :class:`~lightning_equi.callbacks.HaarAugmentation`
calls.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_equi.actions.base import Action
from lightning_equi.actions.registry import ACTION_NAMES, make_action
from lightning_equi.groups import FiniteGroup, Group, get_group

__all__ = ["BatchAction", "augment", "batch_action", "check_augmentation", "ActionConfig"]

ActionSpec = Action | Mapping[Any, Action | None] | Sequence[Action | None]
#: an ``inputs``/``targets`` option: an action name, an Action, ``{batch key: name or Action or None}``
ActionConfig = str | Action | Mapping[Any, str | Action | None] | None
_DEFAULT_KEYS = {"inputs": 0, "targets": 1}


class BatchAction(Action):
    """Apply ``g[b]`` to sample ``b`` of every named entry of a batch, with one call per entry.

    Args:
        actions: an :class:`Action` (the whole batch is one entry), a dict ``{key or index: Action
            or None}``, or a list/tuple with one ``Action`` or ``None`` per position of the batch.

    Example:
        >>> from lightning_equi.actions import ImageAction
        >>> act = BatchAction({"image": ImageAction("C4"), "mask": ImageAction("C4"), "label": None})
        >>> image, mask = torch.rand(2, 3, 8, 8), torch.randint(3, (2, 8, 8))
        >>> batch = {"image": image, "mask": mask, "label": torch.ones(2)}
        >>> out = act(torch.tensor([1, 3]), batch)
        >>> torch.equal(out["mask"][0], torch.rot90(batch["mask"][0], 1, dims=(-2, -1)))
        True
    """

    def __init__(self, actions: ActionSpec) -> None:
        if isinstance(actions, BatchAction):
            actions = actions.actions
        if isinstance(actions, Action):
            entries = {None: actions}
        elif isinstance(actions, Mapping):
            entries = dict(actions)
        elif isinstance(actions, (list, tuple)):
            entries = dict(enumerate(actions))
        else:
            raise TypeError(
                f"actions must be an Action, a dict or a list of Actions, got {type(actions).__name__}"
            )
        for key, act in entries.items():
            if act is not None and not isinstance(act, Action):
                raise TypeError(f"actions[{key!r}] must be an Action or None, got {type(act).__name__}")
        self.actions = actions
        self._positional = isinstance(actions, (list, tuple))
        self._entries = {k: a for k, a in entries.items() if a is not None}
        if not self._entries:
            raise ValueError("actions names no Action: give at least one entry an Action")
        groups = {a.group for a in self._entries.values()}
        if len(groups) > 1:
            names = ", ".join(f"{k!r}: {a.group.name}" for k, a in self._entries.items())
            raise ValueError(f"all actions of a batch must share one group, got {names}")
        self.group = next(iter(groups))
        self.exact = all(a.exact for a in self._entries.values())

    def _get(self, batch: Any, key: Any) -> Any:
        if key is None:
            return batch
        if isinstance(batch, Mapping):
            if key not in batch:
                raise ValueError(f"the batch has no entry {key!r}; its entries are {list(batch)}")
            return batch[key]
        if isinstance(batch, (list, tuple)):
            if not isinstance(key, int) or not -len(batch) <= key < len(batch):
                raise ValueError(
                    f"the batch has no entry {key!r}; it is a {type(batch).__name__} of {len(batch)}"
                )
            return batch[key]
        raise TypeError(
            f"actions name entries {list(self._entries)}, but the batch is a {type(batch).__name__}"
        )

    def batch_size(self, batch: Any) -> int:
        if self._positional and (not isinstance(batch, (list, tuple)) or len(batch) != len(self.actions)):
            got = len(batch) if isinstance(batch, (list, tuple)) else type(batch).__name__
            raise ValueError(f"actions has {len(self.actions)} positions, but the batch is {got}")
        sizes = {key: act.batch_size(self._get(batch, key)) for key, act in self._entries.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"batch entries have different batch sizes: {sizes}")
        return next(iter(sizes.values()))

    def apply(self, g: Tensor, batch: Any) -> Any:
        new = {key: act.apply(g, self._get(batch, key)) for key, act in self._entries.items()}
        if None in new:
            return new[None]
        if isinstance(batch, Mapping):
            out = copy.copy(batch) if isinstance(batch, MutableMapping) else dict(batch)
            out.update(new)
            return out
        items = list(batch)
        for key, value in new.items():
            items[key] = value
        if isinstance(batch, tuple):
            return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)
        return type(batch)(items)

    @property
    def resamples(self) -> bool:
        return any(act.resamples for act in self._entries.values())

    def exact_mask(self, g: Tensor) -> Tensor:
        """An element acts exactly on the batch when it acts exactly on every entry."""
        masks = [act.exact_mask(g) for act in self._entries.values()]
        return torch.stack(masks).all(dim=0)

    def sample(self, batch: Any, generator: torch.Generator | None = None) -> Tensor:
        """Haar-distributed elements, one per sample of ``batch``, on the batch's device."""
        n = self.batch_size(batch)
        key = next(iter(self._entries))
        device = _device(self._get(batch, key))
        return _draw(self.group, n, generator, device)

    def unacted_like_inputs(self, batch: Any) -> list[tuple[Any, tuple[int, ...], Any]]:
        """The entries of ``batch`` that look transformed by an action but are not: tensors with no
        action, not declared ``None`` explicitly, whose batch size and trailing spatial shape equal
        those of an entry acted on by an action on a grid (an image's mask, a second image).

        Returns:
            ``(key, shape, key of the input it matches)`` per such entry.

        Example:
            >>> from lightning_equi.actions import ImageAction
            >>> image, mask = torch.rand(2, 3, 8, 8), torch.randint(3, (2, 8, 8))
            >>> BatchAction({0: ImageAction("C4")}).unacted_like_inputs((image, mask))
            [(1, (2, 8, 8), 0)]
            >>> BatchAction({0: ImageAction("C4"), 1: None}).unacted_like_inputs((image, mask))  # said so
            []
        """
        if isinstance(batch, Mapping):
            items = list(batch.items())
        elif isinstance(batch, (list, tuple)):
            items = list(enumerate(batch))
        else:
            return []
        declared = set(self.actions) if isinstance(self.actions, Mapping) else set(range(len(self.actions)))
        grids = []
        for key, act in self._entries.items():
            dims = getattr(act, "spatial_dims", None)  # actions that move the points of a grid
            x = batch[key] if key is not None and key in dict(items) else None
            if isinstance(dims, int) and isinstance(x, Tensor) and x.dim() > dims:
                grids.append((key, x.shape[0], tuple(x.shape[-dims:]), dims))
        found = []
        for key, value in items:
            if key in declared or not isinstance(value, Tensor):
                continue
            for source, size, spatial, dims in grids:
                if value.dim() > dims and value.shape[0] == size and tuple(value.shape[-dims:]) == spatial:
                    found.append((key, tuple(value.shape), source))
                    break
        return found

    def __repr__(self) -> str:
        return f"BatchAction({self.actions!r})"


class _TensorOrFirst(BatchAction):
    """Entry 0 of a tuple/list batch, or the batch itself when it is a tensor."""

    def __init__(self, action: Action) -> None:
        super().__init__({0: action})
        self._single = action

    def batch_size(self, batch: Any) -> int:
        return self._single.batch_size(batch) if isinstance(batch, Tensor) else super().batch_size(batch)

    def apply(self, g: Tensor, batch: Any) -> Any:
        return self._single.apply(g, batch) if isinstance(batch, Tensor) else super().apply(g, batch)


def batch_action(
    group: Group | str, inputs: ActionConfig = "image", targets: ActionConfig = None
) -> BatchAction:
    """The action on whole batches given by an ``inputs`` and a ``targets`` option.

    A single action (a name of :data:`~lightning_equi.actions.ACTION_NAMES` or an Action) acts on
    entry ``0`` (inputs) or ``1`` (targets) of a tuple/list batch; single inputs alone also act on a
    batch that is one tensor. A dict ``{batch key or index: action or None}`` names entries itself.

    Raises:
        ValueError: if no entry gets an action, an entry gets two, or an action acts by another group.

    Example:
        >>> act = batch_action("D4", inputs="image", targets="image")
        >>> x, mask = torch.rand(2, 1, 4, 4), torch.randint(2, (2, 4, 4))
        >>> gx, gmask = act(torch.tensor([[0, 1], [1, 0]]), (x, mask))
        >>> torch.equal(gmask[0], torch.rot90(mask[0], 1, dims=(-2, -1)))
        True
    """
    group = get_group(group)
    entries: dict[Any, Action | None] = {}
    for role, config in (("inputs", inputs), ("targets", targets)):
        if config is None:
            continue
        items = config.items() if isinstance(config, Mapping) else [(_DEFAULT_KEYS[role], config)]
        for key, name in items:
            if key in entries and entries[key] is not None:
                raise ValueError(f"batch entry {key!r} is given two actions")
            entries[key] = None if name is None else make_action(name, group)
    if not any(a is not None for a in entries.values()):
        raise ValueError(
            "HaarAugmentation needs an action for at least one batch entry: pass inputs='image' "
            f"(or another of {sorted(ACTION_NAMES)}), an Action, or a dict {{key: action}}"
        )
    for key, act in entries.items():
        if act is not None and act.group != group:
            raise ValueError(
                f"the action of batch entry {key!r} acts by {act.group.name}, but group={group.name!r}"
            )
    if list(entries) == [0] and not isinstance(inputs, Mapping):
        return _TensorOrFirst(entries[0])
    return BatchAction(entries)


def check_augmentation(group: Group, per_sample: bool = True, copies: int = 1, orbit: bool = False) -> None:
    """Raise a ``ValueError`` naming the option unless ``per_sample``, ``copies`` and ``orbit`` fit together.

    Example:
        >>> from lightning_equi.groups import get_group
        >>> check_augmentation(get_group("C4"), orbit=True)  # fine: every element of C4
        >>> check_augmentation(get_group("SO2"), orbit=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: `orbit=True` averages over every element, which needs a finite group; SO2 is ...
    """
    if not isinstance(copies, int) or isinstance(copies, bool) or copies < 1:
        raise ValueError(f"`copies` must be an int >= 1, got {copies!r}")
    if orbit:
        if not isinstance(group, FiniteGroup):
            raise ValueError(
                f"`orbit=True` averages over every element, which needs a finite group; "
                f"{group.name} is continuous: use copies=k to average k Haar draws"
            )
        if copies != 1 or not per_sample:
            raise ValueError(
                f"`orbit=True` already transforms every sample by every element of {group.name}; "
                f"leave copies=1 and per_sample=True (got copies={copies}, per_sample={per_sample})"
            )


def _device(x: Any) -> torch.device | None:
    if isinstance(x, Tensor):
        return x.device
    if isinstance(x, Mapping):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        for item in x:
            device = _device(item)
            if device is not None:
                return device
    tensor = getattr(x, "tensor", None)  # escnn GeometricTensor
    return tensor.device if isinstance(tensor, Tensor) else None


def augment(
    batch: Any,
    group: Group | str,
    actions: ActionSpec,
    generator: torch.Generator | None = None,
    per_sample: bool = True,
    copies: int = 1,
    orbit: bool = False,
) -> Any:
    """The augmented batch: Haar-distributed elements applied to the entries named by ``actions``.

    The elements are drawn on the device of the batch's first tensor (an escnn ``GeometricTensor``
    counts by its ``.tensor``), from ``generator``: ``copies * B`` of them with ``per_sample``, else
    ``copies``, each shared by the whole batch. With ``copies = k > 1`` every tensor of the batch is
    repeated ``k`` times along dim 0 first (copy ``c`` of sample ``i`` at ``c B + i``, each copy with
    its own elements), so a mean loss averages the gradients of ``k`` augmented passes. ``orbit=True``
    transforms every sample by every element of a finite group instead (``|G| B`` samples, element
    ``j`` at ``j B + i``), the exact augmented risk. The input batch is not modified.

    Args:
        batch: a tensor, tuple, list or dict of batched data.
        group: the group to sample from; it must be the group of every action.
        actions: as for :class:`BatchAction` (or a :class:`BatchAction`, e.g. from :func:`batch_action`).
        generator: a seeded ``torch.Generator`` for reproducible draws.
        per_sample: one element per sample (``True``) or one per copy of the batch.
        copies: the number of augmented copies ``k``.
        orbit: every element of a finite group once per sample.

    Raises:
        ValueError: if the actions act by another group, or the options do not fit together
            (:func:`check_augmentation`).

    Example:
        >>> from lightning_equi.actions import ImageAction
        >>> x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
        >>> gen = torch.Generator().manual_seed(0)
        >>> gx, gy = augment((x, y), "C4", [ImageAction("C4"), None], generator=gen)
        >>> gy is y, gx.shape
        (True, torch.Size([4, 1, 8, 8]))
        >>> ox, oy = augment((x, y), "C4", [ImageAction("C4"), None], orbit=True)
        >>> ox.shape, torch.equal(ox[4:8], torch.rot90(x, 1, dims=(-2, -1))), oy.tolist()[:6]
        (torch.Size([16, 1, 8, 8]), True, [0, 1, 2, 3, 0, 1])
    """
    act = actions if isinstance(actions, BatchAction) else BatchAction(actions)
    group = get_group(group)
    if group != act.group:
        raise ValueError(
            f"group is {group.name}, but the actions act by {act.group.name}: pass group={act.group.name!r}"
        )
    check_augmentation(group, per_sample, copies, orbit)
    n = act.batch_size(batch)
    device = _device(batch)
    if orbit:
        k = group.order
        g = group.elements(device=device).repeat_interleave(n, dim=0)
    else:
        k = copies
        g = _draw(group, k * n if per_sample else k, generator, device)
        if not per_sample:
            g = g.repeat_interleave(n, dim=0)
    if k > 1:
        batch = _repeat_batch(batch, n, k)
    return act(g, batch)


def _draw(group: Group, n: int, generator: torch.Generator | None, device: Any) -> Tensor:
    """``group.sample`` on ``device``; from a CPU generator onto an accelerator, the elements are drawn
    on the CPU and copied from pinned memory without blocking: a plain host-to-device copy waits for
    the device at every batch."""
    target = torch.device(device) if device is not None else torch.device("cpu")
    on_host = generator is None or generator.device.type == "cpu"
    if target.type == "cpu" or not on_host or generator is None:
        return group.sample(n, generator=generator, device=device)
    drawn = group.sample(n, generator=generator, device="cpu")
    return drawn.pin_memory().to(target, non_blocking=True)


def _repeat_batch(batch: Any, n: int, k: int) -> Any:
    """``k`` copies of every tensor of the batch, concatenated along dim 0 (copy ``c`` at ``c n + i``)."""
    if isinstance(batch, Tensor):
        if batch.dim() == 0 or batch.shape[0] != n:
            raise ValueError(
                f"copies/orbit repeat every tensor of the batch along its first dimension, but a tensor of "
                f"shape {tuple(batch.shape)} does not have the batch size {n} there"
            )
        return batch.repeat(k, *([1] * (batch.dim() - 1)))
    if isinstance(batch, Mapping):
        return type(batch)({key: _repeat_batch(v, n, k) for key, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_repeat_batch(v, n, k) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_repeat_batch(v, n, k) for v in batch)
    if isinstance(getattr(batch, "tensor", None), Tensor) and hasattr(batch, "type"):
        # an escnn GeometricTensor (duck-typed: the core never imports escnn); point-cloud coords too
        coords = getattr(batch, "coords", None)
        extra = [] if coords is None else [_repeat_batch(coords, n, k)]
        return type(batch)(_repeat_batch(batch.tensor, n, k), batch.type, *extra)
    raise TypeError(
        "copies/orbit can only repeat tensors, escnn GeometricTensors and tuples, lists or dicts of them, "
        f"got {type(batch).__name__}"
    )
