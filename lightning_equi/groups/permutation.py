"""The symmetric group S_n, permutations of n set elements or graph nodes (escnn has none).

An element is a permutation array ``p`` (long, shape ``(B, n)``) sending index ``i`` to
``p[i]``: it acts on a vector by ``(g x)[p[i]] = x[i]``, i.e. ``(g x)[j] = x[p^-1[j]]``.
Haar measure: uniform over the n! permutations (argsort of i.i.d. uniforms).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from lightning_equi.groups.base import FiniteGroup, _uniform

__all__ = ["SymmetricGroup"]

_MAX_LISTED = 8  # 8! = 40320 elements; beyond that an element list is never what you want


class SymmetricGroup(FiniteGroup):
    """S_n; name ``"S10"`` for n = 10.

    Example:
        >>> G = SymmetricGroup(3)
        >>> G.compose(torch.tensor([[1, 2, 0]]), torch.tensor([[1, 0, 2]]))
        tensor([[2, 1, 0]])
    """

    def __init__(self, n: int) -> None:
        if int(n) < 1:
            raise ValueError(f"SymmetricGroup needs n >= 1, got {n}")
        self.n = int(n)
        self.element_shape = (self.n,)
        self.name = f"S{self.n}"

    @property
    def order(self) -> int:
        return math.factorial(self.n)

    def elements(self, device=None) -> Tensor:
        if self.n > _MAX_LISTED:
            raise ValueError(
                f"{self.name} has {self.order} elements; listing them is refused for n > {_MAX_LISTED}. "
                "Use sample() or the closed-form projectors instead."
            )
        return torch.tensor(list(itertools.permutations(range(self.n))), dtype=torch.long, device=device)

    def index(self, g: Tensor) -> Tensor:
        # Lehmer code: rank of the permutation in lexicographic order (the order of elements()).
        n, idx = self.n, torch.zeros(g.shape[0], dtype=torch.long, device=g.device)
        for i in range(n):
            smaller_later = (g[:, i + 1 :] < g[:, i : i + 1]).sum(dim=1)
            idx = idx + smaller_later * math.factorial(n - 1 - i)
        return idx

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        u = _uniform(n * self.n, generator, device).reshape(n, self.n)
        return u.argsort(dim=1)

    def identity(self, n: int = 1, device=None) -> Tensor:
        return torch.arange(self.n, device=device).expand(n, self.n).clone()

    def compose(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.gather(a, 1, b)  # (a b)[i] = a[b[i]]

    def inverse(self, a: Tensor) -> Tensor:
        return a.argsort(dim=1)

    def generators(self, device=None) -> Tensor:
        swap = torch.arange(self.n)
        if self.n > 1:
            swap[0], swap[1] = 1, 0
        cycle = torch.roll(torch.arange(self.n), 1)
        return torch.stack([swap, cycle]).to(device)
