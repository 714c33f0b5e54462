"""Pick the fastest exact projector for one parameter's action.

The order goes from the most specialised closed form to the general fallback:

1. :class:`~lightning_equi.subspace.fourier.FourierProjector` -- dense layers under torus
   translations (diagonal in the Fourier basis);
2. :class:`~lightning_equi.subspace.permutation.SymmetricProjector` -- S_n layers on sets and graphs
   (closed-form bases, never an average over n! elements);
3. :class:`~lightning_equi.subspace.orbit.OrbitMeanProjector` -- any other finite group acting by
   permutations (one scatter-mean over the orbits of entries);
4. :class:`~lightning_equi.subspace.basis.BasisProjector` -- everything else (continuous groups,
   non-permutation representations).
"""

from __future__ import annotations

from lightning_equi.groups import FiniteGroup
from lightning_equi.subspace.base import Projector, TensorAction
from lightning_equi.subspace.basis import BasisProjector
from lightning_equi.subspace.fourier import FourierProjector
from lightning_equi.subspace.orbit import OrbitMeanProjector
from lightning_equi.subspace.permutation import SymmetricProjector

__all__ = ["make_projector"]


def make_projector(action: TensorAction) -> Projector:
    """The projector onto the fixed points of ``action``, by the cheapest exact method that applies.

    Example:
        >>> import torch
        >>> from lightning_equi.groups import CyclicGroup, regular, trivial
        >>> G = CyclicGroup(4)
        >>> make_projector(TensorAction((8, 1), [(2 * regular(G), 1), (trivial(G), 1)])).kind
        'orbit-mean'
    """
    for special in (FourierProjector, SymmetricProjector):
        projector = special.from_action(action)
        if projector is not None:
            # keep the lifted action, as the orbit and basis projectors do: rho_bar(g) itself is needed
            # beyond the projection (the twirl and the isotypic parts of lightning_equi.stability)
            projector.action = action
            return projector
    if action.is_permutation and isinstance(action.group, FiniteGroup):
        return OrbitMeanProjector(action)
    return BasisProjector(action)
