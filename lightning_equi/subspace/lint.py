"""Geometry that no projection of the weights can fix, checked at bind time on an example input.

A convolution or pooling layer commutes with the quarter turns and mirrors of the whole image only
when the grid of its output samples is symmetric about the image centre: the first and last window
centres ``c0 = d (k - 1) / 2 - p`` and ``c0 + (n_out - 1) s`` must add up to ``n - 1``. With stride 1
that always holds; with stride 2 it depends on the width (a 3x3, padding-1, stride-2 conv is exact on
9 pixels and off by one pixel on 8, so a ResNet with ``m`` such stages is exact at sides ``n`` with
``n - 1`` divisible by ``2^m``). A transposed convolution with ``output_padding > 0`` adds samples on
one side only and is exact at no size. :func:`grid_warnings` runs the model once on an example input
with hooks, checks each layer at the size it sees, and names the nearest input sizes at which every
layer is exact; :meth:`SymmetrySpec.bind(model, example_input=...)
<lightning_equi.subspace.SymmetrySpec.bind>` calls it. The escnn adapters' ``grid_lint`` does the same
for escnn models.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lightning_equi.groups import CyclicGroup, DihedralGroup, Group

__all__ = ["GridWarning", "grid_warnings", "window_is_symmetric"]

_ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_ADAPTIVE += (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)


class GridWarning(UserWarning):
    """A layer commutes with the group only approximately at the example input size."""


def window_is_symmetric(n: int, k: int, s: int, p: int, d: int = 1, ceil_mode: bool = False) -> bool:
    """Whether the output sample grid of a ``k``-window, stride ``s``, padding ``p``, dilation ``d``
    layer on ``n`` pixels is symmetric about the input's centre (so flips and quarter turns commute).

    Example:
        >>> window_is_symmetric(9, 3, 2, 1), window_is_symmetric(8, 3, 2, 1)
        (True, False)
    """
    span = n + 2 * p - d * (k - 1) - 1
    if span < 0:
        return False
    n_out = (-(-span // s) if ceil_mode else span // s) + 1
    first = d * (k - 1) / 2 - p
    return math.isclose(2 * first + (n_out - 1) * s, n - 1)


def _axes(group: Group) -> tuple[int, bool] | None:
    """``(number of trailing axes the group moves, needs a square grid)`` for planar groups on images."""
    if isinstance(group, DihedralGroup) and group.n == 1:
        return 1, False  # the mirror x -> -x moves the columns only
    if isinstance(group, (CyclicGroup, DihedralGroup)) and group.n >= 2:
        return 2, group.n > 2
    return None


def _tuple(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * n


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode


def _trace(model: nn.Module, x: Tensor) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """``(name, layer, input spatial shape)`` of every windowed layer the forward pass on ``x`` runs."""
    seen: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    hooks = []
    for name, m in model.named_modules():
        if hasattr(m, "kernel_size") and hasattr(m, "stride") and not isinstance(m, _ADAPTIVE):

            def hook(mod: nn.Module, args: tuple, name: str = name) -> None:
                if args and isinstance(args[0], Tensor):
                    size = mod.kernel_size
                    dims = len(size) if isinstance(size, tuple) else max(args[0].dim() - 2, 1)
                    seen.append((name, mod, tuple(args[0].shape[-dims:])))

            hooks.append(m.register_forward_pre_hook(hook))
    try:
        with _eval(model):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _problems(
    seen: list[tuple[str, nn.Module, tuple[int, ...]]], moved: int, square: bool
) -> list[tuple[str, str]]:
    out = []
    for name, mod, shape in seen:
        axes = min(moved, len(shape))
        n_axes = len(shape)
        kind = type(mod).__name__
        k, s = (
            _tuple(mod.kernel_size, n_axes),
            _tuple(mod.stride if mod.stride is not None else mod.kernel_size, n_axes),
        )
        if isinstance(mod.padding, str):
            continue  # 'same' / 'valid': torch decides the offsets
        p, d = _tuple(mod.padding, n_axes), _tuple(getattr(mod, "dilation", 1), n_axes)
        if square and axes == 2 and shape[-1] != shape[-2]:
            out.append(
                (name, f"({kind}) sees a {shape[-2]}x{shape[-1]} input; quarter turns need a square one")
            )
            continue
        extra = getattr(mod, "output_padding", None) if getattr(mod, "transposed", False) else None
        if extra is not None:  # a transposed convolution: centred exactly when output_padding is 0
            extra = _tuple(extra, n_axes)
            if any(extra[-axes:]):
                out.append(
                    (
                        name,
                        f"({kind}, kernel {k[-1]}, stride {s[-1]}, output_padding {extra[-1]}) adds "
                        f"{max(extra)} sample(s) on one side only, so it is exact at no input size: use "
                        "output_padding=0 (then (n - 1) * stride - 2 * padding + kernel output samples)",
                    )
                )
            continue
        ceil = bool(getattr(mod, "ceil_mode", False))
        for axis in range(n_axes - axes, n_axes):
            n = shape[axis]
            if not window_is_symmetric(n, k[axis], s[axis], p[axis], d[axis], ceil):
                out.append(
                    (
                        name,
                        f"({kind}, kernel {k[axis]}, stride {s[axis]}, padding {p[axis]}) sees width {n}: "
                        "its output grid is not centred, so it commutes with the group only approximately",
                    )
                )
                break
    return out


def _exact_sizes(model: nn.Module, x: Tensor, moved: int, square: bool, limit: int = 64) -> list[int]:
    """The nearest sides (all moved axes set to it) at which every layer is exact, at most two."""
    n, found = x.shape[-1], []
    for delta in range(1, limit + 1):
        for m in (n - delta, n + delta):
            if m < 1:
                continue
            shape = (*x.shape[: x.dim() - moved], *([m] * moved))
            try:
                ok = not _problems(_trace(model, x.new_zeros(shape)), moved, square)
            except (RuntimeError, ValueError, IndexError):  # too small, or a layer of fixed size
                ok = False
            if ok:
                found.append(m)
        if len(found) >= 2 or (found and delta > 8):
            break
    return sorted(found)


def grid_warnings(
    model: nn.Module, group: Group, example_input: Tensor | Sequence[int], warn: bool = True
) -> list[str]:
    """Check every convolution and pooling layer of a plain torch model on ``example_input``.

    Only planar groups acting on the pixel grid are checked (C_N, D_N on images; 1-D signals are
    checked without an input size, at bind). The model runs on zeros shaped like the example (in eval
    mode and without gradients; each module's mode is restored), then again at nearby sides to find
    exact ones.

    Args:
        model: the model.
        group: the spec's group.
        example_input: an input batch, or its shape without the batch axis (``(C, H, W)``).
        warn: also emit the messages as one :class:`GridWarning`.

    Returns:
        One message per layer that is only approximately equivariant at this size, naming the layer,
        the width it sees and the nearest input sides at which every layer is exact.

    Example:
        >>> down = lambda c: nn.Conv2d(c, 4, 3, stride=2, padding=1)
        >>> net = nn.Sequential(down(1), down(4))
        >>> from lightning_equi.groups import get_group
        >>> grid_warnings(net, get_group("C4"), (1, 32, 32), warn=False)[0]  # doctest: +ELLIPSIS
        "layer '0' (Conv2d, kernel 3, stride 2, padding 1) sees width 32: ...; exact input sides: 29, 33"
        >>> grid_warnings(net, get_group("C4"), (1, 33, 33), warn=False)
        []
    """
    placement = _axes(group)
    if placement is None:
        return []
    moved, square = placement
    if isinstance(example_input, Tensor):
        x = torch.zeros_like(example_input[:1])
    else:
        p = next(model.parameters(), None)
        x = torch.zeros(
            1, *(int(v) for v in example_input), dtype=p.dtype if p is not None else torch.float32
        )
    if x.dim() < 2 + moved:
        return []
    problems = _problems(_trace(model, x), moved, square)
    if not problems:
        return []
    # an output_padding is exact at no size: then searching other sizes would only cost forward passes
    sizes = (
        [] if any("output_padding" in what for _, what in problems) else _exact_sizes(model, x, moved, square)
    )
    hint = (
        f"exact input sides: {', '.join(map(str, sizes))}"
        if sizes
        else "no input side within 64 pixels makes every layer exact: change the strides, paddings or "
        "output_padding"
    )
    messages = [f"layer {name!r} {what}; {hint}" for name, what in problems]
    if warn:  # one warning for the model, naming every layer
        lines = "\n  ".join(messages)
        warnings.warn(f"{group.name} at input {tuple(x.shape[1:])}:\n  {lines}", GridWarning, stacklevel=3)
    return messages
