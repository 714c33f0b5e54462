"""Functional equivariance error: ``E_g ||f(g x) - g f(x)|| / ||f(x)||``, as a torchmetrics Metric.

The functional backend follows torchmetrics' layout: :func:`_equivariance_error_update` turns one
batch into sufficient statistics (sums and counts, in float64), :func:`_equivariance_error_compute`
turns them into the value, and :func:`equivariance_error` chains the two. :class:`EquivarianceError`
keeps the same statistics as summed states, so under DDP every rank contributes its own probe
samples and ``compute()`` returns the same value everywhere.

Each sample may be flagged *exact* (the group element acts exactly on the data, e.g. a rotation by a
multiple of 90 degrees of a pixel grid) or not (the action interpolates). The statistics are kept
apart, so the error a model makes on exact elements can be told from the error the interpolation of
the data introduces.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn

__all__ = ["EquivarianceError", "equivariance_error", "relative_errors"]

_NAN_STRATEGIES = ("error", "warn", "ignore")


def relative_errors(
    output_of_transformed: Tensor, transformed_output: Tensor, output: Tensor, eps: float = 1e-12
) -> Tensor:
    """Per-sample ``||f(g x) - g f(x)|| / ||f(x)||`` in float64, shape ``(B,)``.

    Args:
        output_of_transformed: ``f(g x)``, shape ``(B, ...)``.
        transformed_output: ``g f(x)``, same shape.
        output: ``f(x)``, same shape (the normaliser).
        eps: lower bound on ``||f(x)||``, so a zero output does not divide by zero.

    Raises:
        ValueError: if the three tensors do not have the same shape, or have no batch dimension.

    Example:
        >>> fx = torch.tensor([[3.0, 4.0]])
        >>> relative_errors(torch.tensor([[3.0, 5.0]]), fx, fx)
        tensor([0.2000], dtype=torch.float64)
    """
    shapes = {tuple(output_of_transformed.shape), tuple(transformed_output.shape), tuple(output.shape)}
    if len(shapes) != 1:
        raise ValueError(
            "Expected f(g x), g f(x) and f(x) to have the same shape, but got "
            f"{tuple(output_of_transformed.shape)}, {tuple(transformed_output.shape)} "
            f"and {tuple(output.shape)}"
        )
    if output.dim() == 0:
        raise ValueError("Expected outputs with a batch dimension, but got scalars")
    batch = output.shape[0]
    diff = (output_of_transformed.double() - transformed_output.double()).reshape(batch, -1)
    norm = output.double().reshape(batch, -1).norm(dim=1).clamp_min(eps)
    return diff.norm(dim=1) / norm


def _equivariance_error_update(
    output_of_transformed: Tensor,
    transformed_output: Tensor,
    output: Tensor,
    exact: Tensor | bool | None = None,
    eps: float = 1e-12,
    nan_strategy: str = "error",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sufficient statistics of one batch: ``(sum_exact, n_exact, sum_inexact, n_inexact)`` (float64).

    ``exact`` flags the samples whose group element acts exactly on the data: a ``(B,)`` bool tensor,
    one bool for the whole batch, or ``None`` (all exact).
    """
    errors = relative_errors(output_of_transformed, transformed_output, output, eps)
    if exact is None or isinstance(exact, bool):
        mask = torch.full_like(errors, exact is not False, dtype=torch.bool)
    else:
        mask = torch.as_tensor(exact, device=errors.device).reshape(-1).bool()
        if mask.shape != errors.shape:
            raise ValueError(
                f"Expected `exact` to have shape {tuple(errors.shape)}, but got {tuple(mask.shape)}"
            )
    finite = torch.isfinite(errors)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        if nan_strategy == "error":
            raise RuntimeError(
                f"the equivariance error of {bad} of {errors.numel()} samples is not finite "
                "(the model output contains NaN or inf); "
                "pass nan_strategy='warn' or 'ignore' to skip such samples"
            )
        if nan_strategy == "warn":
            rank_zero_warn(f"skipping {bad} samples whose equivariance error is not finite")
        errors, mask = errors[finite], mask[finite]
    zero = errors.new_zeros(())
    return (
        torch.where(mask, errors, zero).sum(),
        mask.sum().double(),
        torch.where(mask, zero, errors).sum(),
        (~mask).sum().double(),
    )


def _equivariance_error_compute(total: Tensor, count: Tensor) -> Tensor:
    """Mean error from a sum and a count (NaN when the count is zero)."""
    return total / count if bool(count > 0) else torch.full_like(total, float("nan"))


def equivariance_error(
    output_of_transformed: Tensor,
    transformed_output: Tensor,
    output: Tensor,
    exact: Tensor | bool | None = None,
    eps: float = 1e-12,
) -> dict[str, Tensor]:
    """Mean relative equivariance error of one batch, in float64, overall and split by exactness.

    Returns:
        ``{"total": ..., "exact": ..., "inexact": ...}``; a part with no samples is NaN.

    Example:
        >>> fx = torch.ones(2, 3)
        >>> shifted = fx + torch.tensor([[0.0], [1.0]])
        >>> out = equivariance_error(shifted, fx, fx, exact=torch.tensor([True, False]))
        >>> [round(float(v), 4) for v in out.values()]
        [0.5, 0.0, 1.0]
    """
    s_e, n_e, s_i, n_i = _equivariance_error_update(
        output_of_transformed, transformed_output, output, exact, eps
    )
    return {
        "total": _equivariance_error_compute(s_e + s_i, n_e + n_i),
        "exact": _equivariance_error_compute(s_e, n_e),
        "inexact": _equivariance_error_compute(s_i, n_i),
    }


class EquivarianceError(Metric):
    """Mean relative functional equivariance error ``E_g ||f(g x) - g f(x)|| / ||f(x)||``.

    The caller evaluates the model and the actions (it knows how ``g`` acts on inputs and outputs);
    the metric accumulates the per-sample relative errors in float64, summed over ranks.

    Args:
        eps: lower bound on ``||f(x)||`` in the denominator.
        nan_strategy: what to do with non-finite per-sample errors (a diverged model):
            ``"error"`` raises, ``"warn"`` skips them with a warning, ``"ignore"`` skips them silently.
        kwargs: passed to :class:`torchmetrics.Metric` (``sync_on_compute``, ``process_group``, ...).

    Raises:
        ValueError: if ``eps`` is not positive or ``nan_strategy`` is not one of the allowed values.

    Example:
        >>> metric = EquivarianceError()
        >>> fx = torch.ones(4, 3)
        >>> metric.update(fx, fx, fx, exact=torch.tensor([True, True, False, False]))
        >>> metric.update(2 * fx, fx, fx, exact=False)
        >>> {k: round(float(v), 3) for k, v in metric.compute().items()}
        {'total': 0.5, 'exact': 0.0, 'inexact': 0.667}

    ``compute()`` returns ``{"total", "exact", "inexact"}``; a part with no samples is NaN.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    plot_lower_bound = 0.0

    sum_exact: Tensor
    count_exact: Tensor
    sum_inexact: Tensor
    count_inexact: Tensor

    def __init__(self, eps: float = 1e-12, nan_strategy: str = "error", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise ValueError(f"Expected `eps` to be a positive float, but got {eps!r}")
        if nan_strategy not in _NAN_STRATEGIES:
            raise ValueError(
                f"Expected `nan_strategy` to be one of {_NAN_STRATEGIES}, but got {nan_strategy!r}"
            )
        self.eps = float(eps)
        self.nan_strategy = nan_strategy
        for name in ("sum_exact", "count_exact", "sum_inexact", "count_inexact"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        output_of_transformed: Tensor,
        transformed_output: Tensor,
        output: Tensor,
        exact: Tensor | bool | None = None,
    ) -> None:
        """Add one batch: ``f(g x)``, ``g f(x)``, ``f(x)`` and which samples' elements act exactly."""
        s_e, n_e, s_i, n_i = _equivariance_error_update(
            output_of_transformed, transformed_output, output, exact, self.eps, self.nan_strategy
        )
        self.sum_exact += s_e.to(self.sum_exact.device)
        self.count_exact += n_e.to(self.count_exact.device)
        self.sum_inexact += s_i.to(self.sum_inexact.device)
        self.count_inexact += n_i.to(self.count_inexact.device)

    def compute(self) -> dict[str, Tensor]:
        """``{"total", "exact", "inexact"}`` mean relative errors (float64)."""
        return {
            "total": _equivariance_error_compute(
                self.sum_exact + self.sum_inexact, self.count_exact + self.count_inexact
            ),
            "exact": _equivariance_error_compute(self.sum_exact, self.count_exact),
            "inexact": _equivariance_error_compute(self.sum_inexact, self.count_inexact),
        }
