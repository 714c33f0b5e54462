"""Per-sample group elements acting on escnn ``GeometricTensor``s, in torch and differentiably.

escnn's own ``GeometricTensor.transform(g)`` applies one element to the whole batch, on the CPU
through scipy, detached. Here sample ``b`` is moved by ``g[b]``: the base space by
:class:`~lightning_equi.actions.ImageAction` (exact ``rot90``/flips for C1, C2, C4, D1, D2, D4) and
the fibers by the FieldType's own matrices ``field_type.representation(e)``. Elements are ours (see
:mod:`lightning_equi.groups`), converted per gspace so that the mirror of D_N/O(2) is ``x -> -x``
on the image for any ``flipRot2dOnR2`` axis (see :mod:`lightning_equi.adapters.escnn_groups`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_equi.actions.base import Action
from lightning_equi.actions.images import ImageAction
from lightning_equi.groups import FiniteGroup

__all__ = ["GeometricTensorAction"]


class GeometricTensorAction(Action):
    """Our group elements acting on ``GeometricTensor``s of one escnn ``FieldType``.

    Args:
        field_type: an ``escnn.nn.FieldType`` on a 2D gspace (``rot2dOnR2``, ``flipRot2dOnR2``,
            ``flip2dOnR2``, ``trivialOnR2``) or on ``no_base_space``.
        exact, interpolation, padding_mode: as for :class:`~lightning_equi.actions.ImageAction`.

    Example:
        >>> from escnn import gspaces, nn as enn
        >>> gs = gspaces.rot2dOnR2(4)
        >>> ft = enn.FieldType(gs, [gs.regular_repr])
        >>> act = GeometricTensorAction(ft)
        >>> x = ft(torch.randn(2, 4, 5, 5))
        >>> g = torch.tensor([1, 3])
        >>> torch.allclose(act(g, x).tensor[:1], x.transform(gs.fibergroup.element(1)).tensor[:1])
        True
    """

    def __init__(
        self,
        field_type: Any,
        exact: bool | None = None,
        interpolation: str = "bilinear",
        padding_mode: str = "zeros",
    ) -> None:
        from lightning_equi.adapters.escnn_groups import group_from_escnn, require_escnn

        require_escnn()
        import escnn.nn

        if not isinstance(field_type, escnn.nn.FieldType):
            raise TypeError(f"field_type must be an escnn.nn.FieldType, got {type(field_type).__name__}")
        self.field_type = field_type
        self.gspace = gspace = field_type.gspace
        self.group = group_from_escnn(gspace)
        if gspace.dimensionality == 2:
            self.spatial: ImageAction | None = ImageAction(
                self.group, None, exact, interpolation, padding_mode
            )
            self.exact = self.spatial.exact
        elif gspace.dimensionality == 0:
            self.spatial, self.exact = None, True
        else:
            raise ValueError(
                f"GeometricTensorAction acts on 2D gspaces and no_base_space, got {gspace.name} "
                f"(dimensionality {gspace.dimensionality})"
            )
        self._table: Tensor | None = None
        if isinstance(self.group, FiniteGroup):
            self._table = self._escnn_matrices(self.group.elements())

    def _escnn_matrices(self, g: Tensor) -> Tensor:
        from lightning_equi.adapters.escnn_groups import escnn_element

        mats = [self.field_type.representation(escnn_element(self.group, e, self.gspace)) for e in g.cpu()]
        return torch.as_tensor(np.stack(mats), dtype=torch.float64)

    def batch_size(self, x: Any) -> int:
        import escnn.nn

        if not isinstance(x, escnn.nn.GeometricTensor):
            raise TypeError(f"x must be an escnn GeometricTensor, got {type(x).__name__}")
        if x.type != self.field_type:
            raise ValueError(f"x has field type {x.type}, but the action was built for {self.field_type}")
        if getattr(x, "coords", None) is not None:
            raise ValueError(
                "GeometricTensors with coords (point clouds) are not supported; pass grid tensors"
            )
        return x.tensor.shape[0]

    def apply(self, g: Tensor, x: Any) -> Any:
        import escnn.nn

        t = x.tensor
        g = g.to(t.device)
        if self.spatial is not None:
            self.spatial.batch_size(t)  # square image for quarter turns, ...
            t = self.spatial.apply(g, t)
        if self._table is not None:
            m = self._table.to(t.device)[self.group.index(g)]
        else:
            m = self._escnn_matrices(g).to(t.device)
        m = m.to(t.dtype)
        out = torch.bmm(m, t.reshape(t.shape[0], t.shape[1], -1)).reshape(t.shape)
        return escnn.nn.GeometricTensor(out, x.type)
