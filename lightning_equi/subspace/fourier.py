"""Projection onto translation-equivariant dense layers (circular convolutions) on a torus.

A dense layer ``(C_out * P, C_in * P)`` over a grid of ``P = N_1 ... N_d`` positions (input index
``c * P + p``, ``p`` row-major) commutes with the cyclic shifts iff, per channel pair, the entry at
``(p, q)`` depends only on ``p - q mod grid``: it is a circular convolution. ``Pi_E`` is then the
average along those circular diagonals, or equivalently (paper, Proposition 4) keeping only the
diagonal of the layer in the Fourier basis, ``F^* diag(F A F^*) F``. Restricting the shifts to
some grid axes (Proposition 6: row-wise translations) keeps the other axes' indices free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from lightning_equi.groups import Representation, TorusTranslations
from lightning_equi.subspace.base import Projector, TensorAction, dense_layer_factors

__all__ = ["FourierProjector"]

Method = Literal["reindex", "fft"]


def _positions(grid: tuple[int, ...], device) -> Tensor:
    """All grid positions, ``(P, d)`` long, row-major (the order of ``TorusTranslations.elements``)."""
    axes = torch.meshgrid(*[torch.arange(n, device=device) for n in grid], indexing="ij")
    return torch.stack([a.reshape(-1) for a in axes], dim=1)


def _flat(pos: Tensor, grid: tuple[int, ...]) -> Tensor:
    """Row-major flat index of grid positions ``(..., d)``."""
    idx = torch.zeros(pos.shape[:-1], dtype=torch.long, device=pos.device)
    for d, n in enumerate(grid):
        idx = idx * n + pos[..., d] % n
    return idx


class FourierProjector(Projector):
    """``Pi_E`` for dense layers (and biases) equivariant to cyclic translations of a grid.

    Args:
        shape: ``(out_channels * P, in_channels * P)`` for a weight, ``(out_channels * P,)`` for a bias.
        grid: the grid ``(N_1, ..., N_d)``, ``P = N_1 * ... * N_d``.
        in_channels: input channels of a weight (1 for a bias).
        out_channels: output channels.
        dims: the grid axes along which the layer must commute with shifts (default: all); e.g.
            ``grid=(14, 14), dims=(1,)`` is equivariance to shifting columns only.
        method: ``"reindex"`` averages along the circular diagonals by gathering them (fastest);
            ``"fft"`` is the paper's ``F^* diag(F A F^*) F`` with ``torch.fft``. Both are exact.

    Example:
        >>> proj = FourierProjector((3 * 4, 2 * 4), grid=(4,), in_channels=2, out_channels=3)
        >>> w = proj.project(torch.randn(12, 8, dtype=torch.float64))
        >>> blk = w[:4, :4]  # channel pair (0, 0): a circulant matrix
        >>> torch.allclose(blk, torch.roll(torch.roll(blk, 1, 0), 1, 1)), proj.dim
        (True, 24)
    """

    kind = "fourier"

    def __init__(
        self,
        shape: Sequence[int],
        grid: Sequence[int] | int,
        in_channels: int = 1,
        out_channels: int = 1,
        dims: Sequence[int] | None = None,
        method: Method = "reindex",
    ) -> None:
        super().__init__(shape)
        grid = (int(grid),) if isinstance(grid, int) else tuple(int(n) for n in grid)
        if not grid or min(grid) < 1:
            raise ValueError(f"grid must be a non-empty tuple of positive sizes, got {grid}")
        if int(in_channels) < 1 or int(out_channels) < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if method not in ("reindex", "fft"):
            raise ValueError(f"method must be 'reindex' or 'fft', got {method!r}")
        nd = len(grid)
        dims = tuple(range(nd)) if dims is None else tuple(int(d) for d in dims)
        if not dims or len(set(dims)) != len(dims) or not all(0 <= d < nd for d in dims):
            raise ValueError(f"dims must be distinct grid axes in range(0, {nd}) for grid {grid}, got {dims}")
        self.grid, self.dims, self.method = grid, tuple(sorted(dims)), method
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.P = math.prod(grid)
        P, ci, co = self.P, self.in_channels, self.out_channels
        if len(self.shape) not in (1, 2):
            raise ValueError(f"shape must be (out, in) or (out,) for a bias, got {tuple(self.shape)}")
        if len(self.shape) == 2 and tuple(self.shape) != (co * P, ci * P):
            raise ValueError(
                f"a weight for {co} -> {ci} channels on grid {grid} has shape {(co * P, ci * P)}, got "
                f"{tuple(self.shape)}; check in_channels, out_channels and grid"
            )
        if len(self.shape) == 1 and (tuple(self.shape) != (co * P,) or ci != 1):
            raise ValueError(
                f"a bias for {co} channels on grid {grid} has shape {(co * P,)} and in_channels=1, got "
                f"shape {tuple(self.shape)} and in_channels={ci}"
            )
        self.is_bias = len(self.shape) == 1
        #: number of group elements each orbit (circular diagonal) averages over
        self.orbit_size = math.prod(grid[d] for d in self.dims)
        self._index: dict[torch.device, tuple[Tensor, Tensor]] = {}

    @property
    def orbit_constant(self) -> bool:
        """``"reindex"`` gathers each circular diagonal from one mean (bitwise constant on the orbits);
        ``"fft"`` reaches E only up to rounding. A bias is one mean per channel either way."""
        return self.is_bias or self.method == "reindex"

    @property
    def dim(self) -> int:
        free = self.P // self.orbit_size  # positions along the axes without translation symmetry
        if self.is_bias:
            return self.out_channels * free
        return self.out_channels * self.in_channels * self.P * free

    def project(self, w: Tensor) -> Tensor:
        self.check_shape(w)
        if w.dtype in (torch.float16, torch.bfloat16):  # class sums of many entries need float32
            return self.project(w.float()).to(w.dtype)
        if self.is_bias:
            return self._project_bias(w)
        if self.method == "fft":
            return self._project_fft(w)
        return self._project_reindex(w)

    def _grid_axes(self, first: int) -> list[int]:
        return [first + d for d in self.dims]

    @property
    def identity_on_E(self) -> bool:
        """``"reindex"`` and biases average each class relative to one of its entries (a tensor already
        in E is returned bit for bit); ``"fft"`` rounds."""
        return self.orbit_constant

    def _class_mean(self, v: Tensor, axes: list[int]) -> Tensor:
        """Mean over ``axes`` (keepdim) as ``r + mean(v - r)``, ``r`` the entry at index 0 of those axes:
        exact when ``v`` is already constant along them (see ``OrbitMeanProjector._orbit_means``)."""
        ref = v
        for axis in axes:
            ref = ref.narrow(axis, 0, 1)
        return (v - ref).sum(dim=axes, keepdim=True).div_(self.orbit_size).add_(ref)

    def _project_bias(self, w: Tensor) -> Tensor:
        v = w.reshape(self.out_channels, *self.grid)
        return self._class_mean(v, self._grid_axes(1)).expand_as(v).reshape(self.shape)

    def _indices(self, device) -> tuple[Tensor, Tensor]:
        """Gather indices ``(*grid, P)`` along the input position: skew and unskew.

        ``skew[p, j]`` is the input position ``q`` with ``q = p - j`` on the symmetric axes and
        ``q = j`` on the others, so that column ``j`` of the skewed layer holds one circular
        diagonal; ``unskew[p, q]`` is that ``j``.
        """
        if device not in self._index:
            pos = _positions(self.grid, device)  # (P, d)
            sym = torch.zeros(len(self.grid), dtype=torch.long, device=device)
            sym[list(self.dims)] = 1
            p, j = pos[:, None, :], pos[None, :, :]
            skew = _flat(p * sym + j * (1 - 2 * sym), self.grid)  # q = p - j (sym) or j
            unskew = skew  # j = p - q (sym) or q: the same involution
            shape = (*self.grid, self.P)
            self._index[device] = (skew.reshape(shape), unskew.reshape(shape))
        return self._index[device]

    def _project_reindex(self, w: Tensor) -> Tensor:
        co, ci, P = self.out_channels, self.in_channels, self.P
        skew, unskew = self._indices(w.device)
        full = (co, *self.grid, ci, P)
        v = w.reshape(full)
        view = (1, *self.grid, 1, P)
        diag = torch.gather(v, -1, skew.reshape(view).expand(full))  # [co, p, ci, j] = w[co, p, ci, p - j]
        mean = self._class_mean(diag, self._grid_axes(1))
        out = torch.gather(mean.expand(full), -1, unskew.reshape(view).expand(full))
        return out.reshape(self.shape)

    def _project_fft(self, w: Tensor) -> Tensor:
        co, ci, nd = self.out_channels, self.in_channels, len(self.grid)
        cdtype = torch.complex128 if w.dtype == torch.float64 else torch.complex64
        # Complex input: torch's real-to-complex FFT along leading axes is ~100x slower on CPU.
        v = w.to(cdtype).reshape(co, *self.grid, ci, *self.grid)
        p_axes, q_axes = self._grid_axes(1), self._grid_axes(nd + 2)
        # F A F^*: DFT along the output position p, inverse DFT along the input position q.
        x = torch.fft.ifftn(torch.fft.fftn(v, dim=p_axes, norm="ortho"), dim=q_axes, norm="ortho")
        x = x * self._diagonal_mask(w.device, x.real.dtype)  # keep diag: frequency k_d == l_d
        y = torch.fft.fftn(torch.fft.ifftn(x, dim=p_axes, norm="ortho"), dim=q_axes, norm="ortho")
        return y.real.to(w.dtype).reshape(self.shape)

    def _diagonal_mask(self, device, dtype) -> Tensor:
        nd = len(self.grid)
        mask = torch.ones([1] * (2 * nd + 2), dtype=dtype, device=device)
        for d in self.dims:
            n, size = self.grid[d], [1] * (2 * nd + 2)
            size[1 + d], size[nd + 2 + d] = n, n
            mask = mask * torch.eye(n, dtype=dtype, device=device).reshape(size)
        return mask

    @classmethod
    def from_action(cls, action: TensorAction, method: Method = "reindex") -> FourierProjector | None:
        """The projector for ``action`` when it is a torus acting on a dense weight ``(C_out P, C_in P)``
        or bias ``(C_out P,)`` by channel copies of the grid shift; ``None`` for any other action.

        Example:
            >>> from lightning_equi.groups import TorusTranslations, regular, trivial
            >>> G = TorusTranslations((3, 4))
            >>> FourierProjector.from_action(TensorAction((24, 12), [(2 * regular(G), 1), (regular(G), 1)]))
            FourierProjector(shape=(24, 12), dim=24)
            >>> invariant = TensorAction((2, 12), [(2 * trivial(G), 1), (regular(G), 1)])
            >>> FourierProjector.from_action(invariant) is None
            True
        """
        reps = dense_layer_factors(action, TorusTranslations)
        if reps is None:
            return None
        channels = [_shift_channels(rep, action.group) for rep in reps]
        if any(c is None for c in channels):
            return None
        in_channels = channels[1] if len(channels) == 2 else 1
        return cls(action.shape, action.group.shape, in_channels, out_channels=channels[0], method=method)


def _shift_channels(rep: Representation, group: TorusTranslations) -> int | None:
    """``C`` when ``rep`` is ``C`` copies of the grid shift (checked on the generators), else ``None``."""
    P = group.order
    if not rep.is_permutation or rep.dim % P:
        return None
    channels = rep.dim // P
    gens = group.generators()
    # (t . x)[p] = x[p - t]: a permutation representation is fixed by its values on generators.
    shift = _flat(_positions(group.shape, None)[None] - gens[:, None, :], group.shape)  # (k, P)
    offsets = torch.arange(channels).repeat_interleave(P) * P
    expected = shift.repeat(1, channels) + offsets
    return channels if torch.equal(rep.permutation(gens), expected) else None
