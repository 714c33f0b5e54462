"""The equivariant subspace E of a model's weights: lifted actions, projectors, specs and distances.

Pure torch: nothing here imports Lightning, and escnn is only ever imported lazily. The modules:

* ``base`` -- :class:`TensorAction` (the lifted action on one tensor), the :class:`Projector` interface;
* ``orbit`` -- :class:`OrbitMeanProjector`: the mean over orbits of a finite permutation action;
* ``basis`` -- :class:`BasisProjector`: an orthonormal basis of E (any group, any representation);
* ``fourier`` -- :class:`FourierProjector`: dense layers under torus translations;
* ``permutation`` -- :class:`SymmetricProjector`: closed-form S_n layers on sets and graphs;
* ``select`` -- :func:`make_projector`: the cheapest exact projector for an action;
* ``layers`` -- torch layer shapes: the channels, kernel factors and lifted actions of each layer type;
* ``spec`` -- :class:`SymmetrySpec`, its binding to a model, :func:`resolve_spec`;
* ``inference`` -- :func:`infer_spec`: the spec of a plain torch model, by tracing it (zero lines);
* ``projection`` -- :class:`ModelProjection` (a bound spec) and its :class:`ProjectedTensor` entries;
* ``initialization`` -- :func:`equivariant_init_`: draw as usual, then project onto E;
* ``batchnorm`` -- :func:`pool_batch_statistics`: BatchNorm statistics pooled over each field;
* ``distance`` -- distances to E and their aggregation over layers and the model;
* ``batched`` -- :class:`~lightning_equi.subspace.batched.BatchedProjection`: all orbit-mean tensors
  of a model projected together in a fixed number of kernels; ``count_kernels``;
* ``sharding`` -- DTensor parameters (FSDP2): shard-local projection, the gather fallback, and
  ``shard_placement_fn`` / ``check_shard_placement`` for ``fully_shard``;
* ``penalty`` -- :class:`EquivariancePenalty`: ``gamma/2 ||Pi_perp A||^2``, its gradient and proximal step.
"""

from lightning_equi.subspace.base import Projector, TensorAction, group_average
from lightning_equi.subspace.basis import BasisProjector
from lightning_equi.subspace.batchnorm import (
    PooledBatchNorms,
    pool_batch_statistics,
    recompute_running_statistics,
)
from lightning_equi.subspace.distance import (
    layer_distances,
    relative_distance,
    root_sum_squares,
    split_norms,
    tensor_distance,
    total_distance,
)
from lightning_equi.subspace.fourier import FourierProjector
from lightning_equi.subspace.inference import InferredSpec, infer_spec
from lightning_equi.subspace.initialization import equivariant_init_, initialize_in_E_
from lightning_equi.subspace.lint import GridWarning, grid_warnings, lint_model
from lightning_equi.subspace.orbit import OrbitMeanProjector, orbit_ids
from lightning_equi.subspace.penalty import (
    PENALTY_FORMS,
    EquivariancePenalty,
    penalty_gradient,
    penalty_value,
    proximal_factor,
    proximal_update_,
)
from lightning_equi.subspace.permutation import SymmetricProjector
from lightning_equi.subspace.projection import ModelProjection, ProjectedTensor
from lightning_equi.subspace.select import make_projector
from lightning_equi.subspace.spec import (
    FIELD_NAMES,
    LAYOUTS,
    HasSymmetrySpec,
    SymmetrySpec,
    interleaved,
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
    "InferredSpec",
    "infer_spec",
    "interleaved",
    "LAYOUTS",
    "GridWarning",
    "grid_warnings",
    "lint_model",
    "FIELD_NAMES",
    "equivariant_init_",
    "initialize_in_E_",
    "recompute_running_statistics",
    "pool_batch_statistics",
    "PooledBatchNorms",
    "tensor_distance",
    "relative_distance",
    "split_norms",
    "root_sum_squares",
    "layer_distances",
    "total_distance",
    "EquivariancePenalty",
    "PENALTY_FORMS",
    "penalty_value",
    "penalty_gradient",
    "proximal_factor",
    "proximal_update_",
]
