"""Planar groups and torus translations acting on batches of images, feature maps and masks.

``out(p) = rho_fields(g) x(g^-1 p)``: the image is moved by ``g`` and every pixel's channels are
mixed by the representation ``fields``. Coordinates are ``x`` = column (to the right) and ``y`` = row
pointing *up*, so that ``torch.rot90(x, 1, dims=(-2, -1))`` (counter-clockwise on screen) is the
rotation ``R(pi/2)`` of :func:`~lightning_equi.groups.standard` and the mirror ``x -> -x`` is
``torch.flip(x, (-1,))``. These are escnn's conventions for ``rot2dOnR2`` and ``flipRot2dOnR2``
(default axis) and those of :func:`~lightning_equi.groups.grid_representation`.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_equi.actions.base import Action, FiberAction
from lightning_equi.groups import (
    O2,
    SO2,
    CyclicGroup,
    DihedralGroup,
    Group,
    Representation,
    TorusTranslations,
    get_group,
)

__all__ = ["ImageAction"]

INTERPOLATIONS = ("bilinear", "nearest", "bicubic")
PADDING_MODES = ("zeros", "border", "reflection")
_PLANAR = (CyclicGroup, DihedralGroup, SO2, O2)
# pixel tables (exact) and grid constants (resampling) are kept for this many image sizes
_MAX_TABLES = 8
_K = TypeVar("_K")
_T = TypeVar("_T")
_Key = tuple[tuple[int, int], torch.device]


def _quarter(group: Group) -> int | None:
    """Quarter turns per rotation step of a group acting exactly on a grid, else ``None``."""
    if isinstance(group, (CyclicGroup, DihedralGroup)) and group.n in (1, 2, 4):
        return 4 // group.n
    return None


def _remember(cache: dict[_K, _T], key: _K, value: _T) -> _T:
    """Keep ``value`` for ``key``, dropping the oldest entry beyond ``_MAX_TABLES``."""
    if len(cache) >= _MAX_TABLES:
        cache.pop(next(iter(cache)))
    cache[key] = value
    return value


def _gather_pixels(x: Tensor, src: Tensor) -> Tensor:
    """``out[b, c].flat[p] = x[b, c].flat[src[b, p]]`` as one gather; channels-last stays so."""
    b, c, spatial = x.shape[0], x.shape[1], x.shape[2:]
    numel = src.shape[1]
    last = x.dim() == 4 and c > 1 and not x.is_contiguous()
    if last and x.is_contiguous(memory_format=torch.channels_last):
        # gather whole pixels (C contiguous values each), which keeps the channels-last layout
        pixels = x.permute(0, 2, 3, 1).reshape(b, numel, c)
        out = torch.gather(pixels, 1, src[:, :, None].expand(b, numel, c))
        return out.view(b, *spatial, c).permute(0, 3, 1, 2)
    flat = x.reshape(b, c, numel)
    return torch.gather(flat, 2, src[:, None, :].expand(b, c, numel)).view(x.shape)


class ImageAction(Action):
    """A planar group, or translations of a torus, acting on images ``(B, C, H, W)``.

    Args:
        group: C_N, D_N, SO2, O2, or a torus ``T<H>x<W>`` (a :class:`~lightning_equi.groups.Group`
            or its name).
        fields: the representation on the channel axis; ``None`` means every channel is a scalar
            (then ``(B, H, W)`` inputs are accepted too). ``standard(G)`` is a field of 2-vectors
            ``(vx, vy)``, ``regular(G)`` a regular field (its channels are permuted).
        exact: ``None`` acts exactly whenever possible: C1/C2/C4/D1/D2/D4 by ``rot90`` and flips,
            tori by ``roll``; other groups are resampled with ``grid_sample`` (``exact=False``).
            ``True`` refuses groups that would need interpolation; ``False`` forces resampling.
        interpolation: ``"bilinear"``, ``"nearest"`` or ``"bicubic"`` for resampled float data;
            integer and bool data (masks) always use ``"nearest"`` and keep their dtype.
        padding_mode: what enters from outside the image when resampling: ``"zeros"``,
            ``"border"`` or ``"reflection"``.

    Cost: an exact action is one ``gather`` of the pixels, with each sample's source pixels looked
    up in a table of all group elements built once per image size and device (tori compute theirs
    in a few small ops); resampling is one ``bmm`` on ``affine_grid``'s base grid, kept per size,
    and one ``grid_sample``. Results are bit-identical to ``rot90``/``flip``/``roll`` and to
    ``affine_grid`` of the float64 matrices ``standard(group)(g)``.

    Example:
        >>> act = ImageAction("C4")
        >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
        >>> torch.equal(act(torch.tensor([1]), x), torch.rot90(x, 1, dims=(-2, -1)))
        True
    """

    def __init__(
        self,
        group: Group | str,
        fields: Representation | None = None,
        exact: bool | None = None,
        interpolation: str = "bilinear",
        padding_mode: str = "zeros",
    ) -> None:
        self.group = group = get_group(group)
        if not isinstance(group, (*_PLANAR, TorusTranslations)):
            raise ValueError(
                f"ImageAction acts by C_N, D_N, SO2, O2 or a torus T<H>x<W>, got {group.name}; "
                "use PointCloudAction for SO3/O3 and SetAction/GraphAction for S_n"
            )
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        can_be_exact = isinstance(group, TorusTranslations) or _quarter(group) is not None
        if exact is None:
            exact = can_be_exact
        elif exact and not can_be_exact:
            raise ValueError(
                f"{group.name} cannot act exactly on a pixel grid (only C1, C2, C4, D1, D2, D4 and tori "
                "can); pass exact=False to resample with interpolation"
            )
        elif not exact and isinstance(group, TorusTranslations):
            raise ValueError(
                f"{group.name} translates by whole pixels, which is always exact; pass exact=None"
            )
        self.exact = bool(exact)
        # per (H, W, device): pixel tables of the exact action; with the dtype: resampling constants
        self._tables: dict[_Key, Tensor] = {}
        self._grids: dict[tuple[tuple[int, int], torch.device, torch.dtype], tuple[Tensor, ...]] = {}
        self.interpolation, self.padding_mode = interpolation, padding_mode
        self.fields = None if fields is None else FiberAction(fields, "fields")
        if self.fields is not None and self.fields.group != group:
            raise ValueError(
                f"fields is a representation of {self.fields.group.name}, "
                f"but the action's group is {group.name}"
            )

    @property
    def resamples(self) -> bool:
        return not self.exact

    def exact_mask(self, g: Tensor) -> Tensor:
        """All True for an exact action; when resampling, True for the elements that map the square
        pixel grid onto itself: rotations by multiples of a quarter turn, with or without a mirror."""
        mask = super().exact_mask(g)
        if self.exact or not isinstance(self.group, _PLANAR):
            return mask
        if isinstance(self.group, (CyclicGroup, DihedralGroup)):
            # an integer test: 4 k / N is an integer
            steps = g.long() if isinstance(self.group, CyclicGroup) else g[:, 1].long()
            return (4 * steps) % self.group.n == 0
        quarters = self.group.angle(g).double() / (math.pi / 2)
        return (quarters - quarters.round()).abs() <= 1e-9

    @property
    def spatial_dims(self) -> int:
        """Number of trailing axes moved by the group (2, or the torus dimension)."""
        return len(self.group.shape) if isinstance(self.group, TorusTranslations) else 2

    def apply(self, g: Tensor, x: Tensor) -> Tensor:
        g = g.to(x.device)
        squeeze = x.dim() == 1 + self.spatial_dims
        if squeeze:
            x = x.unsqueeze(1)
        if isinstance(self.group, TorusTranslations):
            out = self._roll(g, x)
        elif self.exact:
            out = self._permute_pixels(g, x)
        else:
            out = self._resample(g, x)
        if self.fields is not None:
            out = self.fields(g, out, axis=1)
        return out.squeeze(1) if squeeze else out

    def batch_size(self, x: Tensor) -> int:
        n = super().batch_size(x)
        d, name = self.spatial_dims, self.group.name
        scalar = self.fields is None or self.fields.dim == 1
        if not (x.dim() == 2 + d or (scalar and x.dim() == 1 + d)):
            what = "(B, C, H, W) or (B, H, W)" if d == 2 else f"(B, C, *{self.group.shape}) or (B, *...)"
            if not scalar:
                what = what.split(" or ")[0]
            raise ValueError(f"x must have shape {what} for {name}, got {tuple(x.shape)}")
        if self.fields is not None and x.dim() == 2 + d and x.shape[1] != self.fields.dim:
            raise ValueError(
                f"x has {x.shape[1]} channels, but fields {self.fields.name} of {name} has dimension "
                f"{self.fields.dim}; pass a representation with one dimension per channel"
            )
        spatial = tuple(x.shape[-d:])
        if isinstance(self.group, TorusTranslations) and spatial != self.group.shape:
            raise ValueError(
                f"{name} translates a grid of shape {self.group.shape}, but x has spatial shape "
                f"{spatial}; use TorusTranslations({spatial})"
            )
        if self.exact and _quarter(self.group) == 1 and spatial[0] != spatial[1]:
            raise ValueError(
                f"{name} rotates by quarter turns, which needs a square image; got H={spatial[0]} and "
                f"W={spatial[1]}. Crop or pad to a square, or pass exact=False to resample"
            )
        return n

    def _pixel_table(self, shape: tuple[int, int], device: torch.device) -> Tensor:
        """Source pixels ``(order, H * W)`` of C1/C2/C4/D1/D2/D4, one row per element of
        ``group.elements()``: ``out.flat[p] = x.flat[table[group.index(g), p]]``.

        Built once per (spatial shape, device) by moving ``arange(H * W)`` with ``flip`` and
        ``rot90`` themselves, so the gather reproduces them bit for bit.
        """
        key = (shape, device)
        table = self._tables.get(key)
        if table is not None:
            return table
        group, numel = self.group, math.prod(shape)
        base = torch.arange(numel).reshape(shape)
        quarter = _quarter(group)
        if quarter == 1 and shape[0] != shape[1]:
            raise ValueError(f"{group.name} rotates by quarter turns, which needs a square image")
        mirror = isinstance(group, DihedralGroup)
        rows = []
        for e in group.elements().tolist():
            f, k = e if mirror else (0, e)
            moved = base.flip(-1) if f else base  # the mirror acts first: (f, k) = r^k s^f
            rows.append(torch.rot90(moved, k * quarter % 4, dims=(-2, -1)))
        return _remember(self._tables, key, torch.stack(rows).reshape(len(rows), numel).to(device))

    def _permute_pixels(self, g: Tensor, x: Tensor) -> Tensor:
        # one lookup of each sample's row of source pixels plus one gather, whatever the elements
        table = self._pixel_table(tuple(x.shape[-2:]), x.device)
        return _gather_pixels(x, table.index_select(0, self.group.index(g)))

    def _roll(self, g: Tensor, x: Tensor) -> Tensor:
        # out[p] = x[p - t] (torch.roll of every sample by its own t) as one gather on the flat grid;
        # the source index is a sum of one (B, n) term per axis, row-major like TorusTranslations.index
        # (cheaper than a tabulated (order, P) = (P, P) table, and as few ops)
        shape, d, b = self.group.shape, self.spatial_dims, x.shape[0]
        src, stride = None, math.prod(shape)
        for axis, n in enumerate(shape):
            stride //= n
            idx = (torch.arange(n, device=x.device) - g[:, axis : axis + 1]) % n
            if stride != 1:
                idx = idx * stride
            view = [b] + [1] * d
            view[1 + axis] = n
            idx = idx.view(view)
            src = idx if src is None else src + idx
        return _gather_pixels(x, src.view(b, self.group.order))

    def _theta(self, g: Tensor, times: Tensor, over: Tensor) -> Tensor:
        """``affine_grid`` matrices ``(B, 6)`` (rows of ``(2, 3)``), float64, mapping each output
        pixel to ``g^-1 p``.

        With ``M = R(t) S^f`` (``standard``), ``D = diag(1, -1)`` flipping y and grid units scaling
        x by W/2 and y by H/2 (``s``), the linear part is ``(D M^T D)_ij s_j / s_i``; with
        ``e = (-1)^f``: ``[[e cos t, -e sin t], [sin t, cos t]]`` rescaled, no translation. The
        values are those of the matrix product (signs are exact and ride on ``times``), so
        nearest-neighbour ties resolve exactly as with ``standard(group)(g)``.
        """
        group = self.group
        angle = group.angle(g)
        c, s = torch.cos(angle), torch.sin(angle)
        c0, s0 = c, s
        if isinstance(group, (DihedralGroup, O2)):
            sign = 1 - 2 * group.flip(g)  # integer +-1: exact
            c0, s0 = c * sign, s * sign
        zero = torch.zeros_like(c)
        return torch.stack([c0, s0, zero, s, c, zero], dim=1) * times / over

    def _grid(self, g: Tensor, h: int, w: int, dtype: torch.dtype) -> Tensor:
        """``F.affine_grid(theta, (B, 1, H, W), align_corners=False)`` in ``dtype``, computed the
        way ``affine_grid`` does (base grid ``(x, y, 1)`` times ``theta^T``, one ``bmm``) but on a
        base grid built once per (size, device, dtype) instead of on every call."""
        key = ((h, w), g.device, dtype)
        grid_constants = self._grids.get(key)
        if grid_constants is None:
            sx, sy = w / 2, h / 2  # entry ij is multiplied by s_j, then divided by s_i
            times = torch.tensor([sx, -sy, 1.0, sx, sy, 1.0], dtype=torch.float64, device=g.device)
            over = torch.tensor([sx, sx, 1.0, sy, sy, 1.0], dtype=torch.float64, device=g.device)
            # affine_grid's own base grid, exactly: 1 * x + 0 * y + 0 = x
            eye = torch.eye(2, 3, dtype=dtype, device=g.device)[None]
            xy = F.affine_grid(eye, [1, 1, h, w], align_corners=False).view(1, h * w, 2)
            base = torch.cat([xy, torch.ones_like(xy[..., :1])], dim=2)
            grid_constants = _remember(self._grids, key, (times, over, base))
        times, over, base = grid_constants
        theta = self._theta(g, times, over).to(dtype).view(-1, 2, 3)
        return base.expand(len(theta), -1, -1).bmm(theta.transpose(1, 2)).view(-1, h, w, 2)

    def _resample(self, g: Tensor, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        floating = x.is_floating_point()
        mode = self.interpolation if floating else "nearest"
        work = x if floating else x.to(torch.float64)  # float64 keeps integer labels exact
        grid = self._grid(g, h, w, work.dtype)
        out = F.grid_sample(work, grid, mode=mode, padding_mode=self.padding_mode, align_corners=False)
        if floating:
            return out
        return out > 0.5 if x.dtype == torch.bool else out.round().to(x.dtype)

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _tables={}, _grids={})  # rebuilt on first use

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_tables", {})
        self.__dict__.setdefault("_grids", {})
