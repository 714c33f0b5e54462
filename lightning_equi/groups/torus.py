"""Discrete translations on a torus, Z_N1 x ... x Z_Nd (escnn has no such group).

An element is the shift vector ``(t_1, ..., t_d)``, long, shape ``(B, d)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_equi.groups.base import FiniteGroup, _randint

__all__ = ["TorusTranslations"]


class TorusTranslations(FiniteGroup):
    """Cyclic translations of a ``N1 x ... x Nd`` grid; name ``"T14x14"`` for 14 x 14.

    Example:
        >>> G = TorusTranslations((3, 4))
        >>> G.order, G.compose(torch.tensor([[2, 3]]), torch.tensor([[2, 3]]))
        (12, tensor([[1, 2]]))
    """

    def __init__(self, shape: tuple[int, ...] | list[int] | int) -> None:
        shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"TorusTranslations needs positive sizes, got {shape}")
        self.shape = shape
        self.element_shape = (len(shape),)
        self.name = "T" + "x".join(map(str, shape))

    @property
    def order(self) -> int:
        return math.prod(self.shape)

    def _sizes(self, device) -> Tensor:
        return torch.tensor(self.shape, device=device)

    def elements(self, device=None) -> Tensor:
        grids = torch.meshgrid(*[torch.arange(s, device=device) for s in self.shape], indexing="ij")
        return torch.stack([g.reshape(-1) for g in grids], dim=1)

    def index(self, g: Tensor) -> Tensor:
        idx = torch.zeros(g.shape[0], dtype=torch.long, device=g.device)
        for d, s in enumerate(self.shape):
            idx = idx * s + g[:, d].long() % s
        return idx

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        cols = [_randint(s, (n,), generator, device) for s in self.shape]
        return torch.stack(cols, dim=1)

    def identity(self, n: int = 1, device=None) -> Tensor:
        return torch.zeros(n, len(self.shape), dtype=torch.long, device=device)

    def compose(self, a: Tensor, b: Tensor) -> Tensor:
        return (a + b) % self._sizes(a.device)

    def inverse(self, a: Tensor) -> Tensor:
        return (-a) % self._sizes(a.device)

    def generators(self, device=None) -> Tensor:
        return torch.eye(len(self.shape), dtype=torch.long, device=device)
