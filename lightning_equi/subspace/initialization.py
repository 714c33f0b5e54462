"""Equivariant initialisation: draw the weights as usual, then project them onto E.

This is the paper's recipe for the *equi* mode (section 5): the module's own initialiser (Kaiming
uniform for ``nn.Linear`` and ``nn.Conv2d``) draws ``A``, and training starts from ``Pi_E A``.

Projection shrinks a weight: averaging ``k`` i.i.d. entries of an orbit divides their variance by
``k``, so ``||Pi_E A|| ~ ||A|| / sqrt(orbit size)`` and the activations of a deep network shrink
layer after layer. ``preserve_norm=True`` rescales each projected tensor back to the norm it had
before projection, which keeps ``E ||A x||^2 = ||A||^2 E ||x||^2`` (the quantity the usual
initialisers are designed to preserve) for i.i.d. inputs. It is off by default so that ``A0`` is
exactly the paper's ``Pi_E A`` and the three modes can start from the same point.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_equi.subspace.projection import ModelProjection
from lightning_equi.subspace.spec import SymmetrySpec, resolve_spec

__all__ = ["equivariant_init_"]


@torch.no_grad()
def equivariant_init_(
    model: nn.Module,
    spec: SymmetrySpec | ModelProjection | None = None,
    *,
    preserve_norm: bool = False,
) -> ModelProjection:
    """Project every constrained parameter (and running statistic) of ``model`` onto E, in place.

    Args:
        model: the model, with its parameters drawn by its own initialisers.
        spec: its symmetry; ``None`` uses ``model.symmetry_spec()``.
        preserve_norm: rescale each projected parameter to its norm before projection (tensors whose
            projection is zero stay zero; running statistics are never rescaled).

    Returns:
        The bound :class:`~lightning_equi.subspace.projection.ModelProjection`, to reuse during training.

    Example:
        >>> net = nn.Linear(4, 4)
        >>> before = net.weight.norm().item()
        >>> proj = equivariant_init_(net, SymmetrySpec("C4").layer(net, "regular", "regular"),
        ...                          preserve_norm=True)
        >>> proj.is_equivariant(), round(net.weight.norm().item() / before, 4)
        (True, 1.0)
    """
    projection = resolve_spec(model, spec)
    for entry in projection.entries:
        tensor = entry.tensor
        norm = tensor.norm() if preserve_norm and not entry.is_buffer else None
        entry.projector.project_(tensor)
        if norm is not None:
            projected = tensor.norm()
            if projected > 0:
                tensor.mul_(norm / projected)
    return projection
