"""Bridges to other libraries; each imports its library lazily, on first use.

``import lightning_equi.adapters`` never imports escnn: the names of
:mod:`~lightning_equi.adapters.escnn_layers`, :mod:`~lightning_equi.adapters.escnn_projectors` and
:mod:`~lightning_equi.adapters.escnn_lint` are resolved on first access (module ``__getattr__``).

Example:
    >>> import torch
    >>> from lightning_equi.adapters import escnn_element
    >>> escnn_element("C4", torch.tensor(1))
    1[2pi/4]
"""

from __future__ import annotations

import importlib
from typing import Any

from lightning_equi.adapters.escnn_groups import (
    element_from_escnn,
    escnn_element,
    escnn_group,
    group_from_escnn,
    mirror_offset,
    require_escnn,
)

# public name -> submodule that defines it (imported, with escnn, on first access)
_LAZY = {
    **dict.fromkeys(
        [
            "DenseR2Conv",
            "DenseR3Conv",
            "DenseLinear",
            "DENSE_LAYERS",
            "to_dense",
            "to_escnn",
            "escnn_spec",
            "layer_projectors",
            "default_subspace",
            "EQUIVARIANT_BY_CONSTRUCTION",
        ],
        "lightning_equi.adapters.escnn_layers",
    ),
    **dict.fromkeys(
        [
            "SUBSPACES",
            "EscnnBasisProjector",
            "ColumnSpanProjector",
            "escnn_basis_projector",
            "grid_projector",
            "bias_projector",
            "keep_numpy_rng",
        ],
        "lightning_equi.adapters.escnn_projectors",
    ),
    **dict.fromkeys(["GridLintWarning", "grid_lint"], "lightning_equi.adapters.escnn_lint"),
    "register_escnn_pickling": "lightning_equi.adapters.escnn_pickle",
    "patch_escnn_numerics": "lightning_equi.adapters.escnn_compat",
}

__all__ = [
    "require_escnn",
    "escnn_group",
    "escnn_element",
    "element_from_escnn",
    "group_from_escnn",
    "mirror_offset",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_equi.adapters' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
