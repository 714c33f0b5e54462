"""Thin Lightning adapters over the functional core: the three training modes as callbacks.

* :class:`HaarAugmentation` -- *aug*: transform each training batch by Haar-distributed elements.
* :class:`EquivariantProjection` -- *equi*: start in E and project every gradient onto E.
* :class:`EquivarianceMonitor` -- log distances to E and the functional equivariance error.
* :func:`build_callbacks` -- the callbacks of a mode chosen by one flag (``"nom"``, ``"aug"``, ``"equi"``).
"""

from lightning_equi.callbacks.equivariance_monitor import TAGS, EquivarianceMonitor
from lightning_equi.callbacks.equivariant_projection import EquivariantProjection
from lightning_equi.callbacks.haar_augmentation import ACTION_NAMES, HaarAugmentation, make_action
from lightning_equi.callbacks.modes import MODES, build_callbacks

__all__ = [
    "HaarAugmentation",
    "EquivariantProjection",
    "EquivarianceMonitor",
    "build_callbacks",
    "make_action",
    "MODES",
    "ACTION_NAMES",
    "TAGS",
]
