"""``assert_equivariant``: a one-line equivariance check for users' own tests, in the spirit of e3nn's
``assert_equivariant``, over the library's groups and actions.

The check evaluates ``f(g x)`` and ``g f(x)`` for a set of elements
(:func:`lightning_equi.metrics.transformed_outputs`) and compares them per sample, relative to
``||f(x)||``, against a tolerance chosen by the output's dtype (:data:`TOLERANCES`). Elements whose
action interpolates the data (a 45-degree turn of a pixel grid) are reported but not checked:
no network is equivariant to the interpolation error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_equi.actions import Action, interpolates, make_action
from lightning_equi.groups import Group, get_group
from lightning_equi.metrics import (
    output_action,
    output_entries,
    probe_elements,
    relative_errors,
    transformed_outputs,
)

__all__ = ["assert_equivariant", "TOLERANCES"]

#: the largest relative error ``||f(g x) - g f(x)|| / ||f(x)||`` accepted, by the dtype of ``f(x)``:
#: a few hundred roundings of that dtype, far below what any non-equivariant layer produces
TOLERANCES: dict[torch.dtype, float] = {
    torch.float16: 1e-2,
    torch.bfloat16: 5e-2,
    torch.float32: 1e-4,
    torch.float64: 1e-10,
}


def assert_equivariant(
    model: nn.Module | Callable[[Tensor], Tensor],
    x: Tensor,
    group: Group | str | None = None,
    act_in: str | Action = "image",
    act_out: Any = None,
    elements: Tensor | None = None,
    draws: int = 4,
    atol: float | None = None,
    seed: int = 0,
    eval_mode: bool = True,
) -> dict[str, Tensor]:
    """Assert that ``model`` is equivariant on the batch ``x``: ``f(g x) == g f(x)`` to the dtype's tolerance.

    Args:
        model: the model, or any function of a batch.
        x: a batch of inputs ``(B, ...)``.
        group: the group (a name or a Group); may be left out when ``act_in`` is an Action.
        act_in: the action on the inputs: an Action or a name (``"image"``, ``"points"``, ``"set"``, ...).
        act_out: the action on the outputs; ``None`` for an invariant model; for a model with several
            outputs (a tuple, list or dict), one action (or ``None``) per entry, as
            :func:`lightning_equi.metrics.output_action` takes them. A sample's error is then its
            worst entry's, and the tolerance is that of the first entry's dtype.
        elements: the elements to check, each applied to every sample (``(k, ...)``); by default the
            group's :meth:`~lightning_equi.groups.Group.testing_elements` (every element of a small
            finite group) and ``draws`` seeded Haar draws per sample otherwise
            (:func:`lightning_equi.metrics.probe_elements`).
        draws: Haar draws per sample when ``elements`` is not given and the group is not probed whole.
        atol: the tolerance on the relative error; by default :data:`TOLERANCES` of the output dtype.
        seed: the seed of the Haar draws.
        eval_mode: evaluate an ``nn.Module`` in eval mode (restored afterwards).

    Returns:
        ``{"max": ..., "mean": ..., "errors": ...}``: the largest and mean relative error over the checked
        samples, and every per-sample relative error (float64, layout of ``transformed_outputs``).

    Raises:
        AssertionError: naming the worst element, its error and the tolerance, when an element that acts
            exactly exceeds the tolerance.
        ValueError: if no group is given or the actions' groups differ.

    Example:
        >>> import torch
        >>> x = torch.rand(4, 1, 6, 6)
        >>> out = assert_equivariant(lambda t: t.mean(dim=(1, 2, 3)), x, "D4")  # invariant: passes
        >>> float(out["max"]) < 1e-6
        True
        >>> assert_equivariant(lambda t: t[:, :, 0].sum(-1), x, "C4")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        AssertionError: not equivariant under C4: relative error ... at element 1 (tolerance 0.0001 ...
    """
    if group is None:
        if not isinstance(act_in, Action):
            raise ValueError("assert_equivariant needs the group: pass group='C4' (or another), or an Action")
        group = act_in.group
    group = get_group(group)
    act_in, act_out = make_action(act_in, group), output_action(act_out, group)
    if act_in.group != group:
        raise ValueError(f"act_in acts by {act_in.group.name}, but group={group.name!r}")
    batch = act_in.batch_size(x)
    if elements is None:
        g, exact = probe_elements(act_in, batch, draws, torch.Generator().manual_seed(seed))
    else:
        group.check(elements, "elements")
        g = elements.repeat_interleave(batch, dim=0)
        exact = act_in.exact_mask(g)
    f_gx, g_fx, fx = transformed_outputs(model, x, g, act_in, act_out, eval_mode)
    errors = relative_errors(f_gx, g_fx, fx)
    dtype = next(iter(output_entries(fx).values())).dtype
    # elements that resample a grid are only reported: their error is the interpolation's
    checked = exact.to(errors.device) | (not interpolates(act_in))
    if not bool(checked.any()):
        raise ValueError(
            f"none of the {g.shape[0] // batch} elements acts exactly on the data under {act_in!r}: pass "
            "elements= that map the grid onto itself (e.g. quarter turns), or an exact action"
        )
    tolerance = TOLERANCES.get(dtype, TOLERANCES[torch.float32]) if atol is None else float(atol)
    masked = torch.where(checked, errors, torch.zeros_like(errors))
    if not bool(torch.isfinite(errors[checked]).all()):
        raise AssertionError(
            f"the model's outputs are not finite on {int((~torch.isfinite(errors)).sum())} samples"
        )
    worst = int(masked.argmax())
    if float(masked[worst]) > tolerance:
        element = g[worst].tolist()
        per_element = masked.reshape(-1, batch).amax(dim=1)
        failing = int((per_element > tolerance).sum())
        raise AssertionError(
            f"not equivariant under {group.name}: relative error {float(masked[worst]):.3g} at element "
            f"{element} (tolerance {tolerance:g} for {dtype}; {failing} of {per_element.numel()} elements "
            f"fail, sample {worst % batch}). Check act_in={act_in!r} and act_out={act_out!r} against the "
            "model."
        )
    return {"max": errors[checked].max(), "mean": errors[checked].mean(), "errors": errors}
