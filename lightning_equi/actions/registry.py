"""Actions by name, for config files and callbacks: ``make_action("image:standard", "C4")``.

The action counterpart of :mod:`lightning_equi.groups.registry`: :data:`ACTION_NAMES` lists the
names, :func:`make_action` builds one. Errors are ``ValueError``/``TypeError`` (the callbacks turn
them into Lightning's ``MisconfigurationException``).
"""

from __future__ import annotations

from lightning_equi.actions.base import Action
from lightning_equi.actions.images import ImageAction
from lightning_equi.actions.points import PointCloudAction
from lightning_equi.actions.sets import GraphAction, SetAction
from lightning_equi.actions.signals import SignalAction, mirror_representation
from lightning_equi.actions.volumes import VolumeAction
from lightning_equi.groups import Group, get_group, representation_by_name

__all__ = ["ACTION_NAMES", "make_action", "action_names_for"]

#: names accepted for ``inputs``/``targets``; ``<kind>:<fields>`` also sets the channel fields
ACTION_NAMES = {
    "image": "ImageAction: images, feature maps, masks (B, C, H, W) or (B, H, W)",
    "volume": "VolumeAction: volumes, 3D feature maps, masks (B, C, D, H, W) under SO3/O3",
    "points": "PointCloudAction: point clouds (B, N, d)",
    "set": "SetAction: sets (B, n, ...) under S_n",
    "graph": "GraphAction: adjacency matrices (B, n, n) under S_n",
    "signal": "SignalAction: 1-D signals (B, C, L), shifts and mirrors of a cyclic grid or reversal",
}
_KINDS = {
    "image": ImageAction,
    "volume": VolumeAction,
    "points": PointCloudAction,
    "set": SetAction,
    "graph": GraphAction,
    "signal": SignalAction,
}
_FIELDS = {
    "image": ("fields", ImageAction),
    "volume": ("fields", VolumeAction),
    "points": ("features", PointCloudAction),
    "signal": ("fields", SignalAction),
}


def make_action(name: str | Action, group: Group | str) -> Action:
    """The action called ``name`` (see :data:`ACTION_NAMES`): ``"image"``, ``"image:standard"``, ...

    ``<kind>:<fields>`` gives the representation on the channels (``image``, ``volume``, ``signal``) or point
    features (``points``): ``trivial``, ``regular``, ``standard``, ``sign`` or ``irrep<k>``, and for
    signals ``mirror`` (pairs of channels the mirrors swap). An
    :class:`~lightning_equi.actions.Action` is returned as it is.

    Raises:
        ValueError: for an unknown name or fields, or fields on a kind that takes none.
        TypeError: if ``name`` is neither a string nor an Action.

    Example:
        >>> make_action("image:standard", "C4")
        ImageAction(C4, exact=True)
        >>> make_action("graph", "S5")
        GraphAction(S5, exact=True)
        >>> make_action("signal:mirror", "D8")
        SignalAction(D8, exact=True)
        >>> make_action("volume:standard", "SO3")  # vector fields on voxel grids
        VolumeAction(SO3, exact=False)
    """
    if isinstance(name, Action):
        return name
    if not isinstance(name, str):
        raise TypeError(f"an action is an Action or one of {sorted(ACTION_NAMES)}, got {type(name).__name__}")
    group = get_group(group)
    kind, _, fields = name.strip().lower().partition(":")
    if kind not in _KINDS:
        valid = "\n".join(f"  {k:<8} {v}" for k, v in ACTION_NAMES.items())
        raise ValueError(f"unknown action {name!r}. Valid names (optionally '<name>:<fields>'):\n{valid}")
    if not fields:
        return _KINDS[kind](group)
    if kind not in _FIELDS:
        raise ValueError(f"action {kind!r} takes no fields, got {name!r}")
    try:
        if kind == "signal" and fields.strip() == "mirror":
            rep = mirror_representation(group)
        else:
            rep = representation_by_name(group, fields)
    except ValueError as err:
        raise ValueError(f"action {name!r}: {err}") from err
    argument, cls = _FIELDS[kind]
    return cls(group, **{argument: rep})


def action_names_for(group: Group | str) -> list[str]:
    """The names of :data:`ACTION_NAMES` whose action acts by ``group`` (for messages that name them).

    Example:
        >>> action_names_for("S4"), action_names_for("D4")
        (['set', 'graph'], ['image', 'points', 'signal'])
    """
    group = get_group(group)
    names = []
    for kind, cls in _KINDS.items():
        try:
            cls(group)
        except (TypeError, ValueError):
            continue
        names.append(kind)
    return names
