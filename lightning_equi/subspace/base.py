"""How a group acts on one parameter tensor, and the interface of every projector onto E.

A :class:`TensorAction` is the lifted action ``rho_bar(g) W = rho_out(g) W rho_in(g)^-1`` written
as a tensor product: the parameter's axes are split into consecutive *factors*, each carrying a
representation (``rho_out`` on the output axis, ``rho_in`` on the input axis -- for orthogonal
representations ``W rho_in(g)^-1`` is ``rho_in(g)`` acting on the input index -- and, for a
convolution, a grid representation on the kernel axes). E is the set of fixed points of that action
and every :class:`Projector` is the orthogonal projection onto it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_equi.groups import FiniteGroup, Group, Representation

__all__ = ["TensorAction", "Projector", "group_average", "dense_layer_factors"]

#: a tensor within ``ROUNDING * eps * ||w||`` of E counts as in E (``eps`` of the computation dtype)
#: (:meth:`Projector.project_unless_in_E_`): the FFT, basis and closed-form projectors move a tensor
#: of E by at most ~5 eps ||w|| in float32 (measured on layers of up to 1.2M entries)
ROUNDING = 16


class TensorAction:
    """``G`` acting on a tensor of ``shape`` by ``rho_1 (x) rho_2 (x) ...`` over consecutive axes.

    Args:
        shape: the parameter's shape.
        factors: ``(representation, number_of_axes)`` pairs covering ``shape`` left to right; the
            representation's dimension must equal the product of those axes' sizes.

    Example:
        >>> from lightning_equi.groups import CyclicGroup, regular, trivial, grid_representation
        >>> G = CyclicGroup(4)
        >>> conv = TensorAction((8, 1, 3, 3), [(2 * regular(G), 1), (trivial(G), 1),
        ...                                     (grid_representation(G, (3, 3)), 2)])
        >>> conv.act(G.generators(), torch.randn(8, 1, 3, 3)).shape
        torch.Size([1, 8, 1, 3, 3])
    """

    def __init__(self, shape: Sequence[int], factors: Sequence[tuple[Representation, int]]) -> None:
        self.shape = torch.Size(shape)
        self.factors = [(rep, int(n)) for rep, n in factors]
        if not self.factors:
            raise ValueError("a TensorAction needs at least one factor")
        self.group: Group = self.factors[0][0].group
        axis = 0
        for rep, n in self.factors:
            if rep.group != self.group:
                raise ValueError(f"factors act by different groups: {self.group.name} and {rep.group.name}")
            size = math.prod(self.shape[axis : axis + n])
            if size != rep.dim:
                raise ValueError(
                    f"axes {tuple(range(axis, axis + n))} of a parameter of shape {tuple(self.shape)} have "
                    f"size {size}, but representation {rep.name} of {self.group.name} has dimension {rep.dim}"
                )
            axis += n
        if axis != len(self.shape):
            raise ValueError(f"factors cover {axis} axes of a parameter with {len(self.shape)} axes")

    @property
    def factor_dims(self) -> list[int]:
        return [rep.dim for rep, _ in self.factors]

    @property
    def is_permutation(self) -> bool:
        return all(rep.is_permutation for rep, _ in self.factors)

    def act(self, g: Tensor, w: Tensor) -> Tensor:
        """``rho_bar(g) w`` for each element of the batch ``g``: shape ``(B, *shape)``."""
        if self.is_permutation:  # gathering is exact and needs no dense matrices
            return w.reshape(-1)[self.index_permutation(g).to(w.device)].reshape(g.shape[0], *self.shape)
        w = w.reshape(self.factor_dims)
        out = w.unsqueeze(0).expand(g.shape[0], *w.shape)
        for i, (rep, _) in enumerate(self.factors):
            m = rep(g, dtype=w.dtype).to(w.device)  # (B, d, d)
            out = torch.movedim(out, i + 1, -1)
            out = torch.einsum("b...j,bij->b...i", out, m)
            out = torch.movedim(out, -1, i + 1)
        return out.reshape(g.shape[0], *self.shape)

    def index_permutation(self, g: Tensor) -> Tensor:
        """Gather indices ``(B, numel)`` of a permutation action on the flattened tensor.

        ``act(g, w).flatten(1) == w.flatten()[src]``: the index map of a tensor product is the
        product of the factors' index maps, ``src[(i, j)] = (src_1[i], src_2[j])``.

        Example:
            >>> from lightning_equi.groups import CyclicGroup, regular
            >>> G = CyclicGroup(3)
            >>> TensorAction((3, 3), [(regular(G), 1), (regular(G), 1)]).index_permutation(G.generators())
            tensor([[8, 6, 7, 2, 0, 1, 5, 3, 4]])
        """
        if not self.is_permutation:
            names = [rep.name for rep, _ in self.factors if not rep.is_permutation]
            raise ValueError(
                f"index_permutation needs permutation representations on every factor; {names} are not"
            )
        src = torch.zeros(g.shape[0], 1, dtype=torch.long, device=g.device)
        for rep, _ in self.factors:
            s = rep.permutation(g).to(g.device)  # (B, d)
            src = (src[:, :, None] * rep.dim + s[:, None, :]).reshape(g.shape[0], -1)
        return src

    def generators(self, device=None) -> tuple[Tensor | None, list[Tensor]]:
        """The constraints that define E: ``(discrete generators or None, Lie-algebra generators)``.

        ``W`` is in E iff ``act(s, W) == W`` for every discrete generator ``s`` and
        ``sum_f  X_f acting on axis f  W == 0`` for every Lie-algebra generator ``X``; the second
        item holds one ``(k, d_f, d_f)`` tensor per factor (``k = 0`` for finite groups, zero-padded
        where a factor's representation has fewer generators).
        """
        try:
            gens = self.group.generators(device=device)
        except NotImplementedError:
            gens = None
        lies = [rep.lie_algebra(device) for rep, _ in self.factors]
        k = max(lie.shape[0] for lie in lies)
        padded = []
        for lie in lies:
            pad = torch.zeros(k - lie.shape[0], *lie.shape[1:], dtype=torch.float64, device=lie.device)
            padded.append(torch.cat([lie, pad]))
        return gens, padded


class Projector(ABC):
    """The orthogonal projection ``Pi_E`` onto the equivariant subspace of one parameter tensor.

    Subclasses precompute what they need once (orbit ids, bases, Fourier transforms) and apply in a
    few elementwise passes. ``project`` must be exact (to float precision), idempotent and
    self-adjoint for the Frobenius inner product, and accept any floating dtype and device.
    """

    #: short label of the method, e.g. ``"orbit-mean"``, ``"fourier"``, ``"basis"``
    kind: str = "projector"
    #: True when the range is exactly the fixed points of the group action (not an approximation
    #: such as escnn's band-limited basis)
    exact: bool = True
    #: True when the projection's output is bitwise constant on the orbits of the lifted action, so any
    #: elementwise optimizer update (Adam, RMSprop, ...) of a projected gradient keeps the tensor in E
    #: (an entrywise map sends equal entries to equal entries, and E is the orbit-constant tensors for
    #: a permutation action); False promises nothing (E reached only up to rounding, or not made of
    #: orbit-constant tensors), and callers must then re-project after the optimizer step
    orbit_constant: bool = False
    #: True when projecting a tensor that is already in E returns it bit for bit (orbit means taken
    #: relative to one entry of the orbit); False: such a tensor may come back moved by rounding (an
    #: FFT, a basis), and callers that must not move it test its distance first (``in_E_``)
    identity_on_E: bool = False

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = torch.Size(shape)

    @abstractmethod
    def project(self, w: Tensor) -> Tensor:
        """``Pi_E w`` (a new tensor, same shape, dtype and device as ``w``)."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """``dim E``."""

    def project_(self, w: Tensor) -> Tensor:
        """Project in place (``w`` may be a parameter's ``.data`` or ``.grad``)."""
        with torch.no_grad():
            w.copy_(self.project(w))
        return w

    def project_unless_in_E_(self, w: Tensor) -> bool:
        """Project ``w`` in place unless it is already in E to rounding; return whether it changed.

        A tensor counts as in E when ``||w - Pi_E w|| <= ROUNDING * eps * ||w||``, ``eps`` that of the
        dtype the projection computes in (float32 for half precision; an exact projection of a tensor
        in E rounds by a few ``eps ||w||``): it is then left bit for bit, so
        re-projecting weights that an update kept in E, or binding a model already in E, moves nothing.

        Example:
            >>> from lightning_equi.groups import CyclicGroup, regular
            >>> from lightning_equi.subspace import FourierProjector
            >>> proj = FourierProjector((8, 8), grid=(8,), method="fft")
            >>> w = proj.project(torch.randn(8, 8))
            >>> before = w.clone()
            >>> proj.project_unless_in_E_(w), torch.equal(w, before)
            (False, True)
        """
        with torch.no_grad():
            projected = self.project(w)
            if torch.equal(projected, w):
                return False
            if not self.identity_on_E and w.is_floating_point():
                # the rounding of the computation (half precision is projected in float32), not of the
                # storage: a 16-bit tensor off E by a few of its own ulps is still re-projected
                eps = torch.finfo(torch.promote_types(w.dtype, torch.float32)).eps
                tol = ROUNDING * eps * w.detach().double().norm()
                if (w.double() - projected.double()).norm() <= tol:
                    return False
            w.copy_(projected)
        return True

    def distance(self, w: Tensor) -> Tensor:
        """``||w - Pi_E w||`` (Frobenius)."""
        with torch.no_grad():
            return (w - self.project(w)).norm()

    def check_shape(self, w: Tensor, name: str = "parameter") -> None:
        if w.shape != self.shape:
            raise ValueError(
                f"{name} has shape {tuple(w.shape)}, but its projector was built for {tuple(self.shape)}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.shape)}, dim={self.dim})"


def group_average(action: TensorAction, w: Tensor) -> Tensor:
    """The slow, obviously-correct reference: ``1/|G| sum_g rho_bar(g) w`` in float64.

    Only for finite groups (the tests compare every fast projector against it).
    """
    group = action.group
    if not isinstance(group, FiniteGroup):
        raise ValueError(f"group_average needs a finite group, got {group.name}")
    els = group.elements(device=w.device)
    acc = torch.zeros(action.shape, dtype=torch.float64, device=w.device)
    for i in range(0, els.shape[0], 64):
        acc += action.act(els[i : i + 64], w.double()).sum(0)
    return (acc / els.shape[0]).to(w.dtype)


def dense_layer_factors(action: TensorAction, group_type: type) -> list[Representation] | None:
    """The representations of a dense layer's output (and input) axis when ``action`` is by a
    ``group_type`` group with one or two factors of one axis each; ``None`` for any other layout.

    The structured projectors (Fourier, closed-form S_n) recognise their layers with it.
    """
    if not isinstance(action.group, group_type) or len(action.factors) not in (1, 2):
        return None
    if len(action.shape) != len(action.factors):  # one axis per factor: a dense layer's layout
        return None
    return [rep for rep, _ in action.factors]
