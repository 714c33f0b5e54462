"""Rotations (and reflections) acting on point clouds and their per-point features.

A point ``p`` (a row of ``pos``) goes to ``M p`` with ``M = standard(G)(g)``, i.e. ``pos @ M^T``;
per-point features go to ``rho(g) f`` for the representation ``features``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from lightning_equi.actions.base import Action, FiberAction
from lightning_equi.groups import (
    O2,
    SO2,
    SO3,
    CyclicGroup,
    DihedralGroup,
    Group,
    Representation,
    get_group,
    standard,
)

__all__ = ["PointCloudAction"]

_KEYS = ("pos", "x")


class PointCloudAction(Action):
    """SO3/O3 acting on ``(B, N, 3)`` point clouds, or C_N/D_N/SO2/O2 on ``(B, N, 2)`` ones.

    Args:
        group: the group (or its name).
        features: representation acting on per-point features ``(B, N, F)``. With it, the data is a
            pair ``(pos, feats)`` (tuple or list) or a dict ``{"pos": pos, "x": feats}``, and the
            same container type comes back.

    Example:
        >>> import math, torch
        >>> act = PointCloudAction("SO2")
        >>> act(torch.tensor([math.pi / 2], dtype=torch.float64), torch.tensor([[[1.0, 0.0]]])).round()
        tensor([[[0., 1.]]])
    """

    def __init__(self, group: Group | str, features: Representation | None = None) -> None:
        self.group = group = get_group(group)
        if isinstance(group, SO3):
            self.dim = 3
        elif isinstance(group, (CyclicGroup, DihedralGroup, SO2, O2)):
            self.dim = 2
        else:
            raise ValueError(f"PointCloudAction acts by SO3, O3, C_N, D_N, SO2 or O2, got {group.name}")
        if features is not None and getattr(features, "group", None) != group:
            other = getattr(getattr(features, "group", None), "name", type(features).__name__)
            raise ValueError(
                f"features is a representation of {other}, but the action's group is {group.name}"
            )
        self.features = None if features is None else FiberAction(features, "features")
        self.exact = False  # rotated coordinates are rounded to the dtype

    def _split(self, x: Any) -> tuple[Tensor, Tensor | None]:
        if isinstance(x, Tensor):
            if self.features is not None:
                raise TypeError("x is a tensor, but features= was given: pass (pos, feats) or {'pos', 'x'}")
            return x, None
        if self.features is None:
            raise TypeError(
                f"x must be a (B, N, {self.dim}) tensor of positions (no features= given), "
                f"got {type(x).__name__}"
            )
        if isinstance(x, Mapping):
            if set(x) != set(_KEYS):
                raise ValueError(f"a point-cloud dict must have exactly the keys {_KEYS}, got {sorted(x)}")
            return x["pos"], x["x"]
        if isinstance(x, (tuple, list)) and len(x) == 2:
            return x[0], x[1]
        raise TypeError(f"x must be (pos, feats) or {{'pos': pos, 'x': feats}}, got {type(x).__name__}")

    def batch_size(self, x: Any) -> int:
        pos, feats = self._split(x)
        if not isinstance(pos, Tensor) or pos.dim() != 3 or pos.shape[-1] != self.dim:
            shape = tuple(pos.shape) if isinstance(pos, Tensor) else type(pos).__name__
            raise ValueError(f"pos must have shape (B, N, {self.dim}) for {self.group.name}, got {shape}")
        if not pos.is_floating_point():
            raise TypeError(f"pos must be floating point, got {pos.dtype}")
        if feats is not None:
            if not isinstance(feats, Tensor) or feats.dim() != 3 or feats.shape[:2] != pos.shape[:2]:
                shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
                raise ValueError(f"feats must have shape {tuple(pos.shape[:2])} + (F,), got {shape}")
            if feats.shape[-1] != self.features.dim:
                raise ValueError(
                    f"feats have {feats.shape[-1]} channels, but features {self.features.name} has "
                    f"dimension {self.features.dim}"
                )
        return pos.shape[0]

    def apply(self, g: Tensor, x: Any) -> Any:
        pos, feats = self._split(x)
        g = g.to(pos.device)
        m = standard(self.group)(g, dtype=pos.dtype)
        pos = pos @ m.transpose(1, 2)
        if feats is None:
            return pos
        feats = self.features(g, feats, axis=-1)
        if isinstance(x, Mapping):
            out = dict(x) if type(x) is dict else type(x)(x)
            out["pos"], out["x"] = pos, feats
            return out
        return type(x)((pos, feats))
