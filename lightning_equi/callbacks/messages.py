"""What the callbacks share (messages, the moment they bind a spec, the group option), so that no
callback imports another callback's module."""

from __future__ import annotations

from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_equi.groups import Group, get_group

__all__ = ["NO_SPEC_MESSAGE", "binds_late", "group_or_none"]

NO_SPEC_MESSAGE = (
    "{who} needs the symmetry spec of the model: {name} has no symmetry_spec() method and no spec was "
    "given. Declare how the group acts on each layer, e.g.\n"
    "    spec = SymmetrySpec('C4').layers(nn.Conv2d, fields='regular')"
    ".layer('conv1', 'trivial', 'regular').layer('fc', 'regular', 'trivial')\n"
    "and pass it as spec=spec, or return it from a method symmetry_spec(self) of the model."
)


def binds_late(pl_module: LightningModule) -> bool:
    """Whether the callbacks must wait for ``on_fit_start`` to bind the spec: a module that builds its
    layers in its own ``setup`` or ``configure_model`` hook (both run after the callbacks' ``setup``).
    Every other module is bound, and its spec validated, in the callbacks' ``setup``: before the model
    summary and before any checkpoint is restored."""
    return is_overridden("setup", pl_module, LightningModule) or is_overridden(
        "configure_model", pl_module, LightningModule
    )


def group_or_none(group: str | Group | None) -> Group | None:
    """``get_group(group)`` with an unknown name reported as a misconfiguration (``None`` stays)."""
    if group is None:
        return None
    try:
        return get_group(group)
    except ValueError as err:
        raise MisconfigurationException(f"`group`: {err}") from err
