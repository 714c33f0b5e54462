"""Make escnn's field types picklable and deep-copyable, by recipe instead of by value.

escnn 1.0.11 builds its irreps from local closures, so ``pickle.dumps(field_type)`` fails ("Can't
pickle local object '_build_irrep_cn.<locals>.irrep'"), and with it ``torch.save(model)``,
``ddp_spawn`` and DataLoader workers that receive a model. :func:`register_escnn_pickling` teaches
:mod:`copyreg` to rebuild escnn's groups, representations, gspaces and field types from what
identifies them (a group's factory keys, an irrep's id, a gspace's subgroup id, a representation's
irreps and change of basis), so that the rebuilt objects are escnn's own cached singletons: equal to
(and, within a process, usually identical with) the originals. ``copy.deepcopy`` uses the same
recipes, so deep copies share the group objects instead of duplicating them.

This is registered when the first dense layer of :mod:`lightning_equi.adapters.dense_layers` is
built or unpickled. It does not make a native escnn ``R2Conv`` picklable (its basis holds more
closures); the dense layers of :func:`~lightning_equi.adapters.escnn_convert.to_dense` hold none of
those.

Example:
    >>> import pickle
    >>> from escnn import gspaces, nn as enn
    >>> register_escnn_pickling()
    >>> gs = gspaces.rot2dOnR2(4)
    >>> ft = enn.FieldType(gs, [gs.regular_repr, gs.irrep(1)])
    >>> pickle.loads(pickle.dumps(ft)) == ft
    True
"""

from __future__ import annotations

import copyreg
from typing import Any

import numpy as np

from lightning_equi.adapters.escnn_import import require_escnn

__all__ = ["register_escnn_pickling"]

_REGISTERED = False


def _subclasses(cls: type) -> list[type]:
    out, todo = [], [cls]
    while todo:
        c = todo.pop()
        out.append(c)
        todo.extend(c.__subclasses__())
    return out


# ---- rebuilding (module-level functions: pickle stores them by name) -------------------------------


def _rebuild_group(cls: type, keys: dict) -> Any:
    return cls._generator(**keys)


def _rebuild_irrep(group: Any, irrep_id: tuple) -> Any:
    return group.irrep(*irrep_id)


def _rebuild_representation(
    group: Any, name: str, irreps: list, change_of_basis: np.ndarray, nonlinearities: list
) -> Any:
    existing = group.representations.get(name)
    if existing is None and name == "regular" and not group.continuous:
        existing = group.regular_representation
    if existing is not None:
        if list(existing.irreps) != list(irreps) or not np.allclose(
            existing.change_of_basis, change_of_basis
        ):
            raise ValueError(
                f"escnn_pickle: {group.name} already has a different representation named {name!r}; "
                "rename one of them before pickling"
            )
        return existing
    escnn = require_escnn()
    return escnn.group.Representation(group, name, list(irreps), change_of_basis, nonlinearities)


def _rebuild_gspace(cls: type, args: tuple, name: str) -> Any:
    gspace = cls(*args)
    gspace.name = name  # the hash of a FieldType uses the gspace's name
    return gspace


def _rebuild_field_type(gspace: Any, representations: list) -> Any:
    return require_escnn().nn.FieldType(gspace, representations)


def _rebuild_element(group: Any, value: Any, param: str) -> Any:
    return group.element(value, param)


# ---- reducing -----------------------------------------------------------------------------------


def _reduce_group(group: Any) -> tuple:
    return _rebuild_group, (type(group), dict(group._keys))


def _reduce_irrep(rep: Any) -> tuple:
    return _rebuild_irrep, (rep.group, tuple(rep.id))


def _reduce_representation(rep: Any) -> tuple:
    args = (
        rep.group,
        rep.name,
        list(rep.irreps),
        np.asarray(rep.change_of_basis),
        sorted(rep.supported_nonlinearities),
    )
    return _rebuild_representation, args


def _reduce_gspace(gspace: Any) -> tuple:
    escnn = require_escnn()
    if isinstance(gspace, escnn.gspaces.GSpace0D):
        args: tuple = (gspace.fibergroup,)
    elif hasattr(gspace, "_sg_id"):  # GSpace2D, GSpace3D: the processed subgroup id rebuilds the same space
        args = (gspace._sg_id,)
    else:
        raise TypeError(f"escnn_pickle: cannot pickle the gspace {gspace.name} ({type(gspace).__name__})")
    return _rebuild_gspace, (type(gspace), args, gspace.name)


def _reduce_field_type(ft: Any) -> tuple:
    return _rebuild_field_type, (ft.gspace, list(ft.representations))


def _reduce_element(element: Any) -> tuple:
    return _rebuild_element, (element.group, element.value, element.param)


def register_escnn_pickling() -> None:
    """Register the recipes with :mod:`copyreg` (idempotent; imports escnn)."""
    global _REGISTERED
    if _REGISTERED:
        return
    escnn = require_escnn()
    eg = escnn.group
    for cls in _subclasses(eg.Group):
        if not getattr(cls, "__abstractmethods__", None):
            copyreg.pickle(cls, _reduce_group)
    copyreg.pickle(eg.IrreducibleRepresentation, _reduce_irrep)
    for cls in _subclasses(eg.Representation):
        if not issubclass(cls, eg.IrreducibleRepresentation):
            copyreg.pickle(cls, _reduce_representation)
    for cls in _subclasses(escnn.gspaces.GSpace):
        copyreg.pickle(cls, _reduce_gspace)
    copyreg.pickle(escnn.nn.FieldType, _reduce_field_type)
    copyreg.pickle(eg.GroupElement, _reduce_element)
    _REGISTERED = True
