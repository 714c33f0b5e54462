"""One group element per sample, applied to several entries of a batch (an image and its mask, ...).

A :class:`BatchAction` maps entries of a batch (keys of a dict, positions of a tuple or list) to
actions of one common group; entries mapped to ``None`` or not named (invariant targets such as
class labels) pass through unchanged. The container type of the batch is preserved.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_equi.actions.base import Action
from lightning_equi.groups import Group, get_group

__all__ = ["BatchAction", "augment"]

ActionSpec = Action | Mapping[Any, Action | None] | Sequence[Action | None]


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

    def sample(self, batch: Any, generator: torch.Generator | None = None) -> Tensor:
        """Haar-distributed elements, one per sample of ``batch``, on the batch's device."""
        n = self.batch_size(batch)
        key = next(iter(self._entries))
        device = _device(self._get(batch, key))
        return self.group.sample(n, generator=generator, device=device)

    def __repr__(self) -> str:
        return f"BatchAction({self.actions!r})"


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
) -> Any:
    """Draw one Haar element per sample of ``batch`` and apply it to the entries named by ``actions``.

    Args:
        batch: a tensor, tuple, list or dict of batched data.
        group: the group to sample from; it must be the group of every action.
        actions: as for :class:`BatchAction`.
        generator: a seeded ``torch.Generator`` for reproducible draws.

    Example:
        >>> from lightning_equi.actions import ImageAction
        >>> x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
        >>> gen = torch.Generator().manual_seed(0)
        >>> gx, gy = augment((x, y), "C4", [ImageAction("C4"), None], generator=gen)
        >>> gy is y, gx.shape
        (True, torch.Size([4, 1, 8, 8]))
    """
    act = BatchAction(actions)
    group = get_group(group)
    if group != act.group:
        raise ValueError(
            f"group is {group.name}, but the actions act by {act.group.name}: pass group={act.group.name!r}"
        )
    g = act.sample(batch, generator=generator)
    return act.apply(g, batch)
