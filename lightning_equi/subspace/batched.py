"""Projecting many tensors at once: a whole model onto E in a fixed, small number of kernels.

Projecting tensor by tensor costs about eight kernels per tensor (gathers, a scatter-add, a few
elementwise ones): 130 kernel launches for a 32-tensor CNN, which on a GPU, where a training step of
such a model takes a few milliseconds, is mostly launch overhead. :class:`BatchedProjection` groups
the tensors whose projectors are orbit means (:class:`~lightning_equi.subspace.orbit.OrbitMeanProjector`,
every finite group acting by permutations: regular, trivial and quotient fields, rot90 and flips of
kernels, set permutations) by dtype and device, and projects each group over one flat buffer with
index tables built once for the whole group:

1. ``flat = cat(tensors)`` (one copy);
2. ``ref = flat[first]``: the first entry of each orbit (a gather of one entry per orbit);
3. ``sums = zeros().index_add_(orbit, flat - ref[orbit])`` (a gather, a subtraction, a fill and one
   scatter-add);
4. ``out = (ref + sums * inv_size)[orbit]`` (one ``addcmul`` per orbit, one gather);
5. ``_foreach_copy_(tensors, split(out))`` (one multi-tensor copy).

That is nine kernels per group whatever the number of tensors, the same passes over memory as the
tensor-by-tensor projection plus the copies in and out, and the same arithmetic entry by entry: the
mean of an orbit is ``r + mean(w - r)`` with ``r`` the orbit's first entry, so a tensor already in E
comes back bit for bit (``identity_on_E``). Index tables are ``int32`` where the group's entries fit.
Tensors with other projectors (Fourier, basis, closed-form S_n, escnn's basis) are projected one by
one, as before. Groups larger than ``max_numel`` entries are split, which bounds the extra memory (the
flat buffer and its temporaries, about three copies of the group); on the CPU, where launching a
kernel costs little, into buffers that fit in the cache (:data:`CPU_NUMEL`), which is as fast as
tensor by tensor or faster.

:func:`count_kernels` counts the aten calls of a function that are not views, aliases or dtype casts:
the number the benchmark reports beside the times.

Example:
    >>> import torch
    >>> from lightning_equi.subspace import SymmetrySpec
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    >>> projection = SymmetrySpec("C4").layers(torch.nn.Linear, fields="regular").bind(net)
    >>> batched = BatchedProjection([e.projector for e in projection.entries])
    >>> tensors = [e.tensor.detach() for e in projection.entries]
    >>> expected = [e.projector.project(t) for e, t in zip(projection.entries, tensors)]
    >>> batched.project_(tensors)
    >>> all(torch.allclose(t, x) for t, x in zip(tensors, expected))
    True
    >>> sum(count_kernels(lambda: batched.project_(tensors)).values())
    9
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_equi.subspace.base import Projector
from lightning_equi.subspace.orbit import OrbitMeanProjector

__all__ = ["BatchedProjection", "OrbitTables", "KernelCounter", "count_kernels"]

#: entries per flat buffer on an accelerator: bounds the extra memory of a group, keeps its indices in
#: int32, and is large enough for a whole model of 100M entries in 9 kernels
MAX_NUMEL = 2**28
#: entries per flat buffer on the CPU, where a kernel launch costs little and each pass over a buffer
#: that fits in the cache costs less: about 2**17 entries (0.5 MB of float32) measured best on a Xeon
CPU_NUMEL = 2**17


class OrbitTables:
    """What an orbit-mean projection needs of one tensor: the orbit of each entry (``ids``, numbered
    ``0 .. dim - 1`` by their smallest entry), the first entry of each orbit (``first``) and the
    inverse orbit sizes (``inv_sizes``, float64), on the CPU.

    Built from an :class:`~lightning_equi.subspace.orbit.OrbitMeanProjector` (:meth:`of`), or restricted
    to a slice of one axis whose orbits all lie inside it (:meth:`narrow`: the shard of one rank).

    Example:
        >>> from lightning_equi.groups import CyclicGroup, regular, trivial
        >>> from lightning_equi.subspace import TensorAction
        >>> G = CyclicGroup(2)
        >>> tables = OrbitTables.of(OrbitMeanProjector(TensorAction((4, 1), [(2 * regular(G), 1),
        ...                                                                  (trivial(G), 1)])))
        >>> tables.ids.tolist(), tables.narrow(0, 2, 4).ids.tolist(), tables.narrow(0, 1, 3)
        ([0, 0, 1, 1], [0, 0], None)
    """

    def __init__(self, shape: Sequence[int], ids: Tensor, first: Tensor, inv_sizes: Tensor) -> None:
        self.shape = torch.Size(shape)
        self.ids, self.first, self.inv_sizes = ids, first, inv_sizes

    @classmethod
    def of(cls, projector: OrbitMeanProjector) -> OrbitTables:
        return cls(projector.shape, projector.ids, projector.first, projector.inv_sizes)

    @property
    def dim(self) -> int:
        return int(self.first.numel())

    @property
    def numel(self) -> int:
        return int(self.ids.numel())

    def narrow(self, dim: int, start: int, stop: int) -> OrbitTables | None:
        """The tables of the slice ``start:stop`` of axis ``dim`` alone (its entries in their own
        row-major order, as a shard of the tensor stores them), or ``None`` when an orbit met in the
        slice has entries outside it: then the slice cannot be projected on its own.
        """
        if not 0 <= dim < len(self.shape) or not 0 <= start <= stop <= self.shape[dim]:
            raise ValueError(
                f"no slice {start}:{stop} of axis {dim} in a tensor of shape {tuple(self.shape)}"
            )
        ids = self.ids.view(self.shape).narrow(dim, start, stop - start).reshape(-1).long()
        shape = self.shape[:dim] + (stop - start,) + self.shape[dim + 1 :]
        if ids.numel() == 0:
            empty = torch.zeros(0, dtype=torch.long)
            return OrbitTables(shape, empty, empty.clone(), torch.zeros(0, dtype=torch.float64))
        orbits, local = torch.unique(ids, return_inverse=True)  # sorted: the order of smallest entries
        sizes = torch.bincount(local, minlength=orbits.numel())
        if not torch.equal(sizes, torch.round(1.0 / self.inv_sizes[orbits]).long()):
            return None  # an orbit with entries outside the slice
        first = torch.full((orbits.numel(),), ids.numel(), dtype=torch.long).scatter_reduce_(
            0, local, torch.arange(ids.numel()), reduce="amin"
        )
        return OrbitTables(shape, local, first, self.inv_sizes[orbits])

    def projector(self) -> OrbitMeanProjector:
        """An :class:`~lightning_equi.subspace.orbit.OrbitMeanProjector` with these tables (for the
        distances of a slice)."""
        return _TablesProjector(self)


class _TablesProjector(OrbitMeanProjector):
    """An orbit-mean projector given by its tables rather than by a group action."""

    def __init__(self, tables: OrbitTables) -> None:  # noqa: D107 - no action to solve
        Projector.__init__(self, tables.shape)
        self.action = None
        self.ids, self.first, self.inv_sizes = tables.ids.long(), tables.first.long(), tables.inv_sizes
        self._dim = tables.dim
        self._cache = {}


class _Group:
    """Index tables of one group of tensors (one dtype and device) over their flat concatenation."""

    def __init__(self, tables: Sequence[OrbitTables], device: torch.device, acc: torch.dtype) -> None:
        sizes = [t.numel for t in tables]
        offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0).tolist()
        dims = torch.tensor([0, *[t.dim for t in tables[:-1]]]).cumsum(0).tolist()
        numel, dim = sum(sizes), sum(t.dim for t in tables)
        index = torch.int32 if max(numel, dim) < 2**31 else torch.long  # half the traffic of int64
        ids = torch.cat([t.ids.long() + d for t, d in zip(tables, dims, strict=True)])
        first = torch.cat([t.first.long() + o for t, o in zip(tables, offsets, strict=True)])
        self.sizes, self.dim, self.acc = sizes, dim, acc
        self.ids = ids.to(device=device, dtype=index)
        self.first = first.to(device=device, dtype=index)
        # the CPU's scatter_add_ (int64 indices only) is faster than its index_add_ (any index dtype)
        self.scatter = ids.to(device) if device.type == "cpu" else None
        self.inv = torch.cat([t.inv_sizes for t in tables]).to(device=device, dtype=acc)
        # CPU: fresh buffers of megabytes are page-faulted in at every call (the allocator returns
        # them to the system), which costs more than the projection; keep two. CUDA's caching
        # allocator reuses its blocks, so no memory is held there between calls.
        self.work = (
            (torch.empty(numel, dtype=acc), torch.empty(numel, dtype=acc), torch.empty(dim, dtype=acc))
            if device.type == "cpu"
            else None
        )

    def _buffers(self, device: torch.device) -> tuple[Tensor | None, Tensor | None, Tensor]:
        if self.work is not None:
            flat, diff, sums = self.work
            return flat, diff, sums.zero_()
        return None, None, torch.zeros(self.dim, dtype=self.acc, device=device)

    def project_(self, tensors: Sequence[Tensor]) -> None:
        acc = self.acc
        flat, diff, sums = self._buffers(tensors[0].device)
        if len(tensors) == 1:  # read the tensor itself (the output goes to another buffer)
            flat = tensors[0].reshape(-1).to(acc)
        elif flat is not None and tensors[0].dtype == acc:
            flat = torch.cat([t.reshape(-1) for t in tensors], out=flat)
        else:
            flat = torch.cat([t.reshape(-1) for t in tensors]).to(acc)
        ref = flat.index_select(0, self.first)  # each orbit's first entry
        diff = torch.sub(flat, ref.index_select(0, self.ids), out=diff)
        if self.scatter is not None:
            sums.scatter_add_(0, self.scatter, diff)
        else:
            sums.index_add_(0, self.ids, diff)
        # r + mean(w - r): a tensor already constant on an orbit sums exact zeros and keeps r bit for bit
        means = torch.addcmul(ref, sums, self.inv)
        out = torch.index_select(means, 0, self.ids, out=diff)
        if out.dtype != tensors[0].dtype:
            out = out.to(tensors[0].dtype)
        if len(tensors) == 1:
            tensors[0].copy_(out.view(tensors[0].shape))
        else:
            parts = [p.view(t.shape) for p, t in zip(out.split(self.sizes), tensors, strict=True)]
            torch._foreach_copy_(list(tensors), parts)


def _tables(projector: Projector | OrbitTables | None) -> OrbitTables | None:
    if isinstance(projector, OrbitMeanProjector):
        return OrbitTables.of(projector)
    return projector if isinstance(projector, OrbitTables) else None


class BatchedProjection:
    """Project a list of tensors onto E together: orbit-mean tensors in one flat buffer per dtype and
    device (see the module docstring), any other projector tensor by tensor.

    Args:
        projectors: one projector (or :class:`OrbitTables`) per tensor, in the order of the tensors
            given to :meth:`project_`; ``None`` for a position that is always skipped.
        max_numel: the most entries in one flat buffer (a larger group is split); ``None``:
            :data:`MAX_NUMEL` on an accelerator (one buffer, 9 kernels, for models up to 2**28
            entries), :data:`CPU_NUMEL` on the CPU (buffers that fit in its cache).

    The index tables are built at the first call for each combination of tensors, dtypes and devices
    and kept (the tensors themselves never are: pass the current ones at every call).

    Example:
        >>> from lightning_equi.groups import CyclicGroup, regular
        >>> from lightning_equi.subspace import TensorAction
        >>> G = CyclicGroup(4)
        >>> proj = OrbitMeanProjector(TensorAction((4, 4), [(regular(G), 1), (regular(G), 1)]))
        >>> a, b = torch.randn(4, 4), torch.randn(4, 4)
        >>> expected = [proj.project(a), proj.project(b)]
        >>> BatchedProjection([proj, proj]).project_([a, b])
        >>> torch.allclose(a, expected[0]) and torch.allclose(b, expected[1])
        True
    """

    def __init__(
        self, projectors: Sequence[Projector | OrbitTables | None], max_numel: int | None = None
    ) -> None:
        self.projectors = list(projectors)
        self.max_numel = None if max_numel is None else int(max_numel)
        self.tables: list[OrbitTables | None] = [_tables(p) for p in self.projectors]
        self._groups: dict[tuple, list[tuple[list[int], _Group]]] = {}

    def __len__(self) -> int:
        return len(self.projectors)

    def _plan(self, tensors: Sequence[Tensor | None]) -> list[tuple[list[int], _Group]]:
        key = tuple(
            None if t is None or self.tables[i] is None else (t.device, t.dtype)
            for i, t in enumerate(tensors)
        )
        plan = self._groups.get(key)
        if plan is None:
            by_kind: dict[tuple, list[int]] = {}
            for i, k in enumerate(key):
                if k is not None and self.tables[i].numel:  # type: ignore[union-attr]
                    by_kind.setdefault(k, []).append(i)
            plan = []
            for (device, dtype), members in by_kind.items():
                acc = torch.promote_types(dtype, torch.float32)  # half precision sums in float32
                limit = self.max_numel or (CPU_NUMEL if device.type == "cpu" else MAX_NUMEL)
                chunk: list[int] = []
                filled = 0
                for i in [*members, None]:
                    size = 0 if i is None else self.tables[i].numel  # type: ignore[union-attr]
                    if chunk and (i is None or filled + size > limit):
                        plan.append((chunk, _Group([self.tables[j] for j in chunk], device, acc)))
                        chunk, filled = [], 0
                    if i is not None:
                        chunk.append(i)
                        filled += size
            self._groups[key] = plan
        return plan

    @torch.no_grad()
    def project_(self, tensors: Sequence[Tensor | None]) -> None:
        """Project every tensor in place (``None`` is skipped); tensors must be contiguous or
        reshapeable to one dimension without a copy for the batched groups."""
        if len(tensors) != len(self.projectors):
            raise ValueError(f"got {len(tensors)} tensors for {len(self.projectors)} projectors")
        for i, (t, tables) in enumerate(zip(tensors, self.tables, strict=True)):
            if t is not None and tables is not None and t.shape != tables.shape:
                raise ValueError(
                    f"tensor {i} has shape {tuple(t.shape)}, but its projector was built for "
                    f"{tuple(tables.shape)}"
                )
        for members, group in self._plan(tensors):
            group.project_([tensors[i] for i in members])  # type: ignore[misc]
        for i, (t, p, tables) in enumerate(zip(tensors, self.projectors, self.tables, strict=True)):
            if t is not None and tables is None:
                if p is None:
                    raise ValueError(f"tensor {i} was given for a position without a projector")
                p.project_(t)


_UNCOUNTED = {"_to_copy", "to", "detach", "alias", "lift_fresh", "promote_types"}


class KernelCounter(TorchDispatchMode):
    """A context that counts the aten calls made inside it that are not views, aliases or dtype
    casts, by name (``counts``): see :func:`count_kernels`.

    Example:
        >>> with KernelCounter() as counter:
        ...     _ = torch.ones(3).mul(2)
        >>> dict(counter.counts)
        {'ones': 1, 'mul': 1}
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in _UNCOUNTED:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def count_kernels(fn: Callable[[], object]) -> Counter[str]:
    """The aten calls of ``fn()`` that are not views, aliases or dtype casts, by name: the kernels it
    launches (a multi-tensor ``_foreach_`` call counts once, as it launches one kernel on a GPU).

    Example:
        >>> x = torch.randn(4, 4)
        >>> dict(count_kernels(lambda: x.view(-1).mul(2).add_(1)))
        {'mul': 1, 'add_': 1}
    """
    with KernelCounter() as counter:
        fn()
    return counter.counts
