"""Thin Lightning adapters over the functional core: the three training modes as callbacks.

* :class:`HaarAugmentation` -- *aug*: transform each training batch by Haar-distributed elements.
* :class:`EquivariantProjection` -- *equi*: start in E and project every gradient onto E.
* :class:`EquivarianceMonitor` -- log distances to E and the functional equivariance error.
* :class:`StabilityMonitor` -- log the augmented Hessian's extreme eigenvalues on E-perp (is E stable?).
* :class:`RelaxedEquivariance` -- *reg*: the penalty ``gamma/2 ||Pi_perp A||^2`` (added gradient or
  proximal step), alone or with augmentation (*aug+reg*).
* :func:`build_callbacks` -- the callbacks of a mode chosen by one flag (``"nom"``, ``"aug"``, ``"equi"``,
  ``"reg"``, ``"aug+reg"``).

Each callback is a few hooks over the functional core (``lightning_equi.actions``, ``subspace``,
``metrics``), independent of the others and of their order; none imports another's module.
``layout`` holds what the monitor shows (tags, TensorBoard layout, trajectory figure), ``messages``
the texts they share. ``make_action`` and ``ACTION_NAMES`` are re-exported from
:mod:`lightning_equi.actions`.
"""

from lightning_equi.actions import ACTION_NAMES, make_action
from lightning_equi.callbacks.equivariance_monitor import EquivarianceMonitor
from lightning_equi.callbacks.equivariant_projection import EquivariantProjection
from lightning_equi.callbacks.haar_augmentation import HaarAugmentation
from lightning_equi.callbacks.layout import TAGS
from lightning_equi.callbacks.modes import MODES, build_callbacks
from lightning_equi.callbacks.relaxed_equivariance import RelaxedEquivariance
from lightning_equi.callbacks.stability_monitor import StabilityMonitor

__all__ = [
    "HaarAugmentation",
    "EquivariantProjection",
    "EquivarianceMonitor",
    "StabilityMonitor",
    "RelaxedEquivariance",
    "build_callbacks",
    "make_action",
    "MODES",
    "ACTION_NAMES",
    "TAGS",
]
