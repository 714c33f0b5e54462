"""Shifts and mirrors acting on 1-D signals ``(B, C, L)`` (sequences, time series, rings).

``out[c, i] = (rho_fields(g) x[:, g^-1 i])[c]``: the signal is moved by ``g`` and every sample's channels
are mixed by the representation ``fields``. Two settings, told apart by the group:

* a cyclic grid of ``N`` points: ``C_N`` (``N >= 3``) shifts it, ``out[i] = x[i - k]``
  (``torch.roll(x, k, -1)``), ``D_N`` (``N >= 2``) also mirrors it about sample 0: element ``(f, k)``
  (the mirror first) reads ``out[i] = x[(-1)^f (i - k) mod N]``; the signal has ``L = N`` samples.
  The translations ``T<N>`` shift the same grid;
* the mirror alone: ``C2`` and ``D1`` reverse a signal of any length (``torch.flip(x, (-1,))``),
  as they reverse a ``Conv1d`` kernel (:func:`lightning_equi.subspace.layers.line_representation`).

A convolution with circular padding commutes with the shifts; under mirrors its kernel must be
reversed with them, which a :class:`~lightning_equi.subspace.SymmetrySpec` declares with fields such as
``"trivial"``, ``"sign"`` or ``"mirror"`` (:func:`mirror_representation`: pairs of channels the mirror
swaps, the 1-D analogue of a regular field, safe before a pointwise nonlinearity).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_equi.actions.base import Action, FiberAction
from lightning_equi.groups import (
    CyclicGroup,
    DihedralGroup,
    Group,
    Representation,
    TorusTranslations,
    get_group,
)

__all__ = ["SignalAction", "mirror_representation", "mirror_flags", "cyclic_length"]


def cyclic_length(group: Group) -> int | None:
    """The number of points of the cyclic grid the group moves, or ``None`` when it only mirrors
    (C1, C2, D1 reverse a signal of any length).

    Example:
        >>> from lightning_equi.groups import get_group
        >>> cyclic_length(get_group("D8")), cyclic_length(get_group("C2")), cyclic_length(get_group("T5"))
        (8, None, 5)
    """
    if isinstance(group, TorusTranslations) and len(group.shape) == 1:
        return group.shape[0]
    if isinstance(group, DihedralGroup):
        return group.n if group.n >= 2 else None
    if isinstance(group, CyclicGroup):
        return group.n if group.n >= 3 else None
    raise ValueError(
        f"{group.name} does not act on a 1-D signal: C_N and T<N> shift a cyclic grid of N points, D_N "
        "also mirrors it, C2 and D1 reverse a signal of any length"
    )


def mirror_flags(group: Group, g: Tensor) -> Tensor:
    """``(B,)`` long: 1 where ``g`` mirrors a 1-D signal (and so reverses a ``Conv1d`` kernel), else 0.

    Example:
        >>> from lightning_equi.groups import get_group
        >>> mirror_flags(get_group("D4"), torch.tensor([[0, 1], [1, 3]])).tolist()
        [0, 1]
        >>> mirror_flags(get_group("C2"), torch.tensor([0, 1])).tolist()
        [0, 1]
    """
    if isinstance(group, DihedralGroup):
        return g[:, 0].long()
    if isinstance(group, CyclicGroup) and group.n == 2:
        return g.reshape(-1).long() % 2
    return torch.zeros(g.shape[0], dtype=torch.long, device=g.device)


def mirror_representation(group: Group | str) -> Representation:
    """Two channels that the mirrors of a 1-D signal swap and the shifts leave alone (``"mirror"`` fields).

    For D1 and C2 this is their regular representation; for D_N it is the regular representation of
    D_N / C_N, so a convolution carrying such fields commutes with both the shifts of the grid and its
    mirrors, and a pointwise nonlinearity after it stays equivariant.

    Raises:
        ValueError: for a group without mirrors on a signal (C_N with N >= 3, a torus).

    Example:
        >>> from lightning_equi.groups import get_group
        >>> rho = mirror_representation("D8")
        >>> rho.permutation(torch.tensor([[0, 3], [1, 3]])).tolist()
        [[0, 1], [1, 0]]
    """
    group = get_group(group)
    if not (isinstance(group, DihedralGroup) or (isinstance(group, CyclicGroup) and group.n == 2)):
        raise ValueError(
            f"{group.name} has no mirror on a 1-D signal, so 'mirror' fields are not defined: use 'trivial' "
            "fields (the shifts act on the grid only), or a dihedral group D<N> for shifts and mirrors"
        )

    def perm(g: Tensor) -> Tensor:
        flip = mirror_flags(group, g)[:, None]
        ids = torch.arange(2, device=g.device)[None]
        return (ids + flip) % 2

    def matrices(g: Tensor) -> Tensor:
        return torch.eye(2, dtype=torch.float64, device=g.device)[perm(g)]

    return Representation(group, 2, "mirror", matrices, perm)


class SignalAction(Action):
    """C_N, D_N or a 1-D torus shifting (and mirroring) 1-D signals ``(B, C, L)``; C2 and D1 reversing them.

    Args:
        group: ``C<N>``, ``D<N>``, ``T<N>`` (a cyclic grid of ``N`` samples) or ``C2``/``D1`` (reversal);
            a :class:`~lightning_equi.groups.Group` or its name.
        fields: the representation on the channel axis; ``None`` means every channel is a scalar (then
            ``(B, L)`` inputs are accepted too). :func:`mirror_representation` gives ``"mirror"`` pairs.

    Exact: one ``gather`` of the samples (and of the channels for permutation fields), bit-identical to
    ``torch.roll`` and ``torch.flip``.

    Example:
        >>> act = SignalAction("D5")
        >>> x = torch.arange(5.0)[None, None]  # one signal 0, 1, 2, 3, 4
        >>> act(torch.tensor([[0, 2]]), x)  # a shift by 2: torch.roll(x, 2, -1)
        tensor([[[3., 4., 0., 1., 2.]]])
        >>> act(torch.tensor([[1, 0]]), x)  # the mirror about sample 0: i -> -i
        tensor([[[0., 4., 3., 2., 1.]]])
        >>> SignalAction("D1")(torch.tensor([[1, 0]]), x)  # D1 reverses a signal of any length
        tensor([[[4., 3., 2., 1., 0.]]])
    """

    def __init__(self, group: Group | str, fields: Representation | None = None) -> None:
        self.group = group = get_group(group)
        self.length = cyclic_length(group)
        self.exact = True
        if fields is not None and fields.group != group:
            raise ValueError(
                f"fields are a representation of {fields.group.name}, but the group is {group.name}"
            )
        self.fields = None if fields is None else FiberAction(fields)

    def batch_size(self, x: Tensor) -> int:
        n = super().batch_size(x)
        channels = self.fields is not None
        if x.dim() != 3 and not (x.dim() == 2 and not channels):
            want = "(B, C, L)" if channels else "(B, C, L) or (B, L)"
            raise ValueError(
                f"a signal for SignalAction({self.group.name}) has shape {want}, got {tuple(x.shape)}"
            )
        if self.length is not None and x.shape[-1] != self.length:
            raise ValueError(
                f"{self.group.name} acts on a cyclic grid of {self.length} samples, but the signal has "
                f"{x.shape[-1]}: use the group of that length (e.g. D{x.shape[-1]}), or C2/D1 for the mirror "
                "alone"
            )
        if channels and x.shape[1] != self.fields.dim:
            raise ValueError(
                f"the fields {self.fields.name} have dimension {self.fields.dim}, but the signal has "
                f"{x.shape[1]} channels"
            )
        return n

    def source(self, g: Tensor, length: int) -> Tensor:
        """``(B, L)`` indices: sample ``i`` of the moved signal is sample ``src[b, i]`` of the signal."""
        i = torch.arange(length, device=g.device)[None]
        flip = mirror_flags(self.group, g)[:, None]
        if self.length is None:  # reversal
            return torch.where(flip.bool(), length - 1 - i, i)
        shift = g.reshape(g.shape[0], -1)[:, -1:].long()  # C_N: k; D_N: (f, k); T<N>: (k,)
        return ((1 - 2 * flip) * (i - shift)) % length

    def apply(self, g: Tensor, x: Tensor) -> Tensor:
        g = g.to(x.device)
        src = self.source(g, x.shape[-1])
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        out = torch.gather(x, -1, src.reshape(shape).expand(x.shape))
        return out if self.fields is None else self.fields(g, out, axis=1)

    def __repr__(self) -> str:
        return f"SignalAction({self.group.name}, exact=True)"
