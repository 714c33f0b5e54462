"""Bridges to other libraries (today: escnn); each imports its library lazily, on first use.

``import lightning_equi.adapters`` never imports escnn: the names of the modules that need it are
resolved on first access (module ``__getattr__``). The modules, under ``lightning_equi.adapters``:

* ``escnn_import``: :func:`require_escnn` (escnn or an install hint) and the numerics patch it applies once.
* ``escnn_groups``: our groups and elements to and from escnn's (:func:`escnn_group`, :func:`escnn_element`).
* ``escnn_actions``: :class:`GeometricTensorAction`, our elements acting per sample on ``GeometricTensor`` s.
* ``escnn_projectors``: the projectors onto a steerable layer's E (``"grid"`` and ``"basis"``).
* ``dense_layers``: :class:`DenseR2Conv`, :class:`DenseR3Conv`, :class:`DenseLinear` and their projectors.
* ``escnn_convert``: whole models, :func:`to_dense`, :func:`escnn_spec` and :func:`to_escnn`.
* ``escnn_pickle``: :func:`register_escnn_pickling`, field types pickled and deep-copied by recipe.
* ``escnn_lint``: :func:`grid_lint`, the layers only approximately equivariant at an input size.

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
)
from lightning_equi.adapters.escnn_import import patch_escnn_numerics, require_escnn

# public name -> submodule that defines it (imported, with escnn, on first access)
_LAZY = {
    **dict.fromkeys(
        [
            "DenseR2Conv",
            "DenseR3Conv",
            "DenseR2ConvTransposed",
            "DenseR3ConvTransposed",
            "DenseLinear",
            "DENSE_LAYERS",
            "TransposedProjector",
            "layer_projectors",
            "default_subspace",
        ],
        "lightning_equi.adapters.dense_layers",
    ),
    **dict.fromkeys(
        ["to_dense", "to_escnn", "escnn_spec", "EscnnModelProjection", "kept_escnn_modules", "output_change"],
        "lightning_equi.adapters.escnn_convert",
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
            "keep_train_modes",
        ],
        "lightning_equi.adapters.escnn_projectors",
    ),
    **dict.fromkeys(["GridLintWarning", "grid_lint"], "lightning_equi.adapters.escnn_lint"),
    "register_escnn_pickling": "lightning_equi.adapters.escnn_pickle",
    "GeometricTensorAction": "lightning_equi.adapters.escnn_actions",
}

__all__ = [
    "require_escnn",
    "patch_escnn_numerics",
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
