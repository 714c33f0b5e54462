"""Projectors onto the two subspaces E of a steerable layer's dense weight, built from escnn's types.

A steerable layer (``R2Conv``, ``R3Conv``, ``escnn.nn.Linear``) has two candidate subspaces:

* ``"grid"``: every dense filter with ``rho_out(g) W(g^-1 x) rho_in(g)^-1 = W(x)`` for all ``g``,
  the exact fixed points of the group acting on fields *and* on the pixel grid. It exists only for
  groups that act exactly on a grid (C1, C2, C4, D1, D2, D4 for ``R2Conv``; any finite group for
  ``Linear``, which has no grid). Projecting is an orbit mean for regular, quotient and trivial fields
  and a block-wise basis projection for irreps.
* ``"basis"``: ``span`` of escnn's band-limited steerable basis (Gaussian rings times angular
  harmonics). For C_N with N > 4, SO(2), O(2), SO(3) no grid filter is exactly equivariant, so this is
  the only choice; for C4/D4 it is a strict subspace of the grid E (5x5 regular -> regular C4: 44 of
  100 dimensions per pair of fields). Projecting is a small orthonormal basis per pair of field
  types (an SVD of that pair's ``sampled_basis``), applied to all blocks of the pair in one batched
  matmul: never a dense ``P x P`` matrix or a QR of the whole basis.

Example:
    >>> import torch
    >>> from escnn import gspaces, nn as enn
    >>> gs = gspaces.rot2dOnR2(4)
    >>> conv = enn.R2Conv(enn.FieldType(gs, [gs.regular_repr]), enn.FieldType(gs, [gs.regular_repr]), 5)
    >>> basis, grid = escnn_basis_projector(conv), grid_projector(conv.in_type, conv.out_type, 5)
    >>> basis.dim, grid.dim
    (44, 100)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_equi.adapters.escnn_groups import escnn_element, group_from_escnn
from lightning_equi.groups import CyclicGroup, DihedralGroup, FiniteGroup, Group, Representation, direct_sum
from lightning_equi.groups import grid_representation as _grid_representation
from lightning_equi.subspace import Projector, TensorAction, make_projector

__all__ = [
    "SUBSPACES",
    "EscnnBasisProjector",
    "ColumnSpanProjector",
    "escnn_basis_projector",
    "grid_projector",
    "bias_projector",
    "field_representation",
    "type_representation",
    "grid_group",
    "keep_numpy_rng",
    "keep_train_modes",
]

#: the two subspaces a steerable layer can be projected onto
SUBSPACES = ("grid", "basis")
#: singular values below this fraction of the largest are dropped (escnn samples in float32)
RANK_RTOL = 1e-5


@contextlib.contextmanager
def keep_numpy_rng() -> Iterator[None]:
    """Restore NumPy's global random state afterwards: escnn draws from it while it builds
    Clebsch-Gordan coefficients with a cold cache, which would shift a user's seeded draws."""
    state = np.random.get_state()  # noqa: NPY002 (escnn uses the global state)
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


@contextlib.contextmanager
def keep_train_modes(model: torch.nn.Module) -> Iterator[None]:
    """Restore the train/eval mode of every submodule of ``model`` afterwards, through ``train()`` (escnn's
    convolutions drop or rebuild their expanded filter there, so their ``state_dict`` keys follow)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, mode in modes:  # parents first: each call sets its children, which follow and fix theirs
            if m.training != mode:
                m.train(mode)


# ---- our groups and representations from escnn's types -------------------------------------------

_FIELD_REPS: dict[tuple, Representation] = {}


def grid_group(gspace: Any) -> Group | None:
    """Our group for a 2D gspace whose elements move the pixel grid exactly (C1, C2, C4, D1, D2, D4
    with a mirror of ours), else ``None``."""
    try:
        group = group_from_escnn(gspace)
    except ValueError:  # a mirror axis that is not one of ours
        return None
    if getattr(gspace, "dimensionality", None) == 2 and isinstance(group, (CyclicGroup, DihedralGroup)):
        return group if group.n in (1, 2, 4) else None
    return None


def field_representation(group: FiniteGroup, gspace: Any, rep: Any) -> Representation:
    """Our :class:`~lightning_equi.groups.Representation` of one escnn field (its matrices, element by
    element), a permutation representation when escnn's matrices are permutations (regular,
    quotient and trivial fields)."""
    key = (group.name, gspace.name, rep.name, rep.size)
    if key in _FIELD_REPS:
        return _FIELD_REPS[key]
    els = group.elements()
    mats = torch.stack(
        [
            torch.as_tensor(np.asarray(rep(escnn_element(group, els[i], gspace))), dtype=torch.float64)
            for i in range(len(els))
        ]
    )
    # escnn builds regular/quotient matrices through a change of basis: round away its 1e-16 noise
    rounded = mats.round()
    is_perm = bool(
        torch.allclose(mats, rounded, atol=1e-9)
        and torch.all((rounded == 0) | (rounded == 1))
        and torch.all(rounded.sum(1) == 1)
        and torch.all(rounded.sum(2) == 1)
    )
    if is_perm:
        mats = rounded
    src = mats.argmax(2) if is_perm else None  # (rho v)[j] = v[src[j]]

    def matrices(g: Tensor) -> Tensor:
        return mats.to(g.device)[group.index(g)]

    def permutation(g: Tensor) -> Tensor:
        return src.to(g.device)[group.index(g)]

    out = Representation(group, rep.size, rep.name, matrices, permutation if is_perm else None)
    _FIELD_REPS[key] = out
    return out


def type_representation(group: FiniteGroup, field_type: Any) -> Representation:
    """The direct sum of :func:`field_representation` over the fields of an escnn ``FieldType``."""
    reps = [field_representation(group, field_type.gspace, r) for r in field_type.representations]
    return reps[0] if len(reps) == 1 else direct_sum(reps)


def grid_projector(
    in_type: Any, out_type: Any, kernel_size: int | None, group: Group | None = None
) -> Projector:
    """The exact projector onto the fixed points of the group acting on fields and the kernel grid.

    ``kernel_size=None`` for ``escnn.nn.Linear`` (no grid). Raises ``ValueError`` where no exact grid
    action exists (use ``subspace="basis"``).
    """
    gspace = in_type.gspace
    if group is None:
        group = grid_group(gspace) if kernel_size is not None else group_from_escnn(gspace)
    if group is None or not isinstance(group, FiniteGroup):
        raise ValueError(
            f"escnn_projectors: {gspace.name} does not act exactly on a pixel grid (only C1, C2, C4, D1, D2 "
            "and D4 do, with the default mirror axis); use subspace='basis' (escnn's band-limited basis)"
        )
    with keep_numpy_rng():
        rep_out = type_representation(group, out_type)
        rep_in = type_representation(group, in_type)
    factors = [(rep_out, 1), (rep_in, 1)]
    shape: tuple[int, ...] = (out_type.size, in_type.size)
    if kernel_size is not None:
        factors.append((_grid_representation(group, (kernel_size, kernel_size)), 2))
        shape = (*shape, kernel_size, kernel_size)
    return make_projector(TensorAction(shape, factors))


# ---- escnn's basis, block by block ---------------------------------------------------------------


def _field_rows(field_type: Any) -> dict[str, Tensor]:
    """Field-type name -> ``(n_fields, size)`` channel indices of its fields, in the order of the type."""
    rows: dict[str, list[list[int]]] = {}
    start = 0
    for rep in field_type.representations:
        rows.setdefault(rep.name, []).append(list(range(start, start + rep.size)))
        start += rep.size
    return {name: torch.tensor(r, dtype=torch.long) for name, r in rows.items()}


def sampled_bases(layer: Any) -> dict[tuple[str, str], Tensor]:
    """``(in field name, out field name) -> sampled_basis`` ``(b, o, i, S)`` float64, copied out of
    escnn's (possibly shared) basis modules."""
    be = layer.basisexpansion
    out = {}
    for pair in be._representations_pairs:
        block = getattr(be, f"block_expansion_{be._escape_pair(pair)}")
        out[pair] = block.sampled_basis.detach().to("cpu", torch.float64).clone()
    return out


def orthonormal_rows(b: Tensor) -> Tensor:
    """An orthonormal basis ``(m, r)`` of the span of the rows of ``b`` ``(n, m)``, float64.

    From the small ``n x n`` Gram matrix (``eigh``), not an SVD of the wide ``b``: LAPACK's SVD of a
    wide matrix took seconds here for ``n = 88, m = 1600``. Directions with singular value below
    ``RANK_RTOL`` of the largest are dropped (escnn samples its basis in float32).
    """
    b = b.double()
    evals, evecs = torch.linalg.eigh(b @ b.T)
    keep = evals > (RANK_RTOL**2) * evals.max().clamp_min(1e-300)
    q = (b.T @ evecs[:, keep]) / evals[keep].sqrt()
    return q.contiguous()


class EscnnBasisProjector(Projector):
    """Orthogonal projection of a dense weight ``(O, I, *kernel)`` onto ``span`` of escnn's basis.

    Args:
        in_type, out_type: the layer's escnn field types.
        bases: ``(in field name, out field name) -> (b, o, i, S)`` sampled basis of that pair
            (:func:`sampled_bases`); pairs without a basis are projected to zero.
        kernel: the kernel's spatial shape (``()`` for ``Linear``).
        exact: whether the span is the whole of ``Hom_G`` (``Linear``) rather than a band-limited part.

    Each pair's basis is orthonormalised by a small SVD; every block of that pair is gathered with one
    advanced index, projected by two matmuls and scattered back, so working memory stays a few times
    the weight's size.
    """

    kind = "escnn-basis"

    def __init__(
        self,
        in_type: Any,
        out_type: Any,
        bases: dict[tuple[str, str], Tensor],
        kernel: tuple[int, ...],
        exact: bool = False,
    ) -> None:
        super().__init__((out_type.size, in_type.size, *kernel))
        self.exact = exact
        self._spatial = math.prod(kernel)
        rows_in, rows_out = _field_rows(in_type), _field_rows(out_type)
        self._pairs: list[tuple[Tensor, Tensor, Tensor]] = []  # (out rows, in rows, Q (m, r)) float64
        self._dim = 0
        for (i_name, o_name), basis in bases.items():
            if i_name not in rows_in or o_name not in rows_out:
                continue
            q = orthonormal_rows(basis.reshape(basis.shape[0], -1))
            ro, ri = rows_out[o_name], rows_in[i_name]
            self._pairs.append((ro, ri, q))
            self._dim += q.shape[1] * ro.shape[0] * ri.shape[0]
        self._cache: dict[tuple[torch.device, torch.dtype], list[tuple[Tensor, Tensor, Tensor]]] = {}

    @property
    def dim(self) -> int:
        return self._dim

    def _on(self, device: torch.device, dtype: torch.dtype) -> list[tuple[Tensor, Tensor, Tensor]]:
        key = (device, dtype)
        if key not in self._cache:
            self._cache[key] = [
                (
                    ro.to(device)[:, None, :, None],
                    ri.to(device)[None, :, None, :],
                    q.to(device=device, dtype=dtype),
                )
                for ro, ri, q in self._pairs
            ]
        return self._cache[key]

    def project(self, w: Tensor) -> Tensor:
        self.check_shape(w)
        with torch.no_grad():
            dtype = torch.promote_types(w.dtype, torch.float32)
            w3 = w.reshape(self.shape[0], self.shape[1], self._spatial).to(dtype)
            out = torch.zeros_like(w3)
            for ro, ri, q in self._on(w.device, dtype):
                blocks = w3[ro, ri]  # (n_out, n_in, o, i, S): every block of this pair at once
                flat = blocks.reshape(-1, q.shape[0])
                out[ro, ri] = ((flat @ q) @ q.T).reshape(blocks.shape)
            return out.reshape(self.shape).to(w.dtype)


def escnn_basis_projector(
    layer: Any, bases: dict[tuple[str, str], Tensor] | None = None
) -> EscnnBasisProjector:
    """:class:`EscnnBasisProjector` for an escnn ``R2Conv``/``R3Conv``/``Linear`` (default: its own bases)."""
    kernel = (layer.kernel_size,) * layer.d if hasattr(layer, "d") else ()
    exact = not kernel  # escnn's Linear basis spans all of Hom_G
    return EscnnBasisProjector(layer.in_type, layer.out_type, bases or sampled_bases(layer), kernel, exact)


# ---- biases ----------------------------------------------------------------------------------------


class ColumnSpanProjector(Projector):
    """``Pi b = Q (Q^T b)`` onto the span of a few columns (the invariant biases of a layer)."""

    kind = "invariant-bias"

    def __init__(self, columns: Tensor) -> None:
        super().__init__((columns.shape[0],))
        self._q = orthonormal_rows(columns.double().T) if columns.shape[1] else columns.double()
        self._cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    @property
    def dim(self) -> int:
        return int(self._q.shape[1])

    def project(self, w: Tensor) -> Tensor:
        self.check_shape(w, "bias")
        with torch.no_grad():
            dtype = torch.promote_types(w.dtype, torch.float32)
            key = (w.device, dtype)
            if key not in self._cache:
                self._cache[key] = self._q.to(device=w.device, dtype=dtype)
            q = self._cache[key]
            return (q @ (q.T @ w.to(dtype))).to(w.dtype)


def bias_columns(out_type: Any) -> Tensor:
    """escnn's ``bias_expansion``: the change-of-basis columns of the trivial irreps of each output
    field, ``(out, #trivial)``; their span is the set of invariant biases (for any group)."""
    G = out_type.fibergroup
    cols = []
    start = 0
    for rep in out_type.representations:
        pos = 0
        cob = np.asarray(rep.change_of_basis)
        for irr_id in rep.irreps:
            irr = G.irrep(*irr_id)
            if irr.is_trivial():
                col = torch.zeros(out_type.size, dtype=torch.float64)
                col[start : start + rep.size] = torch.as_tensor(cob[:, pos], dtype=torch.float64)
                cols.append(col)
            pos += irr.size
        start += rep.size
    if not cols:
        return torch.zeros(out_type.size, 0, dtype=torch.float64)
    return torch.stack(cols, 1)


def bias_projector(out_type: Any) -> ColumnSpanProjector:
    """The projector onto invariant biases (the same E for ``"grid"`` and ``"basis"``)."""
    return ColumnSpanProjector(bias_columns(out_type))
