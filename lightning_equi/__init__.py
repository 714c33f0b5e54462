"""lightning_equi: train a LightningModule nominally, with Haar augmentation, or projected onto
the subspace of equivariant layers, and watch the distance to that subspace in TensorBoard.

Submodules are imported on first use, so ``import lightning_equi`` is cheap and never imports
escnn or tensorboard.

Example:
    >>> import lightning_equi as le
    >>> le.get_group("C4").order
    4
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0.dev0"

# escnn's numerics fix (scikit-learn >= 1.6 rejects escnn's np.matrix): armed here, so escnn models
# build whether escnn is imported before or after lightning_equi; it never imports escnn itself
from lightning_equi._escnn_numerics import install as _install_escnn_numerics  # noqa: E402

_install_escnn_numerics()

# public name -> submodule that defines it
_LAZY = {
    **dict.fromkeys(
        [
            "Group",
            "FiniteGroup",
            "make_generator",
            "get_group",
            "GROUP_NAMES",
            "FIELD_NAMES",
            "representation_by_name",
            "CyclicGroup",
            "DihedralGroup",
            "SO2",
            "O2",
            "SO3",
            "O3",
            "TorusTranslations",
            "SymmetricGroup",
            "Representation",
            "trivial",
            "regular",
            "standard",
            "irrep",
            "sign",
            "direct_sum",
            "pair_representation",
            "grid_representation",
        ],
        "lightning_equi.groups",
    ),
    **dict.fromkeys(
        [
            "ImageAction",
            "VolumeAction",
            "PointCloudAction",
            "SetAction",
            "GraphAction",
            "SignalAction",
            "mirror_representation",
            "BatchAction",
            "augment",
            "Action",
            "FiberAction",
            "ActionConfig",
            "ACTION_NAMES",
            "action_names_for",
            "make_action",
            "batch_action",
            "check_augmentation",
            "interpolates",
        ],
        "lightning_equi.actions",
    ),
    "GeometricTensorAction": "lightning_equi.adapters",
    **dict.fromkeys(
        [
            "TensorAction",
            "Projector",
            "SymmetrySpec",
            "ModelProjection",
            "resolve_spec",
            "infer_spec",
            "lint_model",
            "make_projector",
            "equivariant_init_",
            "OrbitMeanProjector",
            "BasisProjector",
            "FourierProjector",
            "SymmetricProjector",
            "EquivariancePenalty",
        ],
        "lightning_equi.subspace",
    ),
    **dict.fromkeys(
        [
            "HaarAugmentation",
            "EquivariantProjection",
            "EquivarianceMonitor",
            "StabilityMonitor",
            "RelaxedEquivariance",
            "build_callbacks",
            "MODES",
            "TAGS",
        ],
        "lightning_equi.callbacks",
    ),
    **dict.fromkeys(
        [
            "EquivarianceError",
            "equivariance_error",
            "relative_errors",
            "entry_errors",
            "output_entries",
            "output_action",
            "transform_output",
            "transformed_outputs",
            "model_equivariance_error",
            "probe_elements",
        ],
        "lightning_equi.metrics",
    ),
    **dict.fromkeys(["assert_equivariant", "TOLERANCES"], "lightning_equi.testing"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_equi' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
