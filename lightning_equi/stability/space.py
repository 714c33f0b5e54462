"""The model's trainable parameters as one flat vector, with E, E-perp and the lifted group action on it.

:class:`ParameterSpace` flattens every trainable parameter of a model (free ones included) into one
vector ``theta``; the projection onto E applies each constrained parameter's projector to its slice and
leaves the free parameters alone (they lie in E: the group acts trivially on them), so ``Pi_perp`` is zero
on them. For finite groups it also applies the lifted action ``rho_bar(g)`` to the vector (the identity
on free parameters) and, for finite abelian groups (cyclic groups and torus translations), the projectors
onto the real isotypic components of the parameter space.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_equi.subspace import SymmetrySpec
    >>> net = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Tanh(), nn.Linear(4, 1))
    >>> spec = SymmetrySpec("C4").layer("0", "regular", "regular").layer("2", "regular", "trivial")
    >>> space = ParameterSpace(net, spec.bind(net))
    >>> space.numel, space.dim_E, space.dim_perp
    (21, 6, 15)
    >>> v = torch.randn(space.numel)
    >>> bool(torch.allclose(space.project_E(v) + space.project_perp(v), v))
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_equi.groups import CyclicGroup, FiniteGroup, TorusTranslations
from lightning_equi.subspace import ModelProjection, Projector, TensorAction

__all__ = ["ParameterSpace", "IsotypicComponent"]

# the dense projector matrices of the reference are built column by column up to this many parameters
_MAX_DENSE = 20_000


@dataclass(frozen=True)
class IsotypicComponent:
    """One real isotypic component of the parameter space of a finite abelian group.

    ``label`` names the character ``m`` (and its conjugate ``-m`` when that differs: the two complex
    components make one real one); ``weights`` holds ``c(g)`` for every element ``g`` of
    ``group.elements()``, so the projector is ``P = 1/|G| sum_g c(g) rho_bar(g)``.
    """

    label: str
    character: tuple[int, ...]
    weights: Tensor
    trivial: bool


class ParameterSpace:
    """A model's trainable parameters as one flat vector, split into E and its orthogonal complement.

    Args:
        model: the module; its trainable parameters (``requires_grad``), in ``named_parameters`` order,
            make the vector.
        projection: the model's bound symmetry spec (:meth:`SymmetrySpec.bind`); every constrained
            parameter must be a trainable parameter of ``model``.

    Raises:
        ValueError: if a constrained parameter of ``projection`` is not a trainable parameter of ``model``.
    """

    def __init__(self, model: nn.Module, projection: ModelProjection) -> None:
        self.model, self.projection, self.group = model, projection, projection.group
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        sizes = [p.numel() for _, p in named]
        self.offsets = [0, *torch.tensor(sizes, dtype=torch.long).cumsum(0).tolist()]
        index = {id(p): i for i, (_, p) in enumerate(named)}
        self._projectors: dict[int, Projector] = {}
        for entry in projection.parameters:
            i = index.get(id(entry.tensor))
            if i is None:
                raise ValueError(
                    f"ParameterSpace: the constrained parameter {entry.name!r} is not a trainable parameter "
                    "of the model; bind the spec to this model (spec.bind(model)) and leave requires_grad on"
                )
            self._projectors[i] = entry.projector
        self._actions: dict[int, TensorAction] | None = None

    # ---- the vector -----------------------------------------------------------------------------------

    @property
    def numel(self) -> int:
        """``dim L``: the number of trainable parameter entries, free ones included."""
        return self.offsets[-1]

    @property
    def dim_E(self) -> int:
        """``dim E``: the constrained parameters' ``dim E`` plus every free entry."""
        constrained = sum(self.offsets[i + 1] - self.offsets[i] for i in self._projectors)
        return self.numel - constrained + sum(p.dim for p in self._projectors.values())

    @property
    def dim_perp(self) -> int:
        """``dim E-perp = dim L - dim E``."""
        return self.numel - self.dim_E

    def vector(self, dtype: torch.dtype | None = None) -> Tensor:
        """The current parameters as one detached flat vector (a copy)."""
        params = dict(self.model.named_parameters())
        flat = torch.cat([params[n].detach().reshape(-1) for n in self.names])
        return flat.to(dtype) if dtype is not None else flat.clone()

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Name -> the slice of ``theta`` viewed in that parameter's shape (views: differentiable)."""
        return {
            n: theta[self.offsets[i] : self.offsets[i + 1]].view(s)
            for i, (n, s) in enumerate(zip(self.names, self.shapes, strict=True))
        }

    @torch.no_grad()
    def load_(self, theta: Tensor) -> None:
        """Write ``theta`` into the model's parameters, in place."""
        params = dict(self.model.named_parameters())
        for name, value in self.unflatten(theta).items():
            params[name].copy_(value)

    def _check(self, v: Tensor) -> None:
        if v.shape != (self.numel,):
            raise ValueError(f"expected a flat vector of {self.numel} entries, got shape {tuple(v.shape)}")

    # ---- E and E-perp -----------------------------------------------------------------------------

    def project_E(self, v: Tensor) -> Tensor:
        """``Pi_E v``: each constrained slice projected, the free slices kept."""
        self._check(v)
        out = v.clone()
        for i, projector in self._projectors.items():
            a, b = self.offsets[i], self.offsets[i + 1]
            out[a:b] = projector.project(v[a:b].view(self.shapes[i])).reshape(-1)
        return out

    def project_perp(self, v: Tensor) -> Tensor:
        """``Pi_perp v = v - Pi_E v`` (zero on the free parameters)."""
        return v - self.project_E(v)

    def dense(self, part: str = "perp", dtype: torch.dtype = torch.float64) -> Tensor:
        """The ``(numel, numel)`` matrix of ``Pi_E`` (``part="E"``) or ``Pi_perp`` (``"perp"``), column by
        column (small models only: at most 20000 parameters)."""
        if self.numel > _MAX_DENSE:
            raise ValueError(
                f"dense({part!r}) builds a {self.numel} x {self.numel} matrix; it is meant for models of at "
                f"most {_MAX_DENSE} parameters (use the matrix-free project_E/project_perp)"
            )
        project = self.projector(part)
        eye = torch.eye(self.numel, dtype=dtype)
        return torch.stack([project(eye[j]) for j in range(self.numel)], dim=1)

    def projector(self, part: str) -> Callable[[Tensor], Tensor]:
        """The projection named by ``part``: ``"E"``, ``"perp"``, or an isotypic component's label."""
        if part == "E":
            return self.project_E
        if part == "perp":
            return self.project_perp
        components = {c.label: c for c in self.isotypic_components()}
        if part not in components:
            raise ValueError(
                f"unknown part {part!r}: use 'E', 'perp' or an isotypic component of {self.group.name}: "
                f"{sorted(components)}"
            )
        component = components[part]
        return lambda v: self.project_isotypic(v, component)

    # ---- the lifted action ------------------------------------------------------------------------

    def actions(self) -> dict[int, TensorAction]:
        """Parameter index -> its lifted action ``rho_bar`` (constrained parameters only)."""
        if self._actions is None:
            missing = [
                self.names[i]
                for i, p in self._projectors.items()
                if not isinstance(getattr(p, "action", None), TensorAction)
            ]
            if missing:
                raise ValueError(
                    f"the lifted action rho_bar(g) of {missing} is not known (their projectors were given "
                    "ready-made); declare them with spec.parameter(name, TensorAction(...)) to use the twirl "
                    "or the isotypic components"
                )
            self._actions = {i: p.action for i, p in self._projectors.items()}
        return self._actions

    def act(self, g: Tensor, v: Tensor) -> Tensor:
        """``rho_bar(g) v`` for each element of the batch ``g``: shape ``(len(g), numel)``; the identity on
        the free parameters."""
        self._check(v)
        actions = self.actions()
        out = v.unsqueeze(0).repeat(g.shape[0], 1)
        for i, action in actions.items():
            a, b = self.offsets[i], self.offsets[i + 1]
            out[:, a:b] = action.act(g, v[a:b].view(self.shapes[i])).reshape(g.shape[0], -1)
        return out

    def average(self, v: Tensor, weights: Tensor, chunk: int = 64) -> Tensor:
        """``1/|G| sum_g weights[g] rho_bar(g) v`` over ``group.elements()`` (a finite group)."""
        group = self._finite("average")
        els = group.elements(device=v.device)
        acc = torch.zeros_like(v)
        w = weights.to(device=v.device, dtype=v.dtype)
        for s in range(0, els.shape[0], chunk):
            acc += torch.einsum("g,gn->n", w[s : s + chunk], self.act(els[s : s + chunk], v))
        return acc / els.shape[0]

    def _finite(self, what: str) -> FiniteGroup:
        if not isinstance(self.group, FiniteGroup):
            raise ValueError(
                f"{what} sums over every element, which needs a finite group; {self.group.name} is not"
            )
        return self.group

    # ---- isotypic components (finite abelian groups) ----------------------------------------------

    def isotypic_components(self) -> list[IsotypicComponent]:
        """The real isotypic components of the parameter space, one per pair ``{chi, conj(chi)}`` of
        characters (the trivial one is E); cyclic groups and torus translations only.

        Characters of an element ``g`` (shifts ``g_a`` mod ``n_a``): ``chi_m(g) = exp(2 pi i sum_a m_a g_a
        / n_a)``; the real projector onto ``V_m + V_{-m}`` has weights ``c(g) = 2 Re chi_m(g)`` (``Re chi_m``
        when ``m = -m``).
        """
        group = self.group
        if isinstance(group, CyclicGroup):
            sizes = (group.n,)
        elif isinstance(group, TorusTranslations):
            sizes = tuple(group.shape)
        else:
            raise ValueError(
                f"isotypic components are implemented for finite abelian groups (cyclic groups, torus "
                f"translations); {group.name} is not one: use part='perp' for the whole complement of E"
            )
        els = group.elements().reshape(group.order, -1).double()
        seen: set[tuple[int, ...]] = set()
        out = []
        for flat in range(math.prod(sizes)):
            m = _unravel(flat, sizes)
            conj = tuple((-x) % n for x, n in zip(m, sizes, strict=True))
            if m in seen:
                continue
            seen.update({m, conj})
            phase = 2 * math.pi * sum(els[:, a] * m[a] / sizes[a] for a in range(len(sizes)))
            weights = torch.cos(phase) * (1.0 if conj == m else 2.0)
            label = f"k={m[0]}" if len(sizes) == 1 else "k=(" + ",".join(map(str, m)) + ")"
            out.append(IsotypicComponent(label, m, weights, trivial=not any(m)))
        return out

    def project_isotypic(self, v: Tensor, component: IsotypicComponent) -> Tensor:
        """The orthogonal projection of ``v`` onto one real isotypic component."""
        return self.average(v, component.weights)

    def __repr__(self) -> str:
        return (
            f"ParameterSpace({self.group.name}, numel={self.numel}, dim_E={self.dim_E}, "
            f"dim_perp={self.dim_perp})"
        )


def _unravel(flat: int, sizes: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major multi-index of ``flat`` in a grid of ``sizes``."""
    out = []
    for n in reversed(sizes):
        out.append(flat % n)
        flat //= n
    return tuple(reversed(out))
