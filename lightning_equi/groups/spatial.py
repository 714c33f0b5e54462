"""SO(3) and O(3): rotations (and improper rotations) of space, encoded as 3x3 matrices.

An element is its orthogonal matrix, float64, shape ``(B, 3, 3)``. Haar measure on SO(3):
the rotation of a normalised standard Gaussian quaternion; O(3) adds a fair sign ``+-I``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_equi.groups.base import Group

__all__ = ["SO3", "O3", "quaternion_to_matrix"]


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrices ``(B, 3, 3)`` of unit quaternions ``(B, 4)`` in ``(w, x, y, z)`` order."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))


class SO3(Group):
    """The rotation group SO(3).

    Example:
        >>> G = SO3()
        >>> R = G.sample(4, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(torch.linalg.det(R), torch.ones(4, dtype=torch.float64))
        True
    """

    name = "SO3"
    element_shape = (3, 3)
    element_dtype = torch.float64

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        gen_device = generator.device if generator is not None else "cpu"
        q = torch.randn(n, 4, generator=generator, device=gen_device, dtype=torch.float64)
        return quaternion_to_matrix(q).to(device)

    def identity(self, n: int = 1, device=None) -> Tensor:
        return torch.eye(3, dtype=torch.float64, device=device).expand(n, 3, 3).clone()

    def compose(self, a: Tensor, b: Tensor) -> Tensor:
        return a @ b

    def inverse(self, a: Tensor) -> Tensor:
        return a.transpose(-1, -2)

    def testing_elements(self, device=None) -> Tensor:
        """The identity and the quarter turns about the three axes, which map a cubic voxel grid onto
        itself (escnn's ``R3Conv`` grids)."""
        turns = [torch.eye(3, dtype=torch.float64, device=device)]
        for i, j in ((1, 2), (2, 0), (0, 1)):  # about x, y, z
            r = torch.eye(3, dtype=torch.float64, device=device)
            r[i, i] = r[j, j] = 0.0
            r[i, j], r[j, i] = -1.0, 1.0
            turns.append(r)
        return torch.stack(turns)


class O3(SO3):
    """The orthogonal group O(3) = SO(3) x {+I, -I}.

    Example:
        >>> R = O3().sample(1000, generator=torch.Generator().manual_seed(0))
        >>> sorted(torch.linalg.det(R).round().unique().tolist())  # proper and improper rotations
        [-1.0, 1.0]
    """

    name = "O3"

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        R = super().sample(n, generator, device=None if generator is None else generator.device)
        gen_device = generator.device if generator is not None else "cpu"
        sign = 1.0 - 2.0 * torch.randint(2, (n, 1, 1), generator=generator, device=gen_device)
        return (R * sign.double()).to(device)

    def generators(self, device=None) -> Tensor:
        """The inversion ``-I``; with the rotations (the Lie algebra) it generates O(3)."""
        return -torch.eye(3, dtype=torch.float64, device=device)[None]

    def testing_elements(self, device=None) -> Tensor:
        """The quarter turns of :class:`SO3`, then the inversion ``-I``."""
        return torch.cat([super().testing_elements(device), self.generators(device)])
