"""The spectrum of the augmented Hessian on E-perp: extremes, a dense reference, the twirl, a prediction.

Near E the augmented gradient flow decouples (the paper's eq. 26-27): the part of ``A`` in E follows the
equivariant flow, and the deviation ``d = Pi_perp A`` evolves by ``d' = -M d`` with
``M = Pi_perp H_aug(A) Pi_perp``. E is stable when ``lambda_min(M) > 0`` on E-perp and unstable along the
eigenvectors of negative eigenvalues; a penalty ``gamma/2 ||Pi_perp A||^2`` adds ``gamma`` to every
eigenvalue of ``M``, so ``gamma_crit = max(0, -lambda_min)`` is the smallest one that makes E stable, and
gradient descent at step ``eta`` multiplies ``d`` by ``1 - eta lambda`` per step along an eigenvector.

* :func:`restricted_extremes` -- Lanczos on ``P H P`` for ``P`` = ``Pi_perp``, ``Pi_E`` or an isotypic part;
* :func:`stability_spectrum` -- everything the :class:`~lightning_equi.callbacks.StabilityMonitor` logs;
* :func:`twirled_hvp` -- ``1/|G| sum_g rho_bar(g)^T H_nom rho_bar(g) v`` (Proposition 2, at A in E);
* :func:`dense_restricted_spectrum` -- float64 dense ``eigh`` of the restricted Hessian (small models);
* :func:`prediction_check` -- full-batch augmented descent from ``A + eps u`` against ``1 - eta lambda``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_equi.actions import SetAction
    >>> from lightning_equi.subspace import SymmetrySpec
    >>> from lightning_equi.stability import FrozenRisk, ParameterSpace
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(4, 8, bias=False), nn.Tanh(), nn.Linear(8, 1)).double()
    >>> spec = SymmetrySpec("S4").layer("0", "standard", "standard").layer("2", "standard", "trivial")
    >>> space = ParameterSpace(net, spec.bind(net))
    >>> x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    >>> square = lambda out, target: ((out - target) ** 2).mean()
    >>> risk = FrozenRisk(space, square, (x, y), [SetAction("S4"), None])
    >>> out = restricted_extremes(risk, "perp", steps=60)
    >>> ref = dense_restricted_spectrum(risk, "perp")
    >>> abs(out.lambda_min - float(ref[0])) < 1e-8 * float(ref.abs().max())
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_equi.stability.lanczos import LanczosResult, lanczos
from lightning_equi.stability.risk import FrozenRisk, HVPMode

__all__ = [
    "restricted_extremes",
    "stability_spectrum",
    "twirled_hvp",
    "dense_restricted_spectrum",
    "prediction_check",
    "PredictionCheck",
]


def _start(risk: FrozenRisk, theta: Tensor, seed: int) -> Tensor:
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(risk.space.numel, generator=gen, dtype=torch.float64).to(theta)


def restricted_extremes(
    risk: FrozenRisk,
    part: str = "perp",
    theta: Tensor | None = None,
    steps: int = 60,
    tol: float = 1e-8,
    seed: int = 0,
    mode: HVPMode = "auto",
    matvec: Any = None,
) -> LanczosResult:
    """``lambda_min`` and ``lambda_max`` of ``H`` restricted to ``part`` (one Lanczos run, ``<= steps`` HVPs).

    Args:
        risk: the frozen risk (its Hessian is the operator).
        part: ``"perp"`` (E-perp), ``"E"``, or an isotypic component's label
            (:meth:`ParameterSpace.isotypic_components`).
        theta: the point (default: the model's current parameters).
        steps, tol: as for :func:`~lightning_equi.stability.lanczos.lanczos`.
        seed: the seed of the random start vector.
        mode: the HVP (``"forward"``: forward-over-reverse; ``"reverse"``: double backward).
        matvec: another operator ``v -> H v`` at ``theta`` instead of ``risk.hvp`` (e.g. the twirl).
    """
    theta = risk.space.vector() if theta is None else theta
    project = risk.space.projector(part)
    op = matvec if matvec is not None else (lambda v: risk.hvp(theta, v, mode=mode))
    return lanczos(op, project, _start(risk, theta, seed), steps=steps, tol=tol)


def stability_spectrum(
    risk: FrozenRisk,
    theta: Tensor | None = None,
    steps: int = 60,
    tol: float = 1e-6,
    seed: int = 0,
    isotypic: bool = False,
    mode: HVPMode = "auto",
) -> dict[str, float]:
    """What decides the stability of E under the augmented flow, at ``theta``.

    Returns (floats): ``lambda_min_perp``, ``lambda_max_perp`` (of ``H`` on E-perp), ``lambda_max_E`` (the
    sharpness of the equivariant problem), ``gamma_crit = max(0, -lambda_min_perp)``, ``coupling`` =
    ``||Pi_E H u|| / ||H u||`` for the eigenvector ``u`` of ``lambda_min_perp`` (0 at A in E with the full
    orbit: ``H`` is block diagonal; larger with sampled elements or off E), ``hvps`` (the products used,
    the coupling's included), ``converged`` (1.0 if every run met ``tol``); with ``isotypic`` (finite
    abelian groups) also ``lambda_min/<label>`` and ``lambda_max/<label>`` for every non-trivial real
    isotypic component.
    """
    space = risk.space
    theta = space.vector() if theta is None else theta
    perp = restricted_extremes(risk, "perp", theta, steps, tol, seed, mode)
    inside = restricted_extremes(risk, "E", theta, steps, tol, seed + 1, mode)
    hu = risk.hvp(theta, perp.vector_min, mode=mode)
    coupling = float(space.project_E(hu).norm() / hu.norm()) if hu.norm() > 0 else 0.0
    out = {
        "lambda_min_perp": perp.lambda_min,
        "lambda_max_perp": perp.lambda_max,
        "lambda_max_E": inside.lambda_max,
        "gamma_crit": max(0.0, -perp.lambda_min),
        "coupling": coupling,
        "hvps": float(perp.products + inside.products + 1),
        "converged": float(perp.converged and inside.converged),
    }
    if isotypic:
        for k, component in enumerate(space.isotypic_components()):
            if component.trivial:
                continue
            part = restricted_extremes(risk, component.label, theta, steps, tol, seed + 2 + k, mode)
            out[f"lambda_min/{component.label}"] = part.lambda_min
            out[f"lambda_max/{component.label}"] = part.lambda_max
            out["hvps"] += part.products
            out["converged"] = float(out["converged"] and part.converged)
    return out


def twirled_hvp(nominal: FrozenRisk, theta: Tensor, v: Tensor, mode: HVPMode = "auto") -> Tensor:
    """``1/|G| sum_g rho_bar(g)^T H_nom(theta) rho_bar(g) v`` over every element of a finite group.

    At ``theta`` in E this is the Hessian of the orbit-augmented risk of the same batch (Proposition 2),
    computed from the *nominal* risk and the lifted action on the parameters instead of the transformed
    data: an independent cross-check of :meth:`FrozenRisk.hvp` with ``augmentation="orbit"``. Costs
    ``|G|`` nominal HVPs (as many samples as one orbit HVP). ``rho_bar(g)^T = rho_bar(g^-1)`` (orthogonal
    representations).
    """
    space = nominal.space
    group = space._finite("twirled_hvp")
    out = torch.zeros_like(v)
    for g in group.elements(device=v.device).split(1):
        hv = nominal.hvp(theta, space.act(g, v)[0], mode=mode)
        out += space.act(group.inverse(g), hv)[0]
    return out / group.order


def dense_restricted_spectrum(risk: FrozenRisk, part: str = "perp", theta: Tensor | None = None) -> Tensor:
    """Every eigenvalue (ascending, float64) of the Hessian restricted to ``part``, densely: the full
    Hessian by ``torch.func.hessian``, an orthonormal basis ``Q`` of the part from the eigenvectors of
    its projector matrix, then ``eigh(Q^T H Q)``. For models of at most a few thousand parameters."""
    space = risk.space
    theta = (space.vector() if theta is None else theta).double()
    hessian = risk.hessian(theta).double()
    hessian = (hessian + hessian.T) / 2
    project = space.projector(part)
    eye = torch.eye(space.numel, dtype=torch.float64)
    pmat = torch.stack([project(eye[j]) for j in range(space.numel)], dim=1)
    values, vectors = torch.linalg.eigh((pmat + pmat.T) / 2)
    basis = vectors[:, values > 0.5]
    return torch.linalg.eigvalsh(basis.T @ hessian @ basis)


@dataclass
class PredictionCheck:
    """Observed against predicted growth of a deviation across E under full-batch augmented descent.

    Attributes:
        lam: the eigenvalue tested; lr: the step ``eta``; steps: descent steps.
        predicted: ``1 - eta lam``, the linearised factor per step.
        observed: the geometric mean factor per step, ``(||d_K|| / ||d_0||)^(1/K)``.
        per_step: every factor ``||d_{k+1}|| / ||d_k||``.
        rate_error: ``|(observed - 1) - (predicted - 1)| / |predicted - 1|``, the relative error of the rate.
        drift: ``(u^T H(A_K) u - lam) / |lam|``: how far the curvature along ``u`` moved while the unperturbed
            run travelled along E (a large drift, not a wrong ``lam``, is what breaks the prediction far
            from a stationary point).
        path: ``||A_K - A_0|| / ||A_0||``, the relative distance the unperturbed run travelled.
    """

    lam: float
    lr: float
    steps: int
    eps: float
    predicted: float
    observed: float
    per_step: list[float]
    rate_error: float
    drift: float
    path: float

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def prediction_check(
    risk: FrozenRisk,
    direction: Tensor,
    lam: float,
    lr: float,
    steps: int = 15,
    eps: float = 1e-4,
    theta: Tensor | None = None,
) -> PredictionCheck:
    """Run full-batch descent on ``risk`` from ``theta + eps ||theta|| u`` and from ``theta``, and compare
    the growth of ``d_k = Pi_perp(theta'_k - theta_k)`` with the linearised ``(1 - lr lam)^k``.

    The unperturbed run is subtracted so that what E-perp gains from a sampled augmentation (not exactly
    E-invariant) does not count as growth of the deviation; with the full orbit and ``theta`` in E it stays
    in E and the difference is ``Pi_perp theta'_k`` itself.
    """
    space = risk.space
    theta = space.vector() if theta is None else theta
    u = space.project_perp(direction)
    u = u / u.norm()
    scale = eps * max(float(theta.norm()), 1.0)
    a, b = theta.clone(), theta + scale * u
    norms = [float(space.project_perp(b - a).norm())]
    for _ in range(steps):
        a = a - lr * risk.gradient(a)
        b = b - lr * risk.gradient(b)
        norms.append(float(space.project_perp(b - a).norm()))
    per_step = [n1 / n0 for n0, n1 in zip(norms[:-1], norms[1:], strict=True)]
    observed = (norms[-1] / norms[0]) ** (1.0 / steps)
    predicted = 1.0 - lr * lam
    rate = predicted - 1.0
    error = abs((observed - 1.0) - rate) / abs(rate) if rate != 0 else math.inf
    curvature = float(u @ space.project_perp(risk.hvp(a, u)))
    drift = (curvature - lam) / abs(lam) if lam != 0 else math.inf
    path = float((a - theta).norm() / theta.norm()) if theta.norm() > 0 else 0.0
    return PredictionCheck(lam, lr, steps, scale, predicted, observed, per_step, error, drift, path)
