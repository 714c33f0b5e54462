"""Functional equivariance error: ``E_g ||f(g x) - g f(x)|| / ||f(x)||``, as a torchmetrics Metric.

The functional backend follows torchmetrics' layout: :func:`_equivariance_error_update` turns one
batch into sufficient statistics (sums and counts, in float64), :func:`_equivariance_error_compute`
turns them into the value, and :func:`equivariance_error` chains the two. :func:`transformed_outputs`
evaluates a model on transformed inputs (``f(g x)``, ``g f(x)``, ``f(x)`` for a set of elements), and
:func:`model_equivariance_error` chains it with :func:`equivariance_error`: the one place where
"evaluate f(g x) and g f(x) and compare" is written. :class:`EquivarianceError`
keeps the same statistics as summed states, so under DDP every rank contributes its own probe
samples and ``compute()`` returns the same value everywhere.

Each sample may be flagged *exact* (the group element acts exactly on the data, e.g. a rotation by a
multiple of 90 degrees of a pixel grid) or not (the action interpolates). The statistics are kept
apart, so the error a model makes on exact elements can be told from the error the interpolation of
the data introduces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn

if TYPE_CHECKING:
    from lightning_equi.actions import Action

__all__ = [
    "EquivarianceError",
    "equivariance_error",
    "relative_errors",
    "transformed_outputs",
    "model_equivariance_error",
    "probe_elements",
]

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


def _repeat(x: Tensor, copies: int) -> Tensor:
    return x.repeat(copies, *([1] * (x.dim() - 1)))


def transformed_outputs(
    model: nn.Module | Callable[[Tensor], Tensor],
    x: Tensor,
    g: Tensor,
    act_in: Action,
    act_out: Action | None = None,
    eval_mode: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(f(g x), g f(x), f(x))`` for ``k`` elements per sample of ``x`` (see :func:`equivariance_error`).

    ``g`` holds ``k * B`` elements for the ``B`` samples of ``x``: sample ``i`` of copy ``c`` is
    transformed by ``g[c * B + i]`` (so ``G.elements().repeat_interleave(B, dim=0)`` probes every sample
    with every element). ``f(x)`` is evaluated once and repeated. The model runs without gradients and,
    if it is an ``nn.Module`` and ``eval_mode``, in eval mode (its mode is restored afterwards).

    Args:
        model: the model ``f``, or any function of a batch.
        x: the inputs, ``(B, ...)``.
        g: the elements, ``k * B`` of them.
        act_in: the action on the inputs.
        act_out: the action on the outputs; ``None`` for invariant outputs (``g f(x) = f(x)``).
        eval_mode: evaluate an ``nn.Module`` in eval mode.

    Raises:
        ValueError: if the number of elements is not a positive multiple of the batch size.

    Example:
        >>> from lightning_equi.actions import ImageAction
        >>> act = ImageAction("C4")
        >>> x = torch.rand(2, 1, 5, 5)
        >>> g = act.group.elements().repeat_interleave(2, dim=0)  # 4 elements x 2 samples
        >>> f_gx, g_fx, fx = transformed_outputs(lambda t: t.sum(dim=(1, 2, 3)), x, g, act)
        >>> f_gx.shape, torch.allclose(f_gx, g_fx)
        (torch.Size([8]), True)
    """
    batch = x.shape[0]
    if batch == 0 or g.shape[0] == 0 or g.shape[0] % batch:
        raise ValueError(
            f"Expected k * {batch} group elements for a batch of {batch} samples, but got {g.shape[0]}"
        )
    copies = g.shape[0] // batch
    module = model if isinstance(model, nn.Module) and eval_mode else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        with torch.no_grad():
            fx = _repeat(model(x), copies)
            f_gx = model(act_in(g, _repeat(x, copies)))
            g_fx = fx if act_out is None else act_out(g, fx)
    finally:
        if module is not None:
            module.train(was_training)
    return f_gx, g_fx, fx


def probe_elements(
    action: Action, batch_size: int, draws: int = 4, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """The elements that probe a batch of ``batch_size`` samples, and which of them act exactly.

    Every element of :meth:`~lightning_equi.groups.Group.testing_elements` when that is the whole group
    (finite groups of order at most 16); else ``draws`` Haar draws per sample from ``generator``,
    followed, when the action interpolates some elements, by the group's testing elements that act
    exactly (quarter turns and mirrors of a pixel grid), so that the error splits into its exact and
    interpolated parts. Layout as in :func:`transformed_outputs`: element ``c * B + i`` for sample ``i``.

    Returns:
        ``(g, exact)``: the elements (``k * batch_size``, on the CPU) and ``action.exact_mask(g)``.

    Example:
        >>> from lightning_equi.actions import ImageAction
        >>> g, exact = probe_elements(ImageAction("C8"), batch_size=2)
        >>> g.tolist(), exact.tolist()[:4]
        ([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7], [True, True, False, False])
        >>> gen = torch.Generator().manual_seed(0)
        >>> g, exact = probe_elements(ImageAction("SO2"), 2, draws=3, generator=gen)
        >>> g.shape, exact.int().tolist()  # 3 Haar draws, then the 4 quarter turns, per sample
        (torch.Size([14]), [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    """
    group = action.group
    tests = group.testing_elements()
    if group.is_finite and tests.shape[0] == group.order:
        g = tests.repeat_interleave(batch_size, dim=0)
    else:
        g = group.sample(draws * batch_size, generator=generator)
        grid = tests[action.exact_mask(tests)]
        if not bool(action.exact_mask(g).all()) and grid.shape[0]:
            g = torch.cat([g, grid.repeat_interleave(batch_size, dim=0)])
    return g, action.exact_mask(g)


def model_equivariance_error(
    model: nn.Module | Callable[[Tensor], Tensor],
    x: Tensor,
    g: Tensor,
    act_in: Action,
    act_out: Action | None = None,
    exact: Tensor | bool | None = None,
    eps: float = 1e-12,
    eval_mode: bool = True,
) -> dict[str, Tensor]:
    """The functional equivariance error of a model, ``E ||f(g x) - g f(x)|| / ||f(x)||``, split by exactness.

    :func:`transformed_outputs` followed by :func:`equivariance_error` (see both for the arguments).
    ``exact`` flags the elements that act exactly on the data; ``None`` asks the input action
    (``act_in.exact_mask(g)``).

    Returns:
        ``{"total": ..., "exact": ..., "inexact": ...}`` (float64); a part with no samples is NaN.

    Example:
        >>> from lightning_equi.actions import ImageAction
        >>> act = ImageAction("C4")
        >>> x = torch.rand(3, 1, 6, 6)
        >>> g = act.group.elements().repeat_interleave(3, dim=0)
        >>> out = model_equivariance_error(lambda t: t.amax(dim=(2, 3)), x, g, act)
        >>> float(out["total"]) < 1e-7
        True
    """
    f_gx, g_fx, fx = transformed_outputs(model, x, g, act_in, act_out, eval_mode)
    if exact is None:
        exact = act_in.exact_mask(g)
    return equivariance_error(f_gx, g_fx, fx, exact, eps)


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
