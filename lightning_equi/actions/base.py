"""The `Action` protocol: a batch of group elements acting on a batch of data, one element per sample.

An action is called as ``action(g, x)``: ``g`` holds ``B`` elements of ``action.group`` (see
:mod:`lightning_equi.groups` for their encodings) and ``x`` is a batch of ``B`` samples; sample ``b``
is transformed by ``g[b]``. Every action is a homomorphism: ``act(g, act(h, x)) == act(g * h, x)``,
bit for bit when ``action.exact`` and to interpolation error otherwise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from lightning_equi.groups import FiniteGroup, Group, Representation

__all__ = ["Action", "FiberAction", "interpolates"]

# a finite representation is tabulated over all elements when the table is at most this many entries
_MAX_TABLE = 1 << 22


class Action(ABC):
    """How a batch of elements of :attr:`group` transforms a batch of data.

    Subclasses set ``group`` and ``exact`` and implement :meth:`apply`; they override
    :meth:`batch_size` when the data is not a single tensor.

    Example:
        >>> from lightning_equi.actions import SetAction
        >>> act = SetAction("S3")
        >>> act(torch.tensor([[1, 2, 0]]), torch.tensor([[10.0, 11.0, 12.0]]))
        tensor([[12., 10., 11.]])
    """

    group: Group
    #: True when the action is an exact permutation of the data's entries (no interpolation)
    exact: bool = True

    @property
    def resamples(self) -> bool:
        """Whether some elements resample the data on a grid (interpolation), as opposed to acting
        exactly or only rounding coordinates; actions on grids that interpolate say so."""
        return False

    def __call__(self, g: Tensor, x: Any) -> Any:
        """Transform sample ``b`` of ``x`` by ``g[b]``, for every ``b`` at once."""
        g = self.check_elements(g, self.batch_size(x))
        return self.apply(g, x)

    @abstractmethod
    def apply(self, g: Tensor, x: Any) -> Any:
        """The transformation itself, without input validation."""

    def batch_size(self, x: Any) -> int:
        """The number of samples in ``x`` (validates the type of ``x``)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a tensor for {type(self).__name__}, got {type(x).__name__}")
        if x.dim() == 0:
            raise ValueError(f"x must have a batch dimension for {type(self).__name__}, got a 0-d tensor")
        return x.shape[0]

    def exact_mask(self, g: Tensor) -> Tensor:
        """Per element of ``g``, whether it acts exactly on the data (``(B,)`` bool, on ``g``'s device).

        ``action.exact`` says it for every element at once; an action that interpolates in general
        may still act exactly by some elements (a quarter turn of a pixel grid under C8 or SO(2)),
        and says so here: the functional equivariance error is then split into what the model does
        on exact elements and what interpolating the data adds.

        Example:
            >>> from lightning_equi.actions import ImageAction
            >>> ImageAction("C8").exact_mask(torch.arange(8))
            tensor([ True, False,  True, False,  True, False,  True, False])
        """
        self.group.check(g, "g")
        return torch.full((g.shape[0],), bool(self.exact), dtype=torch.bool, device=g.device)

    def check_elements(self, g: Tensor, batch_size: int) -> Tensor:
        """Raise a clear error unless ``g`` is a batch of ``batch_size`` elements of :attr:`group`."""
        group = self.group
        group.check(g, "g")
        wants_float = group.element_dtype.is_floating_point
        if g.is_floating_point() != wants_float:
            raise TypeError(
                f"g has dtype {g.dtype}, but {group.name} elements are {group.element_dtype}: "
                f"draw them with {group!r}.sample(n)"
            )
        if g.shape[0] != batch_size:
            raise ValueError(
                f"g holds {g.shape[0]} elements but x has batch size {batch_size}: draw one element per "
                f"sample, e.g. {group!r}.sample({batch_size})"
            )
        return g

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.group.name}, exact={self.exact})"


def interpolates(action: Action | None) -> bool:
    """Whether ``action`` resamples data on a grid for some elements (an image action that is not
    exact), as opposed to acting exactly or only rounding coordinates: only then is a large
    equivariance error on its inexact elements natural.

    Example:
        >>> from lightning_equi.actions import ImageAction, PointCloudAction
        >>> interpolates(ImageAction("C8")), interpolates(ImageAction("C4"))
        (True, False)
        >>> interpolates(PointCloudAction("SO2"))  # rotated coordinates are only rounded
        False
        >>> from lightning_equi.actions import VolumeAction
        >>> interpolates(VolumeAction("SO3"))  # the cube's rotations exact, the others resampled
        True
    """
    return action is not None and action.resamples


def _trivial(rep: Representation) -> bool:
    return all(s.name == "trivial" for s in rep.summands)


class FiberAction:
    """A representation acting on one axis of a batch (channels of an image, features of a point).

    Finite groups are tabulated once over all their elements, so the action is one lookup plus a
    gather (permutation representations) or a batched matrix product.

    Example:
        >>> from lightning_equi.groups import CyclicGroup, regular
        >>> fiber = FiberAction(regular(CyclicGroup(4)))
        >>> fiber(torch.tensor([1]), torch.arange(4.0)[None], axis=1)
        tensor([[3., 0., 1., 2.]])
    """

    def __init__(self, rep: Representation, argument: str = "fields") -> None:
        if not isinstance(rep, Representation):
            raise TypeError(f"{argument} must be a Representation, got {type(rep).__name__}")
        self.group, self.dim, self.name = rep.group, rep.dim, rep.name
        self.is_trivial = _trivial(rep)
        self.is_permutation = rep.is_permutation
        self._rep: Representation | None = None
        self._table: Tensor | None = None
        self._cache: dict[torch.device, Tensor] = {}
        group = rep.group
        entries = self.dim if self.is_permutation else self.dim * self.dim
        if self.is_trivial:
            pass
        elif isinstance(group, FiniteGroup) and group.order <= 40320 and group.order * entries <= _MAX_TABLE:
            els = group.elements()
            self._table = rep.permutation(els) if self.is_permutation else rep(els)
        else:
            self._rep = rep

    def _lookup(self, g: Tensor) -> Tensor:
        if self._rep is not None:
            return self._rep.permutation(g) if self.is_permutation else self._rep(g)
        table = self._cache.get(g.device)
        if table is None:
            table = self._cache[g.device] = self._table.to(g.device)
        return table[self.group.index(g)]

    def matrices(self, g: Tensor) -> Tensor:
        """``rho(g)``, shape ``(B, dim, dim)`` float64."""
        if self.is_trivial:
            return torch.eye(self.dim, dtype=torch.float64, device=g.device).expand(g.shape[0], -1, -1)
        m = self._lookup(g)
        if self.is_permutation:
            return torch.eye(self.dim, dtype=torch.float64, device=g.device)[m]
        return m

    def __call__(self, g: Tensor, x: Tensor, axis: int) -> Tensor:
        """``rho(g[b])`` applied to ``x[b]`` along ``axis`` (whose size must be ``dim``)."""
        if self.is_trivial:
            return x
        axis = axis % x.dim()
        if self.is_permutation:
            src = self._lookup(g)  # (B, dim): out[j] = x[src[j]]
            shape = [1] * x.dim()
            shape[0], shape[axis] = x.shape[0], self.dim
            return torch.gather(x, axis, src.reshape(shape).expand(x.shape))
        if not (x.is_floating_point() or x.is_complex()):
            raise TypeError(
                f"representation {self.name} mixes components, which needs floating-point data; got {x.dtype}"
            )
        m = self._lookup(g).to(x.dtype)
        moved = x.movedim(axis, 1)
        out = torch.bmm(m, moved.reshape(x.shape[0], self.dim, -1)).reshape(moved.shape)
        return out.movedim(1, axis)

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _cache={})  # device copies are rebuilt on first use
