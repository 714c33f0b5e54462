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

:func:`lint_model` is the whole lint for a plain torch model (any ``nn.Module``, ``nn.Sequential``
included), run by :func:`~lightning_equi.subspace.infer_spec`: besides the windows at the example input
size, what breaks equivariance at every size, read from the layers themselves:

* ``padding="same"`` with an even (dilated) kernel: torch pads one more sample on the right and bottom,
  so the window is off-centre (an even kernel with explicit, symmetric padding is exact: its output
  grid sits half a pixel off, symmetrically, which the window test above checks);
* asymmetric padding layers (``nn.ZeroPad2d((0, 1, 0, 1))``, ...): the group needs equal padding on the
  sides it exchanges (all four under quarter turns, left and right under a mirror);
* ``padding_mode`` on a group that shifts a cyclic grid (C_N, D_N, T<N> on 1-D signals, a torus on
  images): only ``"circular"`` commutes with the shifts (zeros, reflect and replicate are symmetric, so
  they are fine under rotations and mirrors alone), and 1-d strides or off-centre windows under mirrors;
* ``nn.Upsample(mode="nearest")`` by a factor that is not an integer (or to a given ``size``): some
  samples are repeated more than others, off-centre (integer factors and bilinear resizing are exact);
* parameters outside any layer (a positional embedding added to the features): the group moves the
  features, not the parameter;
* with :func:`~lightning_equi.subspace.infer_spec`, pointwise nonlinearities on fields that are not
  permutation representations.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lightning_equi.groups import CyclicGroup, DihedralGroup, Group

__all__ = ["GridWarning", "grid_warnings", "window_is_symmetric", "lint_model"]

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


_PAD_LAYERS = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ReflectionPad1d)
_PAD_LAYERS += (
    nn.ReflectionPad2d,
    nn.ReplicationPad1d,
    nn.ReplicationPad2d,
    nn.CircularPad1d,
    nn.CircularPad2d,
)


def _shifts_a_cyclic_grid(group: Group, dims: int) -> bool:
    """Whether the group shifts a cyclic grid of ``dims`` axes (1: signals, 2: a torus on images)."""
    from lightning_equi.actions.signals import cyclic_length
    from lightning_equi.groups import TorusTranslations

    if isinstance(group, TorusTranslations):
        return len(group.shape) == dims
    if dims != 1:
        return False
    try:
        return cyclic_length(group) is not None
    except ValueError:
        return False


def _static(model: nn.Module, group: Group) -> list[str]:
    """What breaks equivariance at every input size, read from the layers' settings."""
    from lightning_equi.subspace.layers import CONV, CONV_T, LAYERS, NORMS, signal_geometry_warnings

    placement = _axes(group)
    out: list[str] = []
    for name, m in model.named_modules():
        where = f"layer {name!r} ({type(m).__name__})"
        kernel = getattr(m, "kernel_size", None)
        if isinstance(m, (*CONV, *CONV_T)) and m.padding == "same":
            odd = [d * (k - 1) % 2 for k, d in zip(m.kernel_size, m.dilation, strict=True)]
            if any(odd):
                out.append(
                    f"{where}: padding='same' with the even kernel {tuple(m.kernel_size)} pads one more "
                    "sample on the right/bottom than on the left/top, so its window is off-centre at every "
                    "size: use an odd kernel_size, or explicit symmetric padding (padding=k // 2)"
                )
        if isinstance(m, _PAD_LAYERS) and placement is not None:
            pad = tuple(m.padding)  # (left, right[, top, bottom])
            moved, square = placement
            sides = pad if square and moved == 2 and len(pad) == 4 else None
            if sides is not None and len(set(sides)) > 1:
                out.append(
                    f"{where}: pads {pad} (left, right, top, bottom); quarter turns need equal padding "
                    "on all sides"
                )
            elif pad[0] != pad[1] or (len(pad) == 4 and moved == 2 and pad[2] != pad[3]):
                out.append(
                    f"{where}: pads {pad} (left, right, top, bottom); mirrors need equal padding on the "
                    "sides they exchange"
                )
        if isinstance(m, (*CONV, *CONV_T)) and _shifts_a_cyclic_grid(group, len(m.kernel_size)):
            if len(m.kernel_size) == 1:
                out.extend(signal_geometry_warnings(m, group, where))
            elif m.padding_mode != "circular" and any(k > 1 for k in m.kernel_size):
                out.append(
                    f"{where}: padding_mode={m.padding_mode!r} does not commute with the shifts of "
                    f"{group.name}'s cyclic grid: pass padding_mode='circular'"
                )
        elif isinstance(m, (nn.MaxPool1d, nn.AvgPool1d)) and _shifts_a_cyclic_grid(group, 1) and kernel != 1:
            stride = m.stride if isinstance(m.stride, int) else m.stride[0]
            if stride != 1:
                out.append(
                    f"{where}: stride {stride} keeps one sample in {stride}, which does not commute with "
                    f"every shift of {group.name}'s cyclic grid: pool globally (nn.AdaptiveAvgPool1d(1)) "
                    "instead"
                )
        if isinstance(m, nn.Upsample) and m.mode == "nearest" and placement is not None:
            factors = m.scale_factor if isinstance(m.scale_factor, tuple) else (m.scale_factor,)
            if m.size is not None or any(f is None or float(f) != int(f) for f in factors):
                out.append(
                    f"{where}: nearest resizing by a factor that is not an integer (scale_factor="
                    f"{m.scale_factor}, size={m.size}) repeats some samples more than others, off-centre: "
                    "use an integer scale_factor, or mode='bilinear' (symmetric at any size)"
                )
        if isinstance(m, nn.Embedding) or not isinstance(m, (*LAYERS, *NORMS)):
            for pname, p in m.named_parameters(recurse=False):
                if p.dim() >= 2 or isinstance(m, nn.Embedding):
                    qualified = f"{name}.{pname}" if name else pname
                    out.append(
                        f"parameter {qualified!r} (shape {tuple(p.shape)}) belongs to no layer: if it is "
                        "added to the features (a positional embedding), it breaks equivariance, as the "
                        "group moves the features and not the parameter; remove it, or make it invariant "
                        "(declare it with spec.parameter(...))"
                    )
    return out


def lint_model(
    model: nn.Module,
    group: Group | str,
    example_input: Tensor | Sequence[int] | None = None,
    *,
    inputs: object = None,
    warn: bool = True,
    findings: Sequence[object] = (),
) -> list[str]:
    """Everything in a plain torch model that breaks exact equivariance whatever its weights.

    The checks of the module docstring: the layers' settings (at every size), the windows of every
    convolution and pooling layer at ``example_input``'s size (:func:`grid_warnings`, with the nearest
    exact input sides), and, with ``inputs`` (the action on the model's input), what the inferred
    fields say (:func:`~lightning_equi.subspace.infer_spec`: a nonlinearity on fields that are not a
    permutation representation, or the reason inference refuses the model).

    Args:
        model: any ``nn.Module`` (``nn.Sequential`` included).
        group: the group, or its name.
        example_input: an input batch, or its shape without the batch axis (``(C, H, W)``).
        inputs: the action on the input (``"image"``, ...), to check the fields too.
        warn: also emit the messages as one :class:`GridWarning`.
        findings: more messages to report with these (what inference found).

    Returns:
        One message per problem, naming the layer and the fix.

    Example:
        >>> from lightning_equi.groups import get_group
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 2, padding="same"), nn.ZeroPad2d((0, 1, 0, 1)),
        ...                     nn.Conv2d(4, 4, 3, stride=2, padding=1))
        >>> for message in lint_model(net, "C4", (1, 9, 9), warn=False):
        ...     print(message[:64])
        layer '0' (Conv2d): padding='same' with the even kernel (2, 2) p
        layer '1' (ZeroPad2d): pads (0, 1, 0, 1) (left, right, top, bott
        layer '2' (Conv2d, kernel 3, stride 2, padding 1) sees width 10:
    """
    from lightning_equi.groups import get_group

    group = get_group(group)
    messages = _static(model, group)
    found = [str(f) for f in findings]
    if inputs is not None:
        from lightning_equi.subspace.inference import infer_spec

        try:
            spec = infer_spec(model, group, inputs, example_input=example_input, lint=False)
            found += [str(f) for f in spec.findings]
        except ValueError as err:
            found.append(f"the spec cannot be inferred: {err}")
    messages += found
    if example_input is not None:
        messages += grid_warnings(model, group, example_input, warn=False)
    if warn and messages:
        size = "" if example_input is None else f" at input {_shape(example_input)}"
        lines = "\n  ".join(messages)
        warnings.warn(f"{group.name}{size}:\n  {lines}", GridWarning, stacklevel=2)
    return messages


def _shape(example: Tensor | Sequence[int]) -> tuple[int, ...]:
    return tuple(example.shape[1:]) if isinstance(example, Tensor) else tuple(int(v) for v in example)
