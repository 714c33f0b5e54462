"""Tiny LightningModules with declared symmetry specs, for tests, docs and users' own tests.

* :class:`BoringEquiModel` -- a C4-invariant CNN (plain ``nn.Conv2d``/``BatchNorm2d``/``Linear``) on
  random ``6 x 6`` images; :class:`PlainCNNModel` -- the same without a spec (inferred: zero lines);
* :class:`IrrepsEquiModel` -- an SO(2)-equivariant MLP on planar points, whose layers map between
  irreducible 2-d representations (not permutations: Adam needs the weights re-projected);
* :func:`assert_equivariant` -- ``f(g x) == g f(x)`` to the tolerance of the dtype, for users' own tests.
"""

from lightning_equi.testing.assertions import TOLERANCES, assert_equivariant
from lightning_equi.testing.models import BoringEquiModel, IrrepsEquiModel, PlainCNNModel

__all__ = ["BoringEquiModel", "IrrepsEquiModel", "PlainCNNModel", "assert_equivariant", "TOLERANCES"]
