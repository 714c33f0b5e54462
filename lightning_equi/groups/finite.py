"""Cyclic groups C_N and dihedral groups D_N, the rotations (and mirrors) of a regular N-gon.

Encodings: a C_N element is an integer ``k`` (rotation by ``2 pi k / N``), shape ``(B,)``;
a D_N element is ``(f, k)`` = ``r^k s^f`` (first the mirror ``s`` if ``f == 1``, then the
rotation ``r^k``), shape ``(B, 2)``. The element order and law match escnn's ``cyclic_group``
and ``dihedral_group`` (``D.element((f, k))``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_equi.groups.base import FULL_PROBE_ORDER, FiniteGroup, _unique_elements

__all__ = ["CyclicGroup", "DihedralGroup"]


class CyclicGroup(FiniteGroup):
    """C_N: rotations by multiples of ``2 pi / N``.

    Example:
        >>> G = CyclicGroup(4)
        >>> G.compose(torch.tensor([3]), torch.tensor([2]))
        tensor([1])
    """

    element_shape = ()

    def __init__(self, n: int) -> None:
        if int(n) < 1:
            raise ValueError(f"CyclicGroup needs N >= 1, got {n}")
        self.n = int(n)
        self.name = f"C{self.n}"

    @property
    def order(self) -> int:
        return self.n

    def elements(self, device=None) -> Tensor:
        return torch.arange(self.n, device=device)

    def index(self, g: Tensor) -> Tensor:
        return g.long() % self.n

    def identity(self, n: int = 1, device=None) -> Tensor:
        return torch.zeros(n, dtype=torch.long, device=device)

    def compose(self, a: Tensor, b: Tensor) -> Tensor:
        return (a + b) % self.n

    def inverse(self, a: Tensor) -> Tensor:
        return (-a) % self.n

    def generators(self, device=None) -> Tensor:
        return torch.tensor([1 % self.n], device=device)

    def testing_elements(self, device=None) -> Tensor:
        """Every element up to order 16; else the quarter turns (when ``4 | N``) and the generator."""
        if self.order <= FULL_PROBE_ORDER:
            return self.elements(device=device)
        steps = (
            torch.arange(4, device=device) * (self.n // 4) if self.n % 4 == 0 else self.identity(1, device)
        )
        return _unique_elements(self, torch.cat([steps, self.generators(device=device)]))

    def angle(self, g: Tensor) -> Tensor:
        """Rotation angle in radians (float64)."""
        return g.double() * (2 * torch.pi / self.n)


class DihedralGroup(FiniteGroup):
    """D_N (order 2N): rotations by multiples of ``2 pi / N`` and N mirrors.

    Example:
        >>> G = DihedralGroup(4)
        >>> r, s = torch.tensor([[0, 1]]), torch.tensor([[1, 0]])
        >>> G.compose(s, r)  # s r = r^-1 s
        tensor([[1, 3]])
    """

    element_shape = (2,)

    def __init__(self, n: int) -> None:
        if int(n) < 1:
            raise ValueError(f"DihedralGroup needs N >= 1, got {n}")
        self.n = int(n)
        self.name = f"D{self.n}"

    @property
    def order(self) -> int:
        return 2 * self.n

    def elements(self, device=None) -> Tensor:
        f = torch.arange(2, device=device).repeat_interleave(self.n)
        k = torch.arange(self.n, device=device).repeat(2)
        return torch.stack([f, k], dim=1)

    def index(self, g: Tensor) -> Tensor:
        return g[:, 0].long() * self.n + g[:, 1].long() % self.n

    def identity(self, n: int = 1, device=None) -> Tensor:
        return torch.zeros(n, 2, dtype=torch.long, device=device)

    def compose(self, a: Tensor, b: Tensor) -> Tensor:
        # r^k1 s^f1 r^k2 s^f2 = r^(k1 + (-1)^f1 k2) s^(f1 + f2)
        f = (a[:, 0] + b[:, 0]) % 2
        k = (a[:, 1] + (1 - 2 * a[:, 0]) * b[:, 1]) % self.n
        return torch.stack([f, k], dim=1)

    def inverse(self, a: Tensor) -> Tensor:
        # mirrors are involutions; rotations invert their angle
        k = torch.where(a[:, 0] == 1, a[:, 1], -a[:, 1]) % self.n
        return torch.stack([a[:, 0], k], dim=1)

    def generators(self, device=None) -> Tensor:
        return torch.tensor([[0, 1 % self.n], [1, 0]], device=device)

    def testing_elements(self, device=None) -> Tensor:
        """Every element up to order 16; else the quarter turns with and without the mirror (when
        ``4 | N``) and the generators."""
        if self.order <= FULL_PROBE_ORDER:
            return self.elements(device=device)
        steps = (
            torch.arange(4, device=device) * (self.n // 4)
            if self.n % 4 == 0
            else torch.zeros(1, device=device)
        )
        steps = steps.long()
        flips = torch.arange(2, device=device).repeat_interleave(steps.shape[0])
        grid = torch.stack([flips, steps.repeat(2)], dim=1)
        return _unique_elements(self, torch.cat([grid, self.generators(device=device)]))

    def angle(self, g: Tensor) -> Tensor:
        return g[:, 1].double() * (2 * torch.pi / self.n)

    def flip(self, g: Tensor) -> Tensor:
        return g[:, 0]
