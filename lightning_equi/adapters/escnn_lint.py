"""Grid lint: find the layers that are only approximately equivariant at a given input size.

A convolution or pooling layer commutes with the quarter turns and mirrors of the *whole* image only
when the grid of its output samples is symmetric about the image centre: the first and last window
centres ``c0 = d (k - 1) / 2 - p`` and ``c0 + (n_out - 1) s`` must add up to ``n - 1``. With stride 1
that always holds; with stride 2 it depends on the width (a 3x3, padding-1, stride-2 conv is exact on
29 pixels and off by one pixel on 28). A rotation also needs a square input. A transposed
convolution is centred exactly when its ``output_padding`` is 0 (its ``(n - 1) s - 2 p + d (k - 1) + 1``
output samples are then symmetric). :func:`grid_lint` runs one forward pass with hooks, checks
each layer at the size it actually sees, and names the nearest model input sizes for which every
layer is exact.

Example:
    >>> import torch
    >>> from escnn import gspaces, nn as enn
    >>> gs = gspaces.rot2dOnR2(4)
    >>> it, ot = enn.FieldType(gs, [gs.trivial_repr]), enn.FieldType(gs, [gs.regular_repr])
    >>> net = enn.SequentialModule(enn.R2Conv(it, ot, 3, padding=1, stride=2))
    >>> msgs = grid_lint(net, (28, 28), warn=False)
    >>> "exact input sizes: 27, 29" in msgs[0]
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lightning_equi.adapters.escnn_projectors import keep_train_modes
from lightning_equi.subspace.lint import window_is_symmetric  # the one definition, shared with bind

__all__ = ["GridLintWarning", "grid_lint", "window_is_symmetric"]


class GridLintWarning(UserWarning):
    """A layer is only approximately equivariant on the pixel grid at the given input size."""


def _pair(v: Any, n: int) -> tuple[int, ...]:
    return tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _geometry(module: nn.Module, n: int = 2) -> tuple[tuple[int, ...], ...] | None:
    """``(kernel, stride, padding, dilation)`` per axis (``n`` axes) of a spatial layer, or ``None``."""
    if not all(hasattr(module, a) for a in ("kernel_size", "stride", "padding")):
        return None
    if isinstance(
        module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d)
    ):
        return None
    k = _pair(module.kernel_size, n)
    s = _pair(module.stride if module.stride is not None else module.kernel_size, n)
    pad = module.padding
    if isinstance(pad, str):
        return None  # 'same'/'valid' conv padding: torch decides; skip
    p = _pair(pad, n)
    d = _pair(getattr(module, "dilation", 1), n)
    return k, s, p, d


def _input_type(model: nn.Module) -> Any:
    in_type = getattr(model, "in_type", None)
    if in_type is not None:
        return in_type
    for m in model.modules():
        if m is not model and getattr(m, "in_type", None) is not None:
            return m.in_type
    raise ValueError(f"grid_lint: {type(model).__name__} has no in_type; pass in_type=<the input FieldType>")


class _Runner:
    """Runs the model on zeros of a given spatial size, as a ``GeometricTensor`` of ``in_type`` or, for a
    model whose ``forward`` wraps a plain tensor itself (escnn's tutorial models), as that tensor."""

    def __init__(self, model: nn.Module, in_type: Any) -> None:
        self.model, self.in_type = model, in_type
        self.geometric: bool | None = None  # decided on the first call that runs

    def __call__(self, size: tuple[int, ...]) -> None:
        p = next(self.model.parameters(), None)
        x = torch.zeros(1, self.in_type.size, *size, dtype=p.dtype if p is not None else torch.float32)
        if self.geometric is not None:
            self.model(self.in_type(x) if self.geometric else x)
            return
        try:
            self.model(self.in_type(x))
            self.geometric = True
        except (AssertionError, TypeError, AttributeError) as geometric_error:
            # escnn asserts on a GeometricTensor wrapped twice: try the plain tensor
            try:
                self.model(x)
            except Exception as plain_error:
                raise ValueError(
                    f"grid_lint: {type(self.model).__name__} runs neither on a GeometricTensor of its "
                    f"in_type ({type(geometric_error).__name__}: {geometric_error}) nor on a plain tensor "
                    f"of shape {tuple(x.shape)} ({type(plain_error).__name__}: {plain_error}); pass "
                    "in_type= and an input_size the model accepts"
                ) from plain_error
            self.geometric = False


def _trace(
    model: nn.Module, run: _Runner, size: tuple[int, ...]
) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    from escnn import nn as enn

    d = len(size)
    seen: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    hooks = []
    for name, m in model.named_modules():
        if _geometry(m, d) is not None:

            def hook(mod, args, name=name):
                x = args[0]
                t = x.tensor if isinstance(x, enn.GeometricTensor) else x
                seen.append((name, mod, tuple(t.shape[-d:])))

            hooks.append(m.register_forward_pre_hook(hook))
    try:
        with keep_train_modes(model), torch.no_grad():
            model.eval()
            run(size)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _problems(seen: list[tuple[str, nn.Module, tuple[int, ...]]], rotations: bool) -> list[tuple[str, str]]:
    out = []
    for name, mod, shape in seen:
        n_axes = len(shape)
        k, s, p, d = _geometry(mod, n_axes)
        ceil = bool(getattr(mod, "ceil_mode", False))
        if rotations and len(set(shape)) != 1:
            what = "square" if n_axes == 2 else "cubic"
            out.append((name, f"sees a {'x'.join(map(str, shape))} input; quarter turns need a {what} one"))
            continue
        if hasattr(mod, "output_padding"):  # a transposed convolution
            extra = _pair(mod.output_padding, n_axes)
            if any(extra):
                out.append(
                    (
                        name,
                        f"({type(mod).__name__}, kernel {k[0]}, stride {s[0]}, padding {p[0]}, "
                        f"output_padding {extra[0]}) adds {extra[0]} row(s) on one side only: its output "
                        "grid is not centred, so it is only approximately equivariant at any width; use "
                        "output_padding=0",
                    )
                )
            continue
        for axis in range(n_axes):
            n = shape[axis]
            if not window_is_symmetric(n, k[axis], s[axis], p[axis], d[axis], ceil):
                exact = [
                    m
                    for m in range(max(1, n - 2 * s[axis]), n + 2 * s[axis] + 1)
                    if window_is_symmetric(m, k[axis], s[axis], p[axis], d[axis], ceil)
                ]
                near = sorted(exact, key=lambda m: (abs(m - n), m))[:2]
                out.append(
                    (
                        name,
                        f"({type(mod).__name__}, kernel {k[axis]}, stride {s[axis]}, padding {p[axis]}) "
                        f"sees width {n} on axis {axis - n_axes}: its output grid is not centred, so it "
                        f"is only approximately equivariant; exact widths for this layer: "
                        f"{', '.join(map(str, sorted(near)))}",
                    )
                )
                break
    return out


def grid_lint(
    model: nn.Module, input_size: Sequence[int], in_type: Any = None, warn: bool = True
) -> list[str]:
    """Check every convolution and pooling layer of an escnn (or dense-escnn) model at ``input_size``.

    Args:
        model: the model; it is run once on zeros (eval mode, restored afterwards), as a
            ``GeometricTensor`` of ``in_type`` or, if its ``forward`` wraps the tensor itself (as
            escnn's tutorial models do), as a plain tensor.
        input_size: ``(H, W)`` of a 2D model's input, ``(D, H, W)`` of a 3D one (``R3Conv``).
        in_type: the input ``FieldType`` (default: ``model.in_type`` or the first layer's).
        warn: also emit each message as a :class:`GridLintWarning`.

    Returns:
        One message per approximately equivariant layer, naming it, the size it sees, the widths
        that would be exact for it, and the nearest model input sizes for which all layers are exact
        (or that the model runs at no other size, e.g. behind a ``MaskModule`` of fixed size).

    Raises:
        ValueError: if ``input_size`` does not have the gspace's dimension, or the model runs on
            neither input.
    """
    in_type = in_type if in_type is not None else _input_type(model)
    dim = int(getattr(in_type.gspace, "dimensionality", 2))
    if len(input_size) != dim:
        raise ValueError(
            f"grid_lint: input_size {tuple(input_size)} has {len(input_size)} axes, but "
            f"{in_type.gspace.name} acts on R^{dim}: pass {'(H, W)' if dim == 2 else '(D, H, W)'}"
        )
    size = tuple(int(v) for v in input_size)
    rotations = not _mirrors_only(in_type)
    run = _Runner(model, in_type)
    problems = _problems(_trace(model, run, size), rotations)
    if not problems:
        return []
    hint = _exact_sizes(model, run, size, rotations)
    messages = [f"layer {name!r} {what}; {hint}" for name, what in problems]
    if warn:
        for msg in messages:
            warnings.warn(msg, GridLintWarning, stacklevel=2)
    return messages


def _mirrors_only(in_type: Any) -> bool:
    G = in_type.gspace.fibergroup
    if G.continuous or G.order() > 2:
        return False
    if getattr(in_type.gspace, "dimensionality", 2) == 3:
        return True  # invOnR3, mirOnR3: no rotation (a C2 of rotations on R^3 is rot2dOnR3: continuous)
    return getattr(in_type.gspace, "_sg_id", (None,))[0] is not None


def _exact_sizes(model: nn.Module, run: _Runner, size: tuple[int, ...], rotations: bool) -> str:
    """The nearest square (cubic) input sizes, at most 64 away, for which every layer is exact."""
    n, d = size[-1], len(size)
    found, ran = [], 0
    for delta in range(1, 65):
        for m in (n - delta, n + delta):
            if m < 1:
                continue
            try:
                ok = not _problems(_trace(model, run, (m,) * d), rotations)
                ran += 1
            except (RuntimeError, ValueError, AssertionError):  # too small, or a fixed size (MaskModule)
                ok = False
            if ok:
                found.append(m)
        if len(found) >= 2 or (found and delta > 8):
            break
    what = "square" if d == 2 else "cubic"
    if not ran:
        return (
            f"the model runs at no other {what} input size within 64 pixels (a layer of fixed size, such "
            "as a MaskModule, decides it): change the strides or paddings instead"
        )
    if not found:
        return f"no {what} input size within 64 pixels makes every layer exact"
    return f"exact input sizes: {', '.join(map(str, sorted(found)))}"
