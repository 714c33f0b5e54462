"""The symmetric group S_n acting on sets (``(B, n, ...)``) and graphs (adjacency ``(B, n, n, ...)``).

A permutation ``p`` sends element ``i`` to position ``p[i]``: ``out[:, p[i]] = x[:, i]``, i.e.
``out[:, j] = x[:, p^-1[j]]``, the action of :func:`~lightning_equi.groups.standard` on each
feature column; on an adjacency ``out[p[i], p[j]] = A[i, j]``, the action of
:func:`~lightning_equi.groups.pair_representation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_equi.actions.base import Action
from lightning_equi.groups import Group, SymmetricGroup, get_group

__all__ = ["SetAction", "GraphAction"]

_KEYS = ("adj", "x")


def _symmetric(group: Group | str, who: str) -> SymmetricGroup:
    group = get_group(group)
    if not isinstance(group, SymmetricGroup):
        raise ValueError(f"{who} acts by a symmetric group S<n>, got {group.name}")
    return group


def _permute_axis1(src: Tensor, x: Tensor) -> Tensor:
    shape = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
    return torch.gather(x, 1, src.reshape(shape).expand(x.shape))


class SetAction(Action):
    """S_n permuting the elements of sets ``(B, n, ...)`` (axis 1).

    Example:
        >>> act = SetAction("S3")
        >>> act(torch.tensor([[2, 0, 1]]), torch.tensor([[10, 11, 12]]))
        tensor([[11, 12, 10]])
    """

    def __init__(self, group: SymmetricGroup | str) -> None:
        self.group = _symmetric(group, "SetAction")
        self.exact = True

    def batch_size(self, x: Tensor) -> int:
        n = super().batch_size(x)
        if x.dim() < 2 or x.shape[1] != self.group.n:
            raise ValueError(
                f"x must have shape (B, {self.group.n}, ...) for {self.group.name}, got {tuple(x.shape)}"
            )
        return n

    def apply(self, g: Tensor, x: Tensor) -> Tensor:
        return _permute_axis1(self.group.inverse(g.to(x.device)), x)


class GraphAction(Action):
    """S_n relabelling the nodes of graphs: adjacency ``(B, n, n, ...)`` and node features ``(B, n, ...)``.

    The data is an adjacency tensor, a pair ``(adj, feats)`` (tuple or list), or a dict
    ``{"adj": adj, "x": feats}`` (``"x"`` optional); the same container type comes back.

    Example:
        >>> act = GraphAction("S3")
        >>> adj = torch.tensor([[[0, 1, 0], [0, 0, 0], [0, 0, 0]]])  # one edge 0 -> 1
        >>> act(torch.tensor([[2, 0, 1]]), adj)  # nodes 0, 1 become 2, 0: the edge is 2 -> 0
        tensor([[[0, 0, 0],
                 [0, 0, 0],
                 [1, 0, 0]]])
    """

    def __init__(self, group: SymmetricGroup | str) -> None:
        self.group = _symmetric(group, "GraphAction")
        self.exact = True

    def _split(self, x: Any) -> tuple[Tensor, Tensor | None]:
        if isinstance(x, Tensor):
            return x, None
        if isinstance(x, Mapping):
            if "adj" not in x or not set(x) <= set(_KEYS):
                raise ValueError(f"a graph dict must have the key 'adj' and optionally 'x', got {sorted(x)}")
            return x["adj"], x.get("x")
        if isinstance(x, (tuple, list)) and len(x) == 2:
            return x[0], x[1]
        raise TypeError(f"x must be adj, (adj, feats) or {{'adj': adj, 'x': feats}}, got {type(x).__name__}")

    def batch_size(self, x: Any) -> int:
        adj, feats = self._split(x)
        n = self.group.n
        if not isinstance(adj, Tensor) or adj.dim() < 3 or adj.shape[1:3] != (n, n):
            shape = tuple(adj.shape) if isinstance(adj, Tensor) else type(adj).__name__
            raise ValueError(f"adj must have shape (B, {n}, {n}, ...) for {self.group.name}, got {shape}")
        if feats is not None:
            if not isinstance(feats, Tensor) or feats.dim() < 2 or feats.shape[:2] != (adj.shape[0], n):
                shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
                raise ValueError(f"node features must have shape ({adj.shape[0]}, {n}, ...), got {shape}")
        return adj.shape[0]

    def apply(self, g: Tensor, x: Any) -> Any:
        adj, feats = self._split(x)
        src = self.group.inverse(g.to(adj.device))
        rows = torch.arange(adj.shape[0], device=adj.device)[:, None, None]
        adj = adj[rows, src[:, :, None], src[:, None, :]]  # out[j, k] = A[src j, src k]
        if isinstance(x, Tensor):
            return adj
        feats = None if feats is None else _permute_axis1(src, feats)
        if isinstance(x, Mapping):
            out = dict(x) if type(x) is dict else type(x)(x)
            out["adj"] = adj
            if feats is not None:
                out["x"] = feats
            return out
        return type(x)((adj, feats))
