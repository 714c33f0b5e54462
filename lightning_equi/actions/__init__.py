"""Group elements acting on data, one element per sample: images and masks, point clouds, sets,
graphs, 1-D signals, and several entries of a batch at once.

Example:
    >>> import torch
    >>> from lightning_equi.actions import ImageAction
    >>> act = ImageAction("D4")
    >>> x = torch.rand(2, 3, 8, 8)
    >>> g = act.group.sample(2, generator=torch.Generator().manual_seed(0))
    >>> torch.equal(act(act.group.inverse(g), act(g, x)), x)
    True
"""

from lightning_equi.actions.base import Action, FiberAction, interpolates
from lightning_equi.actions.batch import ActionConfig, BatchAction, augment, batch_action, check_augmentation
from lightning_equi.actions.images import ImageAction
from lightning_equi.actions.points import PointCloudAction
from lightning_equi.actions.registry import ACTION_NAMES, action_names_for, make_action
from lightning_equi.actions.sets import GraphAction, SetAction
from lightning_equi.actions.signals import SignalAction, mirror_representation
from lightning_equi.actions.volumes import VolumeAction

__all__ = [
    "Action",
    "FiberAction",
    "interpolates",
    "ImageAction",
    "VolumeAction",
    "PointCloudAction",
    "SetAction",
    "GraphAction",
    "SignalAction",
    "mirror_representation",
    "BatchAction",
    "augment",
    "batch_action",
    "check_augmentation",
    "ActionConfig",
    "make_action",
    "ACTION_NAMES",
    "action_names_for",
]
