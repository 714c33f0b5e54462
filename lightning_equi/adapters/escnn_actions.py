"""Per-sample group elements acting on escnn ``GeometricTensor``s, in torch and differentiably.

escnn's own ``GeometricTensor.transform(g)`` applies one element to the whole batch, on the CPU
through scipy, detached. Here sample ``b`` is moved by ``g[b]``: the base space by
:class:`~lightning_equi.actions.ImageAction` (exact ``rot90``/flips for C1, C2, C4, D1, D2, D4) and
the fibers by the FieldType's own matrices ``field_type.representation(e)``. Elements are ours (see
:mod:`lightning_equi.groups`), converted per gspace so that the mirror of D_N/O(2) is ``x -> -x``
on the image for any ``flipRot2dOnR2`` axis (see :mod:`lightning_equi.adapters.escnn_groups`).

Fiber matrices: finite groups are tabulated once over all their elements. SO(2) and O(2) are
evaluated in batched torch from escnn's decomposition ``rho = Q (+)_i psi_i Q^-1``: their irreps
``psi_i`` are rotations by ``k theta`` (O(2)'s times ``diag(1, (-1)^f)``), so ``rho(g)`` is a fixed
linear combination of ``1``, ``(-1)^f``, ``cos k theta``, ``sin k theta`` (and their products with
``(-1)^f``), whose coefficient matrices are built once per FieldType. Other groups (SO(3), O(3) on
``no_base_space``) ask escnn once per sample.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_equi.actions import Action, ImageAction, VolumeAction
from lightning_equi.adapters.escnn_groups import escnn_element, group_from_escnn, mirror_offset
from lightning_equi.adapters.escnn_import import require_escnn
from lightning_equi.groups import O2, SO2, FiniteGroup

__all__ = ["GeometricTensorAction"]

# (feature, row, col, sign) of the entries of escnn's SO(2) irrep k > 0, psi(k theta) =
# [[cos, -sin], [sin, cos]]; features per frequency: 0 = cos, 1 = sin
_SO2_PATTERN = ((0, 0, 0, 1.0), (1, 0, 1, -1.0), (1, 1, 0, 1.0), (0, 1, 1, 1.0))
# escnn's O(2) irrep (1, k > 0), psichi(theta, f, k) = psi(k theta) @ diag(1, s) with s = (-1)^f =
# [[cos, -s sin], [sin, s cos]]; features per frequency: 0 = cos, 1 = sin, 2 = s cos, 3 = s sin
_O2_PATTERN = ((0, 0, 0, 1.0), (3, 0, 1, -1.0), (1, 1, 0, 1.0), (2, 1, 1, 1.0))
# elements at which each representation's decomposition is checked against escnn's own matrices
_CHECK_ANGLES = (0.7, 2.3, 4.1)
_CHECK_ATOL = 1e-9


class _PlanarFiber:
    """``field_type.representation(g)`` for a batch of SO(2) or O(2) elements, in a few torch ops.

    ``rho(g) = sum_m phi_m(g) B_m`` with ``phi(g)`` the features ``1``, (O(2): ``s = (-1)^f``,) and
    per rotation frequency ``k`` of the irreps: ``cos k theta``, ``sin k theta`` (O(2): and both
    times ``s``); ``theta`` is escnn's angle (ours minus ``f`` times the gspace's mirror offset).
    The ``B_m`` are kept per distinct representation of the FieldType (its fields' blocks) and
    scattered into the block-diagonal matrix of the whole FieldType.
    """

    def __init__(self, field_type: Any, group: SO2 | O2, mirror_offset: float) -> None:
        self.is_o2 = isinstance(group, O2)
        self.offset = mirror_offset
        reps = list({r.name: r for r in field_type.representations}.values())  # distinct, in order
        freqs = sorted({int(irr[-1]) for r in reps for irr in r.irreps if int(irr[-1]) > 0})
        self.freqs = torch.tensor(freqs, dtype=torch.float64)
        self._slot = {k: i for i, k in enumerate(freqs)}
        self.n_const = 2 if self.is_o2 else 1
        self.n_features = self.n_const + (4 if self.is_o2 else 2) * len(freqs)
        blocks, start = [], {}
        offset = 0
        for r in reps:
            start[r.name] = offset
            blocks.append(self._coefficients(r).reshape(self.n_features, -1))
            offset += r.size * r.size
        self.coefficients = torch.as_tensor(np.concatenate(blocks, axis=1), dtype=torch.float64)
        n, src, dst, channel = field_type.size, [], [], 0
        for r in field_type.representations:
            d = r.size
            rows = torch.arange(channel, channel + d)
            dst.append((rows[:, None] * n + rows[None, :]).reshape(-1))
            src.append(start[r.name] + torch.arange(d * d))
            channel += d
        self.size = n
        self.src, self.dst = torch.cat(src), torch.cat(dst)
        self._cache: dict[torch.device, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        self._cache[self.freqs.device] = (self.freqs, self.coefficients, self.src, self.dst)
        for r in reps:
            self._check(r, group)

    def _features_of_irrep(self, irrep: tuple) -> list[tuple[int, int, int, float]]:
        """``(feature, row, col, sign)`` of the nonzero entries of one escnn irrep, by its id."""
        k = int(irrep[-1])
        if self.is_o2:
            j = int(irrep[0])
            if k == 0:
                return [(j, 0, 0, 1.0)]  # (0, 0): 1; (1, 0): s
            base, pattern = self.n_const + 4 * self._slot[k], _O2_PATTERN
        else:
            if k == 0:
                return [(0, 0, 0, 1.0)]
            base, pattern = self.n_const + 2 * self._slot[k], _SO2_PATTERN
        return [(base + m, a, b, sign) for m, a, b, sign in pattern]

    def _coefficients(self, rep: Any) -> np.ndarray:
        """``B`` of shape ``(n_features, d, d)`` with ``rep(g) = sum_m phi_m(g) B_m``."""
        q = np.asarray(rep.change_of_basis, dtype=np.float64)
        q_inv = np.asarray(rep.change_of_basis_inv, dtype=np.float64)
        out = np.zeros((self.n_features, rep.size, rep.size))
        p = 0
        for irrep in rep.irreps:
            for m, a, b, sign in self._features_of_irrep(irrep):
                out[m] += sign * np.outer(q[:, p + a], q_inv[p + b, :])
            p += 1 if int(irrep[-1]) == 0 else 2
        return out

    def _check(self, rep: Any, group: SO2 | O2) -> None:
        """Refuse a representation whose matrices are not its own irreps decomposition."""
        G = rep.group
        if self.is_o2:
            ours = torch.tensor([[i % 2, t] for i, t in enumerate(_CHECK_ANGLES)], dtype=torch.float64)
            theirs = [G.element((i % 2, t)) for i, t in enumerate(_CHECK_ANGLES)]
        else:
            ours = torch.tensor(_CHECK_ANGLES, dtype=torch.float64)
            theirs = [G.element(t) for t in _CHECK_ANGLES]
        phi = self.features(ours, offset=0.0)
        coefficients = torch.as_tensor(self._coefficients(rep), dtype=torch.float64)
        mats = torch.einsum("bm,mij->bij", phi, coefficients)
        ref = torch.as_tensor(np.stack([rep(e) for e in theirs]), dtype=torch.float64)
        err = (mats - ref).abs().max().item()
        if not err <= _CHECK_ATOL * max(1.0, ref.abs().max().item()):
            raise ValueError(
                f"representation {rep.name!r} of {group.name} is not change_of_basis @ "
                f"(direct sum of its irreps {rep.irreps}) @ change_of_basis_inv (they differ by {err:.3g}); "
                "escnn assumes they agree, and GeometricTensorAction evaluates the decomposition"
            )

    def _on(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``freqs, coefficients, src, dst`` on ``device`` (copied once per device)."""
        cached = self._cache.get(device)
        if cached is None:
            cached = self._cache[device] = tuple(t.to(device) for t in self._cache[torch.device("cpu")])
        return cached

    def features(self, g: Tensor, offset: float | None = None) -> Tensor:
        """``phi(g)``, shape ``(B, n_features)`` float64."""
        g = g.to(torch.float64)
        offset = self.offset if offset is None else offset
        if self.is_o2:
            f, theta = g[:, 0], g[:, 1]
            theta = theta - f * offset
            s = 1.0 - 2.0 * f
        else:
            theta = g
        ang = theta[:, None] * self._on(g.device)[0]
        c, si = torch.cos(ang), torch.sin(ang)
        one = torch.ones_like(theta)[:, None]
        if self.is_o2:
            s = s[:, None]
            per_k = torch.stack([c, si, s * c, s * si], dim=-1).flatten(1)
            return torch.cat([one, s, per_k], dim=1)
        return torch.cat([one, torch.stack([c, si], dim=-1).flatten(1)], dim=1)

    def __call__(self, g: Tensor) -> Tensor:
        """``field_type.representation(g[b])`` for every ``b``, shape ``(B, n, n)`` float64."""
        _, coefficients, src, dst = self._on(g.device)
        values = self.features(g) @ coefficients  # (B, sum of d^2 over the distinct representations)
        out = torch.zeros(g.shape[0], self.size * self.size, dtype=torch.float64, device=g.device)
        out.index_copy_(1, dst, values.index_select(1, src))
        return out.view(g.shape[0], self.size, self.size)


class GeometricTensorAction(Action):
    """Our group elements acting on ``GeometricTensor``s of one escnn ``FieldType``.

    Args:
        field_type: an ``escnn.nn.FieldType`` on a 2D gspace (``rot2dOnR2``, ``flipRot2dOnR2``,
            ``flip2dOnR2``, ``trivialOnR2``), on ``rot3dOnR3``/``flipRot3dOnR3`` (volumes ``(B, C, D, H,
            W)`` moved by :class:`~lightning_equi.actions.VolumeAction`: the cube's rotations exactly,
            the others by trilinear resampling) or on ``no_base_space``.
        exact, interpolation, padding_mode: as for :class:`~lightning_equi.actions.ImageAction`.

    Example:
        >>> from escnn import gspaces, nn as enn
        >>> gs = gspaces.rot2dOnR2(4)
        >>> ft = enn.FieldType(gs, [gs.regular_repr])
        >>> act = GeometricTensorAction(ft)
        >>> x = ft(torch.randn(2, 4, 5, 5))
        >>> g = torch.tensor([1, 3])
        >>> torch.allclose(act(g, x).tensor[:1], x.transform(gs.fibergroup.element(1)).tensor[:1])
        True
    """

    def __init__(
        self,
        field_type: Any,
        exact: bool | None = None,
        interpolation: str = "bilinear",
        padding_mode: str = "zeros",
    ) -> None:
        require_escnn()
        import escnn.nn

        if not isinstance(field_type, escnn.nn.FieldType):
            raise TypeError(f"field_type must be an escnn.nn.FieldType, got {type(field_type).__name__}")
        self.field_type = field_type
        self.gspace = gspace = field_type.gspace
        # no_base_space has no plane to check a mirror axis against: only its fiber group matters
        self.group = group_from_escnn(gspace if gspace.dimensionality == 2 else gspace.fibergroup)
        self.spatial: ImageAction | VolumeAction | None
        if gspace.dimensionality == 2:
            self.spatial = ImageAction(self.group, None, exact, interpolation, padding_mode)
            self.exact = self.spatial.exact
        elif gspace.dimensionality == 3:
            if exact:
                raise ValueError(
                    f"GeometricTensorAction on {gspace.name}: SO(3)/O(3) resample volumes in general (only "
                    "the rotations of the cube act exactly, and exact_mask says which); leave exact=None"
                )
            self.spatial = VolumeAction(self.group, None, interpolation, padding_mode)
            self.exact = False
        elif gspace.dimensionality == 0:
            self.spatial, self.exact = None, True
        else:
            raise ValueError(
                f"GeometricTensorAction acts on 2D and 3D gspaces and no_base_space, got {gspace.name} "
                f"(dimensionality {gspace.dimensionality})"
            )
        # the plane fixes how our mirror converts; without one the conversion is escnn's canonical one
        self._element_gspace = gspace if gspace.dimensionality == 2 else None
        self._table: Tensor | None = None
        self._tables: dict[torch.device, Tensor] = {}  # the table, copied once per device
        self._planar: _PlanarFiber | None = None
        if isinstance(self.group, FiniteGroup):
            self._table = self._escnn_matrices(self.group.elements())
        elif type(self.group) in (SO2, O2):
            offset = 0.0
            if self._element_gspace is not None:
                offset = mirror_offset(gspace, self.group)
            self._planar = _PlanarFiber(field_type, self.group, offset)

    def _escnn_matrices(self, g: Tensor) -> Tensor:
        """``field_type.representation`` of each element, through escnn one by one (float64, CPU)."""
        gs = self._element_gspace
        mats = [self.field_type.representation(escnn_element(self.group, e, gs)) for e in g.cpu()]
        return torch.as_tensor(np.stack(mats), dtype=torch.float64)

    def fiber_matrices(self, g: Tensor) -> Tensor:
        """``field_type.representation(g[b])`` for each ``b``: ``(B, size, size)`` float64 on ``g``'s device.

        Finite groups: a lookup in the table of all elements; SO(2)/O(2): evaluated in batched torch;
        other groups: escnn, one element at a time.
        """
        if self._table is not None:
            table = self._tables.get(g.device)
            if table is None:
                table = self._tables[g.device] = self._table.to(g.device)
            return table[self.group.index(g)]
        if self._planar is not None:
            return self._planar(g)
        return self._escnn_matrices(g).to(g.device)

    @property
    def resamples(self) -> bool:
        return self.spatial is not None and self.spatial.resamples

    def exact_mask(self, g: Tensor) -> Tensor:
        """Which elements act exactly on the data: those the base space's image action moves exactly
        (the fibers always are); all of them on ``no_base_space``."""
        if self.spatial is not None:
            return self.spatial.exact_mask(g)
        return super().exact_mask(g)

    def batch_size(self, x: Any) -> int:
        import escnn.nn

        if not isinstance(x, escnn.nn.GeometricTensor):
            raise TypeError(f"x must be an escnn GeometricTensor, got {type(x).__name__}")
        if x.type != self.field_type:
            raise ValueError(f"x has field type {x.type}, but the action was built for {self.field_type}")
        if getattr(x, "coords", None) is not None:
            raise ValueError(
                "GeometricTensors with coords (point clouds) are not supported; pass grid tensors"
            )
        return x.tensor.shape[0]

    def apply(self, g: Tensor, x: Any) -> Any:
        import escnn.nn

        t = x.tensor
        g = g.to(t.device)
        if self.spatial is not None:
            self.spatial.batch_size(t)  # square image for quarter turns, ...
            t = self.spatial.apply(g, t)
        m = self.fiber_matrices(g).to(t.dtype)
        out = torch.bmm(m, t.reshape(t.shape[0], t.shape[1], -1)).reshape(t.shape)
        return escnn.nn.GeometricTensor(out, x.type)
