"""Planar groups and torus translations acting on batches of images, feature maps and masks.

``out(p) = rho_fields(g) x(g^-1 p)``: the image is moved by ``g`` and every pixel's channels are
mixed by the representation ``fields``. Coordinates are ``x`` = column (to the right) and ``y`` = row
pointing *up*, so that ``torch.rot90(x, 1, dims=(-2, -1))`` (counter-clockwise on screen) is the
rotation ``R(pi/2)`` of :func:`~lightning_equi.groups.standard` and the mirror ``x -> -x`` is
``torch.flip(x, (-1,))``. These are escnn's conventions for ``rot2dOnR2`` and ``flipRot2dOnR2``
(default axis) and those of :func:`~lightning_equi.groups.grid_representation`.
"""

from __future__ import annotations

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
    standard,
)

__all__ = ["ImageAction"]

INTERPOLATIONS = ("bilinear", "nearest", "bicubic")
PADDING_MODES = ("zeros", "border", "reflection")
_PLANAR = (CyclicGroup, DihedralGroup, SO2, O2)


def _quarter(group: Group) -> int | None:
    """Quarter turns per rotation step of a group acting exactly on a grid, else ``None``."""
    if isinstance(group, (CyclicGroup, DihedralGroup)) and group.n in (1, 2, 4):
        return 4 // group.n
    return None


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
        self.interpolation, self.padding_mode = interpolation, padding_mode
        self.fields = None if fields is None else FiberAction(fields, "fields")
        if self.fields is not None and self.fields.group != group:
            raise ValueError(
                f"fields is a representation of {self.fields.group.name}, "
                f"but the action's group is {group.name}"
            )

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
            out = self._rot90(g, x)
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

    def _rot90(self, g: Tensor, x: Tensor) -> Tensor:
        # one indexed rot90 per group element present (at most 8), no Python loop over samples
        quarter = _quarter(self.group)
        mirror = isinstance(self.group, DihedralGroup)
        flips, steps = (g[:, 0], g[:, 1]) if mirror else (torch.zeros_like(g), g)
        code = flips * 4 + (steps * quarter) % 4  # = 4 f + number of quarter turns
        out = torch.empty_like(x)
        for c in torch.unique(code).tolist():
            idx = (code == c).nonzero().squeeze(1)
            part = x.index_select(0, idx)
            if c >= 4:
                part = part.flip(-1)  # the mirror acts first: (f, k) = r^k s^f
            out.index_copy_(0, idx, torch.rot90(part, c % 4, dims=(-2, -1)))
        return out

    def _roll(self, g: Tensor, x: Tensor) -> Tensor:
        # out[p] = x[p - t] (torch.roll of every sample by its own t) as one gather on the flat grid;
        # the source index is built axis by axis, row-major like TorusTranslations.index
        shape, d = self.group.shape, self.spatial_dims
        src = torch.zeros((x.shape[0],) + (1,) * d, dtype=torch.long, device=x.device)
        for axis, n in enumerate(shape):
            view = [x.shape[0]] + [1] * d
            view[1 + axis] = n
            idx = (torch.arange(n, device=x.device)[None] - g[:, axis : axis + 1]) % n
            src = src * n + idx.reshape(view)
        flat = x.flatten(2)
        return torch.gather(flat, 2, src.reshape(x.shape[0], 1, -1).expand(flat.shape)).reshape(x.shape)

    def _resample(self, g: Tensor, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        floating = x.is_floating_point()
        mode = self.interpolation if floating else "nearest"
        work = x if floating else x.to(torch.float64)  # float64 keeps integer labels exact
        # input point of output pixel p is g^-1 p; in (x, y_down) pixel units that is D M^T D, with
        # D = diag(1, -1) flipping y; normalised grid units rescale x by W/2 and y by H/2
        m_inv = standard(self.group)(g).transpose(1, 2)
        flip_y = torch.tensor([1.0, -1.0], dtype=torch.float64, device=x.device)
        a = flip_y[None, :, None] * m_inv * flip_y[None, None, :]
        scale = torch.tensor([w / 2, h / 2], dtype=torch.float64, device=x.device)
        a = a * scale[None, None, :] / scale[None, :, None]
        theta = torch.cat([a, a.new_zeros(b, 2, 1)], dim=2).to(work.dtype)
        grid = F.affine_grid(theta, list(work.shape), align_corners=False)
        out = F.grid_sample(work, grid, mode=mode, padding_mode=self.padding_mode, align_corners=False)
        if floating:
            return out
        return out > 0.5 if x.dtype == torch.bool else out.round().to(x.dtype)
