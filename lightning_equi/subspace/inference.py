"""Zero-line symmetry: infer the :class:`~lightning_equi.subspace.SymmetrySpec` of a plain torch model.

The user names the group and how it acts on the data (``inputs="image"``, ``outputs=None`` for
invariant logits); :func:`infer_spec` works out the fields of every layer by tracing the model's forward
and propagating *field types* through the graph:

* the input's fields come from the data action: an image or a 1-D signal is a map of scalar fields
  (``"trivial"`` channels, or the action's own fields such as ``"image:standard"``), a set
  ``(B, n, d)`` under S_n has its elements permuted and ``d`` invariant features, an adjacency
  ``(B, n, n)`` has both node axes permuted;
* every convolution and ``nn.Linear`` writes ``hidden`` fields (default: ``"regular"`` on images,
  ``"mirror"`` on signals under mirrors, ``"trivial"`` under shifts alone, ``"standard"`` under S_n,
  whose regular representation has n! dimensions), except the *heads*, the layers whose output reaches
  the model's output without passing another layer: they write the output's fields (``"trivial"`` for
  invariant outputs, the target action's fields for equivariant ones);
* pointwise nonlinearities, dropout, pooling (max, average, adaptive, global means and sums) and
  normalisation layers keep the fields; a residual addition needs equal fields on both sides;
  ``torch.cat`` along the channels is the direct sum; ``Flatten`` after a global pool keeps the channel
  fields, ``Flatten`` of a spatial map gives pixel-grid fields (``"grid<H>x<W>"``, one copy per
  channel, or the product of the channel fields and the grid) for the next ``nn.Linear``;
  ``ConvTranspose`` and ``Upsample``/``interpolate`` keep the grid.

The result is an ordinary :class:`SymmetrySpec` with one declaration per layer, which
:meth:`SymmetrySpec.declarations` prints as code to copy and edit. :class:`InferredSpec` is the same,
deferred until it is bound (what ``build_callbacks("equi", group="C4", inputs="image")`` gives the
callbacks when the model declares no spec; a model's own ``symmetry_spec()`` always wins).

Why ``torch.fx``: symbolic tracing keeps the graph at the level of ``nn.Module`` calls (``torch.nn``
layers are leaves), so each node names the layer whose parameters get fields, and it needs neither an
input nor a compiler. ``torch.export`` is not used as a fallback: it lowers modules to ATen operators
on lifted parameters, so the layer structure would have to be recovered from node metadata, and it
fails on the same data-dependent control flow for which fx fails. When tracing fails (control flow
that depends on the input's values, an op fx cannot follow), or the graph holds an op whose effect on
fields is not known here, :func:`infer_spec` raises a ``ValueError`` naming the op and the fix:
declare the spec by hand (``SymmetrySpec(group).layer(...)``), or mark the offending module as a leaf
that the spec declares.

Example:
    >>> net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(8, 10))
    >>> spec = infer_spec(net, "C4", inputs="image")
    >>> print(spec.declarations())
    SymmetrySpec('C4')
        .layer('0', 'trivial', 'regular')
        .layer('4', 'regular', 'trivial')
    >>> spec.bind(net).dim  # 2 fields x (one 3x3 kernel + a bias) + 10 x (2 weights + a bias)
    50
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from lightning_equi.groups import (
    CyclicGroup,
    DihedralGroup,
    Group,
    Representation,
    SymmetricGroup,
    get_group,
    grid_representation,
    pair_representation,
    standard,
)
from lightning_equi.subspace.layers import BATCH_NORM, LAYERS, NORMS, describe_layer
from lightning_equi.subspace.spec import Fields, SymmetrySpec

__all__ = ["InferredSpec", "infer_spec", "Finding", "product_representation", "default_hidden"]

_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.LogSigmoid, nn.Threshold,
)  # fmt: skip
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)
_POOL = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.LPPool1d, nn.LPPool2d,
)  # fmt: skip
_ADAPTIVE = (
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
_PADS = (
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ReflectionPad1d, nn.ReflectionPad2d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.CircularPad1d, nn.CircularPad2d,
)  # fmt: skip
_POINTWISE_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardtanh,
    F.hardswish, F.hardsigmoid, F.softplus, F.softsign, F.logsigmoid, F.tanhshrink, F.sigmoid, F.tanh,
    torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.abs, torch.square, torch.sqrt,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, torch.clamp,
}  # fmt: skip
_POINTWISE_METHODS = {
    "relu", "sigmoid", "tanh", "exp", "abs", "square", "sqrt", "clamp", "relu_", "sigmoid_",
    "tanh_", "clamp_",
}  # fmt: skip
#: ops that neither move the data nor mix it (dtype, device, memory layout)
_IDENTITY_METHODS = {
    "contiguous",
    "clone",
    "float",
    "double",
    "half",
    "bfloat16",
    "to",
    "type_as",
    "detach",
    "neg",
}
_IDENTITY_FUNCTIONS = {torch.clone, operator.neg, torch.neg}  # linear: commute with any fields
_ARITHMETIC = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub, operator.imul,
    torch.add, torch.sub, torch.mul, torch.div,
}  # fmt: skip
_ARITHMETIC_METHODS = {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_"}
_REDUCTIONS = {torch.mean: "mean", torch.sum: "sum", torch.amax: "amax", torch.amin: "amin"}
_POOL_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
}  # fmt: skip
_SOFTMAX = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax}


@dataclass(frozen=True)
class Finding:
    """Something in the model that breaks exact equivariance whatever the weights (for the lint)."""

    layer: str
    message: str

    def __str__(self) -> str:
        return f"{self.layer}: {self.message}"


# --------------------------------------------------------------------------------------------------
# field types of the values in the graph


@dataclass(frozen=True)
class _Fields:
    """Fields on a channel axis: ``(field, copies)`` parts in order (``copies`` is ``None`` while a
    count is unknown, e.g. the channels of the input image), laid out ``"fields"`` or ``"interleaved"``."""

    parts: tuple[tuple[str | Representation, int | None], ...]
    layout: str = "fields"

    def declared(self) -> Fields:
        """What :meth:`SymmetrySpec.layer` takes: one field type (repeated) or the list of fields."""
        if len({_key(f) for f, _ in self.parts}) == 1:
            return self.parts[0][0]
        out: list[str | Representation] = []
        for f, copies in self.parts:
            if copies is None:
                raise ValueError("unknown number of channels in a sum of fields")
            out.extend([f] * copies)
        return out

    def normal(self) -> tuple:
        merged: list[list] = []
        for f, copies in self.parts:
            if merged and merged[-1][0] == _key(f) and None not in (copies, merged[-1][1]):
                merged[-1][1] += copies
            else:
                merged.append([_key(f), copies])
        return (tuple(tuple(m) for m in merged), self.layout)

    def describe(self) -> str:
        parts = [f"{_key(f)}" if c in (None, 1) else f"{c} x {_key(f)}" for f, c in self.parts]
        return " + ".join(parts) + ("" if self.layout == "fields" else f" ({self.layout})")


def _key(f: str | Representation) -> str:
    return f if isinstance(f, str) else f"<{f.name}>"


@dataclass(frozen=True)
class _Value:
    """A tensor of the traced graph: the role of each axis after the batch axis (``"c"`` channels
    carrying ``fiber``, ``"g"`` a grid axis the group moves, ``"e"`` a set axis S_n permutes), their
    sizes when known, and, for a flattened map whose sizes were unknown, the axes it came from."""

    axes: tuple[str, ...]
    fiber: _Fields | None
    sizes: tuple[int | None, ...] = ()
    flat_of: tuple[tuple[str, ...], _Fields | None] | None = None

    def with_fiber(self, fiber: _Fields) -> _Value:
        return replace(self, fiber=fiber, flat_of=None)


class _Fixed:
    """A value the group does not move (a number, a shape, a tensor built from constants)."""


FIXED = _Fixed()


@dataclass(frozen=True)
class _Param:
    """A parameter or buffer read directly in ``forward`` (``x + self.pos_embedding``)."""

    name: str


@dataclass
class _State:
    spec: SymmetrySpec
    hidden: Callable[[str, nn.Module], Fields]
    heads: set[str]
    out_fiber: _Fields | None
    modules: dict[str, nn.Module] = field(default_factory=dict)
    hidden_given: Any = None
    out_kind: str | None = None
    grid: tuple[int, int] | None = None  # the sides of the input image, when known
    declared: dict[str, tuple] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# defaults


def default_hidden(group: Group | str, inputs: Any = "image") -> str:
    """The hidden fields :func:`infer_spec` gives convolutions and linear layers by default.

    ``"regular"`` for C_N/D_N on images (a permutation representation: pointwise nonlinearities stay
    equivariant); on 1-D signals ``"mirror"`` under mirrors and ``"trivial"`` under shifts alone (a
    circular convolution already commutes with them); ``"standard"`` under S_n.

    Example:
        >>> default_hidden("C4"), default_hidden("D8", "signal"), default_hidden("S5", "set")
        ('regular', 'mirror', 'standard')
    """
    group = get_group(group)
    if isinstance(group, SymmetricGroup):
        return "standard"
    if _kind(inputs) == "signal":
        mirrors = isinstance(group, DihedralGroup) or (isinstance(group, CyclicGroup) and group.n == 2)
        return "mirror" if mirrors else "trivial"
    return "regular"


def _kind(inputs: Any) -> str:
    from lightning_equi.actions import GraphAction, ImageAction, SetAction, SignalAction

    if isinstance(inputs, str):
        return inputs.strip().lower().partition(":")[0]
    for cls, name in (
        (ImageAction, "image"),
        (SignalAction, "signal"),
        (SetAction, "set"),
        (GraphAction, "graph"),
    ):
        if isinstance(inputs, cls):
            return name
    return type(inputs).__name__


def _action_fiber(action: Any, group: Group, who: str) -> _Fields:
    """The channel fields an action puts on the data: ``"image:standard"`` -> standard fields."""
    from lightning_equi.groups import FIELD_NAMES

    if action is None:
        return _Fields((("trivial", None),))
    if isinstance(action, str):
        name = action.strip().lower().partition(":")[2].strip()
        return _Fields(((name or "trivial", None),))
    fiber = getattr(action, "fields", None) or getattr(action, "features", None)
    if fiber is None:
        return _Fields((("trivial", None),))
    if fiber.name in FIELD_NAMES or fiber.name in ("mirror",):
        return _Fields(((fiber.name, None),))
    raise ValueError(
        f"{who}: the action's fields {fiber.name} have no name the spec knows; pass the action by name "
        "(e.g. 'image:regular'), or declare the spec by hand"
    )


def _input_value(inputs: Any, group: Group, example: Tensor | None) -> _Value:
    kind = _kind(inputs)
    if isinstance(inputs, Mapping):
        raise ValueError(
            "infer_spec: inputs is a mapping of batch keys to actions; inference follows one input tensor: "
            "pass the action on the model's input (e.g. inputs='image'), or declare the spec by hand"
        )
    fiber = _action_fiber(inputs, group, f"inputs={inputs!r}")
    rank = None if example is None else example.dim() - 1
    if kind == "image":
        if rank == 2:  # (B, H, W): one scalar field, no channel axis
            return _Value(("g", "g"), None, _sizes(example, 2))
        return _Value(("c", "g", "g"), fiber, _sizes(example, 3))
    if kind == "signal":
        return _Value(("c", "g"), fiber, _sizes(example, 2))
    if kind == "set":
        if rank == 1:  # (B, n): one number per element, the standard representation
            return _Value(("c",), _Fields((("standard", 1),)), (group.n,))
        features = None if example is None else int(example.shape[-1])  # known: no ambiguity left
        return _Value(("e", "c"), _Fields((("trivial", features),)), _sizes(example, 2))
    if kind == "graph":
        if rank == 3:
            return _Value(("e", "e", "c"), _Fields((("trivial", None),)), _sizes(example, 3))
        return _Value(("e", "e"), None, (group.n, group.n))
    raise ValueError(
        f"infer_spec: cannot infer fields from inputs={inputs!r}; inference knows the actions 'image', "
        "'signal', 'set' and 'graph' (optionally '<name>:<fields>'); declare the spec by hand otherwise"
    )


def _sizes(example: Tensor | None, rank: int) -> tuple[int | None, ...]:
    if example is None or example.dim() - 1 != rank:
        return (None,) * rank
    return tuple(int(s) for s in example.shape[1:])


def _output_fiber(outputs: Any, group: Group) -> tuple[_Fields, str | None]:
    """The fields the heads write, and the kind of output expected (``None``: invariant)."""
    if outputs is None:
        return _Fields((("trivial", None),)), None
    return _action_fiber(outputs, group, f"outputs={outputs!r}"), _kind(outputs)


# --------------------------------------------------------------------------------------------------
# representations of flattened tensors


def product_representation(reps: Sequence[Representation]) -> Representation:
    """The representation on the row-major flattening of a tensor whose axes carry ``reps``.

    ``(rho(g) x)[i, j] = x[rho_1^-1 i, rho_2^-1 j]`` for permutation representations (a gather with
    combined indices), the Kronecker product of the matrices otherwise. It is what ``x.flatten(1)`` of
    a ``C x H x W`` map with channel fields ``rho_1`` and the pixel grid ``rho_2`` carries.

    Example:
        >>> from lightning_equi.groups import get_group, regular
        >>> C4 = get_group("C4")
        >>> rho = product_representation([regular(C4), grid_representation(C4, (2, 2))])
        >>> g, x = torch.tensor([1]), torch.randn(1, 4, 2, 2)
        >>> turned = torch.rot90(x[:, [3, 0, 1, 2]], 1, dims=(-2, -1))  # permute channels, turn the grid
        >>> torch.equal(x.flatten(1)[:, rho.permutation(g)[0]], turned.flatten(1))
        True
    """
    reps = list(reps)
    if len(reps) == 1:
        return reps[0]
    group = reps[0].group
    dims = [r.dim for r in reps]
    total = math.prod(dims)
    name = " (x) ".join(r.name for r in reps)
    if all(r.is_permutation for r in reps):

        def perm(g: Tensor) -> Tensor:
            src = torch.zeros(g.shape[0], 1, dtype=torch.long, device=g.device)
            for r in reps:
                src = (src[:, :, None] * r.dim + r.permutation(g)[:, None, :]).reshape(g.shape[0], -1)
            return src

        def matrices(g: Tensor) -> Tensor:
            return torch.eye(total, dtype=torch.float64, device=g.device)[perm(g)]

        return Representation(group, total, name, matrices, perm)

    def kron(g: Tensor) -> Tensor:
        out = reps[0](g)
        for r in reps[1:]:
            m = r(g)
            out = torch.einsum("bij,bkl->bikjl", out, m).reshape(g.shape[0], out.shape[1] * m.shape[1], -1)
        return out

    return Representation(group, total, name, kron)


def _flatten(value: _Value, spec: SymmetrySpec, where: str, sizes: tuple[int, ...]) -> _Fields:
    """The fields of ``x.flatten(1)``: a pooled map keeps its channel fields; a map or set gives the
    product of its axes' representations, named ``k * R`` or ``interleaved(k * R)`` when the channels
    are invariant."""
    group = spec.group
    axes, fiber = value.axes, value.fiber
    if all(a == "c" or s == 1 for a, s in zip(axes, sizes, strict=True)):
        return fiber
    moved: list[tuple[int, Representation]] = []  # (first axis, representation of the moved axes)
    i = 0
    while i < len(axes):
        if axes[i] == "g":
            j = i
            while j < len(axes) and axes[j] == "g":
                j += 1
            if j - i != 2:
                raise ValueError(
                    f"{where}: flattens a {j - i}-d grid; inference builds the pixel-grid fields of 2-d "
                    "images only. Pool the signal first (e.g. nn.AdaptiveAvgPool1d(1)), or declare the "
                    "spec by hand"
                )
            try:
                moved.append((i, grid_representation(group, (sizes[i], sizes[i + 1]))))
            except ValueError as err:
                raise ValueError(f"{where}: flattens a {sizes[i]}x{sizes[i + 1]} map: {err}") from err
            i = j
        elif axes[i] == "e":
            if i + 1 < len(axes) and axes[i + 1] == "e":
                moved.append((i, pair_representation(group)))
                i += 2
            else:
                moved.append((i, standard(group)))
                i += 1
        else:
            i += 1
    if len(moved) != 1:
        raise ValueError(f"{where}: flattens several moved axes {axes}; declare the spec by hand")
    at, rep = moved[0]
    name = rep.name if rep.name in ("standard", "pairs") or rep.name.startswith("grid") else rep
    if fiber is None:
        return _Fields(((name, 1),))
    c = axes.index("c")
    channels = sizes[c]
    trivial_fiber = all(_key(f) == "trivial" for f, _ in fiber.parts)
    if trivial_fiber:
        return _Fields(((name, channels),), "fields" if c < at else "interleaved")
    rho_c = spec.fields(fiber.declared(), channels, f"{where} channels")
    reps = [rho_c, rep] if c < at else [rep, rho_c]
    return _Fields(((product_representation(reps), 1),))


# --------------------------------------------------------------------------------------------------
# tracing


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as err:  # fx raises TraceError, TypeError, NotImplementedError, ... from user code
        raise ValueError(
            f"infer_spec: torch.fx cannot trace {type(model).__name__}.forward ({type(err).__name__}: "
            f"{err}). Control flow that depends on the input's values, or an op fx cannot follow, stops "
            "symbolic tracing. Declare the spec by hand (SymmetrySpec(group).layer(...)), or move the "
            "untraceable part into a submodule that the spec declares"
        ) from err


def _shapes(gm: fx.GraphModule, example: Tensor) -> None:
    """Record every node's shape (``node.meta["tensor_meta"]``) from one forward pass on zeros shaped
    like ``example``, in eval mode and without gradients (running statistics are not touched)."""
    from torch.fx.passes.shape_prop import ShapeProp

    modes = [(m, m.training) for m in gm.modules()]
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros_like(example[:1]))
    except Exception as err:
        raise ValueError(
            f"infer_spec: the model does not run on example_input of shape {tuple(example.shape[1:])} "
            f"({type(err).__name__}: {err}); a shape is given without the batch axis, e.g. (3, 32, 32)"
        ) from err
    finally:
        for m, mode in modes:
            m.training = mode


def _heads(gm: fx.GraphModule) -> set[str]:
    """Names of the layers whose output reaches the model's output without passing another layer."""
    modules = dict(gm.named_modules())
    heads: set[str] = set()
    seen: set[fx.Node] = set()
    stack = [n for n in gm.graph.nodes if n.op == "output"]
    while stack:
        node = stack.pop()
        for arg in node.all_input_nodes:
            if arg in seen:
                continue
            seen.add(arg)
            if arg.op == "call_module" and isinstance(modules[arg.target], LAYERS):
                heads.add(arg.target)
            else:
                stack.append(arg)
    return heads


def _where(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"layer {node.target!r} ({describe_layer(modules[node.target])})"
    target = getattr(node.target, "__name__", str(node.target))
    return f"op {target!r} (node {node.name!r})"


def infer_spec(
    model: nn.Module,
    group: Group | str,
    inputs: Any = "image",
    outputs: Any = None,
    *,
    example_input: Tensor | Sequence[int] | None = None,
    hidden: Fields | Mapping[str, Fields] | None = None,
    lint: bool = True,
) -> SymmetrySpec:
    """The :class:`SymmetrySpec` of a plain torch model, from the group and its action on the data.

    Args:
        model: the model (traced with ``torch.fx``; see the module docstring).
        group: the group, or its name.
        inputs: the action on the model's input: ``"image"``, ``"signal"``, ``"set"``, ``"graph"``
            (optionally ``"<name>:<fields>"``), or such an Action.
        outputs: the action on the output: ``None`` for invariant outputs (logits), ``"image"`` for a
            map that moves with the image (a mask), ``"image:standard"`` for a vector field, ...
        example_input: an input batch, or its shape without the batch axis, e.g. ``(3, 32, 32)``;
            needed only to read sizes that the layers do not give (a flattened map of unknown side),
            and used to tell ``(B, n)`` sets from ``(B, n, d)`` ones.
        hidden: the fields of hidden layers: one field type for all (default :func:`default_hidden`),
            or ``{layer name: fields}`` for some (the others keep the default).
        lint: warn (one :class:`~lightning_equi.subspace.lint.GridWarning`) about what breaks exact
            equivariance whatever the weights (:func:`~lightning_equi.subspace.lint.lint_model`): with
            ``example_input``, strides and pooling windows at that size too.

    Returns:
        A SymmetrySpec with one ``layer`` (and ``norm``) declaration per layer; edit it like any other.

    Raises:
        ValueError: naming the layer or op: an untraceable forward or unknown op, hidden channels
            that the fields do not divide (with the counts that would work), a residual addition of
            different fields, a layer that mixes axes the group moves, an output that does not match
            ``outputs``.
    """
    group = get_group(group)
    if isinstance(example_input, Sequence) and not isinstance(example_input, Tensor):
        p = next(model.parameters(), None)
        example_input = torch.zeros(
            1, *(int(s) for s in example_input), dtype=p.dtype if p is not None else None
        )
    gm = _trace(model)
    modules = dict(gm.named_modules())
    default = default_hidden(group, inputs)

    def hidden_of(name: str, module: nn.Module) -> Fields:
        if isinstance(hidden, Mapping):
            return hidden.get(name, default)
        return default if hidden is None else hidden

    out_fiber, out_kind = _output_fiber(outputs, group)
    state = _State(SymmetrySpec(group), hidden_of, _heads(gm), out_fiber, modules, hidden, out_kind)
    if example_input is not None:
        _shapes(gm, example_input)
    env: dict[fx.Node, Any] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if node is placeholders[0]:
                env[node] = _input_value(inputs, group, example_input)
                grid = [s for a, s in zip(env[node].axes, env[node].sizes, strict=False) if a == "g"]
                if len(grid) == 2 and None not in grid:
                    state.grid = tuple(grid)
            else:
                env[node] = FIXED  # other arguments (flags with defaults): not moved
            continue
        if node.op == "output":
            _check_output(node.args[0], env, state, out_kind, outputs)
            continue
        try:
            env[node] = _step(node, env, state, modules)
        except _Unsupported as err:
            raise ValueError(f"infer_spec: {_where(node, modules)}: {err}") from None
    spec = state.spec
    for name, decl in state.declared.items():
        if decl[0] == "layer":
            _, rho_in, rho_out = decl
            layout = (rho_in.layout, rho_out.layout)
            spec.layer(
                name,
                rho_in.declared(),
                rho_out.declared(),
                layout=layout if len(set(layout)) > 1 else layout[0],
            )
        else:
            spec.norm(name, decl[1].declared())
    spec.findings = list(state.findings)
    if lint:
        from lightning_equi.subspace.lint import lint_model

        lint_model(model, group, example_input, findings=spec.findings)
    return spec


class _Unsupported(Exception):
    pass


def _arg(env: dict, a: Any) -> Any:
    if isinstance(a, fx.Node):
        return env[a]
    if isinstance(a, (list, tuple)):
        return type(a)(_arg(env, x) for x in a)
    return FIXED if isinstance(a, (int, float, bool, type(None), str, torch.dtype, torch.device)) else a


def _moved(x: Any) -> bool:
    return isinstance(x, _Value)


def _step(node: fx.Node, env: dict, state: _State, modules: dict[str, nn.Module]) -> Any:
    args = [_arg(env, a) for a in node.args]
    kwargs = {k: _arg(env, v) for k, v in node.kwargs.items()}
    values = [a for a in _leaves([*args, *kwargs.values()]) if _moved(a)]
    if node.op == "get_attr":
        return _Param(node.target)
    if not values:
        if any(isinstance(a, _Param) for a in args):
            return _Param(next(a.name for a in args if isinstance(a, _Param)))
        if node.op == "call_module" and _has_parameters(modules[node.target]):
            raise _Unsupported("reads no input the group moves; declare the spec by hand")
        return FIXED  # shapes, constants, and tensors built from them
    if node.op == "call_module":
        return _module(node, args[0], state, modules)
    return _call(node, args, kwargs, state)


def _leaves(items: Any) -> list:
    out = []
    for item in items:
        out.extend(_leaves(item) if isinstance(item, (list, tuple)) else [item])
    return out


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


# ---- modules -------------------------------------------------------------------------------------


def _module(node: fx.Node, x: Any, state: _State, modules: dict[str, nn.Module]) -> Any:
    name, module = node.target, modules[node.target]
    if not _moved(x):
        raise _Unsupported("its input is not a tensor the group moves")
    if isinstance(module, LAYERS):
        return _layer(name, module, x, state, node)
    if isinstance(module, NORMS):
        return _norm(name, module, x, state, node)
    if isinstance(module, _POINTWISE_MODULES):
        if isinstance(module, nn.PReLU) and module.num_parameters > 1:
            raise _Unsupported("a PReLU with one slope per channel; use nn.PReLU() (one slope) or declare it")
        _pointwise(_where(node, modules), x, state, type(module).__name__)
        return x
    if isinstance(module, _DROPOUT):
        return x
    if isinstance(module, (*_POOL, *_ADAPTIVE)):
        return _pool(x, node, len(_grid_axes(x)), f"{type(module).__name__}", module)
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise _Unsupported(f"nn.Flatten({module.start_dim}, {module.end_dim}); only start_dim=1 is known")
        return _flatten_value(x, node, state)
    if isinstance(module, nn.Upsample):
        return _resized(x, node)
    if isinstance(module, _PADS):
        return _resized(x, node)
    if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
        _pointwise(_where(node, modules), x, state, type(module).__name__)
        return x
    raise _Unsupported(
        f"inference does not know how {type(module).__name__} acts on fields; declare the spec by hand "
        "(SymmetrySpec(group).layer(...), spec.parameter(...) for its parameters)"
    )


def _grid_axes(x: _Value) -> list[int]:
    return [i for i, a in enumerate(x.axes) if a == "g"]


def _sizes_of(node: fx.Node, x: _Value) -> tuple[int | None, ...]:
    meta = node.meta.get("tensor_meta")
    if meta is not None and hasattr(meta, "shape") and len(meta.shape) == len(x.axes) + 1:
        return tuple(int(s) for s in meta.shape[1:])
    return x.sizes if len(x.sizes) == len(x.axes) else (None,) * len(x.axes)


def _layer(name: str, module: nn.Module, x: _Value, state: _State, node: fx.Node) -> _Value:
    where = f"layer {name!r} ({describe_layer(module)})"
    spec = state.spec
    c_in, c_out = (
        (module.in_features, module.out_features)
        if isinstance(module, nn.Linear)
        else (module.in_channels, module.out_channels)
    )
    if isinstance(module, nn.Linear):
        if x.axes[-1] != "c":
            raise _Unsupported(
                f"applies nn.Linear over the last axis of a tensor whose axes are {_show_axes(x)}: it "
                "would mix positions the group moves; flatten the map (or pool it) first, or move the "
                "channels last"
            )
        if x.flat_of is not None:
            x = _resolve_flat(x, c_in, state, where)
        if x.axes == ("e", "c") and x.fiber.parts == (("trivial", None),) and c_in == spec.group.n:
            # the raw input of unknown shape: a set (B, n, d) with d == n features, or a (B, n) vector
            raise _Unsupported(
                f"reads a set whose shape is unknown, and in_features == n == {c_in}: the input may be "
                f"(B, {c_in}) (one number per element: 'standard' fields) or (B, {c_in}, {c_in}) ({c_in} "
                "invariant features per element); pass example_input= (its shape), or set the "
                "LightningModule's example_input_array"
            )
        axes = x.axes
    else:
        k = len(module.kernel_size)
        if x.axes != ("c",) + ("g",) * k:
            raise _Unsupported(f"a {k}-d convolution reads a tensor whose axes are {_show_axes(x)}")
        axes = x.axes
    rho_in = _count(x.fiber, c_in, spec, f"{where} in_fields")
    hidden = state.hidden_given
    if name in state.heads:
        head = state.out_fiber.parts[0][0]
        if isinstance(module, nn.Linear) and state.out_kind == "image":
            if state.grid is None:
                raise _Unsupported(
                    "writes a flat output, read as the pixels of an image (outputs='image'), whose sides are "
                    "unknown; pass example_input= (its shape) to infer_spec"
                )
            head = f"grid{state.grid[0]}x{state.grid[1]}"
        out = _count(_Fields(((head, None),)), c_out, spec, f"{where} out_fields")
    elif (
        axes == ("c",)
        and all(_key(f) == "trivial" for f, _ in rho_in.parts)
        and not isinstance(hidden, Mapping)
    ):
        out = _Fields((("trivial", c_out),))  # invariant features stay invariant (nothing moves them)
    elif hidden is None and _pixels(rho_in, c_out, spec, where):
        out = _Fields(((rho_in.parts[0][0], c_out // _pixels(rho_in, c_out, spec, where)),))
    else:
        hidden = state.hidden_given
        # features of each element of a set (or edge of a graph): the group moves the elements only
        fields = (
            "trivial"
            if "e" in axes and not isinstance(state.hidden_given, Mapping)
            else state.hidden(name, module)
        )
        if "e" in axes and isinstance(state.hidden_given, Mapping):
            fields = state.hidden_given.get(name, "trivial")
        out = _hidden_count(fields, c_out, spec, where)
    _declare(state, name, ("layer", rho_in, out), where)
    sizes = _sizes_of(node, replace(x, axes=axes))
    return _Value(axes, out, sizes)


def _pixels(rho_in: _Fields, c_out: int, spec: SymmetrySpec, where: str) -> int:
    """The pixel count of a dense layer on pixel-grid fields whose width is a multiple of it (then it
    writes pixels too, as the paper's dense layers do), else 0."""
    names = {_key(f) for f, _ in rho_in.parts}
    if len(names) != 1 or not next(iter(names)).startswith("grid") or rho_in.layout != "fields":
        return 0
    pixels = spec._field(rho_in.parts[0][0], where).dim
    return pixels if c_out % pixels == 0 else 0


def _hidden_count(fields: Fields, channels: int, spec: SymmetrySpec, where: str) -> _Fields:
    if isinstance(fields, (str, Representation)):
        base = spec.fields(fields, spec._field(fields, where).dim, f"{where} out_fields")
        if channels % base.dim:
            lower, upper = channels // base.dim * base.dim, -(-channels // base.dim) * base.dim
            options = " or ".join(str(c) for c in (lower, upper) if c > 0)
            raise _Unsupported(
                f"writes {channels} channels, which {_key(fields).strip('<>')} fields "
                f"of {spec.group.name} (dimension {base.dim}) do not divide: use {options} channels, or "
                f"other hidden fields for this layer (hidden={{{where.split()[1]}: 'trivial'}})"
            )
        return _Fields(((fields, channels // base.dim),))
    spec.fields(fields, channels, f"{where} out_fields")  # checks the list
    return _Fields(tuple((f, 1) for f in fields))


def _count(fiber: _Fields, channels: int, spec: SymmetrySpec, where: str) -> _Fields:
    """``fiber`` with its unknown count filled from the layer's channels (checked)."""
    parts = list(fiber.parts)
    unknown = [i for i, (_, c) in enumerate(parts) if c is None]
    if unknown:
        known = sum(spec._field(f, where).dim * c for f, c in parts if c is not None)
        f = parts[unknown[0]][0]
        dim = spec._field(f, where).dim
        if (channels - known) % dim or channels - known <= 0:
            raise _Unsupported(
                f"reads {channels} channels, which {_key(f)} fields of {spec.group.name} (dimension {dim}) "
                "do not fill"
            )
        parts[unknown[0]] = (f, (channels - known) // dim)
    total = sum(spec._field(f, where).dim * c for f, c in parts)
    if total != channels:
        raise _Unsupported(
            f"has {channels} channels, but the fields reaching it ({fiber.describe()}) have dimension {total}"
        )
    return _Fields(tuple(parts), fiber.layout)


def _resolve_flat(x: _Value, features: int, state: _State, where: str) -> _Value:
    """A flattened map whose sizes were unknown: its sides follow from the Linear's ``in_features``."""
    axes, fiber = x.flat_of
    spec = state.spec
    c = axes.index("c")
    channels = sum(spec._field(f, where).dim * n for f, n in fiber.parts if n is not None) or None
    if channels is None or features % channels:
        raise _Unsupported(
            "reads a flattened map whose channel count is unknown; pass example_input= (its shape) to "
            "infer_spec"
        )
    pixels = features // channels
    grid = [i for i, a in enumerate(axes) if a == "g"]
    side = math.isqrt(pixels)
    if len(grid) != 2 or side * side != pixels:
        raise _Unsupported(
            f"reads a flattened map of {pixels} pixels per channel, whose sides are unknown; pass "
            "example_input= (its shape) to infer_spec"
        )
    sizes = [None] * len(axes)
    sizes[c], sizes[grid[0]], sizes[grid[1]] = channels, side, side
    state.grid = state.grid or (side, side)
    return _Value(("c",), _flatten(_Value(axes, fiber, tuple(sizes)), spec, where, tuple(sizes)), (features,))


def _declare(state: _State, name: str, decl: tuple, where: str) -> None:
    old = state.declared.get(name)
    if old is not None and tuple(d.normal() if isinstance(d, _Fields) else d for d in old) != tuple(
        d.normal() if isinstance(d, _Fields) else d for d in decl
    ):
        raise _Unsupported(
            f"is called twice with different fields ({' -> '.join(d.describe() for d in old[1:])}, then "
            f"{' -> '.join(d.describe() for d in decl[1:])}); a shared layer needs the same fields at every "
            "call: declare the spec by hand"
        )
    state.declared[name] = decl


def _norm(name: str, module: nn.Module, x: _Value, state: _State, node: fx.Node) -> _Value:
    where = f"layer {name!r} ({describe_layer(module)})"
    if isinstance(module, nn.LayerNorm):
        if x.axes[-1] != "c" or len(module.normalized_shape) != 1:
            raise _Unsupported(
                f"normalises the last {len(module.normalized_shape)} axes of a tensor whose axes are "
                f"{_show_axes(x)}; LayerNorm keeps the fields only over the channels alone, placed last"
            )
    elif x.axes[0] != "c" or "e" in x.axes:
        raise _Unsupported(
            f"normalises axis 1 of a tensor whose axes are {_show_axes(x)}: its statistics per index of "
            "that axis would not follow the group; normalise the channels"
        )
    rho = _count(
        x.fiber,
        module.normalized_shape[0] if isinstance(module, nn.LayerNorm) else _channels(module),
        state.spec,
        where,
    )
    _declare(state, name, ("norm", rho), where)
    return x.with_fiber(rho)


def _channels(module: nn.Module) -> int:
    return module.num_features if isinstance(module, BATCH_NORM) else module.num_channels


def _pointwise(where: str, x: _Value, state: _State, op: str) -> None:
    """A pointwise nonlinearity commutes with the group only on permutation fields."""
    fiber = x.fiber
    if fiber is None:
        return
    spec = state.spec
    bad = [f for f, _ in fiber.parts if not spec._field(f, where).is_permutation]
    if bad:
        state.findings.append(
            Finding(
                where,
                f"{op} acts pointwise on {_key(bad[0])} fields, which are not a permutation representation: "
                "it commutes with the group only on permutation fields (use 'regular' fields before it, or "
                "a norm nonlinearity)",
            )
        )


def _pool(x: _Value, node: fx.Node, dims: int, what: str, module: nn.Module | None = None) -> _Value:
    if x.axes[0] != "c" or len(_grid_axes(x)) != len(x.axes) - 1:
        raise _Unsupported(f"{what} pools a tensor whose axes are {_show_axes(x)}")
    sizes = _sizes_of(node, x)
    if isinstance(module, _ADAPTIVE):
        out = module.output_size if isinstance(module.output_size, tuple) else (module.output_size,) * dims
        if all(o == 1 for o in out):
            sizes = (sizes[0], *([1] * dims))
    elif node.op == "call_function" and node.target in (
        F.adaptive_avg_pool2d,
        F.adaptive_max_pool2d,
        F.adaptive_avg_pool1d,
    ):
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        if size == 1 or size == (1, 1):
            sizes = (sizes[0], *([1] * dims))
    return replace(x, sizes=sizes, flat_of=None)


def _resized(x: _Value, node: fx.Node) -> _Value:
    if x.axes[0] != "c":
        raise _Unsupported(f"resizes a tensor whose axes are {_show_axes(x)}")
    return replace(x, sizes=_sizes_of(node, x))


def _flatten_value(x: _Value, node: fx.Node, state: _State) -> _Value:
    if x.axes == ("c",):
        return x
    where = _where(node, state.modules)
    sizes = x.sizes
    channel = x.axes.index("c") if "c" in x.axes else None
    if channel is not None and sizes[channel] is None and x.fiber is not None:
        known = [c for _, c in x.fiber.parts]
        if None not in known:
            sizes = tuple(
                sum(state.spec._field(f, where).dim * c for f, c in x.fiber.parts) if i == channel else s
                for i, s in enumerate(sizes)
            )
    if None in sizes:
        if all(s == 1 for a, s in zip(x.axes, sizes, strict=True) if a == "g"):
            return _Value(("c",), x.fiber, (sizes[channel],))
        return _Value(("c",), x.fiber, (None,), flat_of=(x.axes, x.fiber))
    fiber = _flatten(x, state.spec, where, sizes)
    return _Value(("c",), fiber, (math.prod(sizes),))


def _show_axes(x: _Value) -> str:
    names = {"c": "channels", "g": "grid", "e": "elements"}
    return "(batch, " + ", ".join(names[a] for a in x.axes) + ")"


# ---- functions and methods -----------------------------------------------------------------------


def _category(node: fx.Node) -> str | None:
    """What a function or method call does to fields (``None``: not known here)."""
    t = node.target
    if node.op == "call_method":
        table = {
            **dict.fromkeys(_POINTWISE_METHODS | {"softmax", "log_softmax"}, "pointwise"),
            **dict.fromkeys(_IDENTITY_METHODS, "identity"),
            **dict.fromkeys(_ARITHMETIC_METHODS, "arithmetic"),
            **dict.fromkeys(("mean", "sum", "amax", "amin"), "reduce"),
            **dict.fromkeys(("transpose", "permute"), "permute"),
            **dict.fromkeys(("view", "reshape"), "reshape"),
            **dict.fromkeys(("size", "dim", "numel", "ndimension"), "metadata"),
            "flatten": "flatten",
        }
        return table.get(t)
    for funcs, kind in (
        (_POINTWISE_FUNCTIONS | _SOFTMAX, "pointwise"),
        (_IDENTITY_FUNCTIONS, "identity"),
        (_ARITHMETIC, "arithmetic"),
        (set(_REDUCTIONS), "reduce"),
        (_POOL_FUNCTIONS, "pool"),
        ({F.interpolate, F.pad}, "resize"),
        ({torch.cat, torch.concat}, "cat"),
        ({torch.flatten}, "flatten"),
        ({operator.getitem}, "getitem"),
        ({getattr}, "metadata"),
    ):
        if t in funcs:
            return kind
    return None


def _call(node: fx.Node, args: list, kwargs: dict, state: _State) -> Any:
    """A function (``torch.cat``, ``F.relu``, ``operator.add``) or method (``x.mean``) call."""
    kind = _category(node)
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    x = args[0] if args else None
    if kind == "metadata" or (node.op == "call_method" and not _moved(x)):
        return FIXED  # x.shape, x.size(0): not moved
    if kind == "pointwise":
        _pointwise(f"op {name!r} (node {node.name!r})", x, state, name)
        return x
    if kind == "identity":
        return x
    if kind == "arithmetic":
        return _binary(x, args[1] if len(args) > 1 else kwargs.get("other"), node)
    if kind == "cat":
        return _cat(x, node)
    if kind == "flatten":
        return _flatten_call(
            x, node, state, "x.flatten(" if node.op == "call_method" else "torch.flatten(x, "
        )
    if kind == "reduce":
        return _reduce(x, node, _dims_arg(node), bool(_kw(node, "keepdim", 2, False)))
    if kind == "pool":
        return _pool(x, node, len(_grid_axes(x)), name)
    if kind == "resize":
        return _resized(x, node)
    if kind == "getitem":
        return _getitem(x, node)
    if kind == "permute":
        return _permute(x, node)
    if kind == "reshape":
        shape = (
            node.args[1:]
            if len(node.args) > 2 or not isinstance(node.args[1], (tuple, list))
            else node.args[1]
        )
        if len(shape) == 2 and shape[-1] == -1:
            return _flatten_value(x, node, state)
        raise _Unsupported(f"x.{name}{tuple(shape)}; inference follows x.{name}(x.size(0), -1) only")
    call = f"x.{name}(...)" if node.op == "call_method" else name
    raise _Unsupported(
        f"inference does not know how {call} acts on fields; rewrite it with known ops, or declare the "
        "spec by hand (SymmetrySpec(group).layer(...))"
    )


def _flatten_call(x: _Value, node: fx.Node, state: _State, call: str) -> _Value:
    """``torch.flatten(x, 1)`` or ``x.flatten(1)``: the only flattening inference follows."""
    start, end = _kw(node, "start_dim", 1, 0), _kw(node, "end_dim", 2, -1)
    if start != 1 or end != -1:
        raise _Unsupported(f"{call}{start}, {end}); only start_dim=1 (to the end) is known")
    return _flatten_value(x, node, state)


def _kw(node: fx.Node, name: str, position: int, default: Any) -> Any:
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[position] if len(node.args) > position else default


def _dims_arg(node: fx.Node) -> tuple[int, ...] | None:
    dims = _kw(node, "dim", 1, None)
    if dims is None:
        return None
    return tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)


def _reduce(x: _Value, node: fx.Node, dims: tuple[int, ...] | None, keepdim: bool) -> Any:
    if dims is None:
        raise _Unsupported("reduces over every axis, the batch included; give the axes (dim=...)")
    rank = len(x.axes) + 1
    axes = sorted({d % rank for d in dims})
    if 0 in axes:
        raise _Unsupported("reduces over the batch axis")
    roles = [x.axes[a - 1] for a in axes]
    grid = [i + 1 for i in _grid_axes(x)]
    if "c" in roles:
        raise _Unsupported("reduces over the channels; pool over space (or the set) instead")
    if "g" in roles and sorted(a for a, r in zip(axes, roles, strict=True) if r == "g") != grid:
        raise _Unsupported("reduces over some grid axes only; pool over all of them")
    if "e" in roles and x.axes.count("e") == 2 and roles.count("e") == 1:
        # a row sum of an adjacency: one node axis stays
        pass
    if keepdim:
        sizes = tuple(1 if i + 1 in axes else s for i, s in enumerate(x.sizes or (None,) * len(x.axes)))
        return replace(x, sizes=sizes, flat_of=None)
    keep = [i for i in range(len(x.axes)) if i + 1 not in axes]
    new_axes = tuple(x.axes[i] for i in keep)
    sizes = tuple((x.sizes or (None,) * len(x.axes))[i] for i in keep)
    fiber = x.fiber
    if new_axes == ("e",):  # (B, n): the standard representation on one axis
        return _Value(("c",), _Fields((("standard", 1),)), sizes)
    if "c" not in new_axes:
        raise _Unsupported(f"leaves a tensor whose axes are {new_axes}")
    return _Value(new_axes, fiber, sizes)


def _permute(x: _Value, node: fx.Node) -> _Value:
    rank = len(x.axes) + 1
    if node.target == "transpose":
        a, b = (int(v) % rank for v in node.args[1:3])
        order = list(range(rank))
        order[a], order[b] = order[b], order[a]
    else:
        order = [
            int(v) % rank
            for v in (node.args[1] if isinstance(node.args[1], (tuple, list)) else node.args[1:])
        ]
    if order[0] != 0:
        raise _Unsupported("moves the batch axis")
    axes = tuple(x.axes[i - 1] for i in order[1:])
    if "g" in axes and axes[0] != "c":
        raise _Unsupported("moves the channels of a map away from axis 1")
    sizes = tuple((x.sizes or (None,) * len(x.axes))[i - 1] for i in order[1:])
    return _Value(axes, x.fiber, sizes)


def _binary(a: Any, b: Any, node: fx.Node) -> Any:
    for p in (a, b):
        if isinstance(p, _Param):
            raise _Unsupported(
                f"combines the parameter {p.name!r} with a tensor the group moves: a positional embedding "
                "(or any parameter added or multiplied outside a layer) breaks equivariance unless it is "
                "invariant; remove it, or declare it with spec.parameter(name, TensorAction(...))"
            )
    if not (_moved(a) and _moved(b)):
        return a if _moved(a) else b  # a number or a constant: the fields are kept
    for one, other in ((a, b), (b, a)):
        if one.axes == other.axes and one.fiber and _single_scalar(one, node) and other.fiber:
            return other  # one invariant channel broadcast over the other's channels
    if a.axes != b.axes or (a.fiber and b.fiber and a.fiber.normal() != b.fiber.normal()):
        left = f"{_show_axes(a)} with fields {a.fiber.describe() if a.fiber else '-'}"
        right = f"{_show_axes(b)} with fields {b.fiber.describe() if b.fiber else '-'}"
        raise _Unsupported(
            f"adds (or multiplies) tensors with different fields: {left} and {right}. A residual connection "
            "needs the same fields on both sides: give the shortcut the block's output fields (a 1x1 "
            "convolution), or choose hidden fields so that both sides agree"
        )
    return a


def _single_scalar(x: _Value, node: fx.Node) -> bool:
    """One trivial channel (broadcast over the other side's channels by torch)."""
    (f, copies), *rest = x.fiber.parts
    c = x.axes.index("c")
    size = x.sizes[c] if len(x.sizes) == len(x.axes) else None
    return not rest and _key(f) == "trivial" and (copies == 1 or size == 1)


def _cat(tensors: Any, node: fx.Node) -> _Value:
    dim = _kw(node, "dim", 1, 0)
    parts = [t for t in tensors if _moved(t)]
    if len(parts) != len(tensors):
        raise _Unsupported("concatenates tensors the group moves with ones it does not")
    first = parts[0]
    rank = len(first.axes) + 1
    d = int(dim) % rank
    if any(p.axes != first.axes for p in parts):
        raise _Unsupported("concatenates tensors with different axes")
    if d == 0:
        if any(p.fiber.normal() != first.fiber.normal() for p in parts):
            raise _Unsupported("concatenates batches with different fields")
        return first
    if first.axes[d - 1] != "c":
        raise _Unsupported(
            f"concatenates along a {_show_axes(first).split(', ')[d].rstrip(')')} axis; only along "
            "the channels"
        )
    if any(p.fiber.layout != "fields" for p in parts):
        raise _Unsupported("concatenates interleaved fields")
    fiber = _Fields(tuple(part for p in parts for part in p.fiber.parts))
    sizes = (
        tuple(
            (None if any(p.sizes[i] is None for p in parts) else sum(p.sizes[i] for p in parts))
            if i == d - 1
            else first.sizes[i]
            for i in range(len(first.axes))
        )
        if all(len(p.sizes) == len(first.axes) for p in parts)
        else (None,) * len(first.axes)
    )
    return _Value(first.axes, fiber, sizes)


def _getitem(x: Any, node: fx.Node) -> Any:
    if isinstance(x, tuple):
        return x[node.args[1]]
    raise _Unsupported(
        "indexes or slices a tensor the group moves; inference does not follow slices (their fields "
        "depend on the indices): declare the spec by hand"
    )


def _check_output(result: Any, env: dict, state: _State, kind: str | None, outputs: Any) -> None:
    value = _arg(env, result)
    if isinstance(value, (tuple, list, dict)):
        raise ValueError(
            f"infer_spec: the model returns a {type(value).__name__}; inference follows a model with one "
            "output tensor: declare the spec by hand (the monitor takes one output action per entry)"
        )
    if not _moved(value):
        raise ValueError("infer_spec: the model's output does not depend on its input")
    if kind is None:
        fiber = value.fiber
        invariant = value.axes == ("c",) and all(_key(f) == "trivial" for f, _ in fiber.parts)
        if not invariant:
            raise ValueError(
                "infer_spec: outputs=None asks for an invariant output, but the model returns a tensor "
                f"whose axes are {_show_axes(value)} with fields {fiber.describe() if fiber else '-'}: pass "
                "outputs= the action on the output ('image' for a map that moves with the input, 'set' "
                "for one output per element), or end "
                "the model with a pooled layer (nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear)"
            )
        return
    if (
        kind == "image"
        and value.axes == ("c",)
        and all(_key(f).startswith("grid") for f, _ in value.fiber.parts)
    ):
        return  # the flattened pixels of an image (the paper's dense layers)
    if kind == "set" and value.axes[:1] != ("e",):
        raise ValueError(
            f"infer_spec: outputs={outputs!r} asks for one output per element of the set, but the model "
            f"returns a tensor whose axes are {_show_axes(value)}; pass outputs=None for an invariant output"
        )
    want = {"image": 2, "signal": 1}.get(kind)
    if want is not None and len(_grid_axes(value)) != want:
        raise ValueError(
            f"infer_spec: outputs={outputs!r} asks for a map with {want} grid axes, but the model returns a "
            f"tensor whose axes are {_show_axes(value)}; pass outputs=None for an invariant output"
        )


# --------------------------------------------------------------------------------------------------
# deferred inference: what the callbacks bind when a model declares nothing


class InferredSpec(SymmetrySpec):
    """A :class:`SymmetrySpec` inferred from the model when it is bound (:func:`infer_spec`).

    Declarations added to it (``.layer``, ``.free``, ...) are applied after the inferred ones, so
    they win. :func:`~lightning_equi.subspace.resolve_spec` prefers a model's own
    ``symmetry_spec()`` to it: a declared spec always wins.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> spec = InferredSpec("S4", inputs="set", example_input=(4,))  # sets (B, 4) of numbers
        >>> projection = spec.bind(net)  # 2 standard fields: 2 x (a I + b 11^T) + 2 biases; 2 + 1 in the head
        >>> projection.dim
        9
        >>> print(spec.inferred.declarations())
        SymmetrySpec('S4')
            .layer('0', 'standard', 'standard')
            .layer('2', 'standard', 'trivial')
    """

    deferred = True

    def __init__(
        self,
        group: Group | str,
        inputs: Any = "image",
        outputs: Any = None,
        *,
        example_input: Tensor | Sequence[int] | None = None,
        hidden: Fields | Mapping[str, Fields] | None = None,
    ) -> None:
        super().__init__(group)
        self.inputs, self.outputs, self.example_input, self.hidden = inputs, outputs, example_input, hidden
        self.inferred: SymmetrySpec | None = None

    def infer_for(self, model: nn.Module) -> SymmetrySpec:
        """The spec inferred for ``model``, with this spec's own declarations applied after."""
        model = getattr(model, "_orig_mod", model)
        example = self.example_input
        if example is None and isinstance(getattr(model, "example_input_array", None), Tensor):
            example = model.example_input_array  # Lightning's convention for an example batch
        spec = infer_spec(
            model, self.group, self.inputs, self.outputs, example_input=example, hidden=self.hidden
        )
        spec._layers += self._layers
        spec._types += self._types
        spec._free += self._free
        spec._parameters.update(self._parameters)
        self.inferred = spec
        return spec

    def bind(self, model: nn.Module, example_input: Tensor | Sequence[int] | None = None):  # noqa: ANN201
        return self.infer_for(model).bind(model, example_input)

    def __repr__(self) -> str:
        return f"InferredSpec({self.group.name}, inputs={self.inputs!r}, outputs={self.outputs!r})"
