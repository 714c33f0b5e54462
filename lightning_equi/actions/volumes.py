"""SO(3) and O(3) acting on batches of volumes ``(B, C, D, H, W)``: voxel grids, 3D feature maps, masks.

``out(p) = rho_fields(g) x(g^-1 p)``, one element per sample. Coordinates are escnn's for
``rot3dOnR3``/``flipRot3dOnR3`` (``GeometricTensor.transform``): ``x`` runs along ``W`` (axis -1),
``y`` against ``H`` (axis -2) and ``z`` against ``D`` (axis -3), so the quarter turn about ``z``
(``x -> y``) is ``torch.rot90(v, 1, dims=(-2, -1))``, as for images, about ``x`` it is
``dims=(-2, -3)`` and about ``y`` ``dims=(-1, -3)``.

The 24 rotations of the cube (the octahedral group), and its 48 elements with reflections under
O(3), map the voxel grid onto itself: they act exactly, by a permutation of the voxels (one gather,
bit for bit equal to ``rot90``/``flip``). Every other element resamples the volume with
``affine_grid`` + ``grid_sample`` (trilinear), so the action is flagged inexact and
:meth:`VolumeAction.exact_mask` says which elements are exact: the monitor then splits the
equivariance error into its exact and interpolated parts, for 3D as for 2D.

Example:
    >>> import torch
    >>> act = VolumeAction("SO3")
    >>> v = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    >>> turn_z = torch.tensor([[[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]], dtype=torch.float64)
    >>> torch.equal(act(turn_z, v), torch.rot90(v, 1, dims=(-2, -1)))
    True
    >>> act.exact_mask(torch.cat([turn_z, act.group.sample(1)])).tolist()
    [True, False]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_equi.actions.base import Action, FiberAction
from lightning_equi.actions.images import _gather_pixels
from lightning_equi.groups import SO3, Group, Representation, get_group

__all__ = ["VolumeAction", "VOLUME_INTERPOLATIONS"]

#: interpolations of ``grid_sample`` on 5D inputs (no bicubic)
VOLUME_INTERPOLATIONS = ("bilinear", "nearest")
PADDING_MODES = ("zeros", "border", "reflection")
#: physical (x, y, z) from centred voxel offsets along (D, H, W): x = w, y = -h, z = -d
_AXES = torch.tensor([[0.0, 0, 1], [0, -1, 0], [-1, 0, 0]], dtype=torch.float64)
_EXACT_ATOL = 1e-9


def _voxel_matrices(g: Tensor) -> Tensor:
    """``A^-1 g^-1 A`` ``(B, 3, 3)`` float64: the source voxel offset (D, H, W) of each output offset."""
    a = _AXES.to(g.device)
    return a.T @ g.transpose(-1, -2).to(torch.float64) @ a  # A is orthogonal: A^-1 = A^T


class VolumeAction(Action):
    """SO(3) or O(3) acting on volumes ``(B, C, D, H, W)`` (or ``(B, D, H, W)`` for scalar fields).

    Args:
        group: ``"SO3"`` or ``"O3"`` (a :class:`~lightning_equi.groups.Group` or its name); elements are
            ``(B, 3, 3)`` orthogonal matrices.
        fields: the representation on the channel axis; ``None`` means every channel is a scalar.
            ``standard(SO3)`` is a field of 3-vectors ``(vx, vy, vz)``, which rotate with the volume.
        interpolation: ``"bilinear"`` (trilinear on volumes) or ``"nearest"`` for resampled float data;
            integer and bool data (masks) always use ``"nearest"`` and keep their dtype.
        padding_mode: what enters from outside the volume when resampling: ``"zeros"``, ``"border"``
            or ``"reflection"``.

    Cost: an octahedral element is one ``gather`` of the voxels (source indices computed from the
    integer matrix, no table); any other element one ``affine_grid`` and one ``grid_sample``; a
    batch mixing both does each on its own samples.

    Example:
        >>> from lightning_equi.groups import standard, get_group
        >>> act = VolumeAction("O3", fields=standard(get_group("O3")))
        >>> v = torch.zeros(1, 3, 3, 3, 3)
        >>> v[0, 0, 1, 1, 2] = 1.0  # a unit x-vector at the voxel right of the centre
        >>> out = act(-torch.eye(3, dtype=torch.float64)[None], v)  # the inversion
        >>> out[0, :, 1, 1, 0].tolist()  # moved to the left of the centre, pointing along -x
        [-1.0, 0.0, 0.0]
    """

    exact = False

    def __init__(
        self,
        group: Group | str = "SO3",
        fields: Representation | None = None,
        interpolation: str = "bilinear",
        padding_mode: str = "zeros",
    ) -> None:
        self.group = group = get_group(group)
        if not isinstance(group, SO3):
            raise ValueError(
                f"VolumeAction acts by SO3 or O3 (3x3 orthogonal matrices), got {group.name}; use "
                "ImageAction for planar groups on images"
            )
        if interpolation not in VOLUME_INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {VOLUME_INTERPOLATIONS} for volumes, got {interpolation!r}"
            )
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.interpolation, self.padding_mode = interpolation, padding_mode
        self.fields = None if fields is None else FiberAction(fields, "fields")
        if self.fields is not None and self.fields.group != group:
            raise ValueError(
                f"fields is a representation of {self.fields.group.name}, "
                f"but the action's group is {group.name}"
            )

    @property
    def resamples(self) -> bool:
        return True  # every rotation off the cube's is trilinear

    def exact_mask(self, g: Tensor) -> Tensor:
        """True for the elements that map the voxel grid onto itself: the signed permutation matrices
        (the 24 rotations of the cube; 48 with reflections under O(3))."""
        self.group.check(g, "g")
        g = g.to(torch.float64)
        rounded = g.round()
        ones = (rounded.abs() == 1).sum(-1)
        return (
            ((g - rounded).abs() <= _EXACT_ATOL).flatten(1).all(1)
            & (ones == 1).all(1)
            & (rounded.abs().sum(-2) == 1).all(1)
        )

    def batch_size(self, x: Tensor) -> int:
        n = super().batch_size(x)
        scalar = self.fields is None or self.fields.dim == 1
        if not (x.dim() == 5 or (scalar and x.dim() == 4)):
            what = "(B, C, D, H, W) or (B, D, H, W)" if scalar else "(B, C, D, H, W)"
            raise ValueError(
                f"x must have shape {what} for VolumeAction({self.group.name}), got {tuple(x.shape)}"
            )
        if self.fields is not None and x.dim() == 5 and x.shape[1] != self.fields.dim:
            raise ValueError(
                f"x has {x.shape[1]} channels, but fields {self.fields.name} of {self.group.name} has "
                f"dimension {self.fields.dim}; pass a representation with one dimension per channel"
            )
        return n

    def apply(self, g: Tensor, x: Tensor) -> Tensor:
        g = g.to(x.device)
        squeeze = x.dim() == 4
        if squeeze:
            x = x.unsqueeze(1)
        exact = self.exact_mask(g)
        if bool(exact.all()):
            out = self._permute_voxels(g, x)
        elif not bool(exact.any()):
            out = self._resample(g, x)
        else:  # a mixed batch: each part its own way
            out = torch.empty_like(x)
            out[exact] = self._permute_voxels(g[exact], x[exact])
            out[~exact] = self._resample(g[~exact], x[~exact])
        if self.fields is not None:
            out = self.fields(g, out, axis=1)
        return out.squeeze(1) if squeeze else out

    def _permute_voxels(self, g: Tensor, x: Tensor) -> Tensor:
        """Octahedral elements: ``out[q] = x[M q]`` on doubled (integer) centred voxel offsets."""
        shape = tuple(x.shape[-3:])
        m = _voxel_matrices(g).round().long()  # (B, 3, 3), entries in {-1, 0, 1}
        sizes = torch.tensor(shape, device=x.device)
        # an axis that lands on another needs the same length: a quarter turn needs equal sides
        moved = m.abs().argmax(-1)  # (B, 3): the source axis of each output axis
        if bool((sizes[moved] != sizes).any()):
            raise ValueError(
                f"VolumeAction: a quarter turn maps the volume onto itself only when the axes it swaps "
                f"have the same length, got D, H, W = {shape}; crop or pad to a cube"
            )
        axes = [2 * torch.arange(n, device=x.device) - (n - 1) for n in shape]  # doubled offsets
        q = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # (P, 3)
        src = torch.einsum("bij,pj->bpi", m, q)  # (B, P, 3) doubled source offsets
        idx = (src + (sizes - 1)) // 2
        flat = (idx[..., 0] * shape[1] + idx[..., 1]) * shape[2] + idx[..., 2]
        return _gather_pixels(x, flat)

    def _resample(self, g: Tensor, x: Tensor) -> Tensor:
        """``affine_grid`` + ``grid_sample``: the source of each output voxel, in the normalised
        coordinates of ``align_corners=False``, ``u_k = 2 q_k / n_k`` (grid order W, H, D)."""
        d, h, w = x.shape[-3:]
        floating = x.is_floating_point()
        mode = self.interpolation if floating else "nearest"
        work = x if floating else x.to(torch.float64)  # float64 keeps integer labels exact
        m = _voxel_matrices(g)  # (B, 3, 3) on (D, H, W) offsets
        n = torch.tensor([d, h, w], dtype=torch.float64, device=g.device)
        m = m * n[None, None, :] / n[None, :, None]  # u_src_k = sum_l m_kl (n_l / n_k) u_l
        m = m.flip(-1).flip(-2)  # to affine_grid's (W, H, D) order
        theta = torch.cat([m, torch.zeros_like(m[..., :1])], dim=-1).to(work.dtype)
        grid = F.affine_grid(theta, list(work.shape), align_corners=False)
        out = F.grid_sample(work, grid, mode=mode, padding_mode=self.padding_mode, align_corners=False)
        if floating:
            return out
        return out > 0.5 if x.dtype == torch.bool else out.round().to(x.dtype)

    def __repr__(self) -> str:
        return f"VolumeAction({self.group.name}, exact={self.exact})"


def _cube_turns() -> Tensor:
    """The 24 rotations of the cube, as signed permutation matrices of determinant 1 (tests, docs)."""
    out = []
    for perm in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)):
        for signs in range(8):
            m = torch.zeros(3, 3, dtype=torch.float64)
            for row, col in enumerate(perm):
                m[row, col] = -1.0 if (signs >> row) & 1 else 1.0
            if math.isclose(float(torch.linalg.det(m)), 1.0):
                out.append(m)
    return torch.stack(out)
