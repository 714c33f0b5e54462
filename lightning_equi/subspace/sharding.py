"""Parameters sharded as DTensors (FSDP2's ``fully_shard``, Lightning's ``ModelParallelStrategy``).

FSDP2 keeps each parameter (and its gradient) as a DTensor: rank ``r`` of a mesh of ``W`` ranks holds
the chunk ``r`` of ``torch.chunk(W, dim=d)`` (``d = 0`` unless a ``shard_placement_fn`` says
otherwise), chunks of ``ceil(n / W)`` entries along ``d``, the last ones shorter or empty. Projecting
a shard on its own is exact when every orbit of the group's action on the parameter's entries lies
inside one chunk (for a convolution with regular output fields: chunks that end on field
boundaries); the shard is then projected in place, with no communication (:func:`shard_layout`,
:meth:`~lightning_equi.subspace.batched.OrbitTables.narrow`). Any other parameter is gathered,
projected and re-sharded (:func:`gather_project_`): one all-gather of the parameter, the local chunk
taken back by a redistribution from a replicated DTensor built with the explicit global shape and
stride (uneven chunks make the inferred ones wrong).

:func:`check_shard_placement` names the parameters whose chunks would split an orbit, and
:func:`shard_placement_fn` chooses, per parameter, the first axis whose chunks hold whole orbits (the
``shard_placement_fn`` argument of ``fully_shard``).

Example:
    >>> import torch
    >>> from lightning_equi.subspace import SymmetrySpec
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3))
    >>> projection = SymmetrySpec("C4").layer("0", "regular", "regular").bind(net)
    >>> check_shard_placement(projection, world_size=2)  # chunks of 4 output channels: one field
    {}
    >>> sorted(check_shard_placement(projection, world_size=4))  # chunks of 2 channels split fields
    ['0.bias', '0.weight']
    >>> chunk_bounds(10, world_size=4, rank=3)  # torch.chunk: chunks of 3, the last one shorter
    (9, 10)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_equi.subspace.base import Projector
from lightning_equi.subspace.batched import OrbitTables
from lightning_equi.subspace.orbit import OrbitMeanProjector

if TYPE_CHECKING:
    from lightning_equi.subspace.projection import ModelProjection

__all__ = [
    "ShardLayout",
    "chunk_bounds",
    "is_dtensor",
    "shard_layout",
    "gather_project_",
    "local_part",
    "distribute_like",
    "from_local_like",
    "check_shard_placement",
    "shard_placement_fn",
]


def _dtensor_type() -> type | None:
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def is_dtensor(tensor: object) -> bool:
    """Whether ``tensor`` is a ``torch.distributed.tensor.DTensor`` (a sharded or replicated tensor).

    Example:
        >>> is_dtensor(torch.zeros(2))
        False
    """
    cls = _dtensor_type()
    return cls is not None and isinstance(tensor, cls)


def chunk_bounds(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """The entries ``start:stop`` of an axis of ``n`` entries that rank ``rank`` holds under
    ``torch.chunk`` sharding over ``world_size`` ranks (FSDP2's layout; possibly empty)."""
    size = math.ceil(n / world_size) if n else 0
    start = min(rank * size, n)
    return start, min(start + size, n)


@dataclass(frozen=True)
class ShardLayout:
    """Where the local tensor of a DTensor sits in the global one: the slice ``start:stop`` of axis
    ``dim``; ``partial`` when the other ranks hold the other slices (a sum over ranks completes a
    norm), ``False`` for a replicated tensor (every rank holds all of it)."""

    dim: int
    start: int
    stop: int
    partial: bool


def shard_layout(tensor: Tensor) -> ShardLayout | None:
    """The :class:`ShardLayout` of a DTensor on a one-dimensional mesh, sharded on one axis or
    replicated; ``None`` for any other placement (a 2-D mesh, a partial tensor, several shards), which
    is then gathered to be projected.

    Raises:
        RuntimeError: if the local tensor's size is not the ``torch.chunk`` size the placement implies.
    """
    from torch.distributed.tensor import Replicate, Shard

    mesh, placements = tensor.device_mesh, tensor.placements
    if mesh.ndim != 1 or len(placements) != 1:
        return None
    (placement,) = placements
    if isinstance(placement, Replicate):
        return ShardLayout(0, 0, tensor.shape[0] if tensor.dim() else 0, partial=False)
    if not isinstance(placement, Shard) or tensor.dim() == 0:
        return None
    dim = placement.dim % tensor.dim()
    start, stop = chunk_bounds(tensor.shape[dim], mesh.size(), mesh.get_local_rank())
    local = tensor.to_local()
    if tuple(local.shape) != tuple(tensor.shape[:dim]) + (stop - start,) + tuple(tensor.shape[dim + 1 :]):
        raise RuntimeError(
            f"a DTensor of shape {tuple(tensor.shape)} sharded on axis {dim} over {mesh.size()} ranks holds "
            f"a local tensor of shape {tuple(local.shape)} on rank {mesh.get_local_rank()}, not the "
            f"torch.chunk slice {start}:{stop}: a layout lightning_equi does not know how to project"
        )
    return ShardLayout(dim, start, stop, partial=True)


def local_tables(projector: Projector, layout: ShardLayout) -> OrbitTables | None:
    """The orbit tables of the local slice, when the projector is an orbit mean and the slice holds
    whole orbits; ``None`` otherwise (the tensor must be gathered)."""
    if not isinstance(projector, OrbitMeanProjector):
        return None
    tables = OrbitTables.of(projector)
    if not layout.partial:
        return tables
    return tables.narrow(layout.dim, layout.start, layout.stop)


def local_part(full: Tensor, like: Tensor) -> Tensor:
    """This rank's part of ``full`` (a tensor every rank holds whole), laid out as the DTensor ``like``:
    a replicated DTensor with ``like``'s global shape and stride, redistributed to ``like``'s placements
    (from replicated to sharded is a local slice, no communication)."""
    from torch.distributed.tensor import DTensor, Replicate

    mesh = like.device_mesh
    replicated = DTensor.from_local(
        full, mesh, [Replicate()] * mesh.ndim, run_check=False, shape=like.shape, stride=like.stride()
    )
    return replicated.redistribute(mesh, like.placements).to_local()


def distribute_like(full: Tensor, like: Tensor) -> Tensor:
    """A DTensor laid out as ``like`` (mesh, placements, global shape and stride) holding ``full``, a
    tensor every rank holds whole: no communication."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        local_part(full, like),
        like.device_mesh,
        like.placements,
        run_check=False,
        shape=like.shape,
        stride=like.stride(),
    )


def from_local_like(local: Tensor, like: Tensor) -> Tensor:
    """A DTensor laid out as ``like`` whose local tensor on this rank is ``local`` (no communication)."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        local, like.device_mesh, like.placements, run_check=False, shape=like.shape, stride=like.stride()
    )


@torch.no_grad()
def gather_project_(tensor: Tensor, projector: Projector, unless_in_E: bool = False) -> bool:
    """Project a DTensor whose shards cannot be projected on their own: gather it (one all-gather),
    project, and write this rank's part back into its local tensor. Every rank must call it.

    Returns whether the tensor changed (always ``True`` unless ``unless_in_E``, see
    :meth:`~lightning_equi.subspace.base.Projector.project_unless_in_E_`).
    """
    full = tensor.full_tensor()
    if unless_in_E:
        if not projector.project_unless_in_E_(full):
            return False
    else:
        projector.project_(full)
    tensor.to_local().copy_(local_part(full, tensor))
    return True


def _chunks_hold_orbits(tables: OrbitTables, dim: int, world_size: int) -> bool:
    n = tables.shape[dim]
    return all(tables.narrow(dim, *chunk_bounds(n, world_size, r)) is not None for r in range(world_size))


def check_shard_placement(projection: ModelProjection, world_size: int, dim: int = 0) -> dict[str, str]:
    """Qualified name -> why the parameter cannot be projected shard by shard when sharded on axis
    ``dim`` over ``world_size`` ranks (``torch.chunk``); empty when every parameter can.

    Such parameters still train correctly (they are gathered, projected and re-sharded at every step:
    one all-gather each); :func:`shard_placement_fn` picks an axis that avoids it where there is one.
    """
    problems: dict[str, str] = {}
    for entry in projection.parameters:
        shape = entry.projector.shape
        if not isinstance(entry.projector, OrbitMeanProjector):
            problems[entry.name] = (
                f"its projector ({entry.projector.kind}) mixes entries across the tensor: "
                "gathered at every step"
            )
        elif len(shape) <= dim:
            problems[entry.name] = f"it has no axis {dim}"
        elif not _chunks_hold_orbits(OrbitTables.of(entry.projector), dim, world_size):
            size = math.ceil(shape[dim] / world_size)
            problems[entry.name] = (
                f"chunks of {size} of its {shape[dim]} entries on axis {dim} split orbits (fields): "
                f"choose a world size whose chunks end on field boundaries, or another axis"
            )
    return problems


def shard_placement_fn(projection: ModelProjection, world_size: int) -> Callable[[Any], Any]:
    """A ``shard_placement_fn`` for ``fully_shard``: each constrained parameter is sharded on the first
    axis whose ``world_size`` chunks hold whole orbits (``Shard(0)`` when it can), so that it is
    projected on its shard without communication; ``None`` (FSDP2's default, ``Shard(0)``) for the
    others, which are then gathered at every step (:func:`check_shard_placement` names them).

    The parameter is looked up among the projection's tensors when ``fully_shard`` asks, by identity.

    Example (in ``configure_model``)::

        mesh = self.device_mesh["data_parallel"]
        place = shard_placement_fn(self.symmetry_spec().bind(self), mesh.size())
        fully_shard(self.net, mesh=mesh, shard_placement_fn=place)
    """
    from torch.distributed.tensor import Shard

    def place(param: Tensor) -> Any:
        for entry in projection.parameters:
            if entry.tensor is param and isinstance(entry.projector, OrbitMeanProjector):
                tables = OrbitTables.of(entry.projector)
                for dim in range(len(tables.shape)):
                    if _chunks_hold_orbits(tables, dim, world_size):
                        return Shard(dim)
                return None
        return None

    return place
