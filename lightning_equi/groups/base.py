"""The `Group` protocol: batched Haar sampling and element algebra on tensors.

A batch of group elements is a plain tensor whose first dimension is the batch; each group
fixes the encoding of one element (an integer, an angle, a matrix, a permutation, ...).
Elements compose as functions: ``compose(a, b)`` is ``a * b``, i.e. *b first, then a*.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = ["Group", "FiniteGroup", "make_generator"]


def make_generator(seed: int | None = None, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded ``torch.Generator``; save it with ``gen.get_state()`` and restore with ``set_state``.

    Example:
        >>> g1, g2 = make_generator(0), make_generator(0)
        >>> torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))
        True
    """
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()  # a fresh random seed for this generator only; torch.seed() would reseed the global RNG
    else:
        gen.manual_seed(int(seed))
    return gen


def _uniform(n: int, generator: torch.Generator | None, device, dtype=torch.float64) -> Tensor:
    """U[0, 1) drawn on the generator's device (so a CPU generator serves any device), then moved."""
    gen_device = generator.device if generator is not None else "cpu"
    return torch.rand(n, generator=generator, device=gen_device, dtype=dtype).to(device)


def _randint(high: int, size: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
    gen_device = generator.device if generator is not None else "cpu"
    return torch.randint(high, size, generator=generator, device=gen_device).to(device)


#: finite groups up to this order are probed with every element (:meth:`Group.testing_elements`)
FULL_PROBE_ORDER = 16


def _unique_elements(group: Group, g: Tensor) -> Tensor:
    """``g`` without repeated elements (first occurrence kept, order preserved)."""
    keep: list[int] = []
    for i in range(g.shape[0]):
        if not any(bool(group.equal(g[i : i + 1], g[j : j + 1])[0]) for j in keep):
            keep.append(i)
    return g[keep]


class Group(ABC):
    """A compact group: Haar sampling, composition, inverse, identity, on batched tensors.

    Subclasses set ``name`` (the string accepted by :func:`lightning_equi.groups.get_group`),
    ``element_shape`` and ``element_dtype`` (the encoding of one element).
    """

    name: str
    element_shape: tuple[int, ...] = ()
    element_dtype: torch.dtype = torch.long

    @property
    def is_finite(self) -> bool:
        return self.order is not None

    @property
    def order(self) -> int | None:
        """Number of elements, or ``None`` for a continuous group."""
        return None

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """``n`` independent elements drawn from the normalised Haar measure."""

    @abstractmethod
    def identity(self, n: int = 1, device=None) -> Tensor:
        """``n`` copies of the identity."""

    @abstractmethod
    def compose(self, a: Tensor, b: Tensor) -> Tensor:
        """The product ``a * b`` (apply ``b`` first), elementwise over the batch."""

    @abstractmethod
    def inverse(self, a: Tensor) -> Tensor:
        """The inverse of each element."""

    def generators(self, device=None) -> Tensor:
        """A set of elements generating the group (finite part only for continuous groups)."""
        raise NotImplementedError(f"{self.name} has no finite generating set")

    def testing_elements(self, device=None) -> Tensor:
        """A fixed, deterministic batch of elements that every equivariance test should include.

        The group's own choice (escnn's groups carry ``testing_elements()`` in the same spirit):
        every element of a finite group of order at most :data:`FULL_PROBE_ORDER`; else the
        elements that map a square (or cubic) grid onto itself -- quarter turns, and mirrors where
        the group has them -- on which a model of grid data must be equivariant to float rounding
        even when other elements interpolate; else the identity and the generators. Callers add
        Haar draws for the generic elements (the :class:`~lightning_equi.callbacks.EquivarianceMonitor`
        does, and :func:`lightning_equi.testing.assert_equivariant`).

        Example:
            >>> from lightning_equi.groups import get_group
            >>> get_group("C4").testing_elements()
            tensor([0, 1, 2, 3])
            >>> get_group("SO2").testing_elements()  # the quarter turns
            tensor([0.0000, 1.5708, 3.1416, 4.7124], dtype=torch.float64)
        """
        identity = self.identity(1, device=device)
        try:
            generators = self.generators(device=device).to(identity.dtype)
        except NotImplementedError:
            return identity
        return _unique_elements(self, torch.cat([identity, generators]))

    def equal(self, a: Tensor, b: Tensor, atol: float = 1e-9) -> Tensor:
        """Elementwise equality of two batches of elements (``(B,)`` bool)."""
        if not a.is_floating_point():
            return (a == b).reshape(a.shape[0], -1).all(dim=1)
        return ((a - b).abs() <= atol).reshape(a.shape[0], -1).all(dim=1)

    def check(self, g: Tensor, argument: str = "g") -> Tensor:
        """Raise a clear error when ``g`` is not a batch of elements of this group (shape only).

        Example:
            >>> from lightning_equi.groups import DihedralGroup
            >>> DihedralGroup(4).check(torch.tensor([1, 0]))  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: g has shape (2,), but a batch of D4 elements has shape (B, 2); add a batch ...
        """
        if not isinstance(g, Tensor):
            raise TypeError(f"{argument} must be a tensor of {self.name} elements, got {type(g).__name__}")
        if g.dim() != 1 + len(self.element_shape) or tuple(g.shape[1:]) != self.element_shape:
            expected = ", ".join(["B", *map(str, self.element_shape)])
            raise ValueError(
                f"{argument} has shape {tuple(g.shape)}, but a batch of {self.name} elements has shape "
                f"({expected}{',' if not self.element_shape else ''}); add a batch dimension with g[None]"
            )
        return g

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Group) and type(other) is type(self) and other.name == self.name

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.name))


class FiniteGroup(Group):
    """A finite group: adds the element list and the index of an element in it."""

    @property
    @abstractmethod
    def order(self) -> int: ...

    @abstractmethod
    def elements(self, device=None) -> Tensor:
        """All elements, as one batch, in a fixed order (``index`` inverts it)."""

    @abstractmethod
    def index(self, g: Tensor) -> Tensor:
        """Position of each element in :meth:`elements` (``(B,)`` long)."""

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        # Haar measure on a finite group = uniform over its elements.
        idx = _randint(self.order, (n,), generator, device)
        return self.elements(device=idx.device)[idx]

    def testing_elements(self, device=None) -> Tensor:
        if self.order <= FULL_PROBE_ORDER:
            return self.elements(device=device)
        return super().testing_elements(device=device)

    def cayley_table(self, device=None) -> Tensor:
        """``T[i, j] = index(elements[i] * elements[j])``."""
        els = self.elements(device)
        n = els.shape[0]
        a = els.repeat_interleave(n, dim=0)
        b = els.repeat(n, *([1] * (els.dim() - 1)))
        return self.index(self.compose(a, b)).reshape(n, n)
