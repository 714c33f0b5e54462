"""The equivariance penalty ``gamma_k / 2 ||Pi_perp A_k||^2``: its value, gradient and proximal step.

Relaxed equivariance (Nordenfors and Flinth, *Data Augmentation and Regularization for Learning Group
Equivariance*) adds to the training loss, for each constrained layer ``A_k``,
``gamma_k / 2 ||A_k - Pi_E A_k||^2``, with ``Pi_perp = I - Pi_E`` the projection onto the orthogonal
complement of E. Because ``Pi_perp`` is an orthogonal projector (self-adjoint and idempotent), the
gradient of that term is ``gamma_k Pi_perp A_k``: one projection, no autograd graph and no second
backward pass. Two ways to apply it:

* **additive**: add ``gamma_k Pi_perp A_k`` to the gradient before the optimizer step
  (:meth:`EquivariancePenalty.add_gradient_`). With plain SGD of step ``eta`` the E-perp part of the
  weights is multiplied by ``1 - eta (lambda + gamma)`` per step, so explicit SGD *diverges* once
  ``eta gamma > 2``; through Adam's preconditioner it is another penalty (as L2 is not AdamW's decay);
* **proximal** (decoupled): after the optimizer step, ``A <- Pi_E A + Pi_perp A / (1 + eta gamma)``
  (:meth:`EquivariancePenalty.proximal_step_`), the exact minimiser of
  ``gamma/2 ||Pi_perp A'||^2 + 1/(2 eta) ||A' - A||^2``: stable for every ``eta gamma``, the same
  whatever the optimizer, and the projection onto E itself at ``gamma = inf``.

Pure torch: nothing here imports Lightning; the callback
:class:`~lightning_equi.callbacks.RelaxedEquivariance` applies it in a Trainer. The penalty acts on the
constrained *parameters* of a :class:`~lightning_equi.subspace.ModelProjection` (the layer maps A, as
in the paper's code), never on running statistics.

Example:
    >>> from torch import nn
    >>> from lightning_equi.subspace import SymmetrySpec
    >>> net = nn.Sequential(nn.Linear(4, 4, bias=False)).double()
    >>> projection = SymmetrySpec("C4").layer("0", "regular", "regular").bind(net)
    >>> penalty = EquivariancePenalty(projection, gamma=10.0)
    >>> before = float(projection.total_distance())
    >>> values = penalty.proximal_step_(step=0, lr=0.1)  # shrinks Pi_perp A by 1 / (1 + 0.1 * 10)
    >>> round(float(projection.total_distance()) / before, 12)
    0.5
    >>> _ = EquivariancePenalty(projection, gamma=float("inf")).proximal_step_(0, lr=0.1)  # onto E
    >>> projection.within_rounding()
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

import torch
from torch import Tensor

from lightning_equi.schedules import Constant, check_gamma
from lightning_equi.subspace.base import Projector
from lightning_equi.subspace.batched import BatchedProjection
from lightning_equi.subspace.projection import ModelProjection, ProjectedTensor

__all__ = [
    "PENALTY_FORMS",
    "GammaConfig",
    "EquivariancePenalty",
    "penalty_value",
    "penalty_gradient",
    "proximal_factor",
    "proximal_update_",
]

#: how the penalty is applied: added to the gradient, or as a proximal step after the optimizer
PENALTY_FORMS = ("proximal", "additive")

#: a gamma: a number, a schedule ``step -> gamma``, or one of these per layer or parameter name
Gamma = Union[float, Callable[[int], float]]  # noqa: UP007 (a runtime alias: Python 3.10 has no | of these)
GammaConfig = Union[Gamma, Mapping[str, Gamma]]  # noqa: UP007


def _squared_norm(t: Tensor) -> Tensor:
    """``||t||^2`` as a float64 scalar: one pass, no temporary (accumulated in ``t``'s dtype, at least
    float32: the logged value, not a quantity anything is differentiated or compared through)."""
    flat = t.reshape(-1)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    return torch.dot(flat, flat).double()


def penalty_value(w: Tensor, projector: Projector, gamma: float) -> Tensor:
    """``gamma / 2 ||w - Pi_E w||^2`` as a float64 scalar (detached).

    Example:
        >>> from lightning_equi.groups import CyclicGroup, regular
        >>> from lightning_equi.subspace import OrbitMeanProjector, TensorAction
        >>> proj = OrbitMeanProjector(TensorAction((4,), [(regular(CyclicGroup(4)), 1)]))
        >>> penalty_value(torch.tensor([1.0, -1.0, 1.0, -1.0]), proj, gamma=2.0)
        tensor(4., dtype=torch.float64)
    """
    with torch.no_grad():
        return 0.5 * gamma * _squared_norm(w - projector.project(w))


def penalty_gradient(w: Tensor, projector: Projector, gamma: float) -> Tensor:
    """``gamma Pi_perp w``: the gradient of :func:`penalty_value` in ``w`` (same dtype as ``w``).

    Example:
        >>> from lightning_equi.groups import CyclicGroup, regular
        >>> from lightning_equi.subspace import OrbitMeanProjector, TensorAction
        >>> proj = OrbitMeanProjector(TensorAction((4,), [(regular(CyclicGroup(4)), 1)]))
        >>> penalty_gradient(torch.tensor([3.0, 1.0, 3.0, 1.0]), proj, gamma=0.5)
        tensor([ 0.5000, -0.5000,  0.5000, -0.5000])
    """
    with torch.no_grad():
        return (w - projector.project(w)).mul_(gamma)


def proximal_factor(gamma: float, lr: float) -> float:
    """``1 / (1 + lr * gamma)``, the factor the proximal step leaves on ``Pi_perp A`` (0 for inf).

    Example:
        >>> proximal_factor(10.0, 0.1), proximal_factor(float("inf"), 0.1), proximal_factor(0.0, 0.1)
        (0.5, 0.0, 1.0)
    """
    if math.isinf(gamma) and lr > 0:
        return 0.0
    return 1.0 / (1.0 + lr * gamma)


def proximal_update_(w: Tensor, projector: Projector, gamma: float, lr: float) -> Tensor:
    """``w <- Pi_E w + Pi_perp w / (1 + lr gamma)`` in place; returns the penalty after the step.

    At factor 0 (``gamma = inf``) ``w`` becomes ``Pi_E w`` exactly; at factor 1 (``gamma = 0`` or
    ``lr = 0``) ``w`` is left bit for bit.

    Example:
        >>> from lightning_equi.groups import CyclicGroup, regular
        >>> from lightning_equi.subspace import OrbitMeanProjector, TensorAction
        >>> proj = OrbitMeanProjector(TensorAction((4,), [(regular(CyclicGroup(4)), 1)]))
        >>> w = torch.tensor([3.0, 1.0, 3.0, 1.0])
        >>> proximal_update_(w, proj, gamma=1.0, lr=1.0), w
        (tensor(0.5000, dtype=torch.float64), tensor([2.5000, 1.5000, 2.5000, 1.5000]))
    """
    factor = proximal_factor(gamma, lr)
    with torch.no_grad():
        if factor == 1.0:
            return penalty_value(w, projector, gamma) if gamma else torch.zeros((), dtype=torch.float64)
        inside = projector.project(w)
        perp = w - inside
        # Pi_E w + factor * Pi_perp w; at factor 0 this is Pi_E w to the bit
        w.copy_(torch.add(inside, perp, alpha=factor))
        if math.isinf(gamma):
            return torch.zeros((), dtype=torch.float64, device=w.device)
        return 0.5 * gamma * factor * factor * _squared_norm(perp)


class EquivariancePenalty:
    """``sum_k gamma_k(t) / 2 ||Pi_perp A_k||^2`` over the constrained parameters of a projection.

    Args:
        projection: a :class:`~lightning_equi.subspace.ModelProjection` (a spec bound to the model).
        gamma: the strength: a number >= 0 (``math.inf`` for the proximal form only), a schedule
            ``step -> gamma`` (:mod:`lightning_equi.schedules`, or any callable, such as a provider that
            computes gamma from the training), or a mapping from layer names (module names, as in
            ``projection.entries[i].layer``) or qualified parameter names to one of these; a mapping must
            name every constrained layer, or give the others a value under ``"*"``. A parameter's own
            name wins over its layer's.

    Raises:
        ValueError: at construction, for a gamma that is not a number >= 0 or callable, or a mapping
            that names no constrained layer, or leaves one out without ``"*"`` (listing the layers);
            when a schedule is evaluated, for a value that is not a number >= 0 (naming the layer and
            the step).

    Example:
        >>> from torch import nn
        >>> from lightning_equi.schedules import WarmUp
        >>> from lightning_equi.subspace import SymmetrySpec
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
        >>> spec = SymmetrySpec("C4").layer("0", "regular", "regular").layer("2", "regular", "trivial")
        >>> penalty = EquivariancePenalty(spec.bind(net), gamma={"0": WarmUp(10.0, steps=10), "*": 1.0})
        >>> penalty.gammas(step=5)
        {'0.weight': 5.0, '0.bias': 5.0, '2.weight': 1.0, '2.bias': 1.0}
    """

    def __init__(self, projection: ModelProjection, gamma: GammaConfig = 1.0) -> None:
        self.projection = projection
        self.gamma = gamma
        self.entries: list[ProjectedTensor] = projection.parameters
        self._providers: dict[str, Callable[[int], float]] = self._resolve(gamma)
        self._batched = BatchedProjection([e.projector for e in self.entries])
        #: parameter name -> gamma of the last evaluation (:meth:`gammas`), for logging without asking a
        #: stateful provider twice
        self.last_gammas: dict[str, float] = {}

    # ---- gamma per parameter -------------------------------------------------------------------------

    @staticmethod
    def _provider(value: Any, what: str) -> Callable[[int], float]:
        if callable(value):
            return value
        return Constant(check_gamma(value, what))

    def _resolve(self, gamma: GammaConfig) -> dict[str, Callable[[int], float]]:
        if not isinstance(gamma, Mapping):
            provider = self._provider(gamma, "gamma")
            return {e.name: provider for e in self.entries}
        layers = sorted({e.layer for e in self.entries})
        names = {e.name for e in self.entries}
        unknown = sorted(k for k in gamma if k != "*" and k not in names and k not in layers)
        if unknown:
            raise ValueError(
                f"gamma names {unknown}, which are not constrained layers or parameters of the model; "
                f"its constrained layers: {layers}"
            )
        shared = {key: self._provider(value, f"gamma[{key!r}]") for key, value in gamma.items()}
        out: dict[str, Callable[[int], float]] = {}
        missing = []
        for e in self.entries:
            key = e.name if e.name in shared else e.layer if e.layer in shared else "*"
            if key not in shared:
                missing.append(e.layer)
                continue
            out[e.name] = shared[key]
        if missing:
            raise ValueError(
                f"gamma gives no value for the constrained layers {sorted(set(missing))}: name each layer "
                "or give the others a value under '*', e.g. {'conv1': 10.0, '*': 1.0}"
            )
        return out

    @property
    def providers(self) -> list[Callable[[int], float]]:
        """The distinct gamma providers (schedules), in the order of the parameters."""
        seen: dict[int, Callable[[int], float]] = {}
        for provider in self._providers.values():
            seen.setdefault(id(provider), provider)
        return list(seen.values())

    def gammas(self, step: int, allow_inf: bool = True) -> dict[str, float]:
        """Parameter name -> ``gamma_k`` at ``step`` (each provider called once).

        Raises:
            ValueError: for a provider value that is not a number >= 0 (or inf where not allowed).
        """
        cache: dict[int, float] = {}
        out = {}
        for e in self.entries:
            provider = self._providers[e.name]
            if id(provider) not in cache:
                cache[id(provider)] = check_gamma(
                    provider(step), f"gamma of {e.layer or e.name!r} at step {step}", allow_inf=allow_inf
                )
            out[e.name] = cache[id(provider)]
        self.last_gammas = out
        return out

    # ---- value, gradient, steps ------------------------------------------------------------------------

    def value(self, step: int = 0) -> Tensor:
        """The penalty at the current weights, ``sum_k gamma_k / 2 ||Pi_perp A_k||^2`` (float64)."""
        gammas = self.gammas(step, allow_inf=False)
        values = [
            penalty_value(e.tensor, e.projector, gammas[e.name]) for e in self.entries if gammas[e.name]
        ]
        return torch.stack(values).sum() if values else torch.zeros((), dtype=torch.float64)

    def gradient(self, step: int = 0) -> dict[str, Tensor]:
        """Parameter name -> ``gamma_k Pi_perp A_k``, the penalty's gradient (a new tensor each)."""
        gammas = self.gammas(step, allow_inf=False)
        return {e.name: penalty_gradient(e.tensor, e.projector, gammas[e.name]) for e in self.entries}

    def _split(self, chosen: list[int]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """``(A_k, Pi_E A_k, Pi_perp A_k)`` of the entries at ``chosen``, all of them in a fixed number of
        kernels: one multi-tensor copy, the batched projection (one flat buffer per dtype for the orbit
        means: :class:`~lightning_equi.subspace.batched.BatchedProjection`), one multi-tensor subtraction."""
        weights = [self.entries[i].tensor.detach() for i in chosen]
        inside = torch._foreach_mul(weights, 1.0)  # copies, projected in place below
        slots: list[Tensor | None] = [None] * len(self.entries)
        for i, t in zip(chosen, inside, strict=True):
            slots[i] = t
        self._batched.project_(slots)
        return weights, inside, torch._foreach_sub(weights, inside)

    @staticmethod
    def _halves(perp: list[Tensor], coefficients: list[float]) -> list[Tensor]:
        """``c_k ||perp_k||^2`` as float64 scalars (one norm kernel for all, then one of each kind)."""
        norms = torch._foreach_norm(perp)
        device = norms[0].device
        stacked = torch.stack([n.to(device=device, dtype=torch.float64) for n in norms])
        values = torch.tensor(coefficients, dtype=torch.float64, device=device) * stacked.square()
        return list(values.unbind())

    def _chosen(self, only: Iterable[int] | None, keep: Callable[[ProjectedTensor], bool]) -> list[int]:
        ids = None if only is None else set(only)
        return [i for i, e in enumerate(self.entries) if (ids is None or id(e.tensor) in ids) and keep(e)]

    @torch.no_grad()
    def add_gradient_(
        self, step: int, scale: float = 1.0, only: Iterable[int] | None = None
    ) -> dict[str, Tensor]:
        """The additive form: ``A_k.grad += scale * gamma_k Pi_perp A_k``; returns the penalty per name.

        Args:
            step: the optimizer step (for the schedules).
            scale: the factor the gradients carry (a loss scale of mixed precision not yet unscaled).
            only: ``id`` of the parameters to act on (those of one optimizer); ``None``: all of them.

        A parameter whose ``gamma_k`` is 0 is not touched (its gradient stays bit for bit); one without
        a gradient gets the penalty's gradient as its ``.grad`` unless it is frozen. All parameters
        together take a fixed number of kernels (see :meth:`_split`), not a few per tensor.
        """
        gammas = self.gammas(step, allow_inf=False)
        chosen = self._chosen(only, lambda e: bool(gammas[e.name]) and e.tensor.requires_grad)
        if not chosen:
            return {}
        names = [self.entries[i].name for i in chosen]
        _, _, perp = self._split(chosen)
        values = self._halves(perp, [0.5 * gammas[n] for n in names])
        torch._foreach_mul_(perp, [gammas[n] * scale for n in names])
        params = [self.entries[i].tensor for i in chosen]
        have = [j for j, p in enumerate(params) if p.grad is not None]
        if have:
            torch._foreach_add_([params[j].grad for j in have], [perp[j] for j in have])
        for j, p in enumerate(params):
            if p.grad is None:
                p.grad = perp[j]
        return dict(zip(names, values, strict=True))

    @torch.no_grad()
    def proximal_step_(
        self, step: int, lr: float | Mapping[str, float], only: Iterable[int] | None = None
    ) -> dict[str, Tensor]:
        """The proximal form: ``A_k <- Pi_E A_k + Pi_perp A_k / (1 + lr_k gamma_k)`` in place.

        Args:
            step: the optimizer step (for the schedules).
            lr: the step size ``eta``: one for all, or per parameter name (from the optimizer's groups).
            only: ``id`` of the parameters to act on; ``None``: all of them.

        Returns:
            parameter name -> the penalty after the step (parameters with ``gamma_k = 0`` or ``lr_k = 0``
            and frozen ones, ``requires_grad=False``, left out and left bit for bit).
        """
        gammas = self.gammas(step)

        def eta(e: ProjectedTensor) -> float:
            return float(lr[e.name] if isinstance(lr, Mapping) else lr)

        # frozen parameters: a loss term would not move them either
        chosen = self._chosen(
            only, lambda e: bool(gammas[e.name]) and bool(eta(e)) and e.tensor.requires_grad
        )
        if not chosen:
            return {}
        names = [self.entries[i].name for i in chosen]
        factors = [
            proximal_factor(gammas[n], eta(self.entries[i])) for n, i in zip(names, chosen, strict=True)
        ]
        weights, inside, perp = self._split(chosen)
        # the penalty after the step, gamma/2 ||f Pi_perp A||^2 (0 in E, at gamma = inf)
        coefficients = [
            0.0 if f == 0.0 else 0.5 * gammas[n] * f * f for n, f in zip(names, factors, strict=True)
        ]
        values = self._halves(perp, coefficients)
        torch._foreach_mul_(perp, factors)
        torch._foreach_add_(inside, perp)  # Pi_E A + f Pi_perp A; at f = 0 this is Pi_E A to the bit
        torch._foreach_copy_(weights, inside)
        return dict(zip(names, values, strict=True))

    # ---- checkpoints -----------------------------------------------------------------------------------

    def state_dict(self) -> list[dict[str, Any]]:
        """The state of each stateful provider (``state_dict()``), in the order of :attr:`providers`."""
        return [p.state_dict() if hasattr(p, "state_dict") else {} for p in self.providers]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        """Restore the providers' states written by :meth:`state_dict`.

        Raises:
            ValueError: if the number of providers differs from the checkpoint's.
        """
        providers = self.providers
        if len(states) != len(providers):
            raise ValueError(
                f"the checkpoint holds the states of {len(states)} gamma provider(s), this penalty has "
                f"{len(providers)}: resume with the gamma configuration the run was trained with"
            )
        for provider, state in zip(providers, states, strict=True):
            if hasattr(provider, "load_state_dict"):
                provider.load_state_dict(state)

    def __repr__(self) -> str:
        return f"EquivariancePenalty(gamma={self.gamma!r}, tensors={len(self.entries)})"
