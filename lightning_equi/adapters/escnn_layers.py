"""escnn steerable models in the dense parameter space: train them nom / aug / equi, and convert back.

:func:`to_dense` takes a model built from escnn modules and returns the same network with every
``R2Conv``, ``R3Conv`` and ``escnn.nn.Linear`` replaced by a :class:`DenseR2Conv`,
:class:`DenseR3Conv` or :class:`DenseLinear`: the weight is a free dense filter (escnn's expanded
filter, so the model starts in E) and the layer still takes and returns ``GeometricTensor`` s of the
same types, so the rest of the model (nonlinearities, batch norms, pooling, user forward code) is
unchanged. It also returns the model's :class:`~lightning_equi.subspace.spec.ModelProjection`: a
projector per dense weight and bias, built from the layers' field types with nothing written by the
user. :func:`to_escnn` goes back: least squares onto escnn's basis, block by block.

Which E (``subspace=``): ``"grid"``, the exact fixed points of the group acting on fields and on the
pixel grid (default for C1, C2, C4, D1, D2, D4 convolutions and finite-group ``Linear``), or
``"basis"``, the span of escnn's band-limited basis (default, and the only choice, for C_N with
N > 4, SO(2), O(2) and 3D). See :mod:`lightning_equi.adapters.escnn_projectors`.

escnn's traps, handled: the dense layers keep ``padding_mode`` (escnn's ``export()`` drops it);
they hold no basis buffers, so ``state_dict`` keys are the same in train and eval mode, ``deepcopy``
works in eval mode, and ``.double()`` on one model never touches another; field types pickle by
recipe (:mod:`~lightning_equi.adapters.escnn_pickle`); escnn layers built here keep NumPy's global
random state.

Example:
    >>> import torch
    >>> from escnn import gspaces, nn as enn
    >>> gs = gspaces.rot2dOnR2(4)
    >>> it, ot = enn.FieldType(gs, [gs.trivial_repr]), enn.FieldType(gs, 2 * [gs.regular_repr])
    >>> net = enn.SequentialModule(enn.R2Conv(it, ot, 5, padding=2), enn.ReLU(ot))
    >>> dense, projection = to_dense(net)
    >>> type(dense[0]).__name__, projection.dim, projection.numel
    ('DenseR2Conv', 52, 208)
    >>> x = it(torch.randn(1, 1, 9, 9))
    >>> torch.allclose(dense(x).tensor, net(x).tensor, atol=1e-6)
    True
"""

from __future__ import annotations

import copy
import hashlib
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from escnn import nn as enn
from torch import Tensor, nn

from lightning_equi.adapters.escnn_compat import patch_escnn_numerics
from lightning_equi.adapters.escnn_groups import group_from_escnn
from lightning_equi.adapters.escnn_pickle import register_escnn_pickling
from lightning_equi.adapters.escnn_projectors import (
    SUBSPACES,
    EscnnBasisProjector,
    bias_projector,
    grid_group,
    grid_projector,
    keep_numpy_rng,
    sampled_bases,
)
from lightning_equi.subspace.base import Projector
from lightning_equi.subspace.spec import ModelProjection, ProjectedTensor

__all__ = [
    "DenseR2Conv",
    "DenseR3Conv",
    "DenseLinear",
    "DENSE_LAYERS",
    "to_dense",
    "to_escnn",
    "escnn_spec",
    "layer_projectors",
    "default_subspace",
    "EQUIVARIANT_BY_CONSTRUCTION",
]

register_escnn_pickling()
patch_escnn_numerics()

#: escnn modules whose own parameters are equivariant whatever their value (one per field, or on
#: norms and trivial irreps only): kept as they are and left free in the spec
EQUIVARIANT_BY_CONSTRUCTION: tuple[type, ...] = (
    enn.InnerBatchNorm,
    enn.NormBatchNorm,
    enn.InducedNormBatchNorm,
    enn.GNormBatchNorm,
    enn.IIDBatchNorm1d,
    enn.IIDBatchNorm2d,
    enn.IIDBatchNorm3d,
    enn.NormNonLinearity,
    enn.InducedNormNonLinearity,
)

# (kind, in_type, out_type, kernel, dilation, subspace, basis recipe) -> {"weight": P, "bias": P}
_PROJECTORS: dict[tuple, dict[str, Projector]] = {}
# (kind, in_type, out_type, kernel, dilation, basis recipe) -> sampled bases, float64 copies
_BASES: dict[tuple, dict[tuple[str, str], Tensor]] = {}


def _signature(attr: dict) -> str:
    """A stable digest of one basis element's attributes (escnn's basis filters see only these)."""
    items = sorted((k, repr(v)) for k, v in attr.items() if k != "id")
    return hashlib.blake2b(repr(items).encode(), digest_size=8).hexdigest()


def _basis_recipe(layer: Any) -> dict[str, Any]:
    """What rebuilds exactly the same sampled basis as ``layer``'s, as plain (picklable) data.

    escnn does not keep its ``frequencies_cutoff``/``basis_filter``; the elements it kept are recorded
    by digest instead, which reproduces any filter (it only ever sees an element's attributes).
    """
    be = layer.basisexpansion
    kept = set()
    for pair in be._representations_pairs:
        block = getattr(be, f"block_expansion_{be._escape_pair(pair)}")
        kept.update(_signature(a) for a, keep in zip(block.basis, block._mask.tolist(), strict=True) if keep)
    return {
        "sigma": [float(s) for s in layer._sigma],
        "rings": [float(r) for r in layer._rings],
        "maximum_frequency": int(layer._maximum_frequency),
        "kept": tuple(sorted(kept)),
    }


def default_subspace(kind: str, gspace: Any) -> str:
    """``"grid"`` where the group acts exactly on the grid (C1, C2, C4, D1, D2, D4 convolutions,
    finite groups for ``Linear``), else ``"basis"``."""
    if kind == "R2Conv":
        return "grid" if grid_group(gspace) is not None else "basis"
    if kind == "Linear":
        return "basis" if gspace.fibergroup.continuous else "grid"
    return "basis"


def _check_subspace(subspace: str, kind: str, gspace: Any, where: str) -> str:
    if subspace not in SUBSPACES:
        raise ValueError(f"escnn_layers: {where}: subspace must be one of {SUBSPACES}, got {subspace!r}")
    if subspace == "grid":
        ok = (
            grid_group(gspace) is not None
            if kind == "R2Conv"
            else (kind == "Linear" and not gspace.fibergroup.continuous)
        )
        if not ok:
            raise ValueError(
                f"escnn_layers: {where} ({kind} on {gspace.name}) has no exact grid subspace: only "
                "C1, C2, C4, D1, D2, D4 (default mirror axis) act exactly on a pixel grid, and Linear "
                "needs a finite group; use subspace='basis'"
            )
    return subspace


class _DenseLayer(enn.EquivariantModule):
    """Common part of the dense layers: field types, the subspace, the basis recipe, projectors."""

    kind = "layer"

    def _init_common(self, layer: Any, subspace: str | None) -> None:
        self.in_type, self.out_type = layer.in_type, layer.out_type
        sub = subspace or default_subspace(self.kind, self.in_type.gspace)
        self.subspace = _check_subspace(sub, self.kind, self.in_type.gspace, type(layer).__name__)
        self.basis_recipe = _basis_recipe(layer) if self.kind != "Linear" else None
        with torch.no_grad():
            w, b = layer.expand_parameters()
        self.weight = nn.Parameter(w.detach().clone().reshape(self._weight_shape()))
        self.bias = nn.Parameter(b.detach().clone()) if b is not None else None
        _BASES.setdefault(self._basis_key(), sampled_bases(layer))

    def _weight_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def _kernel(self) -> tuple[int, ...]:
        return ()

    def _basis_key(self) -> tuple:
        recipe = (
            None
            if self.basis_recipe is None
            else tuple(
                sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in self.basis_recipe.items())
            )
        )
        return (self.kind, self.in_type, self.out_type, self._kernel(), getattr(self, "dilation", 1), recipe)

    def _wrap(self, x: Any) -> tuple[Tensor, bool]:
        if isinstance(x, enn.GeometricTensor):
            if x.type != self.in_type:
                raise ValueError(
                    f"{type(self).__name__}: the input's field type {x.type} is not the layer's "
                    f"{self.in_type}"
                )
            return x.tensor, True
        return x, False

    def _unwrap(self, y: Tensor, geometric: bool) -> Any:
        return enn.GeometricTensor(y, self.out_type) if geometric else y

    def projectors(self, subspace: str | None = None) -> dict[str, Projector]:
        """``{"weight": P, "bias": P}`` (no ``"bias"`` without a bias), cached per layer signature."""
        return layer_projectors(self, subspace)

    def to_escnn_layer(self) -> Any:
        """A fresh escnn layer of the same types and basis (not shared), coefficients unset."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.in_type.size} -> {self.out_type.size}, subspace={self.subspace!r}"


class _DenseRdConv(_DenseLayer):
    d = 2
    kind = "R2Conv"
    _escnn_cls: Any = None

    def __init__(self, conv: Any, subspace: str | None = None) -> None:
        super().__init__()
        if int(conv.groups) != 1:
            raise ValueError(
                f"{type(self).__name__}: grouped steerable convolutions (groups={conv.groups}) "
                "are not supported"
            )
        self.kernel_size, self.stride, self.dilation = int(conv.kernel_size), conv.stride, conv.dilation
        self.padding, self.padding_mode = conv.padding, conv.padding_mode
        self._reversed_padding_repeated_twice = conv._reversed_padding_repeated_twice
        self._init_common(conv, subspace)

    @classmethod
    def from_escnn(cls, conv: Any, subspace: str | None = None) -> _DenseRdConv:
        """The dense layer of an escnn convolution, initialised to its expanded filter and bias."""
        return cls(conv, subspace)

    def _weight_shape(self) -> tuple[int, ...]:
        return (self.out_type.size, self.in_type.size, *self._kernel())

    def _kernel(self) -> tuple[int, ...]:
        return (self.kernel_size,) * self.d

    def forward(self, x: Any) -> Any:
        t, geometric = self._wrap(x)
        conv = F.conv2d if self.d == 2 else F.conv3d
        if self.padding_mode == "zeros":
            y = conv(t, self.weight, self.bias, self.stride, self.padding, self.dilation)
        else:  # as escnn's forward (and nn.Conv2d) do; escnn's export() forgets this
            y = conv(
                F.pad(t, self._reversed_padding_repeated_twice, self.padding_mode),
                self.weight,
                self.bias,
                self.stride,
                0,
                self.dilation,
            )
        return self._unwrap(y, geometric)

    def evaluate_output_shape(self, input_shape: tuple) -> tuple:
        b, c, *spatial = input_shape
        pad = self.padding if isinstance(self.padding, tuple) else (self.padding,) * self.d
        out = [
            math.floor((n + 2 * p - self.dilation * (self.kernel_size - 1) - 1) / self.stride + 1)
            for n, p in zip(spatial, pad, strict=True)
        ]
        return (b, self.out_type.size, *out)

    def export(self) -> nn.Module:
        """A plain ``nn.Conv2d``/``nn.Conv3d`` with the same weight, bias and ``padding_mode``."""
        cls = nn.Conv2d if self.d == 2 else nn.Conv3d
        out = cls(
            self.in_type.size,
            self.out_type.size,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
        )
        with torch.no_grad():
            out.weight.copy_(self.weight)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out.to(self.weight.device, self.weight.dtype)

    def to_escnn_layer(self) -> Any:
        recipe = self.basis_recipe
        kept = set(recipe["kept"])
        mf = float(recipe["maximum_frequency"])
        with keep_numpy_rng():
            return self._escnn_cls(
                self.in_type,
                self.out_type,
                self.kernel_size,
                padding=self.padding,
                stride=self.stride,
                dilation=self.dilation,
                padding_mode=self.padding_mode,
                bias=self.bias is not None,
                sigma=list(recipe["sigma"]),
                rings=list(recipe["rings"]),
                frequencies_cutoff=lambda r: mf,  # the recorded elements decide; this only fixes the band
                basis_filter=lambda attr: _signature(attr) in kept,
                recompute=True,  # a basis of its own: escnn shares cached bases between models
                initialize=False,
            )


class DenseR2Conv(_DenseRdConv):
    """An escnn ``R2Conv`` as a free dense filter: same types, padding, stride, dilation, ``padding_mode``.

    Takes a ``GeometricTensor`` of ``in_type`` (or a plain tensor) and returns one of ``out_type``
    (or a plain tensor). Holds no escnn basis, so it pickles, deep-copies in eval mode and has the
    same ``state_dict`` keys (``weight``, ``bias``) in train and eval mode.

    Example:
        >>> from escnn import gspaces, nn as enn
        >>> gs = gspaces.rot2dOnR2(4)
        >>> ft = enn.FieldType(gs, [gs.regular_repr])
        >>> conv = enn.R2Conv(ft, ft, 3, padding=1, padding_mode="circular")
        >>> dense = DenseR2Conv(conv)
        >>> dense.weight.shape, dense.padding_mode, dense.subspace
        (torch.Size([4, 4, 3, 3]), 'circular', 'grid')
    """

    d = 2
    kind = "R2Conv"
    _escnn_cls = enn.R2Conv


class DenseR3Conv(_DenseRdConv):
    """An escnn ``R3Conv`` as a free dense filter (``subspace="basis"`` only)."""

    d = 3
    kind = "R3Conv"
    _escnn_cls = enn.R3Conv


class DenseLinear(_DenseLayer):
    """An ``escnn.nn.Linear`` as a free dense matrix ``(out, in)``.

    Example:
        >>> from escnn import group, gspaces, nn as enn
        >>> gs = gspaces.no_base_space(group.cyclic_group(4))
        >>> ft = enn.FieldType(gs, 2 * [gs.regular_repr])
        >>> DenseLinear(enn.Linear(ft, ft)).projectors()["weight"].dim  # circulant 4x4 blocks
        16
    """

    kind = "Linear"

    def __init__(self, linear: Any, subspace: str | None = None) -> None:
        super().__init__()
        self._init_common(linear, subspace)

    @classmethod
    def from_escnn(cls, linear: Any, subspace: str | None = None) -> DenseLinear:
        return cls(linear, subspace)

    def _weight_shape(self) -> tuple[int, ...]:
        return (self.out_type.size, self.in_type.size)

    def forward(self, x: Any) -> Any:
        t, geometric = self._wrap(x)
        return self._unwrap(F.linear(t, self.weight, self.bias), geometric)

    def evaluate_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], self.out_type.size)

    def export(self) -> nn.Linear:
        out = nn.Linear(self.in_type.size, self.out_type.size, bias=self.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.weight)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out.to(self.weight.device, self.weight.dtype)

    def to_escnn_layer(self) -> Any:
        with keep_numpy_rng():
            return enn.Linear(
                self.in_type, self.out_type, bias=self.bias is not None, recompute=True, initialize=False
            )


DENSE_LAYERS = (DenseR2Conv, DenseR3Conv, DenseLinear)
_REPLACE = {enn.R2Conv: DenseR2Conv, enn.R3Conv: DenseR3Conv, enn.Linear: DenseLinear}
_DENSE_TO_ESCNN = {DenseR2Conv: enn.R2Conv, DenseR3Conv: enn.R3Conv, DenseLinear: enn.Linear}


def layer_projectors(layer: _DenseLayer, subspace: str | None = None) -> dict[str, Projector]:
    """The projectors of one dense layer's ``weight`` (and ``bias``) onto ``subspace``'s E (default:
    the layer's own). Built once per layer signature and shared: projectors hold no model state."""
    sub = _check_subspace(subspace or layer.subspace, layer.kind, layer.in_type.gspace, type(layer).__name__)
    bkey = layer._basis_key()
    key = (*bkey, sub)
    if key not in _PROJECTORS:
        kernel = layer._kernel()
        if sub == "grid":
            weight = grid_projector(layer.in_type, layer.out_type, kernel[0] if kernel else None)
        else:
            if bkey not in _BASES:  # e.g. unpickled in a fresh process: rebuild escnn's basis once
                _BASES[bkey] = sampled_bases(layer.to_escnn_layer())
            weight = EscnnBasisProjector(
                layer.in_type, layer.out_type, _BASES[bkey], kernel, exact=not kernel
            )
        _PROJECTORS[key] = {"weight": weight, "bias": bias_projector(layer.out_type)}
    out = dict(_PROJECTORS[key])
    if layer.bias is None:
        out.pop("bias")
    return out


# ---- whole models ----------------------------------------------------------------------------------


def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def to_dense(
    model: nn.Module, subspace: str | None = None, invariant: Sequence[str] = ()
) -> tuple[nn.Module, ModelProjection]:
    """A copy of ``model`` with every escnn ``R2Conv``/``R3Conv``/``Linear`` made dense, and its spec.

    Args:
        model: an escnn model (``SequentialModule``, a user ``EquivariantModule``, any ``nn.Module``
            holding escnn modules). It is not modified.
        subspace: ``"grid"`` or ``"basis"`` for every steerable layer; ``None`` picks per layer
            (:func:`default_subspace`).
        invariant: names of plain torch submodules that act on invariant features (e.g. an MLP head
            after ``GroupPooling``): their parameters are left free. Any other plain torch module with
            parameters inside the model is an error, because its action cannot be read from escnn.

    Returns:
        ``(dense_model, projection)``; ``projection`` is :func:`escnn_spec` of the dense model (pass it
        as ``spec=`` to the callbacks, or call ``escnn_spec(self)`` from a ``symmetry_spec`` method).

    Raises:
        ValueError: naming each module that cannot be adapted, and how to fix it.
    """
    replace: dict[int, nn.Module] = {}
    bad, handled = [], []  # handled: modules whose submodules are escnn's business, not ours
    with keep_numpy_rng():
        for name, module in model.named_modules():
            cls = type(module)
            if _under(name, handled):
                continue
            if cls in _REPLACE:
                replace[id(module)] = _REPLACE[cls](module, subspace)
                handled.append(name)
            elif isinstance(module, (*DENSE_LAYERS, *EQUIVARIANT_BY_CONSTRUCTION)):
                handled.append(name)
            elif _owns_parameters(module) and not _under(name, invariant):
                bad.append((name or "<model>", cls))
    if bad:
        rows = "\n".join(f"  {n} ({c.__module__}.{c.__name__})" for n, c in bad)
        raise ValueError(
            "to_dense: cannot read the group action of these modules from escnn:\n" + rows + "\n"
            "Only escnn's R2Conv, R3Conv and Linear are made dense; escnn modules equivariant by "
            f"construction ({', '.join(c.__name__ for c in EQUIVARIANT_BY_CONSTRUCTION[:3])}, ...) "
            "and parameter-free modules are "
            "kept. Replace the module by an escnn one, or, if it only sees invariant features, pass "
            f"to_dense(model, invariant=[{bad[0][0]!r}])"
        )
    if not replace:
        raise ValueError("to_dense: the model has no escnn R2Conv, R3Conv or Linear layer to make dense")
    # deepcopy with the steerable layers pre-mapped to their dense versions: their escnn bases are never
    # copied (deepcopy of an escnn conv fails in eval mode), everything else is
    memo: dict[int, Any] = dict(replace)
    dense = copy.deepcopy(model, memo)
    return dense, escnn_spec(dense)


def escnn_spec(model: nn.Module, subspace: str | None = None) -> ModelProjection:
    """The :class:`~lightning_equi.subspace.spec.ModelProjection` of a model holding dense escnn layers.

    Every ``weight``/``bias`` of a :class:`DenseR2Conv`, :class:`DenseR3Conv`, :class:`DenseLinear`
    gets its projector; all other parameters are free. Use it from a LightningModule:
    ``def symmetry_spec(self): return escnn_spec(self)``.
    """
    entries, groups = [], {}
    for name, module in model.named_modules():
        if not isinstance(module, DENSE_LAYERS):
            continue
        groups[module.in_type.gspace.fibergroup.name] = module.in_type.gspace
        for attr, proj in layer_projectors(module, subspace).items():
            full = f"{name}.{attr}" if name else attr
            entries.append(ProjectedTensor(full, proj, False, name, module, attr))
    if not entries:
        raise ValueError(
            f"escnn_spec: {type(model).__name__} holds no dense escnn layer; "
            "convert it first with to_dense(model)"
        )
    if len(groups) > 1:
        raise ValueError(
            f"escnn_spec: the dense layers use different groups {sorted(groups)}; one model, one group"
        )
    group = group_from_escnn(next(iter(groups.values())))
    covered = {e.name for e in entries}
    free = [n for n, _ in model.named_parameters() if n not in covered]
    return ModelProjection(group, model, entries, free)


def _least_squares(layer: _DenseLayer, target: Any, strict: bool, name: str) -> None:
    """Set ``target.weights`` (and ``bias``) to the least-squares coefficients of ``layer``'s dense weight."""
    be = target.basisexpansion
    w = layer.weight.detach().to("cpu", torch.float64)
    w3 = w.reshape(w.shape[0], w.shape[1], -1)
    rows_out, rows_in = {}, {}
    for rows, ft in ((rows_out, target.out_type), (rows_in, target.in_type)):
        start = 0
        for rep in ft.representations:
            rows.setdefault(rep.name, []).append(list(range(start, start + rep.size)))
            start += rep.size
    coeffs = torch.zeros(be.dimension(), dtype=torch.float64)
    fitted = torch.zeros_like(w3)
    for pair in be._representations_pairs:
        block = getattr(be, f"block_expansion_{be._escape_pair(pair)}")
        basis = block.sampled_basis.detach().to("cpu", torch.float64)
        b = basis.reshape(basis.shape[0], -1)  # (b, o*i*S)
        ro = torch.tensor(rows_out[pair[1]])[:, None, :, None]
        ri = torch.tensor(rows_in[pair[0]])[None, :, None, :]
        blocks = w3[ro, ri]  # (n_out, n_in, o, i, S), escnn's coefficient order (out field, in field, b)
        c = blocks.reshape(-1, b.shape[1]) @ torch.linalg.pinv(b)
        lo, hi = be._weights_ranges[pair]
        coeffs[lo:hi] = c.reshape(-1)
        fitted[ro, ri] = (c @ b).reshape(blocks.shape)
    residual = (w3 - fitted).norm() / w3.norm().clamp_min(1e-30)
    if residual > 1e-4:
        msg = (
            f"to_escnn: the weight of {name or 'the model'} is not in span(escnn basis) (relative residual "
            f"{float(residual):.3g}); escnn keeps only its least-squares projection, a different function. "
            "A layer trained with subspace='grid' needs a richer escnn basis (more rings, a higher "
            "frequencies_cutoff), or train with subspace='basis'"
        )
        if strict:
            raise ValueError(msg + "; pass strict=False to convert anyway")
        warnings.warn(msg, stacklevel=3)
    with torch.no_grad():
        target.weights.copy_(coeffs.to(target.weights.dtype))
        if layer.bias is not None:
            expansion = target.bias_expansion.detach().double()
            target.bias.copy_(
                (torch.linalg.pinv(expansion) @ layer.bias.detach().cpu().double()).to(target.bias.dtype)
            )
    target.to(layer.weight.device)


def to_escnn(model: nn.Module, strict: bool = True) -> nn.Module:
    """A copy of ``model`` with every dense layer turned back into escnn's own layer.

    Coefficients are the least-squares fit of the dense weight onto escnn's basis, block by block;
    escnn -> :func:`to_dense` -> ``to_escnn`` gives back the same function. The new escnn layers
    have bases of their own (``recompute=True``) and are left in train mode.

    Raises:
        ValueError: if a dense weight is not in span(escnn basis) (e.g. trained on the larger
            ``"grid"`` E) and ``strict``; otherwise a warning, and the projection is kept.
    """
    replace: dict[int, Any] = {}
    for name, module in model.named_modules():
        if isinstance(module, DENSE_LAYERS):
            target = module.to_escnn_layer()
            _least_squares(module, target, strict, name)
            target.train(module.training)
            replace[id(module)] = target
    if not replace:
        raise ValueError(f"to_escnn: {type(model).__name__} holds no dense escnn layer")
    return copy.deepcopy(model, dict(replace))
