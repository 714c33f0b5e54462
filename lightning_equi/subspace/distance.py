"""Distances to the equivariant subspace E, per tensor, per layer and for a whole model.

Everything is computed in float64 on detached tensors: these numbers are logged and compared across
modes (``||A - Pi_E A||`` against ``||A - A0||`` in the paper's plots), not differentiated, and the
distance of a float32 model in E must come out at float32 rounding, not at the rounding of the
subtraction.

Aggregates are root sums of squares, so the distance of a layer or a model is the Frobenius norm of
the concatenation of its parameters: ``layer_distances`` and ``total_distance`` compose.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lightning_equi.subspace.base import Projector

__all__ = [
    "tensor_distance",
    "relative_distance",
    "split_norms",
    "root_sum_squares",
    "layer_distances",
    "total_distance",
]


def _f64(w: Tensor) -> Tensor:
    return w.detach().to(torch.float64)


def tensor_distance(w: Tensor, projector: Projector) -> Tensor:
    """``||w - Pi_E w||`` (Frobenius), a float64 scalar.

    Example:
        >>> from lightning_equi.groups import CyclicGroup, regular
        >>> from lightning_equi.subspace.base import TensorAction
        >>> from lightning_equi.subspace.orbit import OrbitMeanProjector
        >>> proj = OrbitMeanProjector(TensorAction((4,), [(regular(CyclicGroup(4)), 1)]))
        >>> tensor_distance(torch.tensor([1.0, -1.0, 1.0, -1.0]), proj)
        tensor(2., dtype=torch.float64)
    """
    w = _f64(w)
    return (w - projector.project(w)).norm()


def relative_distance(w: Tensor, projector: Projector) -> Tensor:
    """``||w - Pi_E w|| / ||w||`` in ``[0, 1]``; 0 for ``w = 0`` (which lies in E).

    Example:
        >>> from lightning_equi.groups import CyclicGroup, regular
        >>> from lightning_equi.subspace.base import TensorAction
        >>> from lightning_equi.subspace.orbit import OrbitMeanProjector
        >>> proj = OrbitMeanProjector(TensorAction((4,), [(regular(CyclicGroup(4)), 1)]))
        >>> relative_distance(torch.tensor([3.0, 1.0, 3.0, 1.0]), proj)
        tensor(0.4472, dtype=torch.float64)
    """
    w = _f64(w)
    norm = w.norm()
    return (w - projector.project(w)).norm() / norm if norm > 0 else norm


def split_norms(delta: Tensor, projector: Projector) -> tuple[Tensor, Tensor, Tensor]:
    """``(||delta||, ||Pi_E delta||, ||(I - Pi_E) delta||)`` in float64, for ``delta = W - W0``.

    The two parts are orthogonal, so ``total**2 == in_E**2 + perp**2``: how far training moved the
    weights, split into the move along E and the move away from it.

    Example:
        >>> from lightning_equi.groups import CyclicGroup, regular
        >>> from lightning_equi.subspace.base import TensorAction
        >>> from lightning_equi.subspace.orbit import OrbitMeanProjector
        >>> proj = OrbitMeanProjector(TensorAction((4,), [(regular(CyclicGroup(4)), 1)]))
        >>> [round(float(x), 4) for x in split_norms(torch.tensor([3.0, 1.0, 3.0, 1.0]), proj)]
        [4.4721, 4.0, 2.0]
    """
    delta = _f64(delta)
    inside = projector.project(delta)
    return delta.norm(), inside.norm(), (delta - inside).norm()


def root_sum_squares(values: Mapping[str, Tensor] | list[Tensor]) -> Tensor:
    """``sqrt(sum v**2)``: the norm of the concatenation of tensors whose norms are ``values``."""
    items = list(values.values()) if isinstance(values, Mapping) else list(values)
    if not items:
        return torch.zeros((), dtype=torch.float64)
    return torch.stack([v.to(torch.float64) for v in items]).square().sum().sqrt()


def layer_distances(distances: Mapping[str, Tensor], layers: Mapping[str, str]) -> dict[str, Tensor]:
    """Aggregate per-tensor distances into per-layer ones (root sum of squares over each layer).

    Args:
        distances: qualified parameter name -> distance.
        layers: qualified parameter name -> owning layer name.

    Example:
        >>> d = {"fc.weight": torch.tensor(3.0), "fc.bias": torch.tensor(4.0)}
        >>> layer_distances(d, {"fc.weight": "fc", "fc.bias": "fc"})
        {'fc': tensor(5., dtype=torch.float64)}
    """
    grouped: dict[str, list[Tensor]] = {}
    for name, value in distances.items():
        grouped.setdefault(layers[name], []).append(value)
    return {layer: root_sum_squares(values) for layer, values in grouped.items()}


def total_distance(distances: Mapping[str, Tensor]) -> Tensor:
    """The whole model's distance: the root sum of squares of the per-tensor distances."""
    return root_sum_squares(distances)
