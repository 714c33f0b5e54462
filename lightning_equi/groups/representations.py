"""Orthogonal representations ``rho(g)`` of the groups, as batched matrices.

A :class:`Representation` returns ``(B, d, d)`` matrices for a batch of elements; when every
``rho(g)`` is a permutation matrix it also returns gather indices (``(rho(g) v)[j] = v[src[j]]``)
so that data and weights can be acted on by indexing instead of matrix products. Continuous groups
also expose the Lie-algebra generators of the representation (``d rho`` at the identity), which
together with ``group.generators()`` characterise the fixed points of the whole group.

Relation to escnn (checked in ``tests/test_representations.py``): under the element maps
``C_N k <-> G.element(k)``, ``D_N (f, k) <-> G.element((f, k))``, ``SO(2) theta <-> G.element(theta)``
and ``O(2) (f, theta) <-> G.element((f, theta))``, the element order, the composition law and the
regular representations equal escnn's, and ``irrep(C_N or SO(2), k)`` equals escnn's ``irrep(k)``.
Our mirror is ``S = diag(-1, 1)`` (``x -> -x``, i.e. ``torch.flip(x, (-1,))`` on images, the flip of
escnn's default ``flipRot2dOnR2``), while escnn's group irrep ``irrep(1, k)`` of D_N/O(2) uses
``diag(1, -1)``. They are conjugate by the quarter turn ``Q = R(pi / 2)`` for every ``k``:
``irrep(G, k)(g) = Q @ escnn_irrep(1, k)(g) @ Q.T`` (because ``diag(-1, 1) = R(pi) diag(1, -1)`` and
``R(phi) M R(-phi) = R(2 phi) M`` for a mirror ``M``). ``sign`` is escnn's ``irrep(1, 0)``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lightning_equi.groups.base import FiniteGroup, Group
from lightning_equi.groups.finite import CyclicGroup, DihedralGroup
from lightning_equi.groups.permutation import SymmetricGroup
from lightning_equi.groups.planar import O2, SO2
from lightning_equi.groups.spatial import SO3
from lightning_equi.groups.torus import TorusTranslations

__all__ = [
    "Representation",
    "trivial",
    "regular",
    "standard",
    "irrep",
    "sign",
    "direct_sum",
    "pair_representation",
    "grid_representation",
    "FIELD_NAMES",
    "representation_by_name",
]


class Representation:
    """An orthogonal representation of ``group`` on ``R^dim``.

    Args:
        group: the group acting.
        dim: the dimension of the representation space.
        name: a short label, used in error messages and reprs.
        matrices: ``g -> (B, dim, dim)`` float64.
        permutation: ``g -> (B, dim)`` long gather indices, for permutation representations only.
        lie_algebra: ``() -> (k, dim, dim)`` generators of the infinitesimal action (continuous groups).

    Example:
        >>> from lightning_equi.groups import CyclicGroup
        >>> rho = regular(CyclicGroup(4))
        >>> rho(torch.tensor([1]))[0].long()
        tensor([[0, 0, 0, 1],
                [1, 0, 0, 0],
                [0, 1, 0, 0],
                [0, 0, 1, 0]])
    """

    def __init__(
        self,
        group: Group,
        dim: int,
        name: str,
        matrices: Callable[[Tensor], Tensor],
        permutation: Callable[[Tensor], Tensor] | None = None,
        lie_algebra: Callable[[], Tensor] | None = None,
    ) -> None:
        self.group, self.dim, self.name = group, int(dim), name
        self._matrices, self._permutation, self._lie = matrices, permutation, lie_algebra
        #: the irreducible-or-atomic pieces this representation is the direct sum of (itself if atomic)
        self.summands: list[Representation] = [self]

    @property
    def is_permutation(self) -> bool:
        return self._permutation is not None

    def __call__(self, g: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
        """The matrices ``rho(g)``, shape ``(B, dim, dim)``."""
        self.group.check(g)
        return self._matrices(g).to(dtype)

    def permutation(self, g: Tensor) -> Tensor:
        """Gather indices ``src`` with ``(rho(g) v)[j] = v[src[j]]``, shape ``(B, dim)``."""
        if self._permutation is None:
            raise ValueError(
                f"representation {self.name} of {self.group.name} is not a permutation representation"
            )
        self.group.check(g)
        return self._permutation(g)

    def lie_algebra(self, device=None) -> Tensor:
        """Generators ``(k, dim, dim)`` of the Lie-algebra action; ``k = 0`` for finite groups."""
        if self._lie is None:
            return torch.zeros(0, self.dim, self.dim, dtype=torch.float64, device=device)
        return self._lie().to(device)

    def __reduce_ex__(self, protocol):
        # Built by a factory of this module: pickle the recipe. Otherwise the default (which fails
        # for closures under pickle, but lets copy.deepcopy share the functions).
        recipe = getattr(self, "_recipe", None)
        if recipe is not None:
            return (_rebuild, recipe)
        return super().__reduce_ex__(protocol)

    def __add__(self, other: Representation) -> Representation:
        return direct_sum([self, other])

    def __mul__(self, copies: int) -> Representation:
        if not isinstance(copies, int):  # 2.5 * rho is a mistake, not two copies
            return NotImplemented
        return direct_sum([self] * copies)

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"Representation({self.name}, {self.group.name}, dim={self.dim})"


def _picklable(factory: Callable[..., Representation]) -> Callable[..., Representation]:
    """Record how a representation was built, so that it pickles (its matrices are closures)."""

    @functools.wraps(factory)
    def build(*args, **kwargs) -> Representation:
        rep = factory(*args, **kwargs)
        rep._recipe = (factory.__name__, args, kwargs)
        return rep

    return build


def _rebuild(name: str, args: tuple, kwargs: dict) -> Representation:
    return globals()[name](*args, **kwargs)


def _from_permutation(group: Group, dim: int, name: str, perm: Callable[[Tensor], Tensor], lie=None):
    def matrices(g: Tensor) -> Tensor:
        src = perm(g)
        eye = torch.eye(dim, dtype=torch.float64, device=src.device)
        return eye[src]  # row j of rho(g) is e_{src[j]}

    return Representation(group, dim, name, matrices, perm, lie)


@_picklable
def trivial(group: Group) -> Representation:
    """The 1-dimensional trivial representation (invariant scalars).

    Example:
        >>> from lightning_equi.groups import SO2
        >>> trivial(SO2())(torch.tensor([0.5], dtype=torch.float64))
        tensor([[[1.]]], dtype=torch.float64)
    """
    return _from_permutation(
        group,
        1,
        "trivial",
        lambda g: torch.zeros(g.shape[0], 1, dtype=torch.long, device=g.device),
        None if group.is_finite else lambda: torch.zeros(_lie_dim(group), 1, 1, dtype=torch.float64),
    )


# Groups up to this order keep their Cayley table (order^2 indices, 8 MiB at 1024) for fast lookups;
# larger ones compose g^-1 with every element on each call, which needs only B x order memory.
_CAYLEY_CACHE_MAX = 1024


@_picklable
def regular(group: Group) -> Representation:
    """The regular representation of a finite group: ``rho(g) e_h = e_{g h}``.

    Example:
        >>> from lightning_equi.groups import DihedralGroup
        >>> rho = regular(DihedralGroup(2))
        >>> rho.dim, rho.permutation(torch.tensor([[1, 0]]))  # the mirror swaps rotations and mirrors
        (4, tensor([[2, 3, 0, 1]]))
    """
    if not isinstance(group, FiniteGroup):
        raise ValueError(f"{group.name} is continuous and has no finite regular representation")
    if isinstance(group, SymmetricGroup) and group.n > 5:
        raise ValueError(
            f"the regular representation of {group.name} has dimension {group.order}; use "
            "standard() (the permutation representation on R^n) instead"
        )
    cache: dict = {}

    def perm(g: Tensor) -> Tensor:
        # (rho(g) v)[index(h)] = v[index(g^-1 h)]
        if group.order > _CAYLEY_CACHE_MAX:  # e.g. T64x64: the table would hold order^2 = 16.8M entries
            els = group.elements(device=g.device)
            n = els.shape[0]
            a = group.inverse(g).repeat_interleave(n, dim=0)
            b = els.repeat(g.shape[0], *([1] * (els.dim() - 1)))
            return group.index(group.compose(a, b)).reshape(g.shape[0], n)
        key = g.device
        if key not in cache:
            cache[key] = group.cayley_table(device=g.device)
        return cache[key][group.index(group.inverse(g))]

    return _from_permutation(group, group.order, "regular", perm)


def _rot2(theta: Tensor) -> Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


_MIRROR = torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # x -> -x
_J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)  # d/dtheta R(theta) at 0
_SO3_ALGEBRA = torch.tensor(
    [
        [[0, 0, 0], [0, 0, -1], [0, 1, 0]],
        [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
        [[0, -1, 0], [1, 0, 0], [0, 0, 0]],
    ],
    dtype=torch.float64,
)


def _lie_dim(group: Group) -> int:
    if isinstance(group, (SO2, O2)):
        return 1
    if isinstance(group, SO3):  # O3 subclasses SO3
        return 3
    return 0


def _planar(group: Group, frequency: int, name: str) -> Representation:
    """``R(k theta) S^f`` for C_N, D_N, SO(2), O(2) at frequency ``k``."""
    k = int(frequency)
    mirror = isinstance(group, (DihedralGroup, O2))

    def matrices(g: Tensor) -> Tensor:
        m = _rot2(k * group.angle(g))
        if mirror:
            f = group.flip(g).bool()
            m = torch.where(f[:, None, None], m @ _MIRROR.to(m.device), m)
        return m

    lie = (lambda: (k * _J)[None]) if isinstance(group, (SO2, O2)) else None
    return Representation(group, 2, name, matrices, None, lie)


@_picklable
def standard(group: Group) -> Representation:
    """The defining representation: 2x2 for C_N/D_N/SO(2)/O(2), 3x3 for SO(3)/O(3), permutation
    matrices on ``R^n`` for S_n, and the shift of the ``N1 x ... x Nd`` grid for a torus.

    Example:
        >>> from lightning_equi.groups import DihedralGroup
        >>> standard(DihedralGroup(4))(torch.tensor([[1, 0]]))  # the mirror x -> -x
        tensor([[[-1.,  0.],
                 [ 0.,  1.]]], dtype=torch.float64)
    """
    if isinstance(group, (CyclicGroup, DihedralGroup, SO2, O2)):
        return _planar(group, 1, "standard")
    if isinstance(group, SO3):
        return Representation(group, 3, "standard", lambda g: g, None, lambda: _SO3_ALGEBRA)
    if isinstance(group, SymmetricGroup):
        return _from_permutation(group, group.n, "standard", group.inverse)  # src = p^-1
    if isinstance(group, TorusTranslations):
        return _torus_regular(group)
    raise ValueError(f"no standard representation for {group.name}")


def _torus_regular(group: TorusTranslations) -> Representation:
    def perm(g: Tensor) -> Tensor:
        # (t . x)[p] = x[p - t] on the flattened grid
        pos = group.elements(device=g.device)  # (P, d) all grid positions, row-major
        src = (pos[None, :, :] - g[:, None, :]) % torch.tensor(group.shape, device=g.device)
        return group.index(src.reshape(-1, len(group.shape))).reshape(g.shape[0], -1)

    return _from_permutation(group, group.order, "regular", perm)


def _parity_sign(p: Tensor) -> Tensor:
    """``(-1)^(number of inversions)`` of each permutation, exactly (no determinant)."""
    inversions = (p[:, :, None] > p[:, None, :]).triu(diagonal=1).sum(dim=(1, 2))
    return 1.0 - 2.0 * (inversions % 2).double()


@_picklable
def sign(group: Group) -> Representation:
    """``det``: -1 on mirrors (D_N, O(2), O(3)) and odd permutations (S_n).

    Example:
        >>> from lightning_equi.groups import SymmetricGroup
        >>> sign(SymmetricGroup(3))(torch.tensor([[1, 0, 2], [1, 2, 0]])).flatten()
        tensor([-1.,  1.], dtype=torch.float64)
    """
    if isinstance(group, (DihedralGroup, O2)):
        fn = lambda g: (1.0 - 2.0 * group.flip(g).double())[:, None, None]  # noqa: E731
    elif isinstance(group, SO3):
        fn = lambda g: torch.linalg.det(g)[:, None, None].round()  # noqa: E731
    elif isinstance(group, SymmetricGroup):
        fn = lambda g: _parity_sign(g)[:, None, None]  # noqa: E731
    else:
        raise ValueError(f"{group.name} has no sign representation")
    lie = None if group.is_finite else (lambda: torch.zeros(_lie_dim(group), 1, 1, dtype=torch.float64))
    return Representation(group, 1, "sign", fn, None, lie)


@_picklable
def irrep(group: Group, frequency: int) -> Representation:
    """Real irreducible representation of frequency ``k`` of C_N, D_N, SO(2), O(2):
    ``R(k theta)`` (times the mirror for D_N/O(2)); ``k = 0`` is the trivial one. For SO(3)/O(3)
    only ``l = 0, 1``; higher ``l`` come from escnn (``lightning_equi.adapters.escnn``).

    Example:
        >>> from lightning_equi.groups import CyclicGroup
        >>> irrep(CyclicGroup(8), 2)(torch.tensor([1])).round()  # a quarter turn: 2 * 45 degrees
        tensor([[[ 0., -1.],
                 [ 1.,  0.]]], dtype=torch.float64)
    """
    k = int(frequency)
    if k < 0:
        raise ValueError(f"frequency must be >= 0, got {k} (frequency -k is equivalent to k)")
    if k == 0:
        return trivial(group)
    if isinstance(group, (CyclicGroup, DihedralGroup, SO2, O2)):
        if isinstance(group, (CyclicGroup, DihedralGroup)) and 2 * k >= group.n:
            raise ValueError(
                f"frequency {k} of {group.name} is not a 2-dimensional irrep (needs 2k < {group.n})"
            )
        return _planar(group, k, f"irrep{k}")
    if isinstance(group, SO3) and k == 1:
        return standard(group)
    raise ValueError(f"irrep {k} of {group.name} is not built in; build it with escnn")


@_picklable
def pair_representation(group: SymmetricGroup) -> Representation:
    """S_n acting on ``R^{n x n}`` (edge features, adjacency matrices): ``(g A)[p_i, p_j] = A[i, j]``.

    Example:
        >>> from lightning_equi.groups import SymmetricGroup
        >>> A = torch.arange(4.0)  # the 2 x 2 matrix [[0, 1], [2, 3]], flattened
        >>> A[pair_representation(SymmetricGroup(2)).permutation(torch.tensor([[1, 0]]))]
        tensor([[3., 2., 1., 0.]])
    """
    n = group.n

    def perm(g: Tensor) -> Tensor:
        src = group.inverse(g)
        return (src[:, :, None] * n + src[:, None, :]).reshape(g.shape[0], n * n)

    return _from_permutation(group, n * n, "pairs", perm)


@_picklable
def direct_sum(reps: Sequence[Representation]) -> Representation:
    """Block-diagonal sum of representations of one group (also ``rho1 + rho2`` and ``3 * rho``).

    Example:
        >>> from lightning_equi.groups import CyclicGroup
        >>> C4 = CyclicGroup(4)
        >>> rho = direct_sum([trivial(C4), 2 * standard(C4)])
        >>> rho.dim, [r.name for r in rho.summands]
        (5, ['trivial', 'standard', 'standard'])
    """
    reps = list(reps)
    if not reps:
        raise ValueError("direct_sum needs at least one representation")
    group = reps[0].group
    for r in reps:
        if r.group != group:
            raise ValueError(f"cannot sum representations of {group.name} and {r.group.name}")
    dims = [r.dim for r in reps]
    offsets = torch.tensor([0, *dims]).cumsum(0).tolist()
    dim = offsets[-1]
    name = "+".join(r.name for r in reps) if len(reps) <= 4 else f"{len(reps)} fields"

    def matrices(g: Tensor) -> Tensor:
        out = torch.zeros(g.shape[0], dim, dim, dtype=torch.float64, device=g.device)
        for r, a, b in zip(reps, offsets[:-1], offsets[1:], strict=True):
            out[:, a:b, a:b] = r(g)
        return out

    perm = None
    if all(r.is_permutation for r in reps):

        def perm(g: Tensor) -> Tensor:
            return torch.cat(
                [r.permutation(g) + off for r, off in zip(reps, offsets[:-1], strict=True)], dim=1
            )

        def matrices(g: Tensor) -> Tensor:  # noqa: F811
            return torch.eye(dim, dtype=torch.float64, device=g.device)[perm(g)]

    lie = None
    if not group.is_finite:

        def lie() -> Tensor:
            blocks = [r.lie_algebra() for r in reps]
            k = max(b.shape[0] for b in blocks)
            return torch.stack([torch.block_diag(*[b[i] for b in blocks]) for i in range(k)])

    out = Representation(group, dim, name, matrices, perm, lie)
    out.summands = [s for r in reps for s in r.summands]
    return out


@_picklable
def grid_representation(group: Group, size: tuple[int, int]) -> Representation:
    """A 90-degree-rotation/mirror group acting on the positions of an ``H x W`` grid (a kernel or
    an image), as a permutation representation: ``(rho(g) K)[p] = K[g^-1 p]``.

    Convention (escnn's): C_N element ``k`` is ``torch.rot90(K, k * 4 // N, dims=(-2, -1))``, the
    mirror of D_N is ``torch.flip(K, (-1,))`` (``x -> -x``), and ``(f, k)`` is the mirror first.
    Equivalently, ``g`` moves the pixel centred at ``p = (x, y)`` (``x`` along columns, ``y`` up the
    rows, origin at the grid centre) to ``standard(group)(g) @ p``.
    Only C1, C2, C4, D1, D2 and D4 act exactly on a grid; C4 and D4 need a square grid, while
    the half turns of C2 and D2 act on any ``H x W``.

    Example:
        >>> from lightning_equi.groups import CyclicGroup
        >>> K = torch.arange(4.0)  # [[0, 1], [2, 3]]
        >>> K[grid_representation(CyclicGroup(4), (2, 2)).permutation(torch.tensor([1]))]
        tensor([[1., 3., 0., 2.]])
    """
    h, w = (int(size[0]), int(size[1]))
    if isinstance(group, CyclicGroup) and group.n in (1, 2, 4):
        quarter, mirror = 4 // group.n, False
    elif isinstance(group, DihedralGroup) and group.n in (1, 2, 4):
        quarter, mirror = 4 // group.n, True
    else:
        raise ValueError(
            f"{group.name} does not act exactly on a pixel grid: only C1, C2, C4, D1, D2, D4 do "
            "(rotations by multiples of 90 degrees and mirrors); use interpolation or escnn's basis"
        )
    if quarter == 1 and h != w:
        raise ValueError(f"{group.name} rotates by 90 degrees, which needs a square grid; got {h}x{w}")

    cache: dict = {}

    def perm(g: Tensor) -> Tensor:
        if g.device not in cache:
            ids = torch.arange(h * w, device=g.device).reshape(h, w)
            table = []
            for e in group.elements(device=g.device):  # |G| <= 8: one index image per element
                f, k = (int(e[0]), int(e[1])) if mirror else (0, int(e))
                img = torch.flip(ids, (-1,)) if f else ids
                table.append(torch.rot90(img, k * quarter, dims=(-2, -1)).reshape(-1))
            cache[g.device] = torch.stack(table)
        return cache[g.device][group.index(g)]

    return _from_permutation(group, h * w, f"grid{h}x{w}", perm)


#: the names accepted by :func:`representation_by_name` (and so in specs, configs and the CLI)
FIELD_NAMES = {
    "trivial": "invariant scalars (1-dimensional)",
    "regular": "the regular representation of a finite group (C_N, D_N, a torus, small S_n)",
    "standard": "the defining representation (2-d rotations, 3-d rotations, S_n on R^n, torus shifts)",
    "sign": "+-1 by the determinant (mirrors, odd permutations)",
    "pairs": "S_n on R^{n x n} (edge features, adjacency matrices)",
    "irrep<k>": "the real irrep of frequency k of C_N, D_N, SO(2), O(2), e.g. irrep2",
}


def representation_by_name(group: Group, name: str) -> Representation:
    """The representation of ``group`` called ``name`` (see :data:`FIELD_NAMES`), for config files.

    Example:
        >>> from lightning_equi.groups import get_group
        >>> representation_by_name(get_group("C8"), "irrep3")
        Representation(irrep3, C8, dim=2)
    """
    key = str(name).strip().lower()
    m = re.fullmatch(r"irrep(\d+)", key)
    factories = {
        "trivial": trivial,
        "regular": regular,
        "standard": standard,
        "sign": sign,
        "pairs": pair_representation,
    }
    if m is None and key not in factories:
        valid = "\n".join(f"  {k:<10} {v}" for k, v in FIELD_NAMES.items())
        raise ValueError(f"unknown field name {name!r}. Valid names:\n{valid}")
    try:
        return irrep(group, int(m[1])) if m else factories[key](group)
    except (ValueError, AttributeError, TypeError) as err:
        raise ValueError(f"{group.name} has no {key!r} fields ({err})") from err
