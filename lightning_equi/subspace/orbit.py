"""Orbit-mean projection: ``Pi_E`` for a finite group acting on a tensor's entries by permutations.

When every factor of a :class:`~lightning_equi.subspace.base.TensorAction` is a permutation
representation (regular and trivial fields, quarter turns and flips of a kernel grid, torus shifts,
permutations of set elements), the group permutes the entries of the weight tensor. E is then the set
of tensors constant on each orbit of entries, and ``Pi_E`` (the Haar average) is the mean over each
orbit. The orbits are found once, from the generators alone; projecting is one scatter-add and one
gather, never a dense matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_equi.groups import FiniteGroup
from lightning_equi.subspace.base import Projector, TensorAction

__all__ = ["OrbitMeanProjector", "orbit_ids"]


def _check_permutation_action(action: TensorAction) -> FiniteGroup:
    group = action.group
    if not isinstance(group, FiniteGroup):
        raise ValueError(
            f"OrbitMeanProjector needs a finite group, got {group.name}; "
            "use BasisProjector for continuous groups"
        )
    if not action.is_permutation:
        names = [rep.name for rep, _ in action.factors if not rep.is_permutation]
        raise ValueError(
            f"OrbitMeanProjector needs permutation representations on every factor, but {names} of "
            f"{group.name} are not; use BasisProjector for them"
        )
    return group


def _group_generators(group: FiniteGroup, device=None) -> Tensor:
    try:
        return group.generators(device=device)
    except NotImplementedError:  # every element generates the group, too
        return group.elements(device=device)


def orbit_ids(action: TensorAction) -> Tensor:
    """The orbit of every entry of the (flattened) tensor, numbered ``0 .. n_orbits - 1``.

    Orbits are the connected components of the graph joining each index ``j`` to ``src_s[j]`` for
    every generator ``s``; they are found by min-label hooking with pointer jumping (vectorised,
    ``O(log numel)`` rounds in practice). Orbits are numbered in the order of their smallest index.

    Example:
        >>> from lightning_equi.groups import CyclicGroup, regular
        >>> G = CyclicGroup(2)
        >>> orbit_ids(TensorAction((2, 2), [(regular(G), 1), (regular(G), 1)]))
        tensor([0, 1, 1, 0])
    """
    group = _check_permutation_action(action)
    src = action.index_permutation(_group_generators(group))  # (k, P)
    n = action.shape.numel()
    u = torch.arange(n).repeat(src.shape[0])
    v = src.reshape(-1)
    keep = u != v
    u, v = u[keep], v[keep]
    parent = torch.arange(n)
    while True:
        pu, pv = parent[u], parent[v]
        if torch.equal(pu, pv):
            break
        low = torch.minimum(pu, pv)
        # hook each root to the smallest root it touches; labels only decrease, so no cycles form
        parent.scatter_reduce_(0, pu, low, reduce="amin")
        parent.scatter_reduce_(0, pv, low, reduce="amin")
        while True:  # pointer jumping until every tree is a star
            grand = parent[parent]
            if torch.equal(grand, parent):
                break
            parent = grand
    return torch.unique(parent, return_inverse=True)[1]


class OrbitMeanProjector(Projector):
    """``Pi_E w`` = the mean of ``w`` over each orbit of the group on the tensor's entries.

    Args:
        action: a finite group acting on the parameter by permutation representations only.

    Raises:
        ValueError: for a continuous group or a factor that is not a permutation representation.

    Example:
        >>> from lightning_equi.groups import CyclicGroup, regular
        >>> G = CyclicGroup(4)
        >>> proj = OrbitMeanProjector(TensorAction((4, 4), [(regular(G), 1), (regular(G), 1)]))
        >>> proj.dim  # circulant 4 x 4 matrices
        4
        >>> w = torch.zeros(4, 4)
        >>> w[0, 0] = 4.0
        >>> proj.project(w)  # the orbit of entry (0, 0) is the diagonal
        tensor([[1., 0., 0., 0.],
                [0., 1., 0., 0.],
                [0., 0., 1., 0.],
                [0., 0., 0., 1.]])
    """

    kind = "orbit-mean"

    def __init__(self, action: TensorAction) -> None:
        super().__init__(action.shape)
        self.action = action
        self.ids = orbit_ids(action)
        sizes = torch.bincount(self.ids)
        self._dim = int(sizes.numel())
        self.inv_sizes = 1.0 / sizes.double()
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    @property
    def dim(self) -> int:
        return self._dim

    def _buffers(self, w: Tensor) -> tuple[Tensor, Tensor, torch.dtype]:
        # accumulate half precision in float32: an orbit may hold thousands of entries
        acc = torch.promote_types(w.dtype, torch.float32)
        key = (w.device, acc)
        if key not in self._cache:
            self._cache[key] = (self.ids.to(w.device), self.inv_sizes.to(device=w.device, dtype=acc))
        ids, inv = self._cache[key]
        return ids, inv, acc

    def _orbit_means(self, w: Tensor) -> tuple[Tensor, Tensor]:
        self.check_shape(w)
        ids, inv, acc = self._buffers(w)
        sums = torch.zeros(self._dim, dtype=acc, device=w.device)
        sums.index_add_(0, ids, w.reshape(-1).to(acc))
        return sums.mul_(inv).to(w.dtype), ids

    def project(self, w: Tensor) -> Tensor:
        with torch.no_grad():
            means, ids = self._orbit_means(w)
            return means[ids].reshape(self.shape)

    def project_(self, w: Tensor) -> Tensor:
        with torch.no_grad():
            means, ids = self._orbit_means(w)
            if w.is_contiguous():  # write the gather straight into w, no temporary
                torch.index_select(means, 0, ids, out=w.view(-1))
            else:
                w.copy_(means[ids].reshape(self.shape))
        return w
