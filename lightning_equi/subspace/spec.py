"""The symmetry spec of a plain torch model: which group acts on each layer, and how.

A :class:`SymmetrySpec` is declared in a few lines, layer by layer or for all layers of a type, with
the *fields* each layer reads and writes: a representation of the group, or its short name
(``"trivial"``, ``"regular"``, ``"standard"``, ``"sign"``, ``"pairs"``, ``"irrep<k>"``, and on 1-D
signals ``"mirror"``) repeated to
fill the layer's channels. Binding it to a model (:meth:`SymmetrySpec.bind`) checks that every
parameter is covered and yields a :class:`~lightning_equi.subspace.projection.ModelProjection`: one
projector per parameter and running statistic, and the operations the training callbacks need (project
weights, project gradients, distances to E). The actions of each layer type below are computed in
:mod:`lightning_equi.subspace.layers`.

Layouts. Fields are laid out channel by channel, field after field, as in escnn: ``"regular"`` on a
``Conv2d(1, 16)`` under C4 is four regular fields on channels ``0-3, 4-7, 8-11, 12-15``. A
``Linear`` on a flattened ``C x H x W`` image under the torus ``T<H>x<W>`` reads ``C`` regular fields
(``fields="regular"``), and on a flattened ``d x n`` set under ``S<n>`` it reads ``d`` standard
fields. ``layout="interleaved"`` (:meth:`SymmetrySpec.layer`) declares the other order, coordinate
after coordinate: ``x.flatten(1)`` of a set ``(B, n, d)``, each element's features side by side.

Kernels. Under C1, C2, C4, D1, D2, D4 a ``Conv2d`` kernel is acted on by quarter turns and mirrors of
its grid (:func:`~lightning_equi.groups.grid_representation`: ``torch.rot90(K, k, dims=(-2, -1))``,
the mirror ``torch.flip(K, (-1,))`` first); a ``Conv3d`` kernel by the same on its last two axes
(rotations about the depth axis). A ``Conv1d`` reads a 1-D signal
(:class:`~lightning_equi.actions.SignalAction`): C_N, D_N and T<N> act on a cyclic grid of N samples,
whose shifts the convolution (with circular padding) carries, and the mirrors of D_N (and C2, D1, which
reverse a signal of any length) reverse its kernel; the fields of its channels are any
representation, typically ``"trivial"``, ``"sign"`` or ``"mirror"`` (two channels the mirrors swap).
Binding warns when a 1-d convolution cannot commute with the group (zero padding on a cyclic grid,
strides, a window that is not centred under mirrors). Transposed convolutions follow the same rules.

Normalisation layers (BatchNorm, InstanceNorm, GroupNorm, LayerNorm over the channels) take the
fields of the closest declared layer defined before them, unless declared with :meth:`~SymmetrySpec.norm`.
They normalise each channel (or group of channels) by its own statistics, which commutes with the
group only for permutation fields; their affine weight, bias and running statistics must then be
constant on each orbit of channels, and are projected like any other parameter (running statistics
receive no gradient but are re-projected with the weights).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

from lightning_equi.groups import (
    FIELD_NAMES,
    Group,
    Representation,
    direct_sum,
    get_group,
    grid_representation,
    representation_by_name,
)
from lightning_equi.subspace.base import Projector, TensorAction
from lightning_equi.subspace.layers import (
    LAYERS,
    NORMS,
    describe_layer,
    layer_actions,
    layer_channels,
    norm_actions,
)

# The binder builds these. lightning_equi/callbacks/equivariant_projection.py still imports
# ModelProjection from here; new code imports both from the package lightning_equi.subspace.
from lightning_equi.subspace.projection import ModelProjection, ProjectedTensor
from lightning_equi.subspace.select import make_projector

__all__ = [
    "SymmetrySpec",
    "interleaved",
    "LAYOUTS",
    "HasSymmetrySpec",
    "resolve_spec",
    "FIELD_NAMES",
]

#: a field type (repeated to fill the channels) or an explicit list of fields (their direct sum)
Fields = Representation | str | Sequence[Representation | str]
#: a module of the model, or its qualified name in ``model.named_modules()``
Target = nn.Module | str


@runtime_checkable
class HasSymmetrySpec(Protocol):
    """A model that declares its own symmetry: ``resolve_spec(model)`` calls this method.

    Example:
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = nn.Linear(4, 4)
        ...     def symmetry_spec(self) -> SymmetrySpec:
        ...         return SymmetrySpec("C4").layer(self.fc, "regular", "regular")
        >>> resolve_spec(Net()).entries[0].projector.dim
        4
    """

    def symmetry_spec(self) -> SymmetrySpec | ModelProjection: ...


# --------------------------------------------------------------------------------------------------
# the spec


@dataclass
class _Declaration:
    in_fields: Fields | None
    out_fields: Fields | None
    layout: tuple[str, str] = ("fields", "fields")


#: how the coordinates of repeated fields are ordered on a layer's channels (see :meth:`SymmetrySpec.layer`)
LAYOUTS = {
    "fields": "field after field (escnn's layout; for a flattened set, x.transpose(1, 2).flatten(1))",
    "interleaved": "coordinate after coordinate, one entry of every field each (x.flatten(1) of (B, n, d))",
}


class SymmetrySpec:
    """How a group acts on the layers of a plain torch model.

    Args:
        group: the group, or its name (``"C4"``, ``"D4"``, ``"SO2"``, ``"T14x14"``, ``"S10"``, ...).

    Every method returns the spec, so declarations chain. Later declarations of the same layer
    replace earlier ones; a layer declared by :meth:`layer` wins over a type-wide :meth:`layers`.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        ...                     nn.Conv2d(16, 16, 3, padding=1), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(16, 10))
        >>> spec = (SymmetrySpec("C4")
        ...         .layers(nn.Conv2d, fields="regular")   # hidden layers: 4 regular fields
        ...         .layer("0", in_fields="trivial", out_fields="regular")  # the image is a scalar field
        ...         .layer("6", in_fields="regular", out_fields="trivial"))  # invariant logits
        >>> projection = spec.bind(net)
        >>> [(e.name, e.projector.kind, e.projector.dim) for e in projection.entries][:3]
        [('0.weight', 'orbit-mean', 36), ('0.bias', 'orbit-mean', 4), ('1.weight', 'orbit-mean', 4)]
    """

    def __init__(self, group: Group | str) -> None:
        self.group = get_group(group)
        self._layers: list[tuple[Target, _Declaration]] = []
        self._types: list[tuple[tuple[type, ...], _Declaration]] = []
        self._free: list[Target] = []
        self._parameters: dict[str, TensorAction | Projector] = {}
        self._field_cache: dict[tuple[str, int], Representation] = {}
        #: what :meth:`infer` found that breaks equivariance whatever the weights (see the lint)
        self.findings: list = []

    #: ``True`` for a spec inferred when it is bound
    #: (:class:`~lightning_equi.subspace.inference.InferredSpec`), which a model's own
    #: ``symmetry_spec()`` replaces in :func:`resolve_spec`
    deferred = False

    @staticmethod
    def infer(
        model: nn.Module,
        group: Group | str,
        inputs: object = "image",
        outputs: object = None,
        *,
        example_input: Tensor | Sequence[int] | None = None,
        hidden: Fields | dict[str, Fields] | None = None,
        lint: bool = True,
    ) -> SymmetrySpec:
        """The spec of a plain torch model, inferred by tracing it (:mod:`lightning_equi.subspace.inference`).

        ``inputs`` is the action on the model's input (``"image"``, ``"signal"``, ``"set"``, ``"graph"``,
        optionally ``"<name>:<fields>"``), ``outputs`` the action on its output (``None``: invariant);
        hidden layers get ``hidden`` fields (default ``"regular"`` on images). The result declares every
        layer; print it with :meth:`declarations`, edit it like any other spec. ``lint`` warns about
        what breaks equivariance whatever the weights (:func:`~lightning_equi.subspace.lint_model`).

        Example:
            >>> net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
            >>> print(SymmetrySpec.infer(net, "C4", inputs="image", outputs="image").declarations())
            SymmetrySpec('C4')
                .layer('0', 'trivial', 'regular')
                .layer('2', 'regular', 'trivial')
        """
        from lightning_equi.subspace.inference import infer_spec

        return infer_spec(
            model, group, inputs, outputs, example_input=example_input, hidden=hidden, lint=lint
        )

    def declarations(self) -> str:
        """The spec as the code that declares it (to copy into a model's ``symmetry_spec()`` and edit).

        Fields that are not named (a product of channel fields and a pixel grid, ...) print as
        ``<Representation ...>``: build them with
        :func:`~lightning_equi.subspace.inference.product_representation`.

        Example:
            >>> print(SymmetrySpec("C4").layers(nn.Conv2d, fields="regular").layer("fc", "regular", "trivial")
            ...       .free("head").declarations())
            SymmetrySpec('C4')
                .layers(nn.Conv2d, fields='regular')
                .layer('fc', 'regular', 'trivial')
                .free('head')
        """
        lines = [f"SymmetrySpec({self.group.name!r})"]
        for kinds, decl in self._types:
            names = ", ".join(f"nn.{k.__name__}" for k in kinds)
            names = names if len(kinds) == 1 else f"({names})"
            if decl.in_fields == decl.out_fields:
                sides = f"fields={_code(decl.in_fields)}"
            else:
                sides = f"in_fields={_code(decl.in_fields)}, out_fields={_code(decl.out_fields)}"
            lines.append(f"    .layers({names}, {sides}{_layout_code(decl.layout)})")
        for target, decl in self._layers:
            who = repr(target) if isinstance(target, str) else f"<{type(target).__name__}>"
            if decl.layout == ("norm", "norm"):
                lines.append(f"    .norm({who}, {_code(decl.in_fields)})")
                continue
            sides = f"{_code(decl.in_fields)}, {_code(decl.out_fields)}"
            lines.append(f"    .layer({who}, {sides}{_layout_code(decl.layout)})")
        for target in self._free:
            lines.append(
                f"    .free({target!r})"
                if isinstance(target, str)
                else f"    .free(<{type(target).__name__}>)"
            )
        for name, action in self._parameters.items():
            lines.append(f"    .parameter({name!r}, <{type(action).__name__}>)")
        return "\n".join(lines)

    # ---- declaring --------------------------------------------------------------------------------

    def layer(
        self,
        module: Target,
        in_fields: Fields,
        out_fields: Fields,
        *,
        layout: str | tuple[str, str] = "fields",
    ) -> SymmetrySpec:
        """Declare the fields one layer reads (``in_fields``) and writes (``out_fields``).

        ``module`` is the module itself or its qualified name (``"encoder.0"``). A field type is
        repeated to fill the channels; a list of fields must add up to them exactly.

        ``layout`` orders the coordinates of repeated fields (one value for both sides, or ``(in,
        out)``): ``"fields"`` (the default) puts one field after the other, so ``d`` standard fields of
        S_n are the channel-major flattening ``x.transpose(1, 2).flatten(1)`` of a set ``(B, n, d)``;
        ``"interleaved"`` puts coordinate ``j`` of every field together, the element-major
        ``x.flatten(1)`` (each element's ``d`` features side by side).

        Example:
            >>> fc = nn.Linear(4 * 3, 1)  # reads x.flatten(1) of a set (B, 4, 3)
            >>> spec = SymmetrySpec("S4").layer(fc, "standard", "trivial", layout="interleaved")
            >>> x = torch.randn(2, 4, 3)
            >>> _ = spec.bind(fc).project_parameters_()
            >>> torch.allclose(fc(x[:, [2, 0, 3, 1]].flatten(1)), fc(x.flatten(1)), atol=1e-6)
            True
        """
        where = f"layer({_show(module)})"
        _check_fields(in_fields, f"{where} in_fields")
        _check_fields(out_fields, f"{where} out_fields")
        decl = _Declaration(in_fields, out_fields, _check_layout(layout))
        self._layers.append((_check_target(module, "layer"), decl))
        return self

    def layers(
        self,
        kind: type[nn.Module] | tuple[type[nn.Module], ...],
        fields: Fields | None = None,
        *,
        in_fields: Fields | None = None,
        out_fields: Fields | None = None,
        layout: str | tuple[str, str] = "fields",
    ) -> SymmetrySpec:
        """Declare every layer of a type (e.g. all hidden ``nn.Conv2d``) not declared by :meth:`layer`.

        ``fields`` sets both sides; ``in_fields``/``out_fields`` override one side; ``layout`` as in
        :meth:`layer`.
        """
        kinds = kind if isinstance(kind, tuple) else (kind,)
        for k in kinds:
            if not (isinstance(k, type) and issubclass(k, nn.Module)):
                raise TypeError(f"layers() takes module classes such as nn.Conv2d, got {k!r}")
        in_f, out_f = (
            in_fields if in_fields is not None else fields,
            out_fields if out_fields is not None else fields,
        )
        if in_f is None and out_f is None:
            raise ValueError("layers() needs fields=..., or in_fields=... and out_fields=...")
        for side, value in (("in_fields", in_f), ("out_fields", out_f)):
            if value is not None:
                _check_fields(value, f"layers({', '.join(k.__name__ for k in kinds)}) {side}")
        self._types.append((kinds, _Declaration(in_f, out_f, _check_layout(layout))))
        return self

    def norm(self, module: Target, fields: Fields) -> SymmetrySpec:
        """Declare the fields a normalisation layer normalises (by default, the preceding layer's)."""
        _check_fields(fields, f"norm({_show(module)}) fields")
        self._layers.append((_check_target(module, "norm"), _Declaration(fields, fields, ("norm", "norm"))))
        return self

    def free(self, *targets: Target) -> SymmetrySpec:
        """Leave parameters unconstrained: modules (all their parameters), module or parameter names."""
        if not targets:
            raise ValueError("free() needs at least one module, module name or parameter name")
        self._free.extend(_check_target(t, "free") for t in targets)
        return self

    def parameter(self, name: str, action: TensorAction | Projector) -> SymmetrySpec:
        """Declare one parameter directly, by its lifted action or a ready projector (custom layers)."""
        if not isinstance(action, (TensorAction, Projector)):
            raise TypeError(
                f"parameter({name!r}, ...) takes a TensorAction or a Projector, got {type(action).__name__}"
            )
        if isinstance(action, TensorAction) and action.group != self.group:
            raise ValueError(
                f"parameter {name!r}: its action is by {action.group.name}, "
                f"but this spec is for {self.group.name}"
            )
        self._parameters[name] = action
        return self

    # ---- binding ----------------------------------------------------------------------------------

    def bind(self, model: nn.Module, example_input: Tensor | Sequence[int] | None = None) -> ModelProjection:
        """Check the spec against ``model`` and build the projector of every parameter and statistic.

        With ``example_input`` (an input batch, or its shape without the batch axis, e.g. ``(3, 32, 32)``)
        the model also runs once on zeros of that shape, and every convolution or pooling layer whose
        windows do not commute with the group at that size (strides at the wrong side, a transposed
        convolution with ``output_padding``) is named in a
        :class:`~lightning_equi.subspace.lint.GridWarning` with the nearest exact input sides
        (:func:`~lightning_equi.subspace.lint.grid_warnings`): no projection of the weights fixes those.

        Raises:
            ValueError: naming every parameter with no declared action (and how to declare or free
                it), a layer whose channels do not fit its fields, fields of another group, a layer
                type that cannot be constrained, or a name the model does not have.
        """
        projection = _Binder(self, model).run()
        if example_input is not None:
            from lightning_equi.subspace.lint import grid_warnings

            grid_warnings(model, self.group, example_input)
        return projection

    def fields(self, fields: Fields, channels: int, where: str) -> Representation:
        """The representation on ``channels`` coordinates described by ``fields`` (``where``: for errors).

        A single field type (a name, or a representation that is not a direct sum) is repeated to fill
        the channels; a direct sum or a list of fields must cover them exactly.

        Example:
            >>> SymmetrySpec("C4").fields("regular", 16, "conv1 out_fields")
            Representation(regular+regular+regular+regular, C4, dim=16)
        """
        if isinstance(fields, str) and fields.strip().lower() == "grid":
            fields = self._square_grid(channels, where)
        if isinstance(fields, (str, Representation)):
            base = self._field(fields, where)
            if len(base.summands) > 1 and base.dim != channels:  # a sum is taken as the whole layout
                raise ValueError(
                    f"{where}: the representation {base.name} is a sum of {len(base.summands)} fields of "
                    f"total dimension {base.dim}, but the layer has {channels} channels; give all the "
                    "fields, or a single field type (e.g. 'regular') to have it repeated"
                )
            if channels % base.dim:
                raise ValueError(
                    f"{where}: {base.name} fields of {self.group.name} have dimension {base.dim}, which does "
                    f"not divide the {channels} channels; use a multiple of {base.dim} channels, or give the "
                    f"fields as a list whose dimensions add up to {channels}"
                )
            return self._repeat(base, channels // base.dim)
        parts = [self._field(f, where) for f in fields]
        if not parts or sum(p.dim for p in parts) != channels:
            dims = " + ".join(str(p.dim) for p in parts) or "0"
            raise ValueError(
                f"{where}: the listed fields have dimensions {dims}, but the layer has {channels} channels"
            )
        return parts[0] if len(parts) == 1 else direct_sum(parts)

    def _field(self, fields: Representation | str, where: str) -> Representation:
        if isinstance(fields, Representation):
            if fields.group != self.group:
                raise ValueError(
                    f"{where}: the fields are a representation of {fields.group.name}, but this spec is for "
                    f"{self.group.name}; build them from the spec's group or name them (e.g. 'regular')"
                )
            return fields
        if not isinstance(fields, str):
            raise TypeError(
                f"{where}: fields must be a Representation, a name or a list of them, got {fields!r}"
            )
        key = fields.strip().lower()
        if (key, 1) not in self._field_cache:
            self._field_cache[key, 1] = self._named_field(key, where)
        return self._field_cache[key, 1]

    def _named_field(self, key: str, where: str) -> Representation:
        grid = re.fullmatch(r"grid(\d+)x(\d+)", key)
        try:
            if grid is not None:  # the pixels of a flattened H x W image
                return grid_representation(self.group, (int(grid[1]), int(grid[2])))
            if key == "mirror":  # 1-D signals: pairs of channels the mirrors swap
                from lightning_equi.actions.signals import mirror_representation

                return mirror_representation(self.group)
            return representation_by_name(self.group, key)
        except ValueError as err:
            hint = (
                f"\n  {'grid<H>x<W>':<10} the pixels of a flattened H x W image (e.g. 'grid8x8'); 'grid': "
                "a square one filling the channels"
                if grid is None and "Valid names" in str(err)
                else ""
            )
            raise ValueError(f"{where}: {err}{hint}") from err

    def _square_grid(self, channels: int, where: str) -> str:
        side = math.isqrt(channels)
        if side * side != channels:
            raise ValueError(
                f"{where}: 'grid' is a square image of side sqrt({channels}), which is not an integer; "
                "name the grid, e.g. fields='grid<H>x<W>', repeated for each channel of a flattened "
                "C x H x W image"
            )
        return f"grid{side}x{side}"

    def _repeat(self, base: Representation, copies: int) -> Representation:
        if copies == 1:
            return base
        key = (f"{id(base)}", copies)  # the same object for the same fields: projectors are shared
        if key not in self._field_cache:
            self._field_cache[key] = copies * base
        return self._field_cache[key]

    def __repr__(self) -> str:
        return (
            f"SymmetrySpec({self.group.name}, layers={len(self._layers)}, types={len(self._types)}, "
            f"free={len(self._free)}, parameters={len(self._parameters)})"
        )


def _check_layout(layout: str | tuple[str, str]) -> tuple[str, str]:
    pair = (layout, layout) if isinstance(layout, str) else tuple(layout)
    if len(pair) != 2 or any(side not in LAYOUTS for side in pair):
        valid = "\n".join(f"  {k:<12} {v}" for k, v in LAYOUTS.items())
        raise ValueError(
            f"layout must be one of these names, or an (in, out) pair of them; got {layout!r}:\n{valid}"
        )
    return pair


def interleaved(rho: Representation, where: str = "fields") -> Representation:
    """``rho`` (copies of one field) with its coordinates interleaved: coordinate ``j`` of field ``c`` at
    ``j * copies + c`` instead of ``c * dim + j`` (the element-major flattening of a set ``(B, n, d)``).

    Raises:
        ValueError: when ``rho`` is not copies of one field type (interleaving would be ambiguous).

    Example:
        >>> from lightning_equi.groups import get_group, standard
        >>> S3 = get_group("S3")
        >>> rho = interleaved(2 * standard(S3))  # two features per element of a set of 3
        >>> rho.permutation(torch.tensor([[1, 2, 0]])).tolist()  # element i moves to position p[i]
        [[4, 5, 0, 1, 2, 3]]
    """
    fields = rho.summands
    if len(fields) == 1:
        return rho
    if len({(f.name, f.dim) for f in fields}) != 1:
        raise ValueError(
            f"{where}: layout='interleaved' interleaves copies of one field type, but the fields are "
            f"{rho.name}; declare one field type (e.g. 'standard'), or layout='fields'"
        )
    copies, size = len(fields), fields[0].dim
    c, j = torch.arange(copies).repeat_interleave(size), torch.arange(size).repeat(copies)
    to_new = j * copies + c  # field-after-field coordinate k sits at to_new[k]
    to_old = torch.argsort(to_new)

    def perm(g: Tensor) -> Tensor:
        src = rho.permutation(g)
        return to_new.to(g.device)[src[:, to_old.to(g.device)]]

    def matrices(g: Tensor) -> Tensor:
        m, old = rho(g), to_old.to(g.device)
        return m[:, old][:, :, old]

    return Representation(
        rho.group, rho.dim, f"interleaved({rho.name})", matrices, perm if rho.is_permutation else None
    )


def _code(fields: Fields | None) -> str:
    if isinstance(fields, Representation):
        return f"<Representation {fields.name} (dim {fields.dim})>"
    if isinstance(fields, (list, tuple)):
        return "[" + ", ".join(_code(f) for f in fields) + "]"
    return repr(fields)


def _layout_code(layout: tuple[str, str]) -> str:
    if layout[0] == layout[1]:
        return "" if layout[0] == "fields" else f", layout={layout[0]!r}"
    return f", layout={layout!r}"


def _show(module: Target) -> str:
    return repr(module) if isinstance(module, str) else type(module).__name__


def _check_fields(fields: object, where: str) -> None:
    """Refuse, when declared, what :meth:`SymmetrySpec.fields` could not read (a number, ...)."""
    ok = isinstance(fields, (str, Representation)) or (
        isinstance(fields, (list, tuple))
        and len(fields) > 0
        and all(isinstance(f, (str, Representation)) for f in fields)
    )
    if not ok:
        raise TypeError(
            f"{where}: fields are a field name ('trivial', 'regular', 'standard', 'grid8x8', ...), a "
            f"Representation, or a non-empty list of them, got {fields!r}. A field type is repeated to "
            "fill the channels (the number of fields follows from them); to give a number of fields, "
            "list them, e.g. ['regular'] * 3"
        )


def _check_target(target: Target, method: str) -> Target:
    if not isinstance(target, (nn.Module, str)):
        raise TypeError(
            f"{method}() takes a module of the model or its qualified name, got {type(target).__name__}"
        )
    return target


# --------------------------------------------------------------------------------------------------
# binding a spec to a model


class _Binder:
    """One pass over ``model.named_modules()`` resolving each parameter to a projector or to free.

    Declarations name modules and parameters as the caller wrote them; they are resolved to the
    objects they name (by identity), so a module registered under two names (``net.head = net[0]``),
    a submodule wrapped by ``torch.compile`` (its ``_orig_mod``) and a parameter shared by two layers
    are each bound once, whichever of their names was declared.
    """

    def __init__(self, spec: SymmetrySpec, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"bind() takes an nn.Module, got {type(model).__name__}")
        self.spec, self.model = spec, _unwrap(model)
        self.names = {id(m): n for n, m in self.model.named_modules()}
        self.param_names = {id(t): n for n, t in self.model.named_parameters()}
        self.projectors: dict[tuple, Projector] = {}

    def _module_name(self, target: Target, method: str) -> str:
        """The canonical name (in ``named_modules()``) of the module ``target`` is or names."""
        if isinstance(target, nn.Module):
            module = _unwrap(target)
            if id(module) not in self.names:
                raise ValueError(
                    f"{method}(): {type(target).__name__} module {target} is not part of the bound model"
                )
            return self.names[id(module)]
        try:
            module = _unwrap(self.model.get_submodule(target))
        except AttributeError:
            hint = (
                f" ({target!r} is a parameter: spec.free() takes parameter names, spec.parameter() "
                "declares one)"
                if self._parameter(target) is not None
                else ""
            )
            raise ValueError(
                f"{method}({target!r}): the model has no submodule named {target!r}{hint}; its layers are "
                f"{_layer_names(self.model)}"
            ) from None
        return self.names[id(module)]

    def _parameter(self, name: str) -> nn.Parameter | None:
        try:
            return self.model.get_parameter(name)
        except AttributeError:
            return None

    def _free_tensors(self) -> set[int]:
        """The ids of the parameters and buffers left free, whatever names they were given by."""
        free: set[int] = set()
        for target in self.spec._free:
            if isinstance(target, str):
                param = self._parameter(target)
                if param is not None:
                    free.add(id(param))
                    continue
            module = self.model.get_submodule(self._module_name(target, "free"))
            free.update(id(t) for t in module.parameters())
            free.update(id(t) for t in module.buffers())
        return free

    def _declared_parameters(self) -> dict[int, TensorAction | Projector]:
        declared: dict[int, TensorAction | Projector] = {}
        for name, action in self.spec._parameters.items():
            param = self._parameter(name)
            if param is None:
                raise ValueError(
                    f"parameter({name!r}): the model has no parameter named {name!r}; its parameters are "
                    f"{_first(list(self.param_names.values()))}"
                )
            declared[id(param)] = action
        return declared

    def _projector(self, action: TensorAction) -> Projector:
        key = (tuple(action.shape), tuple((id(rep), n) for rep, n in action.factors))
        if key not in self.projectors:
            self.projectors[key] = make_projector(action)
        return self.projectors[key]

    def run(self) -> ModelProjection:
        spec = self.spec
        _check_materialized(self.model)
        declared: dict[str, _Declaration] = {}
        for target, decl in spec._layers:
            declared[self._module_name(target, "layer")] = decl
        free = self._free_tensors()
        by_parameter = self._declared_parameters()
        # tensor id -> (entry, where it was declared); and the undeclared tensors, in order
        bound: dict[int, tuple[ProjectedTensor, str]] = {}
        missing: dict[int, str] = {}
        previous: tuple[Representation, str] | None = None  # fields written by the last declared layer
        before: list[nn.Module] = []  # the leaf modules met so far (for the pixel-grid warning)
        undeclared: tuple[str, str] | None = None  # the last layer without fields, and how it is covered
        for layer, module in self.model.named_modules():
            own = [(n, t, False) for n, t in module.named_parameters(recurse=False)]
            own += [(n, t, True) for n, t in module.named_buffers(recurse=False) if t.is_floating_point()]
            qualified = {n: f"{layer}.{n}" if layer else n for n, _, _ in own}
            where = f"layer {layer!r} ({describe_layer(module)})"
            actions: dict[str, TensorAction] = {}
            wanted = [n for n, t, _ in own if id(t) not in free and id(t) not in by_parameter]
            # a type-wide declaration does not reach a layer whose parameters are all free
            decl = declared.get(layer) or (self._type_declaration(module) if wanted else None)
            if isinstance(module, LAYERS) and decl is not None:
                rho_in, rho_out = self._layer_fields(module, decl, where)
                _warn_flattened_image(module, decl, rho_in, before, where)
                actions = layer_actions(module, rho_in, rho_out, where) if wanted else {}
                previous = (rho_out, layer)
            elif isinstance(module, NORMS) and wanted:
                rho = self._norm_fields(module, layer, decl, previous, where, undeclared)
                actions = norm_actions(module, rho, where) if rho is not None else {}
            elif decl is not None and layer in declared:
                raise ValueError(
                    f"{where}: cannot derive the action on the parameters of a {type(module).__name__} "
                    "from fields; "
                    f"supported layers are Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d and BatchNorm, "
                    "InstanceNorm, GroupNorm, LayerNorm. Declare its parameters with spec.parameter(name, "
                    "TensorAction(...)); spec.free(...) would keep the network equivariant only if the "
                    "layer reads and writes invariant (trivial) features alone"
                )
            elif isinstance(module, LAYERS):
                previous = None  # an undeclared layer breaks the chain of fields
                covered = {qualified[n]: by_parameter.get(id(t)) for n, t, _ in own if id(t) in by_parameter}
                freed = {qualified[n] for n, t, _ in own if id(t) in free}
                undeclared = (layer, _how_covered(qualified.values(), freed, covered))
            if not any(True for _ in module.children()):
                before.append(module)
            for n, tensor, is_buffer in own:
                if id(tensor) in free:
                    continue
                q = self.param_names.get(id(tensor), qualified[n])  # a tied parameter: its first name
                raw = by_parameter.get(id(tensor))
                if raw is not None:
                    projector = raw if isinstance(raw, Projector) else self._projector(raw)
                    if projector.shape != tensor.shape:
                        raise ValueError(
                            f"parameter({q!r}): declared for shape {tuple(projector.shape)}, "
                            f"but the parameter has shape {tuple(tensor.shape)}"
                        )
                elif n in actions:
                    projector = self._projector(actions[n])
                elif is_buffer:
                    continue  # buffers of layers we do not constrain are not trained
                else:
                    if id(tensor) not in bound:
                        missing.setdefault(id(tensor), q)
                    continue
                entry = ProjectedTensor(q, projector, is_buffer, layer, module, n)
                self._bind_once(bound, missing, id(tensor), entry, qualified[n])
        if missing:
            raise ValueError(self._missing_message(list(missing.values())))
        free_names = sorted(n for i, n in self.param_names.items() if i in free)
        return ModelProjection(self.spec.group, self.model, [e for e, _ in bound.values()], free_names)

    def _bind_once(
        self,
        bound: dict[int, tuple[ProjectedTensor, str]],
        missing: dict[int, str],
        key: int,
        entry: ProjectedTensor,
        alias: str,
    ) -> None:
        """A tensor shared by two layers (tied weights) is bound once; both declarations must agree."""
        missing.pop(key, None)  # declared by this layer, if not by an earlier one
        if key not in bound:
            bound[key] = (entry, alias)
            return
        first, first_alias = bound[key]
        if first.projector is not entry.projector:
            raise ValueError(
                f"the parameter {entry.name!r} is shared by two layers, and their declarations give it "
                f"different actions (layer {first.layer!r} as {first_alias!r}: {first.projector.kind}, "
                f"dim E {first.projector.dim}; layer {entry.layer!r} as {alias!r}: "
                f"{entry.projector.kind}, dim E {entry.projector.dim}); declare the fields of both layers "
                "alike, or declare the "
                f"parameter once with spec.parameter({entry.name!r}, ...)"
            )

    def _type_declaration(self, module: nn.Module) -> _Declaration | None:
        for kinds, decl in reversed(self.spec._types):
            if isinstance(module, kinds):
                return decl
        return None

    def _layer_fields(
        self, module: nn.Module, decl: _Declaration, where: str
    ) -> tuple[Representation, Representation]:
        if decl.in_fields is None or decl.out_fields is None:
            side = "in_fields" if decl.in_fields is None else "out_fields"
            raise ValueError(f"{where}: {side} is not declared; give both in_fields and out_fields")
        c_in, c_out = layer_channels(module)
        rho_in = self.spec.fields(decl.in_fields, c_in, f"{where} in_fields")
        rho_out = self.spec.fields(decl.out_fields, c_out, f"{where} out_fields")
        in_layout, out_layout = decl.layout
        if in_layout == "interleaved":
            rho_in = interleaved(rho_in, f"{where} in_fields")
        if out_layout == "interleaved":
            rho_out = interleaved(rho_out, f"{where} out_fields")
        return rho_in, rho_out

    def _norm_fields(
        self,
        module: nn.Module,
        layer: str,
        decl: _Declaration | None,
        previous: tuple[Representation, str] | None,
        where: str,
        undeclared: tuple[str, str] | None = None,
    ) -> Representation | None:
        channels = layer_channels(module)[0]
        if decl is not None:
            if decl.in_fields is None or (decl.out_fields is not None and decl.out_fields != decl.in_fields):
                raise ValueError(
                    f"{where}: a normalisation layer reads and writes the same fields; declare them with "
                    f"spec.norm({layer!r}, fields=...)"
                )
            return self.spec.fields(decl.in_fields, channels, f"{where} fields")
        if previous is not None and previous[0].dim == channels:
            return previous[0]
        if previous:
            after = f"the preceding layer {previous[1]!r} writes {previous[0].dim} channels"
        elif undeclared:
            after = (
                f"the preceding layer {undeclared[0]!r} is {undeclared[1]}, which gives no fields for its "
                "output"
            )
        else:
            after = "no layer with declared fields precedes it"
        # no "leave it free": a free norm layer rescales channels that the group permutes
        raise ValueError(
            f"{where}: cannot infer the fields it normalises ({after}); declare them with "
            f"spec.norm({layer!r}, fields=...)"
        )

    def _missing_message(self, missing: list[str]) -> str:
        modules = dict(self.model.named_modules())
        params = dict(self.model.named_parameters())
        width = max(len(n) for n in missing)
        rows = []
        for q in missing:
            layer = q.rpartition(".")[0]
            rows.append(f"  {q:<{width}}  ({describe_layer(modules[layer])}, shape {tuple(params[q].shape)})")
        example = missing[0].rpartition(".")[0] or "<layer>"
        return (
            f"the SymmetrySpec for {self.spec.group.name} does not say how the group acts on "
            f"{len(missing)} parameter(s) of the model:\n" + "\n".join(rows) + "\n"
            f"Declare each layer, e.g. spec.layer({example!r}, in_fields='regular', out_fields='trivial'), "
            "all layers of a type with spec.layers(nn.Linear, fields=...), or leave parameters unconstrained "
            f"with spec.free({example!r}), which keeps the network equivariant only where the group does not "
            "act on them (a layer on invariant features, a convolution under translations alone)"
        )


def _how_covered(names: Iterable[str], free: set[str], parameters: dict[str, object]) -> str:
    """How the parameters of a layer without declared fields are covered, for messages."""
    names = list(names)
    if names and all(n in free for n in names):
        return "left free"
    if any(n in parameters for n in names):
        return "declared by spec.parameter(...)"
    return "not declared"


def _unwrap(module: nn.Module) -> nn.Module:
    """The module ``torch.compile`` wrapped (``OptimizedModule._orig_mod``), or ``module`` itself."""
    inner = getattr(module, "_orig_mod", None)
    return _unwrap(inner) if isinstance(inner, nn.Module) else module


def _check_materialized(model: nn.Module) -> None:
    """Lazy layers (``nn.LazyLinear``, ...) have no shape to project until their first forward."""
    lazy = [
        f"{name!r} ({type(m).__name__})"
        for name, m in model.named_modules()
        if any(is_lazy(t) for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)])
    ]
    if lazy:
        raise ValueError(
            f"the layers {', '.join(lazy)} are lazy: their parameters have no shape until the first forward "
            "pass, so the group's action on them is not known yet. Run one forward pass on an example "
            "batch before binding (e.g. in the LightningModule's __init__), or give the layer its sizes "
            "(nn.Linear(in_features, out_features))"
        )


def _warn_flattened_image(
    module: nn.Module, decl: _Declaration, rho_in: Representation, before: list[nn.Module], where: str
) -> None:
    """A ``Linear`` right after ``nn.Flatten`` of an image reads pixels: ``'regular'`` there binds, with the
    same dim E as the pixel grid, to another (wrong) action; say which field names the pixels."""
    if not (isinstance(module, nn.Linear) and isinstance(decl.in_fields, str)) or not before:
        return
    if decl.in_fields.strip().lower().startswith("grid") or not isinstance(before[-1], nn.Flatten):
        return
    source = before[-2] if len(before) > 1 else None
    pooled = isinstance(source, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and all(
        s == 1 for s in _as_tuple(source.output_size)
    )
    if pooled or isinstance(source, (nn.Linear, nn.Flatten)):
        return  # features without pixels
    try:
        grid_representation(rho_in.group, (2, 2))
    except ValueError:
        return  # a group that does not move pixels (the torus's regular fields are its pixels)
    side = math.isqrt(module.in_features)
    fix = f"'grid{side}x{side}'" if side * side == module.in_features else "'grid<H>x<W>'"
    warnings.warn(
        f"{where} follows nn.Flatten and declares in_fields={decl.in_fields!r}: if it reads a flattened "
        f"image, its inputs are pixels, on which {rho_in.group.name} acts by moving them, and "
        f"'{decl.in_fields}' binds to another action with the same dim E (a wrong subspace). Declare "
        f"in_fields={fix} (one copy per channel of a C x H x W image). If the inputs really are "
        f"{decl.in_fields} fields, pass them as a Representation (e.g. regular(group)) to say so",
        UserWarning,
        stacklevel=4,
    )


def _as_tuple(size: object) -> tuple:
    return tuple(size) if isinstance(size, (tuple, list)) else (size,)


def _first(names: list[str], limit: int = 12) -> str:
    return ", ".join(repr(n) for n in names[:limit]) + (", ..." if len(names) > limit else "") or "(none)"


def _layer_names(model: nn.Module, limit: int = 12) -> str:
    names = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    return ", ".join(repr(n) for n in names[:limit]) + (", ..." if len(names) > limit else "") or "(none)"


def resolve_spec(
    model: nn.Module,
    spec: SymmetrySpec | ModelProjection | None = None,
    group: Group | str | None = None,
    *,
    inputs: object = None,
    outputs: object = None,
) -> ModelProjection:
    """The :class:`ModelProjection` of ``model``: from ``spec``, or from ``model.symmetry_spec()``, or
    inferred.

    ``group``, when given, is the group the caller means: a spec for another group is refused, wherever
    it came from (a model's ``symmetry_spec()`` for C4 trained as D4 would otherwise mix the two).

    A declared spec always wins: a model's ``symmetry_spec()`` replaces a spec that is only to be
    inferred (an :class:`~lightning_equi.subspace.inference.InferredSpec`, what ``build_callbacks``
    passes the callbacks for a model without a spec). With no spec at all, ``group`` and ``inputs``
    (the action on the model's input, e.g. ``"image"``) infer one (:meth:`SymmetrySpec.infer`, with
    ``outputs`` the action on the output, ``None`` for invariant outputs).

    Raises:
        ValueError: if the model has no spec, the spec is for another group than ``group``, or the spec
            does not fit the model (:meth:`SymmetrySpec.bind`).
        TypeError: if the spec is neither a SymmetrySpec nor a ModelProjection.

    Example:
        >>> net = nn.Linear(4, 4)
        >>> spec = SymmetrySpec("C2").layer(net, "regular", "regular")
        >>> resolve_spec(net, spec).dim  # 2 x 2 circulant blocks of 2 + a bias constant per field
        10
        >>> resolve_spec(net, spec, group="C4")
        Traceback (most recent call last):
        ...
        ValueError: group='C4' but the symmetry spec is for C2; give one group (or leave group unset)
    """
    source = "the symmetry spec"
    method = getattr(model, "symmetry_spec", None)
    if isinstance(spec, SymmetrySpec) and spec.deferred and callable(method):
        spec = None  # the model declares its spec: it wins over inference
    if spec is None and not callable(method) and group is not None and inputs is not None:
        spec = SymmetrySpec.infer(model, group, inputs, outputs)
        source = "the inferred spec"
    if spec is None:
        if not callable(method):
            raise ValueError(
                f"{type(model).__name__} has no symmetry spec: pass spec=SymmetrySpec(group).layer(...), or "
                "define a method symmetry_spec(self) -> SymmetrySpec on the model, or give group= and "
                "inputs= to infer it"
            )
        spec = method()
        source = f"{type(model).__name__}.symmetry_spec()"
    if not isinstance(spec, (SymmetrySpec, ModelProjection)):
        raise TypeError(f"expected a SymmetrySpec or a ModelProjection, got {type(spec).__name__}")
    if group is not None:
        wanted = get_group(group)
        if wanted != spec.group:
            raise ValueError(
                f"group={wanted.name!r} but {source} is for {spec.group.name}; give one group "
                "(or leave group unset)"
            )
    return spec if isinstance(spec, ModelProjection) else spec.bind(model)
