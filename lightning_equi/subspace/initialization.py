"""Equivariant initialisation: draw the weights as usual, then bring them into E.

Projecting a freshly drawn weight keeps only part of it: averaging ``k`` i.i.d. entries of an orbit
divides their variance by ``k``, so ``||Pi_E A|| ~ ||A|| sqrt(dim E / dim L)`` -- half the norm for a
regular C4 convolution, a factor 0.04 for an S_10 pairs layer -- and the activations of a deep
network shrink layer after layer (dead ReLUs), while an optimizer's step (Adam's is about ``lr`` per
entry, whatever the scale) becomes large against the weights it moves. Two ways to start in E:

* ``preserve_norm=True`` (``EquivariantProjection(init="rescale")``, the callback's default):
  project, then rescale each tensor to the norm it had before projection. The usual initialisers
  are designed to keep ``E ||A x||^2 = ||A||^2 E ||x||^2 / n`` for i.i.d. inputs (He/Kaiming, per
  layer); the rescaled projection keeps ``||A||``, so it keeps that variance, layer by layer (as
  escnn's generalised He initialisation does for its bases). For a freshly initialised model.
* ``preserve_norm=False`` (``init="project"``): the orthogonal projection ``Pi_E A``, the paper's
  protocol (section 5: the module's own initialiser draws ``A``, training starts from ``Pi_E A``),
  and the right choice for **pretrained** weights that are symmetrised rather than freshly drawn:
  ``Pi_E A`` is the equivariant model closest to them, and rescaling would inflate every layer by
  ``||A|| / ||Pi_E A||``.

Either way a tensor that is already in E (to rounding, :meth:`Projector.project_unless_in_E_`) is left
bit for bit: a model initialised in E beforehand (the three modes started from one state, a
checkpoint) keeps its weights, and running statistics are projected, never rescaled.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_equi.subspace.projection import ModelProjection
from lightning_equi.subspace.spec import SymmetrySpec, resolve_spec

__all__ = ["equivariant_init_", "initialize_in_E_"]


@torch.no_grad()
def initialize_in_E_(projection: ModelProjection, preserve_norm: bool = False) -> list[str]:
    """Bring every tensor of a bound ``projection`` into E, in place; return the names that changed.

    Tensors already in E (to rounding) are left bit for bit; the others are projected and, with
    ``preserve_norm`` (parameters only), rescaled to their norm before projection (a tensor whose
    projection is zero stays zero).
    """
    changed = []
    for entry in projection.entries:
        tensor = entry.tensor
        norm = tensor.detach().double().norm() if preserve_norm and not entry.is_buffer else None
        if not entry.projector.project_unless_in_E_(tensor):
            continue
        changed.append(entry.name)
        if norm is not None:
            projected = tensor.detach().double().norm()
            if projected > 0:
                tensor.mul_((norm / projected).to(tensor.dtype))
    return changed


@torch.no_grad()
def equivariant_init_(
    model: nn.Module,
    spec: SymmetrySpec | ModelProjection | None = None,
    *,
    preserve_norm: bool = False,
) -> ModelProjection:
    """Project every constrained parameter (and running statistic) of ``model`` onto E, in place.

    Args:
        model: the model, with its parameters drawn by its own initialisers (or pretrained).
        spec: its symmetry; ``None`` uses ``model.symmetry_spec()``.
        preserve_norm: rescale each projected parameter to its norm before projection, for a
            variance-preserving start (see the module docstring; ``EquivariantProjection``'s default
            ``init="rescale"``); ``False`` is the plain projection (the paper's protocol, and pretrained
            weights). Tensors already in E are left unchanged either way.

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
    initialize_in_E_(projection, preserve_norm)
    return projection
