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

import copy
from collections.abc import Callable, Mapping, Sequence
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
    "entry_errors",
    "output_entries",
    "output_action",
    "transform_output",
    "transformed_outputs",
    "model_equivariance_error",
    "probe_elements",
]

_NAN_STRATEGIES = ("error", "warn", "ignore")


def relative_errors(
    output_of_transformed: Any, transformed_output: Any, output: Any, eps: float = 1e-12
) -> Tensor:
    """Per-sample ``||f(g x) - g f(x)|| / ||f(x)||`` in float64, shape ``(B,)``.

    The outputs may be tensors or structures of them (tuples, lists, dicts, nested, as a model with
    several outputs returns): then each entry is compared on its own (:func:`entry_errors`) and a
    sample's error is its largest entry's, so an entry of small scale that breaks equivariance is not
    hidden by a large one that keeps it.

    Args:
        output_of_transformed: ``f(g x)``, shape ``(B, ...)`` (or a structure of such tensors).
        transformed_output: ``g f(x)``, same shape.
        output: ``f(x)``, same shape (the normaliser).
        eps: lower bound on ``||f(x)||``, so a zero output does not divide by zero.

    Raises:
        ValueError: if the three tensors do not have the same shape, or have no batch dimension, or
            the structures do not have the same entries.

    Example:
        >>> fx = torch.tensor([[3.0, 4.0]])
        >>> relative_errors(torch.tensor([[3.0, 5.0]]), fx, fx)
        tensor([0.2000], dtype=torch.float64)
        >>> relative_errors((fx, 2 * fx), (fx, fx), (fx, fx))  # the worst entry per sample
        tensor([1.], dtype=torch.float64)
    """
    if isinstance(output, Tensor):
        return _relative_errors(output_of_transformed, transformed_output, output, eps)
    errors = entry_errors(output_of_transformed, transformed_output, output, eps)
    return torch.stack(list(errors.values())).amax(dim=0)


def _relative_errors(
    output_of_transformed: Tensor, transformed_output: Tensor, output: Tensor, eps: float
) -> Tensor:
    if not (isinstance(output_of_transformed, Tensor) and isinstance(transformed_output, Tensor)):
        raise ValueError(
            "Expected f(g x), g f(x) and f(x) to be tensors alike, but got "
            f"{type(output_of_transformed).__name__}, {type(transformed_output).__name__} and a tensor"
        )
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


def output_entries(output: Any, prefix: str = "") -> dict[str, Tensor]:
    """The tensors of a model's output by entry name: ``{"": t}`` for a tensor, ``{"0": .., "1": ..}``
    for a tuple or list, the keys for a dict, ``"a.0"`` when nested; ``None`` entries are skipped.

    Raises:
        TypeError: naming the entry, for anything but tensors, ``None`` and tuples, lists and dicts of them.
        ValueError: for an entry without a batch dimension (a 0-d tensor, e.g. a loss).

    Example:
        >>> out = {"node": torch.zeros(2, 5, 3), "graph": (torch.zeros(2, 1), None)}
        >>> {k: tuple(v.shape) for k, v in output_entries(out).items()}
        {'node': (2, 5, 3), 'graph.0': (2, 1)}
    """
    name = prefix or "the output"
    if isinstance(output, Tensor):
        if output.dim() == 0:
            raise ValueError(
                f"entry {name!r} of the model's output is a 0-d tensor: every output entry needs a batch "
                "dimension (return per-sample values, or leave the scalar out of forward())"
            )
        return {prefix: output}
    if output is None:
        return {}
    if isinstance(output, Mapping):
        items = [(str(key), value) for key, value in output.items()]
    elif isinstance(output, (tuple, list)):
        items = [(str(i), value) for i, value in enumerate(output)]
    else:
        raise TypeError(
            f"entry {name!r} of the model's output is a {type(output).__name__}: the equivariance error "
            "compares tensors and tuples, lists or dicts of tensors"
        )
    out: dict[str, Tensor] = {}
    for key, value in items:
        out.update(output_entries(value, f"{prefix}.{key}" if prefix else key))
    return out


def entry_errors(
    output_of_transformed: Any, transformed_output: Any, output: Any, eps: float = 1e-12
) -> dict[str, Tensor]:
    """Per entry of a (structured) output, the per-sample relative errors of :func:`relative_errors`.

    Raises:
        ValueError: if the three structures do not have the same entries, or an entry's shapes differ.

    Example:
        >>> fx = {"a": torch.ones(2, 3), "b": torch.ones(2)}
        >>> errors = entry_errors({"a": torch.ones(2, 3), "b": torch.zeros(2)}, fx, fx)
        >>> {k: v.tolist() for k, v in errors.items()}
        {'a': [0.0, 0.0], 'b': [1.0, 1.0]}
    """
    entries = [output_entries(o) for o in (output_of_transformed, transformed_output, output)]
    names = [list(e) for e in entries]
    if names[0] != names[2] or names[1] != names[2]:
        raise ValueError(
            f"Expected f(g x), g f(x) and f(x) to have the same entries, but got {names[0]}, {names[1]} "
            f"and {names[2]}"
        )
    if not names[2]:
        raise ValueError("the model's output holds no tensor")
    errors = {}
    for name in names[2]:
        try:
            errors[name] = _relative_errors(entries[0][name], entries[1][name], entries[2][name], eps)
        except ValueError as err:
            raise ValueError(f"output entry {name!r}: {err}") from err
    return errors


def _equivariance_error_update(
    output_of_transformed: Any,
    transformed_output: Any,
    output: Any,
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


#: the action on a model's outputs: one Action (``None``: invariant), or one per entry of a tuple,
#: list or dict output (``None`` for an invariant entry), nested like the output
OutputActions = Any


def _repeat(x: Any, copies: int) -> Any:
    """``copies`` copies of every tensor of ``x`` along dim 0 (tuples, lists and dicts keep their type)."""
    if isinstance(x, Tensor):
        return x.repeat(copies, *([1] * (x.dim() - 1)))
    if isinstance(x, Mapping):
        return type(x)({k: _repeat(v, copies) for k, v in x.items()})
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(_repeat(v, copies) for v in x))
    if isinstance(x, (tuple, list)):
        return type(x)(_repeat(v, copies) for v in x)
    if x is None:
        return None
    raise TypeError(
        f"cannot repeat a {type(x).__name__} along the batch: inputs and outputs must be tensors or "
        "tuples, lists or dicts of tensors"
    )


def _describe(x: Any) -> str:
    entries = output_entries(x)
    shapes = ", ".join(f"{k!r}: {tuple(v.shape)}" for k, v in entries.items())
    return f"a {type(x).__name__} of {len(entries)} tensors ({shapes})"


def _example(x: Any) -> str:
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k!r}: <action or None>" for k in x) + "}"
    return "[" + ", ".join("<action or None>" for _ in x) + "]"


def _structured(actions: OutputActions) -> bool:
    """Whether an ``outputs`` option gives one action per entry (a dict, list or tuple) rather than one."""
    return isinstance(actions, Mapping) or (isinstance(actions, Sequence) and not isinstance(actions, str))


def output_action(outputs: Any, group: Any) -> OutputActions:
    """The ``outputs`` option with every action name turned into an Action (structure kept).

    Raises:
        ValueError: naming the entry, for an unknown action name or one that does not act by ``group``.
        TypeError: for an entry that is neither a name, an Action, ``None`` nor a dict/list of them.

    Example:
        >>> output_action({"node": "set", "graph": None}, "S4")
        {'node': SetAction(S4, exact=True), 'graph': None}
        >>> from lightning_equi.actions import ImageAction
        >>> output_action([ImageAction("D4")], "C4")
        Traceback (most recent call last):
        ...
        ValueError: outputs[0] acts by D4, but the group is C4
    """
    from lightning_equi.actions import make_action  # the core's actions; imported late (no import cycle)
    from lightning_equi.groups import get_group

    def build(config: Any, where: str) -> Any:
        if config is None:
            return None
        if isinstance(config, Mapping):
            return {k: build(v, f"{where}[{k!r}]") for k, v in config.items()}
        if _structured(config):
            return [build(v, f"{where}[{i}]") for i, v in enumerate(config)]
        try:
            action = make_action(config, group)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{where}: {err}") from err
        if action.group != expected:
            raise ValueError(f"{where} acts by {action.group.name}, but the group is {expected.name}")
        return action

    expected = get_group(group)
    return build(outputs, "outputs")


def transform_output(actions: OutputActions, g: Tensor, output: Any) -> Any:
    """``g f(x)``: the output ``f(x)`` transformed by ``actions`` (see :data:`OutputActions`).

    One Action acts on the whole output (a :class:`~lightning_equi.actions.GraphAction` takes an
    ``(adj, features)`` pair); a dict or list of actions acts entry by entry, ``None`` leaving an
    invariant entry as it is.

    Raises:
        ValueError: if the output's entries do not match the actions' (naming both), or a single action
            cannot act on a structured output (saying how to give one action per entry).

    Example:
        >>> from lightning_equi.actions import SetAction
        >>> out = {"node": torch.arange(3.0)[None], "graph": torch.ones(1, 1)}
        >>> transform_output({"node": SetAction("S3"), "graph": None}, torch.tensor([[1, 2, 0]]), out)
        {'node': tensor([[2., 0., 1.]]), 'graph': tensor([[1.]])}
    """
    if actions is None:
        return output
    if isinstance(actions, Mapping):
        if not isinstance(output, Mapping) or set(output) != set(actions):
            got = _describe(output) if isinstance(output, (Tensor, Mapping, tuple, list)) else type(output)
            raise ValueError(
                f"`outputs` names the entries {sorted(map(str, actions))}, but the model returns {got}: "
                "give every entry of the output an action, None for an invariant one"
            )
        out = dict(output) if type(output) is dict else copy.copy(output)
        for key, act in actions.items():
            out[key] = transform_output(act, g, output[key])
        return out
    if _structured(actions):
        if not isinstance(output, (tuple, list)) or len(output) != len(actions):
            got = _describe(output) if isinstance(output, (Tensor, Mapping, tuple, list)) else type(output)
            raise ValueError(
                f"`outputs` gives {len(actions)} actions, one per entry, but the model returns {got}: "
                "give every entry of the output an action, None for an invariant one"
            )
        items = [transform_output(act, g, value) for act, value in zip(actions, output, strict=True)]
        if isinstance(output, tuple) and hasattr(output, "_fields"):
            return type(output)(*items)
        return type(output)(items)
    if isinstance(output, Tensor):
        return actions(g, output)
    try:
        return actions(g, output)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"the model returns {_describe(output)}, on which the one output action {actions!r} cannot act "
            f"({err}): give one action per entry, None for an invariant one, e.g. outputs={_example(output)}"
        ) from err


def transformed_outputs(
    model: nn.Module | Callable[[Tensor], Any],
    x: Any,
    g: Tensor,
    act_in: Action,
    act_out: OutputActions = None,
    eval_mode: bool = True,
) -> tuple[Any, Any, Any]:
    """``(f(g x), g f(x), f(x))`` for ``k`` elements per sample of ``x`` (see :func:`equivariance_error`).

    ``g`` holds ``k * B`` elements for the ``B`` samples of ``x``: sample ``i`` of copy ``c`` is
    transformed by ``g[c * B + i]`` (so ``G.elements().repeat_interleave(B, dim=0)`` probes every sample
    with every element). ``f(x)`` is evaluated once and repeated. The model runs without gradients and,
    if it is an ``nn.Module`` and ``eval_mode``, in eval mode (its mode is restored afterwards). A model
    may return a tuple, list or dict of outputs: ``act_out`` then gives one action per entry
    (:func:`transform_output`), and the three results have the model's structure.

    Args:
        model: the model ``f``, or any function of a batch.
        x: the inputs, ``(B, ...)`` (or what ``act_in`` acts on, e.g. an ``(adj, features)`` pair).
        g: the elements, ``k * B`` of them.
        act_in: the action on the inputs.
        act_out: the action on the outputs; ``None`` for invariant outputs (``g f(x) = f(x)``); a dict or
            list of actions (``None`` for invariant entries) for a model with several outputs.
        eval_mode: evaluate an ``nn.Module`` in eval mode.

    Raises:
        ValueError: if the number of elements is not a positive multiple of the batch size, or the
            output's entries do not match ``act_out``.

    Example:
        >>> from lightning_equi.actions import ImageAction
        >>> act = ImageAction("C4")
        >>> x = torch.rand(2, 1, 5, 5)
        >>> g = act.group.elements().repeat_interleave(2, dim=0)  # 4 elements x 2 samples
        >>> f_gx, g_fx, fx = transformed_outputs(lambda t: t.sum(dim=(1, 2, 3)), x, g, act)
        >>> f_gx.shape, torch.allclose(f_gx, g_fx)
        (torch.Size([8]), True)
        >>> two = lambda t: (t, t.sum(dim=(1, 2, 3)))  # an equivariant map and an invariant one
        >>> f_gx, g_fx, fx = transformed_outputs(two, x, g, act, [act, None])
        >>> float(relative_errors(f_gx, g_fx, fx).max()) < 1e-6
        True
    """
    batch = act_in.batch_size(x)
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
            out = model(x)
            if not isinstance(out, Tensor):
                output_entries(out)  # refuse, naming the entry, what cannot be compared
            fx = _repeat(out, copies)
            f_gx = model(act_in(g, _repeat(x, copies)))
            g_fx = transform_output(act_out, g, fx)
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
    model: nn.Module | Callable[[Tensor], Any],
    x: Any,
    g: Tensor,
    act_in: Action,
    act_out: OutputActions = None,
    exact: Tensor | bool | None = None,
    eps: float = 1e-12,
    eval_mode: bool = True,
) -> dict[str, Tensor]:
    """The functional equivariance error of a model, ``E ||f(g x) - g f(x)|| / ||f(x)||``, split by exactness.

    :func:`transformed_outputs` followed by :func:`equivariance_error` (see both for the arguments).
    ``exact`` flags the elements that act exactly on the data; ``None`` asks the input action
    (``act_in.exact_mask(g)``).

    A model with several outputs (a tuple, list or dict) takes one action per entry in ``act_out``
    (``None`` for an invariant entry); a sample's error is then its worst entry's, and each entry's
    own mean error comes as ``"entry/<name>"`` (``"entry/0"``, ``"entry/node"``, ``"entry/a.0"``).

    Returns:
        ``{"total": ..., "exact": ..., "inexact": ...}`` (float64); a part with no samples is NaN; and
        ``"entry/<name>"`` per entry of a structured output.

    Example:
        >>> from lightning_equi.actions import ImageAction
        >>> act = ImageAction("C4")
        >>> two = lambda t: (t.flip(-1), t.mean(dim=(1, 2, 3)))  # the mirror is not a C4 equivariant map
        >>> g = torch.arange(4).repeat_interleave(3)
        >>> out = model_equivariance_error(two, torch.rand(3, 1, 6, 6), g, act, [act, None])
        >>> float(out["entry/0"]) > 0.1, float(out["entry/1"]) < 1e-7
        (True, True)
        >>> x = torch.rand(3, 1, 6, 6)
        >>> g = act.group.elements().repeat_interleave(3, dim=0)
        >>> out = model_equivariance_error(lambda t: t.amax(dim=(2, 3)), x, g, act)
        >>> float(out["total"]) < 1e-7
        True
    """
    f_gx, g_fx, fx = transformed_outputs(model, x, g, act_in, act_out, eval_mode)
    if exact is None:
        exact = act_in.exact_mask(g)
    out = equivariance_error(f_gx, g_fx, fx, exact, eps)
    if not isinstance(fx, Tensor):
        for name, errors in entry_errors(f_gx, g_fx, fx, eps).items():
            out[f"entry/{name}"] = errors.mean()
    return out


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
