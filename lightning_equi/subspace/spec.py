"""The symmetry spec of a plain torch model: which group acts on each layer, and how.

A :class:`SymmetrySpec` is declared in a few lines, layer by layer or for all layers of a type, with
the *fields* each layer reads and writes: a representation of the group, or its short name
(``"trivial"``, ``"regular"``, ``"standard"``, ``"sign"``, ``"pairs"``, ``"irrep<k>"``) repeated to
fill the layer's channels. Binding it to a model (:meth:`SymmetrySpec.bind`) checks that every
parameter is covered and yields a :class:`ModelProjection`: one projector per parameter and running
statistic, and the operations the training callbacks need (project weights, project gradients,
distances to E).

Layouts. Fields are laid out channel by channel, field after field, as in escnn: ``"regular"`` on a
``Conv2d(1, 16)`` under C4 is four regular fields on channels ``0-3, 4-7, 8-11, 12-15``. A
``Linear`` on a flattened ``C x H x W`` image under the torus ``T<H>x<W>`` reads ``C`` regular fields
(``fields="regular"``), and on a flattened ``d x n`` set under ``S<n>`` it reads ``d`` standard
fields.

Kernels. Under C1, C2, C4, D1, D2, D4 a ``Conv2d`` kernel is acted on by quarter turns and mirrors of
its grid (:func:`~lightning_equi.groups.grid_representation`: ``torch.rot90(K, k, dims=(-2, -1))``,
the mirror ``torch.flip(K, (-1,))`` first); a ``Conv3d`` kernel by the same on its last two axes
(rotations about the depth axis); a ``Conv1d`` kernel, under an order-2 group (C2 or D1), by
reversal. Transposed convolutions follow the same rules.

Normalisation layers (BatchNorm, InstanceNorm, GroupNorm, LayerNorm over the channels) take the
fields of the closest declared layer defined before them, unless declared with :meth:`~SymmetrySpec.norm`.
They normalise each channel (or group of channels) by its own statistics, which commutes with the
group only for permutation fields; their affine weight, bias and running statistics must then be
constant on each orbit of channels, and are projected like any other parameter (running statistics
receive no gradient but are re-projected with the weights).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from lightning_equi.groups import (
    FIELD_NAMES,
    FiniteGroup,
    Group,
    Representation,
    direct_sum,
    get_group,
    grid_representation,
    representation_by_name,
    trivial,
)
from lightning_equi.subspace import distance as D
from lightning_equi.subspace.base import Projector, TensorAction
from lightning_equi.subspace.orbit import orbit_ids
from lightning_equi.subspace.select import make_projector

__all__ = [
    "SymmetrySpec",
    "ModelProjection",
    "ProjectedTensor",
    "HasSymmetrySpec",
    "resolve_spec",
    "FIELD_NAMES",
]

#: a field type (repeated to fill the channels) or an explicit list of fields (their direct sum)
Fields = Representation | str | Sequence[Representation | str]
#: a module of the model, or its qualified name in ``model.named_modules()``
Target = nn.Module | str

_LINEAR = (nn.Linear,)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BATCH_NORM = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
_NORMS = (*_BATCH_NORM, nn.GroupNorm, nn.LayerNorm)
_LAYERS = (*_LINEAR, *_CONV, *_CONV_T)


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

    # ---- declaring --------------------------------------------------------------------------------

    def layer(self, module: Target, in_fields: Fields, out_fields: Fields) -> SymmetrySpec:
        """Declare the fields one layer reads (``in_fields``) and writes (``out_fields``).

        ``module`` is the module itself or its qualified name (``"encoder.0"``). A field type is
        repeated to fill the channels; a list of fields must add up to them exactly.
        """
        self._layers.append((_check_target(module, "layer"), _Declaration(in_fields, out_fields)))
        return self

    def layers(
        self,
        kind: type[nn.Module] | tuple[type[nn.Module], ...],
        fields: Fields | None = None,
        *,
        in_fields: Fields | None = None,
        out_fields: Fields | None = None,
    ) -> SymmetrySpec:
        """Declare every layer of a type (e.g. all hidden ``nn.Conv2d``) not declared by :meth:`layer`.

        ``fields`` sets both sides; ``in_fields``/``out_fields`` override one side.
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
        self._types.append((kinds, _Declaration(in_f, out_f)))
        return self

    def norm(self, module: Target, fields: Fields) -> SymmetrySpec:
        """Declare the fields a normalisation layer normalises (by default, the preceding layer's)."""
        self._layers.append((_check_target(module, "norm"), _Declaration(fields, fields)))
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

    def bind(self, model: nn.Module) -> ModelProjection:
        """Check the spec against ``model`` and build the projector of every parameter and statistic.

        Raises:
            ValueError: naming every parameter with no declared action (and how to declare or free
                it), a layer whose channels do not fit its fields, fields of another group, a layer
                type that cannot be constrained, or a name the model does not have.
        """
        return _Binder(self, model).run()

    def fields(self, fields: Fields, channels: int, where: str) -> Representation:
        """The representation on ``channels`` coordinates described by ``fields`` (``where``: for errors).

        A single field type (a name, or a representation that is not a direct sum) is repeated to fill
        the channels; a direct sum or a list of fields must cover them exactly.

        Example:
            >>> SymmetrySpec("C4").fields("regular", 16, "conv1 out_fields")
            Representation(regular+regular+regular+regular, C4, dim=16)
        """
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
        try:
            return representation_by_name(self.group, key)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err

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


def _check_target(target: Target, method: str) -> Target:
    if not isinstance(target, (nn.Module, str)):
        raise TypeError(
            f"{method}() takes a module of the model or its qualified name, got {type(target).__name__}"
        )
    return target


# --------------------------------------------------------------------------------------------------
# the lifted action of each supported layer


def _channels(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, (*_CONV, *_CONV_T)):
        return module.in_channels, module.out_channels
    if isinstance(module, _BATCH_NORM):
        return module.num_features, module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels, module.num_channels
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[0], module.normalized_shape[0]
    raise AssertionError(type(module))


def _line_representation(group: Group, size: int) -> Representation:
    """An order-2 group (C2, D1) reversing a 1-d kernel; C1 leaves it alone."""

    def perm(g: Tensor) -> Tensor:
        flip = group.index(g) % 2  # C2: element 1; D1: (f, 0) has index f
        ids = torch.arange(size, device=g.device)
        return torch.where(flip[:, None].bool(), ids.flip(0)[None], ids[None])

    def matrices(g: Tensor) -> Tensor:
        return torch.eye(size, dtype=torch.float64, device=g.device)[perm(g)]

    return Representation(group, size, f"line{size}", matrices, perm)


def _kernel_factors(group: Group, kernel: tuple[int, ...], where: str) -> list[tuple[Representation, int]]:
    try:
        if len(kernel) == 1:
            if not (
                isinstance(group, FiniteGroup) and group.order in (1, 2) and group.name in ("C1", "C2", "D1")
            ):
                raise ValueError(f"only C1, C2 and D1 (reversal) act on a 1-d kernel, not {group.name}")
            return [(_line_representation(group, kernel[0]), 1)]
        grid = (grid_representation(group, kernel[-2:]), 2)
        if len(kernel) == 2:
            return [grid]
        return [(kernel[0] * trivial(group), 1), grid]  # rotations about the depth axis
    except ValueError as err:
        raise ValueError(
            f"{where}: {err}. If this layer's weights are unconstrained (a convolution is already "
            f"translation-equivariant), leave it free with spec.free(...)"
        ) from err


def _layer_actions(
    module: nn.Module, rho_in: Representation, rho_out: Representation, where: str
) -> dict[str, TensorAction]:
    """Parameter name (within the module) -> lifted action, for Linear and (transposed) convolutions."""
    group = rho_in.group
    actions: dict[str, TensorAction] = {}
    if isinstance(module, nn.Linear):
        actions["weight"] = TensorAction(module.weight.shape, [(rho_out, 1), (rho_in, 1)])
    else:
        if module.groups != 1:
            raise ValueError(
                f"{where}: grouped convolutions (groups={module.groups}) are not supported; "
                "declare their weights with spec.parameter(...) or leave the layer free"
            )
        kernel = _kernel_factors(group, tuple(module.kernel_size), where)
        channels = [(rho_in, 1), (rho_out, 1)] if isinstance(module, _CONV_T) else [(rho_out, 1), (rho_in, 1)]
        actions["weight"] = TensorAction(module.weight.shape, channels + kernel)
    if module.bias is not None:
        actions["bias"] = TensorAction(module.bias.shape, [(rho_out, 1)])
    return actions


def _norm_actions(module: nn.Module, rho: Representation, where: str) -> dict[str, TensorAction]:
    """Affine weight and bias, running mean and variance: vectors fixed by a permutation of channels.

    For a permutation representation ``diag(gamma)`` commutes with ``rho`` iff ``gamma`` is fixed by
    ``rho``, so every tensor of the layer has the same action, and E is constant on channel orbits.
    """
    if not rho.is_permutation:
        raise ValueError(
            f"{where}: {type(module).__name__} normalises each channel by its own statistics, which commutes "
            f"with {rho.group.name} only when it permutes channels, but the fields {rho.name} are not a "
            "permutation representation. Use a norm-based nonlinearity/normalisation (e.g. escnn's "
            "IIDBatchNorm), or leave the layer free"
        )
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
        raise ValueError(
            f"{where}: LayerNorm over {tuple(module.normalized_shape)} is not supported; normalise over the "
            f"channels only, or use nn.GroupNorm(1, {module.normalized_shape[0]}) (the same statistics over "
            "channels and space, with a per-channel affine map)"
        )
    if isinstance(module, nn.GroupNorm) and module.num_groups > 1 and rho.group.is_finite:
        orbits = orbit_ids(TensorAction((rho.dim,), [(rho, 1)])).reshape(module.num_groups, -1)
        for i in range(module.num_groups):
            others = torch.cat([orbits[:i], orbits[i + 1 :]]).reshape(-1)
            if bool(torch.isin(orbits[i], others).any()):
                raise ValueError(
                    f"{where}: GroupNorm({module.num_groups}, {module.num_channels}) mixes the statistics of "
                    f"channels that {rho.group.name} permutes across its groups; choose num_groups so that "
                    f"every group holds whole fields (a divisor of the number of fields)"
                )
    action = TensorAction((rho.dim,), [(rho, 1)])
    names = ("weight", "bias", "running_mean", "running_var")
    return {n: action for n in names if isinstance(getattr(module, n, None), Tensor)}


# --------------------------------------------------------------------------------------------------
# binding a spec to a model


class _Binder:
    """One pass over ``model.named_modules()`` resolving each parameter to a projector or to free."""

    def __init__(self, spec: SymmetrySpec, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"bind() takes an nn.Module, got {type(model).__name__}")
        self.spec, self.model = spec, model
        self.names = {id(m): n for n, m in model.named_modules()}
        self.projectors: dict[tuple, Projector] = {}

    def _module_name(self, target: Target, method: str) -> str:
        if isinstance(target, nn.Module):
            if id(target) not in self.names:
                raise ValueError(
                    f"{method}(): {type(target).__name__} module {target} is not part of the bound model"
                )
            return self.names[id(target)]
        try:
            self.model.get_submodule(target)
        except AttributeError:
            raise ValueError(
                f"{method}({target!r}): the model has no submodule named {target!r}; its layers are "
                f"{_layer_names(self.model)}"
            ) from None
        return target

    def _free_names(self) -> set[str]:
        params = dict(self.model.named_parameters())
        free: set[str] = set()
        for target in self.spec._free:
            if isinstance(target, str) and target in params:
                free.add(target)
                continue
            name = self._module_name(target, "free")
            module = self.model.get_submodule(name)
            free.update(f"{name}.{p}" if name else p for p, _ in module.named_parameters())
            free.update(f"{name}.{b}" if name else b for b, _ in module.named_buffers())
        return free

    def _projector(self, action: TensorAction) -> Projector:
        key = (tuple(action.shape), tuple((id(rep), n) for rep, n in action.factors))
        if key not in self.projectors:
            self.projectors[key] = make_projector(action)
        return self.projectors[key]

    def run(self) -> ModelProjection:
        spec = self.spec
        declared = {self._module_name(t, "layer"): d for t, d in spec._layers}
        free = self._free_names()
        params = dict(self.model.named_parameters())
        for name in spec._parameters:
            if name not in params:
                raise ValueError(f"parameter({name!r}): the model has no parameter named {name!r}")
        entries: list[ProjectedTensor] = []
        missing: list[str] = []
        previous: tuple[Representation, str] | None = None  # fields written by the last declared layer
        for layer, module in self.model.named_modules():
            own = [(n, t, False) for n, t in module.named_parameters(recurse=False)]
            own += [(n, t, True) for n, t in module.named_buffers(recurse=False) if t.is_floating_point()]
            qualified = {n: f"{layer}.{n}" if layer else n for n, _, _ in own}
            where = f"layer {layer!r} ({_describe(module)})"
            actions: dict[str, TensorAction] = {}
            wanted = [
                n for n, _, _ in own if qualified[n] not in free and qualified[n] not in spec._parameters
            ]
            # a type-wide declaration does not reach a layer whose parameters are all free
            decl = declared.get(layer) or (self._type_declaration(module) if wanted else None)
            if isinstance(module, _LAYERS) and decl is not None:
                rho_in, rho_out = self._layer_fields(module, decl, where)
                actions = _layer_actions(module, rho_in, rho_out, where) if wanted else {}
                previous = (rho_out, layer)
            elif isinstance(module, _NORMS) and wanted:
                rho = self._norm_fields(module, layer, decl, previous, where)
                actions = _norm_actions(module, rho, where) if rho is not None else {}
            elif decl is not None and layer in declared:
                raise ValueError(
                    f"{where}: cannot derive the action on the parameters of a {type(module).__name__} "
                    "from fields; "
                    f"supported layers are Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d and BatchNorm, "
                    "InstanceNorm, GroupNorm, LayerNorm. Declare its parameters with spec.parameter(name, "
                    "TensorAction(...)), or leave it free"
                )
            elif isinstance(module, _LAYERS):
                previous = None  # an undeclared layer breaks the chain of fields
            for n, tensor, is_buffer in own:
                q = qualified[n]
                if q in free:
                    continue
                raw = spec._parameters.get(q)
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
                    missing.append(q)
                    continue
                entries.append(ProjectedTensor(q, projector, is_buffer, layer, module, n))
        if missing:
            raise ValueError(self._missing_message(missing))
        return ModelProjection(self.spec.group, self.model, entries, sorted(free & set(params)))

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
        c_in, c_out = _channels(module)
        rho_in = self.spec.fields(decl.in_fields, c_in, f"{where} in_fields")
        rho_out = self.spec.fields(decl.out_fields, c_out, f"{where} out_fields")
        return rho_in, rho_out

    def _norm_fields(
        self,
        module: nn.Module,
        layer: str,
        decl: _Declaration | None,
        previous: tuple[Representation, str] | None,
        where: str,
    ) -> Representation | None:
        channels = _channels(module)[0]
        if decl is not None:
            if decl.in_fields is None or (decl.out_fields is not None and decl.out_fields != decl.in_fields):
                raise ValueError(
                    f"{where}: a normalisation layer reads and writes the same fields; declare them with "
                    f"spec.norm({layer!r}, fields=...)"
                )
            return self.spec.fields(decl.in_fields, channels, f"{where} fields")
        if previous is not None and previous[0].dim == channels:
            return previous[0]
        after = (
            f"the preceding layer {previous[1]!r} writes {previous[0].dim} channels"
            if previous
            else ("no declared layer precedes it")
        )
        raise ValueError(
            f"{where}: cannot infer the fields it normalises ({after}); declare them with "
            f"spec.norm({layer!r}, fields=...), or leave it free"
        )

    def _missing_message(self, missing: list[str]) -> str:
        modules = dict(self.model.named_modules())
        params = dict(self.model.named_parameters())
        width = max(len(n) for n in missing)
        rows = []
        for q in missing:
            layer = q.rpartition(".")[0]
            rows.append(f"  {q:<{width}}  ({_describe(modules[layer])}, shape {tuple(params[q].shape)})")
        example = missing[0].rpartition(".")[0] or "<layer>"
        return (
            f"the SymmetrySpec for {self.spec.group.name} does not say how the group acts on "
            f"{len(missing)} parameter(s) of the model:\n" + "\n".join(rows) + "\n"
            f"Declare each layer, e.g. spec.layer({example!r}, in_fields='regular', out_fields='trivial'), "
            "all layers of a type with spec.layers(nn.Linear, fields=...), or leave parameters unconstrained "
            f"with spec.free({example!r})"
        )


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return f"Linear({module.in_features}, {module.out_features})"
    if isinstance(module, (*_CONV, *_CONV_T)):
        kernel = f"kernel_size={module.kernel_size}"
        return f"{type(module).__name__}({module.in_channels}, {module.out_channels}, {kernel})"
    return type(module).__name__


def _layer_names(model: nn.Module, limit: int = 12) -> str:
    names = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    return ", ".join(repr(n) for n in names[:limit]) + (", ..." if len(names) > limit else "") or "(none)"


# --------------------------------------------------------------------------------------------------
# the bound projection


@dataclass(frozen=True)
class ProjectedTensor:
    """One parameter or running statistic of the model and its projector onto E.

    ``tensor`` is looked up on the module each time, so it follows ``model.to(...)`` (which replaces
    buffers) and ``load_state_dict``.
    """

    name: str
    projector: Projector
    is_buffer: bool
    layer: str
    module: nn.Module = field(repr=False)
    attribute: str = field(repr=False)

    @property
    def tensor(self) -> Tensor:
        return getattr(self.module, self.attribute)


class ModelProjection:
    """A :class:`SymmetrySpec` bound to a model: projections and distances of all its parameters.

    Attributes:
        group: the group.
        model: the bound module.
        entries: one :class:`ProjectedTensor` per constrained parameter and running statistic.
        free_names: qualified names of the parameters left unconstrained.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> spec = SymmetrySpec("C4").layer("0", "regular", "regular").layer("2", "regular", "trivial")
        >>> proj = spec.bind(net)
        >>> bool(proj.total_distance() > 0), proj.dim, proj.numel
        (True, 13, 49)
        >>> proj.project_parameters_()
        >>> proj.is_equivariant()
        True
    """

    def __init__(
        self, group: Group, model: nn.Module, entries: list[ProjectedTensor], free_names: list[str]
    ) -> None:
        self.group, self.model = group, model
        self.entries = list(entries)
        self.free_names = list(free_names)

    def _selected(self, buffers: bool) -> Iterator[ProjectedTensor]:
        return (e for e in self.entries if buffers or not e.is_buffer)

    @property
    def parameters(self) -> list[ProjectedTensor]:
        """The entries that are trainable parameters (not running statistics)."""
        return [e for e in self.entries if not e.is_buffer]

    @property
    def dim(self) -> int:
        """``dim E`` over the constrained parameters."""
        return sum(e.projector.dim for e in self.parameters)

    @property
    def numel(self) -> int:
        """The number of constrained parameter entries (``dim L`` without the free parameters)."""
        return sum(e.tensor.numel() for e in self.parameters)

    # ---- projecting -------------------------------------------------------------------------------

    @torch.no_grad()
    def project_parameters_(self) -> None:
        """Project every constrained parameter and running statistic onto E, in place."""
        for e in self.entries:
            e.projector.project_(e.tensor)

    @torch.no_grad()
    def project_buffers_(self) -> None:
        """Project the running statistics only: training forwards move them out of E, whatever the
        optimizer does, so re-project them before evaluating (or after every step)."""
        for e in self.entries:
            if e.is_buffer:
                e.projector.project_(e.tensor)

    @torch.no_grad()
    def project_gradients_(self) -> None:
        """Project every ``.grad`` of a constrained parameter onto E, in place (``None`` is skipped)."""
        for e in self.parameters:
            grad = e.tensor.grad
            if grad is not None:
                e.projector.project_(grad)

    # ---- distances --------------------------------------------------------------------------------

    def distances(self, buffers: bool = False) -> dict[str, Tensor]:
        """Qualified name -> ``||W - Pi_E W||`` (float64, detached); running statistics if ``buffers``."""
        return {e.name: D.tensor_distance(e.tensor, e.projector) for e in self._selected(buffers)}

    def relative_distances(self, buffers: bool = False) -> dict[str, Tensor]:
        """Qualified name -> ``||W - Pi_E W|| / ||W||`` (0 for a zero tensor)."""
        return {e.name: D.relative_distance(e.tensor, e.projector) for e in self._selected(buffers)}

    def layer_distances(self, buffers: bool = False) -> dict[str, Tensor]:
        """Layer name -> the distance of all its constrained tensors together."""
        return D.layer_distances(self.distances(buffers), {e.name: e.layer for e in self.entries})

    def total_distance(self, buffers: bool = False) -> Tensor:
        """``||A - Pi_E A||`` over the whole model."""
        return D.total_distance(self.distances(buffers))

    def relative_total_distance(self, buffers: bool = False) -> Tensor:
        """``||A - Pi_E A|| / ||A||`` over the whole model."""
        norm = D.root_sum_squares([e.tensor.detach().double().norm() for e in self._selected(buffers)])
        dist = self.total_distance(buffers)
        return dist / norm if norm > 0 else norm

    def snapshot(self, buffers: bool = False) -> dict[str, Tensor]:
        """Detached clones of the constrained tensors (``W0`` for :meth:`distances_from`)."""
        return {e.name: e.tensor.detach().clone() for e in self._selected(buffers)}

    def distances_from(self, w0: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
        """How far each tensor moved from ``w0``, split along E and across it.

        Returns:
            ``{"total": {name: ||W - W0||}, "in_E": {name: ||Pi_E (W - W0)||},
            "perp": {name: ||(I - Pi_E)(W - W0)||}}`` over the names in ``w0`` (float64 scalars);
            aggregate a part over the model with :func:`~lightning_equi.subspace.distance.total_distance`.
        """
        by_name = {e.name: e for e in self.entries}
        unknown = sorted(set(w0) - set(by_name))
        if unknown:
            raise KeyError(
                f"distances_from: {unknown} are not constrained tensors of the model; use snapshot()"
            )
        out: dict[str, dict[str, Tensor]] = {"total": {}, "in_E": {}, "perp": {}}
        for name, start in w0.items():
            e = by_name[name]
            delta = e.tensor.detach().double() - start.detach().to(
                device=e.tensor.device, dtype=torch.float64
            )
            out["total"][name], out["in_E"][name], out["perp"][name] = D.split_norms(delta, e.projector)
        return out

    def report(self, start: dict[str, Tensor] | None = None, layers: bool = True) -> dict[str, Tensor]:
        """Every distance the monitor and the experiment runner log, in one place (float64 scalars).

        Keys are ``<quantity>/<layer>`` and ``<quantity>/total``, ``<layer>`` being the module that holds
        the tensors (``"(root)"`` for parameters of the model itself); per-layer keys only if ``layers``:

        * ``dist_to_E``: ``||A - Pi_E A||``; ``rel_dist_to_E``: the same over ``||A||``;
        * with ``start`` (a :meth:`snapshot`): ``dist_from_start`` ``||A - A0||`` and its parts
          ``dist_from_start_in_E`` ``||Pi_E (A - A0)||`` and ``dist_from_start_perp``
          ``||(I - Pi_E)(A - A0)||``.

        Running statistics are left out, as in :meth:`distances`.

        Example:
            >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
            >>> spec = SymmetrySpec("C4").layer("0", "regular", "regular").layer("2", "regular", "trivial")
            >>> proj = spec.bind(net)
            >>> start = proj.snapshot()
            >>> proj.project_parameters_()
            >>> out = proj.report(start)
            >>> sorted(k for k in out if k.endswith("/total"))  # doctest: +NORMALIZE_WHITESPACE
            ['dist_from_start/total', 'dist_from_start_in_E/total', 'dist_from_start_perp/total',
             'dist_to_E/total', 'rel_dist_to_E/total']
            >>> float(out["dist_to_E/total"]) < 1e-6, float(out["dist_from_start_in_E/total"]) < 1e-6
            (True, True)
        """
        owners = {e.name: e.layer or "(root)" for e in self.entries}
        dist = self.distances()
        parts = {"dist_to_E": dist}
        if start is not None:
            moved = self.distances_from(start)
            parts.update(
                dist_from_start=moved["total"],
                dist_from_start_in_E=moved["in_E"],
                dist_from_start_perp=moved["perp"],
            )
        out: dict[str, Tensor] = {}
        for key, values in parts.items():
            if layers:
                for layer, value in D.layer_distances(values, owners).items():
                    out[f"{key}/{layer}"] = value
            out[f"{key}/total"] = D.total_distance(values)
        if layers:
            norms = {e.name: e.tensor.detach().double().norm() for e in self.parameters}
            layer_norms = D.layer_distances(norms, owners)
            for layer, value in D.layer_distances(dist, owners).items():
                out[f"rel_dist_to_E/{layer}"] = value / layer_norms[layer] if layer_norms[layer] > 0 else value
        out["rel_dist_to_E/total"] = self.relative_total_distance()
        return out

    def gradient_perp_share(self) -> Tensor:
        """``||(I - Pi_E) grad|| / ||grad||`` over all constrained parameters with a gradient (0 if none)."""
        total, perp = [], []
        for e in self.parameters:
            grad = e.tensor.grad
            if grad is not None:
                total.append(grad.detach().double().norm())
                perp.append(D.tensor_distance(grad, e.projector))
        norm = D.root_sum_squares(total)
        return D.root_sum_squares(perp) / norm if norm > 0 else norm

    def is_equivariant(self, atol: float = 1e-5, buffers: bool = True) -> bool:
        """Whether every constrained tensor is within ``atol`` (Frobenius) of E."""
        return all(bool(d <= atol) for d in self.distances(buffers).values())

    def summary(self) -> str:
        """One line per constrained tensor: name, shape, projector, ``dim E`` and entries."""
        rows = [f"{'name':<32} {'shape':<18} {'projector':<12} {'dim E':>7} {'numel':>8}"]
        for e in self.entries:
            shape = str(tuple(e.tensor.shape))
            tag = " (buffer)" if e.is_buffer else ""
            rows.append(
                f"{e.name + tag:<32} {shape:<18} {e.projector.kind:<12} "
                f"{e.projector.dim:>7} {e.tensor.numel():>8}"
            )
        rows.append(
            f"{self.group.name}: dim E = {self.dim} of {self.numel} constrained entries; "
            f"free: {self.free_names}"
        )
        return "\n".join(rows)

    def __repr__(self) -> str:
        return (
            f"ModelProjection({self.group.name}, tensors={len(self.entries)}, dim_E={self.dim}, "
            f"numel={self.numel}, free={len(self.free_names)})"
        )


def resolve_spec(model: nn.Module, spec: SymmetrySpec | ModelProjection | None = None) -> ModelProjection:
    """The :class:`ModelProjection` of ``model``: from ``spec``, or from ``model.symmetry_spec()``.

    Example:
        >>> net = nn.Linear(4, 4)
        >>> spec = SymmetrySpec("C2").layer(net, "regular", "regular")
        >>> resolve_spec(net, spec).dim  # 2 x 2 circulant blocks of 2 + a bias constant per field
        10
    """
    if spec is None:
        method = getattr(model, "symmetry_spec", None)
        if not callable(method):
            raise ValueError(
                f"{type(model).__name__} has no symmetry spec: pass spec=SymmetrySpec(group).layer(...), or "
                "define a method symmetry_spec(self) -> SymmetrySpec on the model"
            )
        spec = method()
    if isinstance(spec, ModelProjection):
        return spec
    if isinstance(spec, SymmetrySpec):
        return spec.bind(model)
    raise TypeError(f"expected a SymmetrySpec or a ModelProjection, got {type(spec).__name__}")
