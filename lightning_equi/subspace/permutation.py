"""Closed-form projection onto S_n-equivariant layers between sets and graphs (Maron et al. 2019).

A layer maps ``C_in`` channels of order ``k_in`` (``R^{C_in}``, ``R^{C_in x n}`` or
``R^{C_in x n x n}``) to ``C_out`` channels of order ``k_out``. S_n permutes all ``r = k_out + k_in``
node indices of a weight entry at once, so its orbits on the index tuples are their *equality
patterns*, the set partitions of the ``r`` positions with at most ``n`` blocks (Bell numbers: 2 for
``R^n -> R^n``, 15 for ``R^{n x n} -> R^{n x n}``). ``Pi_E`` is the mean over each (channel pair,
pattern) class; it is computed without any group element:

1. ``T(s)``, the sum over the generalised diagonal where the positions of each block of ``s`` share
   one index (a strided view, no copy);
2. the class sums by Moebius inversion on the partition lattice, ``S(p) = sum_{s >= p} mu(p, s) T(s)``;
3. the projection written back as diagonal updates, finest first.

The whole weight is read once and written once; everything else touches at most ``n^(r-1)`` entries
per channel pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_equi.groups import Representation, SymmetricGroup
from lightning_equi.subspace.base import Projector, TensorAction, dense_layer_factors

__all__ = ["SymmetricProjector", "set_partitions"]

Partition = tuple[tuple[int, ...], ...]


def set_partitions(r: int) -> list[Partition]:
    """All set partitions of ``range(r)``, blocks sorted, coarsest first.

    Example:
        >>> set_partitions(3)[:2], len(set_partitions(4))
        ([((0, 1, 2),), ((0, 1), (2,))], 15)
    """
    if r == 0:
        return [()]
    out: list[Partition] = []
    for rest in set_partitions(r - 1):  # put element r - 1 into an existing block or a new one
        for i in range(len(rest)):
            out.append(tuple(sorted(rest[:i] + (rest[i] + (r - 1,),) + rest[i + 1 :])))
        out.append(tuple(sorted(rest + ((r - 1,),))))
    return sorted(out, key=len)


def _refines(fine: Partition, coarse: Partition) -> bool:
    return all(any(set(b) <= set(c) for c in coarse) for b in fine)


def _mobius(fine: Partition, coarse: Partition) -> int:
    """``mu(fine, coarse)`` on the partition lattice: ``prod over coarse blocks (-1)^(k-1) (k-1)!``."""
    out = 1
    for c in coarse:
        k = sum(1 for b in fine if set(b) <= set(c))
        out *= (-1) ** (k - 1) * math.factorial(k - 1)
    return out


class SymmetricProjector(Projector):
    """``Pi_E`` for dense layers equivariant to permutations of ``n`` nodes.

    Args:
        shape: ``(out_channels * n**out_order, in_channels * n**in_order)`` for a weight (input index
            ``c * n**k + i`` or ``c * n * n + i * n + j``, as ``direct_sum([standard] * C)`` or
            ``[pair_representation] * C``), ``(out_channels * n**out_order,)`` for a bias.
        n: the number of nodes.
        in_order: 0 (invariant scalars), 1 (node features ``R^n``) or 2 (edge features ``R^{n x n}``);
            0 for a bias.
        out_order: 0, 1 or 2.
        in_channels: input channels (1 for a bias).
        out_channels: output channels.

    Example:
        >>> proj = SymmetricProjector((2 * 16, 3 * 16), n=4, in_order=2, out_order=2,
        ...                           in_channels=3, out_channels=2)
        >>> proj.dim  # 15 maps R^{n x n} -> R^{n x n} per channel pair
        90
        >>> w = proj.project(torch.randn(32, 48, dtype=torch.float64))
        >>> torch.allclose(proj.project(w), w)
        True
    """

    kind = "closed-form"
    orbit_constant = True  # the entries of a (channel pair, pattern) class get the same diagonal updates

    def __init__(
        self,
        shape: Sequence[int],
        n: int,
        in_order: int,
        out_order: int,
        in_channels: int = 1,
        out_channels: int = 1,
    ) -> None:
        super().__init__(shape)
        self.n, self.in_order, self.out_order = int(n), int(in_order), int(out_order)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if self.in_order not in (0, 1, 2) or self.out_order not in (0, 1, 2):
            raise ValueError(f"in_order and out_order must be 0, 1 or 2, got {in_order} and {out_order}")
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        rows = self.out_channels * self.n**self.out_order
        cols = self.in_channels * self.n**self.in_order
        if len(self.shape) == 1:
            if self.in_order != 0 or self.in_channels != 1 or tuple(self.shape) != (rows,):
                raise ValueError(
                    f"a bias of {self.out_channels} channels of order {self.out_order} has shape {(rows,)}"
                    f" with in_order=0 and in_channels=1, got shape {tuple(self.shape)}, "
                    f"in_order={in_order}, in_channels={in_channels}"
                )
        elif tuple(self.shape) != (rows, cols):
            raise ValueError(
                f"a weight from {self.in_channels} channels of order {self.in_order} to {self.out_channels} "
                f"of order {self.out_order} on n={self.n} nodes has shape {(rows, cols)}, got "
                f"{tuple(self.shape)}; check n, the orders and the channels"
            )
        r = self.out_order + self.in_order
        # Index axes of the view (C_out, n.. (out), C_in, n.. (in)).
        ko, ki = self.out_order, self.in_order
        self._axes = [1 + a for a in range(ko)] + [2 + ko + a for a in range(ki)]
        self._view = (self.out_channels, *[self.n] * ko, self.in_channels, *[self.n] * ki)
        parts = set_partitions(r)
        #: the equality patterns that occur (at most n distinct indices): the orbits per channel pair
        self.patterns = [p for p in parts if len(p) <= self.n]
        # Moebius coefficients over the whole lattice (patterns with > n blocks have empty classes,
        # but their diagonals are still valid building blocks of the write-back).
        self._parts = parts
        self._mixing = _mixing_matrix(parts, self.n)
        self._cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    @property
    def dim(self) -> int:
        return self.out_channels * self.in_channels * len(self.patterns)

    def _diagonal(self, v: Tensor, part: Partition) -> Tensor:
        """View ``(C_out, C_in, n, ..)`` of ``v``, one axis per block of ``part``: a generalised diagonal."""
        stride = v.stride()
        sizes = [self._view[0], self._view[1 + self.out_order]] + [self.n] * len(part)
        strides = [stride[0], stride[1 + self.out_order]]
        strides += [sum(stride[self._axes[a]] for a in block) for block in part]
        return v.as_strided(sizes, strides, v.storage_offset())

    def _coefficients(self, w: Tensor) -> Tensor:
        """The diagonal updates ``D`` ``(parts, C_out, C_in)`` of the projection of ``w``."""
        v = w.reshape(self._view)
        parts, finest = self._parts, len(self._parts) - 1  # sorted by blocks: all-distinct is last
        # T(s): sums over the generalised diagonals, (C_out, C_in) each; the finest is the whole tensor.
        sums = [self._diagonal(v, s).sum(dim=tuple(range(2, 2 + len(s)))) for s in parts[:finest]]
        co, ci = self.out_channels, self.in_channels
        sums.append(w.reshape(co, -1, ci, self.n**self.in_order).sum(dim=3).sum(dim=1))  # fast contiguous sum
        key = (w.dtype, w.device)
        if key not in self._cache:
            self._cache[key] = self._mixing.to(dtype=w.dtype, device=w.device)
        return (self._cache[key] @ torch.stack(sums).reshape(len(parts), -1)).reshape(len(parts), co, ci)

    def _write(self, out: Tensor, coef: Tensor) -> None:
        """``out`` (viewed as ``_view``) ``= sum_s D(s) 1[indices constant on the blocks of s]``: a
        broadcast, then diagonal updates."""
        finest = len(self._parts) - 1
        free = [1 if a in self._axes else size for a, size in enumerate(self._view)]
        out.copy_(coef[finest].reshape(free))
        for part, c in zip(self._parts[:finest], coef[:finest], strict=True):
            self._diagonal(out, part).add_(c.reshape(*c.shape, *[1] * len(part)))

    def project(self, w: Tensor) -> Tensor:
        self.check_shape(w)
        if w.dtype in (torch.float16, torch.bfloat16):  # class sums of many entries need float32
            return self.project(w.float()).to(w.dtype)
        if not self._axes:  # invariant -> invariant: no constraint
            return w.clone()
        out = torch.empty(self._view, dtype=w.dtype, device=w.device)
        self._write(out, self._coefficients(w))
        return out.reshape(self.shape)

    def project_(self, w: Tensor) -> Tensor:
        with torch.no_grad():
            self.check_shape(w)
            if not self._axes:
                return w
            if w.is_contiguous() and w.dtype not in (torch.float16, torch.bfloat16):
                self._write(w.view(self._view), self._coefficients(w))  # no temporary, no copy back
            else:
                w.copy_(self.project(w))
        return w

    @classmethod
    def from_action(cls, action: TensorAction) -> SymmetricProjector | None:
        """The projector for ``action`` when it is S_n acting on a dense weight (or bias) through
        channel copies of ``trivial``, ``standard`` or ``pair_representation``; ``None`` otherwise.

        Example:
            >>> from lightning_equi.groups import SymmetricGroup, pair_representation, trivial
            >>> G = SymmetricGroup(5)
            >>> SymmetricProjector.from_action(TensorAction((4, 2 * 25), [(4 * trivial(G), 1),
            ...                                                       (2 * pair_representation(G), 1)]))
            SymmetricProjector(shape=(4, 50), dim=16)
        """
        reps = dense_layer_factors(action, SymmetricGroup)
        if reps is None:
            return None
        group = action.group
        kinds = [_node_order(rep, group) for rep in reps]
        if any(k is None for k in kinds):
            return None
        out_order, out_channels = kinds[0]
        in_order, in_channels = kinds[1] if len(kinds) == 2 else (0, 1)
        return cls(action.shape, group.n, in_order, out_order, in_channels, out_channels)


def _mixing_matrix(parts: list[Partition], n: int) -> Tensor:
    """``M`` with ``D = M T``: diagonal sums ``T`` to the diagonal updates ``D`` of the projection.

    The class sums are ``S(p) = sum_{s >= p} mu(p, s) T(s)`` (Moebius inversion from above), the
    class means ``S(p) / n!/(n - |p|)!`` (zero for the empty classes, ``|p| > n``), and the updates
    ``D(q) = sum_{p <= q} mu(p, q) mean(p)`` (Moebius inversion from below).
    """
    k = len(parts)
    up, down = torch.zeros(k, k, dtype=torch.float64), torch.zeros(k, k, dtype=torch.float64)
    for i, p in enumerate(parts):
        for j, s in enumerate(parts):
            if _refines(p, s):
                up[i, j] = _mobius(p, s) / math.perm(n, len(p)) if len(p) <= n else 0.0
                down[j, i] = _mobius(p, s)
    return down @ up


def _node_order(rep: Representation, group: SymmetricGroup) -> tuple[int, int] | None:
    """``(order, C)`` when ``rep`` is ``C`` copies of S_n on ``R^{n^order}``, checked on the generators."""
    if not rep.is_permutation:
        return None
    n, gens = group.n, group.generators()
    src = group.inverse(gens)  # (g x)[j] = x[p^-1[j]]
    one = torch.zeros_like(src[:, :1])
    per_order = [one, src, (src[:, :, None] * n + src[:, None, :]).reshape(gens.shape[0], n * n)]
    actual = rep.permutation(gens)
    for order, base in enumerate(per_order):
        size = n**order
        if rep.dim % size:
            continue
        channels = rep.dim // size
        expected = base.repeat(1, channels) + torch.arange(channels).repeat_interleave(size) * size
        if torch.equal(actual, expected):
            return order, channels
    return None
