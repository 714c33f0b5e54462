"""Bridges to other libraries; each imports its library lazily, inside functions.

Example:
    >>> import torch
    >>> from lightning_equi.adapters import escnn_element
    >>> escnn_element("C4", torch.tensor(1))
    1[2pi/4]
"""

from lightning_equi.adapters.escnn_groups import (
    element_from_escnn,
    escnn_element,
    escnn_group,
    group_from_escnn,
    mirror_offset,
    require_escnn,
)

__all__ = [
    "require_escnn",
    "escnn_group",
    "escnn_element",
    "element_from_escnn",
    "group_from_escnn",
    "mirror_offset",
]
