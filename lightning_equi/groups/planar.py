"""SO(2) and O(2): rotations (and reflections) of the plane.

Encodings: an SO(2) element is its angle in ``[0, 2 pi)``, float64, shape ``(B,)``; an O(2)
element is ``(f, theta)`` = ``R(theta) S^f`` with ``S`` the mirror ``x -> -x``, shape
``(B, 2)`` (``f`` stored as 0.0/1.0). Haar measure: a uniform angle (and a fair coin for ``f``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_equi.groups.base import Group, _uniform

__all__ = ["SO2", "O2"]

_TWO_PI = 2 * torch.pi


def _wrap(theta: Tensor) -> Tensor:
    """Angles in ``[0, 2 pi)``; ``remainder`` rounds a tiny negative angle up to exactly ``2 pi``."""
    r = torch.remainder(theta, _TWO_PI)
    return torch.where(r >= _TWO_PI, torch.zeros_like(r), r)


def _angle_diff(a: Tensor, b: Tensor) -> Tensor:
    d = _wrap(a - b)
    return torch.minimum(d, _TWO_PI - d)


def _quarter_turns(device=None) -> Tensor:
    return torch.arange(4, dtype=torch.float64, device=device) * (math.pi / 2)


class SO2(Group):
    """The rotation group SO(2).

    Example:
        >>> G = SO2()
        >>> g = G.sample(5, generator=torch.Generator().manual_seed(0))
        >>> bool(G.equal(G.compose(g, G.inverse(g)), G.identity(5)).all())
        True
    """

    name = "SO2"
    element_shape = ()
    element_dtype = torch.float64

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        return _uniform(n, generator, device) * _TWO_PI

    def identity(self, n: int = 1, device=None) -> Tensor:
        return torch.zeros(n, dtype=torch.float64, device=device)

    def compose(self, a: Tensor, b: Tensor) -> Tensor:
        return _wrap(a + b)

    def inverse(self, a: Tensor) -> Tensor:
        return _wrap(-a)

    def equal(self, a: Tensor, b: Tensor, atol: float = 1e-9) -> Tensor:
        return _angle_diff(a, b) <= atol

    def angle(self, g: Tensor) -> Tensor:
        return g

    def testing_elements(self, device=None) -> Tensor:
        """The quarter turns, which map a square pixel grid onto itself."""
        return _quarter_turns(device)


class O2(Group):
    """The orthogonal group O(2) = rotations and reflections of the plane.

    Example:
        >>> G = O2()
        >>> mirror, quarter = torch.tensor([[1.0, 0.0], [0.0, torch.pi / 2]], dtype=torch.float64)
        >>> G.compose(mirror[None], quarter[None])  # S R(t) = R(-t) S
        tensor([[1.0000, 4.7124]], dtype=torch.float64)
    """

    name = "O2"
    element_shape = (2,)
    element_dtype = torch.float64

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        u = _uniform(2 * n, generator, device).reshape(n, 2)
        return torch.stack([(u[:, 0] < 0.5).double(), u[:, 1] * _TWO_PI], dim=1)

    def identity(self, n: int = 1, device=None) -> Tensor:
        return torch.zeros(n, 2, dtype=torch.float64, device=device)

    def compose(self, a: Tensor, b: Tensor) -> Tensor:
        f = torch.remainder(a[:, 0] + b[:, 0], 2)
        theta = _wrap(a[:, 1] + (1 - 2 * a[:, 0]) * b[:, 1])
        return torch.stack([f, theta], dim=1)

    def inverse(self, a: Tensor) -> Tensor:
        theta = _wrap(torch.where(a[:, 0] == 1, a[:, 1], -a[:, 1]))
        return torch.stack([a[:, 0], theta], dim=1)

    def generators(self, device=None) -> Tensor:
        """The mirror; together with the rotations (the Lie algebra) it generates O(2)."""
        return torch.tensor([[1.0, 0.0]], dtype=torch.float64, device=device)

    def equal(self, a: Tensor, b: Tensor, atol: float = 1e-9) -> Tensor:
        return (a[:, 0] == b[:, 0]) & (_angle_diff(a[:, 1], b[:, 1]) <= atol)

    def testing_elements(self, device=None) -> Tensor:
        """The quarter turns, then the same after the mirror: the 8 elements that map a square pixel
        grid onto itself."""
        quarter = _quarter_turns(device)
        flips = torch.tensor([0.0, 1.0], dtype=torch.float64, device=device).repeat_interleave(4)
        return torch.stack([flips, quarter.repeat(2)], dim=1)

    def angle(self, g: Tensor) -> Tensor:
        return g[:, 1]

    def flip(self, g: Tensor) -> Tensor:
        return g[:, 0].long()
