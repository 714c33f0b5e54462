"""Lanczos for the extreme eigenvalues of a symmetric operator restricted to a subspace, matrix-free.

:func:`lanczos` runs the three-term recurrence on ``M = P A P`` (``A`` symmetric, ``P`` an orthogonal
projection), with two safeguards that the whole-space tools lack:

* **full re-orthogonalisation** (classical Gram-Schmidt, twice) against every previous Lanczos vector,
  so no spurious copies of converged Ritz values appear;
* **every Lanczos vector re-projected** onto the range of ``P``: in exact arithmetic the Krylov space
  of a start in ``range(P)`` stays there, but rounding drifts into the complement, where ``M`` has
  ``dim ker P`` zero eigenvalues that would show up as spurious Ritz values.

It stops when the residual bound ``beta_k |s_k,i|`` of both extreme Ritz pairs is below
``tol * max |theta|`` (so each extreme is within that of an eigenvalue of ``M`` on ``range(P)``), when the
Krylov space is invariant (``beta_k = 0``: the Ritz values are exact), or after ``steps`` products.

Example:
    >>> import torch
    >>> a = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    >>> keep_odd = lambda v: v * (torch.arange(10) % 2 == 1)  # P: entries 1, 3, 5, ...
    >>> out = lanczos(lambda v: a @ v, keep_odd, torch.ones(10, dtype=torch.float64))
    >>> round(out.lambda_min, 10), round(out.lambda_max, 10), out.products
    (2.0, 10.0, 5)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["lanczos", "LanczosResult"]


@dataclass
class LanczosResult:
    """The extreme Ritz pairs of one Lanczos run.

    Attributes:
        lambda_min, lambda_max: the extreme Ritz values.
        vector_min, vector_max: their unit Ritz vectors (in the range of the projection).
        residual_min, residual_max: ``||M x - theta x||`` bounds of the two pairs (``beta_k |s_k,i|``).
        products: the number of operator applications (HVPs).
        converged: whether both residuals met the tolerance (or the Krylov space was invariant).
        ritz: every Ritz value of the last tridiagonal matrix, ascending.
    """

    lambda_min: float
    lambda_max: float
    vector_min: Tensor = field(repr=False)
    vector_max: Tensor = field(repr=False)
    residual_min: float
    residual_max: float
    products: int
    converged: bool
    ritz: Tensor = field(repr=False)


def lanczos(
    matvec: Callable[[Tensor], Tensor],
    project: Callable[[Tensor], Tensor] | None,
    start: Tensor,
    steps: int = 60,
    tol: float = 1e-8,
    min_steps: int = 2,
) -> LanczosResult:
    """The extreme eigenvalues of ``P A P`` on ``range(P)`` by Lanczos with full re-orthogonalisation.

    Args:
        matvec: ``v -> A v`` for a symmetric ``A`` (an HVP).
        project: ``v -> P v``, the orthogonal projection onto the subspace (``None``: the whole space).
        start: the start vector; projected and normalised first (a random vector is the usual choice).
        steps: at most this many products.
        tol: stop when both extreme residuals are at most ``tol * max |theta|``.
        min_steps: at least this many products (unless the Krylov space is invariant earlier).

    Raises:
        ValueError: if the projected start is zero (the subspace is ``{0}`` or the start is orthogonal to it).
    """
    proj = project if project is not None else (lambda v: v)
    q = proj(start)
    norm = q.norm()
    if not norm > 0:
        raise ValueError(
            "lanczos: the projected start vector is zero: the subspace is {0}, or the start is "
            "orthogonal to it"
        )
    # the Lanczos vectors, one per row, preallocated: stacking them anew at every step would copy k n
    # entries per step (the 1M-parameter benchmark spent a quarter of its time doing so)
    limit = min(steps, start.numel()) + 1
    rows = torch.empty(limit, q.numel(), dtype=q.dtype, device=q.device)
    rows[0] = q / norm
    k = 1  # vectors in use
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    products = 0
    invariant = False
    result = None
    while products < steps:
        q = rows[k - 1]
        w = proj(matvec(q))
        products += 1
        alpha = torch.dot(q, w)
        alphas.append(alpha)
        w = w - alpha * q - (betas[-1] * rows[k - 2] if betas else 0)
        Q = rows[:k]  # (k, n), a view
        for _ in range(2):  # full re-orthogonalisation, twice ("twice is enough", Kahan/Parlett)
            w = w - Q.T @ (Q @ w)
        w = proj(w)  # re-project: rounding must not drift into the complement
        beta = w.norm()
        result = _ritz(Q, alphas, betas, beta, products)
        scale = max(abs(result.lambda_min), abs(result.lambda_max), torch.finfo(w.dtype).tiny)
        # beta tiny relative to the operator's scale: the Krylov space is invariant and the Ritz values exact
        invariant = bool(beta <= 8 * torch.finfo(w.dtype).eps * scale * k**0.5)
        if invariant or k >= start.numel():
            result.converged = True
            break
        if products >= min_steps and max(result.residual_min, result.residual_max) <= tol * scale:
            result.converged = True
            break
        betas.append(beta)
        rows[k] = w / beta
        k += 1
    assert result is not None
    return result


def _ritz(Q: Tensor, alphas: list[Tensor], betas: list[Tensor], beta: Tensor, products: int) -> LanczosResult:
    """The extreme Ritz pairs of the tridiagonal matrix of ``alphas`` (diagonal) and ``betas``; ``Q`` holds
    the Lanczos vectors as rows."""
    k = len(alphas)
    t = torch.diag(torch.stack(alphas).double())
    if k > 1:
        off = torch.stack(betas).double()
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(t)
    dtype = Q.dtype
    lo, hi = vectors[:, 0].to(dtype), vectors[:, -1].to(dtype)
    return LanczosResult(
        lambda_min=float(values[0]),
        lambda_max=float(values[-1]),
        vector_min=Q.T @ lo,
        vector_max=Q.T @ hi,
        residual_min=float(beta.abs() * lo[-1].abs()),
        residual_max=float(beta.abs() * hi[-1].abs()),
        products=products,
        converged=False,
        ritz=values,
    )
