"""A symmetry spec bound to a model: one projector per tensor, and the operations the callbacks need.

:meth:`SymmetrySpec.bind <lightning_equi.subspace.spec.SymmetrySpec.bind>` (or
:func:`~lightning_equi.subspace.spec.resolve_spec`) yields a :class:`ModelProjection`: one
:class:`ProjectedTensor` per constrained parameter and running statistic, the projections of weights
and gradients onto E, and every distance to E that the monitor and the experiments log.

Projections go through :class:`~lightning_equi.subspace.batched.BatchedProjection` (a fixed number of
kernels for all orbit-mean tensors together). Parameters sharded as DTensors (FSDP2) are projected on
their local shards when the shards hold whole orbits, else gathered
(:mod:`~lightning_equi.subspace.sharding`); their distances are summed over the ranks with one
all-reduce per call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_equi.groups import Group
from lightning_equi.subspace import distance as D
from lightning_equi.subspace import sharding as S
from lightning_equi.subspace.base import Projector
from lightning_equi.subspace.batched import BatchedProjection, OrbitTables

__all__ = ["ModelProjection", "ProjectedTensor"]


@dataclass(frozen=True)
class ProjectedTensor:
    """One parameter or running statistic of the model and its projector onto E.

    ``tensor`` is looked up on the module each time, so it follows ``model.to(...)`` (which replaces
    buffers) and ``load_state_dict``.
    """

    name: str
    projector: Projector
    is_buffer: bool
    layer: str
    module: nn.Module = field(repr=False)
    attribute: str = field(repr=False)

    @property
    def tensor(self) -> Tensor:
        return getattr(self.module, self.attribute)


class ModelProjection:
    """A symmetry spec bound to a model: projections and distances of all its parameters.

    Built by :meth:`~lightning_equi.subspace.spec.SymmetrySpec.bind`.

    Attributes:
        group: the group.
        model: the bound module.
        entries: one :class:`ProjectedTensor` per constrained parameter and running statistic.
        free_names: qualified names of the parameters left unconstrained.

    Example:
        >>> from lightning_equi.subspace import SymmetrySpec
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> spec = SymmetrySpec("C4").layer("0", "regular", "regular").layer("2", "regular", "trivial")
        >>> proj = spec.bind(net)
        >>> bool(proj.total_distance() > 0), proj.dim, proj.numel
        (True, 13, 49)
        >>> proj.project_parameters_()
        >>> proj.is_equivariant()
        True
    """

    def __init__(
        self, group: Group, model: nn.Module, entries: list[ProjectedTensor], free_names: list[str]
    ) -> None:
        self.group, self.model = group, model
        self.entries = list(entries)
        self.free_names = list(free_names)
        # index tables only (per entry and shard layout): the tensors are looked up at every call
        self._tables_cache: dict[tuple[int, S.ShardLayout], OrbitTables | None] = {}
        self._batched_cache: dict[tuple, BatchedProjection] = {}

    def _selected(self, buffers: bool) -> Iterator[ProjectedTensor]:
        return (e for e in self.entries if buffers or not e.is_buffer)

    @property
    def parameters(self) -> list[ProjectedTensor]:
        """The entries that are trainable parameters (not running statistics)."""
        return [e for e in self.entries if not e.is_buffer]

    @property
    def dim(self) -> int:
        """``dim E`` over the constrained parameters."""
        return sum(e.projector.dim for e in self.parameters)

    @property
    def numel(self) -> int:
        """The number of constrained parameter entries (``dim L`` without the free parameters)."""
        return sum(e.tensor.numel() for e in self.parameters)

    # ---- projecting -------------------------------------------------------------------------------

    @torch.no_grad()
    def project_tensors_(self, tensors: Sequence[Tensor | None], unless_in_E: bool = False) -> None:
        """Project ``tensors`` (one per entry, in the order of :attr:`entries`; ``None`` is skipped) in
        place, all orbit-mean tensors together in a fixed number of kernels.

        DTensors are projected on their local shards when these hold whole orbits, else gathered,
        projected and re-sharded (every rank must call this). With ``unless_in_E``, tensors whose
        projector is not ``identity_on_E`` are only rewritten when they are not in E to rounding
        (:meth:`~lightning_equi.subspace.base.Projector.project_unless_in_E_`).
        """
        if len(tensors) != len(self.entries):
            raise ValueError(f"got {len(tensors)} tensors for the {len(self.entries)} entries")
        local: list[Tensor | None] = []
        key: list[object] = []
        gathered: list[tuple[Tensor, Projector]] = []
        for i, (e, t) in enumerate(zip(self.entries, tensors, strict=True)):
            if t is None or (unless_in_E and not e.projector.identity_on_E):
                local.append(None)
                key.append(None)
                if t is not None:
                    if S.is_dtensor(t):
                        gathered.append((t, e.projector))
                    else:
                        e.projector.project_unless_in_E_(t)
                continue
            if not S.is_dtensor(t):
                local.append(t)
                key.append(i)
                continue
            layout = S.shard_layout(t)
            tables = None if layout is None else self._local_tables(i, layout)
            if tables is None:
                local.append(None)
                key.append(None)
                gathered.append((t, e.projector))
            else:
                local.append(t.to_local())
                key.append((i, layout))
        self._batched(tuple(key)).project_(local)
        for t, projector in gathered:
            S.gather_project_(t, projector, unless_in_E=unless_in_E and not projector.identity_on_E)

    def _local_tables(self, i: int, layout: S.ShardLayout) -> OrbitTables | None:
        cache = self._tables_cache
        if (i, layout) not in cache:
            cache[(i, layout)] = S.local_tables(self.entries[i].projector, layout)
        return cache[(i, layout)]

    def _batched(self, key: tuple) -> BatchedProjection:
        """The batched projection of the entries in ``key`` (an entry index, an (index, shard layout)
        pair, or None to skip); index tables are kept per key, tensors never are."""
        cache = self._batched_cache
        if key not in cache:
            projectors: list[Projector | OrbitTables | None] = []
            for k in key:
                if k is None:
                    projectors.append(None)
                elif isinstance(k, int):
                    projectors.append(self.entries[k].projector)
                else:
                    projectors.append(self._local_tables(*k))  # type: ignore[arg-type]
            cache[key] = BatchedProjection(projectors)
        return cache[key]

    @torch.no_grad()
    def project_parameters_(self) -> None:
        """Project every constrained parameter and running statistic onto E, in place."""
        self.project_tensors_([e.tensor for e in self.entries])

    @torch.no_grad()
    def project_buffers_(self) -> None:
        """Project the running statistics only: training forwards move them out of E, whatever the
        optimizer does, so re-project them before evaluating (or after every step)."""
        self.project_tensors_([e.tensor if e.is_buffer else None for e in self.entries])

    @torch.no_grad()
    def project_gradients_(self) -> None:
        """Project every ``.grad`` of a constrained parameter onto E, in place (``None`` is skipped)."""
        self.project_tensors_([None if e.is_buffer else e.tensor.grad for e in self.entries])

    @property
    def is_sharded(self) -> bool:
        """Whether any constrained tensor is a DTensor (FSDP2)."""
        return any(S.is_dtensor(e.tensor) for e in self.entries)

    @contextmanager
    def gathered(self) -> Iterator[ModelProjection]:
        """A projection of whole copies of the sharded tensors (gathered: every rank must enter), for
        what is done once rather than at every step (bringing the weights into E at fit start); on exit
        each rank writes its part of the copies back into its shards. Without DTensors it yields
        ``self``.

        Example:
            >>> from lightning_equi.subspace import SymmetrySpec
            >>> net = nn.Sequential(nn.Linear(2, 2))
            >>> proj = SymmetrySpec("C2").layer("0", "regular", "regular").bind(net)
            >>> with proj.gathered() as whole:
            ...     whole is proj
            True
        """
        if not self.is_sharded:
            yield self
            return
        holder = nn.Module()
        entries, copies = [], []
        for i, e in enumerate(self.entries):
            tensor = e.tensor
            if not S.is_dtensor(tensor):
                entries.append(e)
                continue
            name, whole = f"t{i}", tensor.detach().full_tensor().clone()
            if e.is_buffer:
                holder.register_buffer(name, whole)
            else:
                holder.register_parameter(name, nn.Parameter(whole, requires_grad=tensor.requires_grad))
            entries.append(ProjectedTensor(e.name, e.projector, e.is_buffer, e.layer, holder, name))
            copies.append((tensor, name))
        yield ModelProjection(self.group, self.model, entries, self.free_names)
        with torch.no_grad():
            for tensor, name in copies:
                tensor.to_local().copy_(S.local_part(getattr(holder, name).detach(), tensor))

    # ---- measuring on shards ------------------------------------------------------------------------

    def shard_view(self, i: int, tensor: Tensor) -> tuple[Tensor, Projector, Any] | None:
        """``(local tensor, its projector, process group)`` for a tensor of entry ``i`` (the entry's
        tensor, its gradient, a difference of them): the tensor itself, its projector and ``None``
        for a plain tensor; this rank's shard, the projector of the shard and the group whose sum
        completes a norm for a DTensor whose shard holds whole orbits; ``None`` for any other DTensor,
        which must be gathered. Elementwise work on the local tensor needs no communication.

        Example:
            >>> from lightning_equi.subspace import SymmetrySpec
            >>> net = nn.Sequential(nn.Linear(2, 2))
            >>> proj = SymmetrySpec("C2").layer("0", "regular", "regular").bind(net)
            >>> local, projector, group = proj.shard_view(0, proj.entries[0].tensor)
            >>> local is proj.entries[0].tensor, projector is proj.entries[0].projector, group
            (True, True, None)
        """
        if not S.is_dtensor(tensor):
            return tensor, self.entries[i].projector, None
        layout = S.shard_layout(tensor)
        tables = None if layout is None else self._local_tables(i, layout)
        if tables is None:
            return None
        key = ("projector", i, layout)
        if key not in self._tables_cache:
            self._tables_cache[key] = tables.projector()  # type: ignore[index]
        group = tensor.device_mesh.get_group() if layout.partial else None  # type: ignore[union-attr]
        return tensor.to_local(), self._tables_cache[key], group  # type: ignore[index, return-value]

    def _piece(self, i: int, tensor: Tensor) -> tuple[Tensor, Projector, Any]:
        """:meth:`shard_view`, with the gathered tensor (the same on every rank) for a DTensor that
        has no view of its own."""
        view = self.shard_view(i, tensor)
        return (tensor.full_tensor(), self.entries[i].projector, None) if view is None else view

    @staticmethod
    def sum_over_ranks(values: Sequence[Tensor], groups: Sequence[Any]) -> list[Tensor]:
        """``values`` (scalars), those with a process group summed over its ranks: one all-reduce per
        group, none when every group is ``None``."""
        out = list(values)
        members: dict[Any, list[int]] = {}
        for k, group in enumerate(groups):
            if group is not None:
                members.setdefault(group, []).append(k)
        for group, ks in members.items():
            flat = torch.stack([out[k].reshape(()) for k in ks])
            torch.distributed.all_reduce(flat, group=group)
            for k, value in zip(ks, flat.unbind(0), strict=True):
                out[k] = value
        return out

    def _measure(
        self,
        items: Sequence[tuple[int, Tensor]],
        measure: Callable[[Tensor, Projector], list[Tensor]] | Sequence[Callable],
        roots: bool = True,
    ) -> list[list[Tensor]]:
        """``measure(piece, projector)`` (sums such as squares, float64 scalars) of every
        ``(entry index, tensor)`` (one function for all, or one per item), the pieces of sharded
        tensors summed over their ranks by one all-reduce per process group, then square roots (unless
        not ``roots``). Every rank must call it when a tensor is sharded; a model without DTensors
        communicates nothing."""
        measures = [measure] * len(items) if callable(measure) else list(measure)
        values: list[Tensor] = []
        groups: list[Any] = []
        lengths: list[int] = []
        for (i, tensor), fn in zip(items, measures, strict=True):
            piece, projector, group = self._piece(i, tensor)
            row = fn(piece, projector)
            values += row
            groups += [group] * len(row)
            lengths.append(len(row))
        flat = self.sum_over_ranks(values, groups)  # one reduction for all the sharded values
        rows, k = [], 0
        for n in lengths:
            rows.append(flat[k : k + n])
            k += n
        return [[v.clamp_min(0).sqrt() for v in row] for row in rows] if roots else rows

    # ---- distances --------------------------------------------------------------------------------

    def _items(self, buffers: bool) -> list[tuple[int, Tensor]]:
        return [(i, e.tensor.detach()) for i, e in enumerate(self.entries) if buffers or not e.is_buffer]

    def _names(self, buffers: bool) -> list[str]:
        return [e.name for e in self._selected(buffers)]

    def distances(self, buffers: bool = False) -> dict[str, Tensor]:
        """Qualified name -> ``||W - Pi_E W||`` (float64, detached); running statistics if ``buffers``."""
        values = self._measure(self._items(buffers), lambda w, p: [D.tensor_distance(w, p).square()])
        return {name: v[0] for name, v in zip(self._names(buffers), values, strict=True)}

    def relative_distances(self, buffers: bool = False) -> dict[str, Tensor]:
        """Qualified name -> ``||W - Pi_E W|| / ||W||`` (0 for a zero tensor)."""
        values = self._measure(self._items(buffers), _distance_and_norm)
        return {
            name: d / n if n > 0 else n for name, (d, n) in zip(self._names(buffers), values, strict=True)
        }

    def layer_distances(self, buffers: bool = False) -> dict[str, Tensor]:
        """Layer name -> the distance of all its constrained tensors together."""
        return D.layer_distances(self.distances(buffers), {e.name: e.layer for e in self.entries})

    def total_distance(self, buffers: bool = False) -> Tensor:
        """``||A - Pi_E A||`` over the whole model."""
        return D.total_distance(self.distances(buffers))

    def relative_total_distance(self, buffers: bool = False) -> Tensor:
        """``||A - Pi_E A|| / ||A||`` over the whole model."""
        values = self._measure(self._items(buffers), _distance_and_norm)
        dist = D.root_sum_squares([d for d, _ in values])
        norm = D.root_sum_squares([n for _, n in values])
        return dist / norm if norm > 0 else norm

    def snapshot(self, buffers: bool = False) -> dict[str, Tensor]:
        """Detached clones of the constrained tensors (``W0`` for :meth:`distances_from`)."""
        return {e.name: e.tensor.detach().clone() for e in self._selected(buffers)}

    def distances_from(self, w0: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
        """How far each tensor moved from ``w0``, split along E and across it.

        Returns:
            ``{"total": {name: ||W - W0||}, "in_E": {name: ||Pi_E (W - W0)||},
            "perp": {name: ||(I - Pi_E)(W - W0)||}}`` over the names in ``w0`` (float64 scalars);
            aggregate a part over the model with :func:`~lightning_equi.subspace.distance.total_distance`.
        """
        index = {e.name: i for i, e in enumerate(self.entries)}
        unknown = sorted(set(w0) - set(index))
        if unknown:
            raise KeyError(
                f"distances_from: {unknown} are not constrained tensors of the model; use snapshot()"
            )
        values = self._measure(self._moves(w0), _split_squares)
        out: dict[str, dict[str, Tensor]] = {"total": {}, "in_E": {}, "perp": {}}
        for name, (total, in_E, perp) in zip(w0, values, strict=True):
            out["total"][name], out["in_E"][name], out["perp"][name] = total, in_E, perp
        return out

    def _moves(self, w0: Mapping[str, Tensor]) -> list[tuple[int, Tensor]]:
        """``(entry index, W - W0)`` for the names of ``w0``, in its order (a DTensor for a DTensor
        ``W``: the start is laid out like it first when it was saved whole)."""
        index = {e.name: i for i, e in enumerate(self.entries)}
        items = []
        for name, start in w0.items():
            tensor = self.entries[index[name]].tensor.detach()
            if S.is_dtensor(tensor) and not S.is_dtensor(start):
                start = S.distribute_like(start.to(tensor.to_local().device, tensor.dtype), tensor)
            items.append((index[name], tensor.double() - start.detach().to(dtype=torch.float64)))
        return items

    def report(self, start: dict[str, Tensor] | None = None, layers: bool = True) -> dict[str, Tensor]:
        """Every distance the monitor and the experiment runner log, in one place (float64 scalars).

        Keys are ``<quantity>/<layer>`` and ``<quantity>/total``, ``<layer>`` being the module that holds
        the tensors (``"(root)"`` for parameters of the model itself); per-layer keys only if ``layers``:

        * ``dist_to_E``: ``||A - Pi_E A||``; ``rel_dist_to_E``: the same over ``||A||``;
        * with ``start`` (a :meth:`snapshot`): ``dist_from_start`` ``||A - A0||`` and its parts
          ``dist_from_start_in_E`` ``||Pi_E (A - A0)||`` and ``dist_from_start_perp``
          ``||(I - Pi_E)(A - A0)||``.

        Running statistics are left out, as in :meth:`distances`.

        Example:
            >>> from lightning_equi.subspace import SymmetrySpec
            >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
            >>> spec = SymmetrySpec("C4").layer("0", "regular", "regular").layer("2", "regular", "trivial")
            >>> proj = spec.bind(net)
            >>> start = proj.snapshot()
            >>> proj.project_parameters_()
            >>> out = proj.report(start)
            >>> sorted(k for k in out if k.endswith("/total"))  # doctest: +NORMALIZE_WHITESPACE
            ['dist_from_start/total', 'dist_from_start_in_E/total', 'dist_from_start_perp/total',
             'dist_to_E/total', 'rel_dist_to_E/total']
            >>> float(out["dist_to_E/total"]) < 1e-6, float(out["dist_from_start_in_E/total"]) < 1e-6
            (True, True)
        """
        owners = {e.name: e.layer or "(root)" for e in self.entries}
        items = self._items(buffers=False)
        names = self._names(buffers=False)
        moves = [] if start is None else self._moves(start)
        # every quantity of every tensor in one measurement: one all-reduce for a sharded model
        values = self._measure(
            items + moves, [_distance_and_norm] * len(items) + [_split_squares] * len(moves)
        )
        dist = {name: v[0] for name, v in zip(names, values, strict=False)}
        norms = {name: v[1] for name, v in zip(names, values, strict=False)}
        parts = {"dist_to_E": dist}
        if start is not None:
            moved = values[len(items) :]
            parts.update(
                dist_from_start=dict(zip(start, (v[0] for v in moved), strict=True)),
                dist_from_start_in_E=dict(zip(start, (v[1] for v in moved), strict=True)),
                dist_from_start_perp=dict(zip(start, (v[2] for v in moved), strict=True)),
            )
        out: dict[str, Tensor] = {}
        for key, part in parts.items():
            if layers:
                for layer, value in D.layer_distances(part, owners).items():
                    out[f"{key}/{layer}"] = value
            out[f"{key}/total"] = D.total_distance(part)
        if layers:
            layer_norms = D.layer_distances(norms, owners)
            for layer, value in D.layer_distances(dist, owners).items():
                out[f"rel_dist_to_E/{layer}"] = (
                    value / layer_norms[layer] if layer_norms[layer] > 0 else value
                )
        norm = D.total_distance(norms)
        out["rel_dist_to_E/total"] = out["dist_to_E/total"] / norm if norm > 0 else norm
        return out

    def check_snapshot(self, w0: Mapping[str, Tensor]) -> None:
        """Raise a ``ValueError`` unless ``w0`` holds a tensor of the right shape for every constrained
        parameter and nothing else: a start saved for another model, or before a layer was freed or its
        shape changed, would otherwise be dropped from the totals or broadcast silently.

        Example:
            >>> from lightning_equi.subspace import SymmetrySpec
            >>> net = nn.Sequential(nn.Linear(2, 2))
            >>> proj = SymmetrySpec("C2").layer("0", "regular", "regular").bind(net)
            >>> proj.check_snapshot(proj.snapshot())
            >>> proj.check_snapshot({"0.weight": torch.zeros(2, 2)})  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: the start W0 does not match the constrained parameters of the model: missing ...
        """
        shapes = {e.name: tuple(e.tensor.shape) for e in self.parameters}
        missing = sorted(set(shapes) - set(w0))
        unknown = sorted(set(w0) - set(shapes))
        wrong = sorted(
            f"{name}: {tuple(w0[name].shape)} instead of {shape}"
            for name, shape in shapes.items()
            if name in w0 and tuple(w0[name].shape) != shape
        )
        problems = [
            f"{what} {names}"
            for what, names in (("missing", missing), ("not constrained", unknown), ("shapes", wrong))
            if names
        ]
        if problems:
            raise ValueError(
                "the start W0 does not match the constrained parameters of the model: " + "; ".join(problems)
            )

    def non_finite(self, buffers: bool = True) -> dict[str, int]:
        """Qualified name -> number of NaN or infinite entries, for the tensors that have any.

        Example:
            >>> from lightning_equi.subspace import SymmetrySpec
            >>> net = nn.Sequential(nn.Linear(2, 2))
            >>> proj = SymmetrySpec("C2").layer("0", "regular", "regular").bind(net)
            >>> with torch.no_grad():
            ...     net[0].weight[0, 0] = float("nan")
            >>> proj.non_finite()
            {'0.weight': 1}
        """
        values = self._measure(self._items(buffers), _non_finite_count, roots=False)
        counts = {name: int(v[0]) for name, v in zip(self._names(buffers), values, strict=True)}
        return {name: n for name, n in counts.items() if n}

    def within_rounding(self, factor: float = 64.0) -> bool:
        """Whether every constrained parameter is in E up to the rounding of a projection in its dtype:
        ``||W - Pi_E W|| / ||W|| <= factor * eps(dtype) * log2(2 + numel)``, tensor by tensor.

        Tensor by tensor, because a large layer in E would hide a small one far from it in the model's
        total; scaled with the dtype's machine epsilon (a float64 model off E by ``1e-7`` is not in E)
        and, slowly, with the size of the tensor (the sums of a projector round more often).

        Example:
            >>> from lightning_equi.subspace import SymmetrySpec
            >>> net = nn.Sequential(nn.Linear(8, 8)).double()
            >>> proj = SymmetrySpec("C4").layer("0", "regular", "regular").bind(net)
            >>> proj.project_parameters_()
            >>> proj.within_rounding()
            True
            >>> with torch.no_grad():
            ...     net[0].weight[0, 0] += 1e-7
            >>> proj.within_rounding()
            False
        """
        relative = self.relative_distances()
        for e in self.parameters:
            tensor = e.tensor
            eps = torch.finfo(tensor.dtype).eps if tensor.is_floating_point() else 0.0
            tolerance = factor * eps * math.log2(2 + tensor.numel())
            if not float(relative[e.name]) <= tolerance:
                return False
        return True

    def gradient_perp_share(self) -> Tensor:
        """``||(I - Pi_E) grad|| / ||grad||`` over all constrained parameters with a gradient (0 if none)."""
        items = [
            (i, e.tensor.grad.detach())
            for i, e in enumerate(self.entries)
            if not e.is_buffer and e.tensor.grad is not None
        ]
        values = self._measure(items, _distance_and_norm)
        norm = D.root_sum_squares([n for _, n in values])
        return D.root_sum_squares([d for d, _ in values]) / norm if norm > 0 else norm

    def is_equivariant(self, atol: float = 1e-5, buffers: bool = True) -> bool:
        """Whether every constrained tensor is within ``atol`` (Frobenius) of E."""
        return all(bool(d <= atol) for d in self.distances(buffers).values())

    def summary(self) -> str:
        """One line per constrained tensor: name, shape, projector, ``dim E`` and entries."""
        rows = [f"{'name':<32} {'shape':<18} {'projector':<12} {'dim E':>7} {'numel':>8}"]
        for e in self.entries:
            shape = str(tuple(e.tensor.shape))
            tag = " (buffer)" if e.is_buffer else ""
            rows.append(
                f"{e.name + tag:<32} {shape:<18} {e.projector.kind:<12} "
                f"{e.projector.dim:>7} {e.tensor.numel():>8}"
            )
        rows.append(
            f"{self.group.name}: dim E = {self.dim} of {self.numel} constrained entries; "
            f"free: {self.free_names}"
        )
        return "\n".join(rows)

    def __repr__(self) -> str:
        return (
            f"ModelProjection({self.group.name}, tensors={len(self.entries)}, dim_E={self.dim}, "
            f"numel={self.numel}, free={len(self.free_names)})"
        )


def _distance_and_norm(w: Tensor, projector: Projector) -> list[Tensor]:
    """``[||w - Pi_E w||^2, ||w||^2]`` in float64."""
    return [D.tensor_distance(w, projector).square(), w.detach().double().square().sum()]


def _split_squares(delta: Tensor, projector: Projector) -> list[Tensor]:
    """The squares of :func:`~lightning_equi.subspace.distance.split_norms`."""
    return [v.square() for v in D.split_norms(delta, projector)]


def _non_finite_count(w: Tensor, projector: Projector) -> list[Tensor]:
    """The number of NaN or infinite entries (float64: exact up to 2**53, summed over ranks)."""
    return [(~torch.isfinite(w.detach())).sum().double()]
