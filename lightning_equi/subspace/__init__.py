"""The equivariant subspace E of a model's weights: lifted actions, projectors, specs and distances.

Pure torch: nothing here imports Lightning, and escnn is only ever imported lazily.
"""

from lightning_equi.subspace.base import Projector, TensorAction, group_average
from lightning_equi.subspace.basis import BasisProjector
from lightning_equi.subspace.batchnorm import PooledBatchNorms, pool_batch_statistics
from lightning_equi.subspace.distance import (
    layer_distances,
    relative_distance,
    root_sum_squares,
    split_norms,
    tensor_distance,
    total_distance,
)
from lightning_equi.subspace.fourier import FourierProjector
from lightning_equi.subspace.init import equivariant_init_
from lightning_equi.subspace.orbit import OrbitMeanProjector, orbit_ids
from lightning_equi.subspace.permutation import SymmetricProjector
from lightning_equi.subspace.select import make_projector
from lightning_equi.subspace.spec import (
    FIELD_NAMES,
    HasSymmetrySpec,
    ModelProjection,
    ProjectedTensor,
    SymmetrySpec,
    resolve_spec,
)

__all__ = [
    "TensorAction",
    "Projector",
    "group_average",
    "OrbitMeanProjector",
    "orbit_ids",
    "BasisProjector",
    "FourierProjector",
    "SymmetricProjector",
    "make_projector",
    "SymmetrySpec",
    "ModelProjection",
    "ProjectedTensor",
    "HasSymmetrySpec",
    "resolve_spec",
    "FIELD_NAMES",
    "equivariant_init_",
    "pool_batch_statistics",
    "PooledBatchNorms",
    "tensor_distance",
    "relative_distance",
    "split_norms",
    "root_sum_squares",
    "layer_distances",
    "total_distance",
]
