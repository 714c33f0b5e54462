"""escnn's steerable layers as free dense layers, with the projectors onto their equivariant subspace E.

:class:`DenseR2Conv`, :class:`DenseR3Conv` and :class:`DenseLinear` hold an escnn ``R2Conv``,
``R3Conv`` or ``escnn.nn.Linear`` as a free dense filter (escnn's expanded filter, so a layer starts
in E) and still take and return ``GeometricTensor`` s of the same types. :func:`layer_projectors`
gives the projectors of a dense layer's ``weight`` and ``bias`` onto E, built from its field types
once per layer signature. Whole models are converted by :mod:`~lightning_equi.adapters.escnn_convert`.

Which E (``subspace=``): ``"grid"``, the exact fixed points of the group acting on fields and on the
pixel grid (default for C1, C2, C4, D1, D2, D4 convolutions and finite-group ``Linear``), or
``"basis"``, the span of escnn's band-limited basis (default, and the only choice, for C_N with
N > 4, SO(2), O(2) and 3D). See :mod:`lightning_equi.adapters.escnn_projectors`.

escnn's traps, handled: the dense layers keep ``padding_mode`` (escnn's ``export()`` drops it);
they hold no basis buffers, so ``state_dict`` keys are the same in train and eval mode, ``deepcopy``
works in eval mode, and ``.double()`` on one model never touches another; their field types pickle
by recipe (:mod:`~lightning_equi.adapters.escnn_pickle`, registered when the first dense layer is
built or unpickled); escnn layers built here keep NumPy's global random state.

Example:
    >>> from escnn import gspaces, nn as enn
    >>> gs = gspaces.rot2dOnR2(4)
    >>> it, ot = enn.FieldType(gs, [gs.trivial_repr]), enn.FieldType(gs, 2 * [gs.regular_repr])
    >>> dense = DenseR2Conv(enn.R2Conv(it, ot, 5, padding=2))
    >>> {name: p.dim for name, p in layer_projectors(dense).items()}
    {'weight': 50, 'bias': 2}
"""

from __future__ import annotations

import hashlib
import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_equi.adapters.escnn_import import require_escnn
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
from lightning_equi.subspace import Projector

# the layers below subclass escnn's modules, so escnn is imported here: through require_escnn,
# which applies the numerics patch before any escnn basis is built
enn = require_escnn().nn

__all__ = [
    "DenseR2Conv",
    "DenseR3Conv",
    "DenseLinear",
    "DenseR2ConvTransposed",
    "DenseR3ConvTransposed",
    "DENSE_LAYERS",
    "TransposedProjector",
    "layer_projectors",
    "default_subspace",
]

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
    transposed ones included, finite groups for ``Linear``), else ``"basis"``."""
    kind = kind.replace("Transposed", "")  # a transposed conv has the same E as the conv
    if kind == "R2Conv":
        return "grid" if grid_group(gspace) is not None else "basis"
    if kind == "Linear":
        return "basis" if gspace.fibergroup.continuous else "grid"
    return "basis"


def _check_subspace(subspace: str, kind: str, gspace: Any, where: str) -> str:
    kind = kind.replace("Transposed", "")
    if subspace not in SUBSPACES:
        raise ValueError(f"dense_layers: {where}: subspace must be one of {SUBSPACES}, got {subspace!r}")
    if subspace == "grid":
        ok = (
            grid_group(gspace) is not None
            if kind == "R2Conv"
            else (kind == "Linear" and not gspace.fibergroup.continuous)
        )
        if not ok:
            raise ValueError(
                f"dense_layers: {where} ({kind} on {gspace.name}) has no exact grid subspace: only "
                "C1, C2, C4, D1, D2, D4 (default mirror axis) act exactly on a pixel grid, and Linear "
                "needs a finite group; use subspace='basis'"
            )
    return subspace


def _escnn_class(cls: type, default: type) -> type:
    """The class ``to_escnn`` rebuilds: the nearest escnn class of ``cls``'s MRO (``R3IcoConv`` stays
    itself, a user subclass of ``R2Conv`` becomes ``R2Conv``, whose constructor is known)."""
    for c in cls.__mro__:
        if c.__module__.split(".")[0] == "escnn" and issubclass(c, default):
            return c
    return default


class _DenseLayer(enn.EquivariantModule):
    """Common part of the dense layers: field types, the subspace, the basis recipe, projectors."""

    kind = "layer"

    def _init_common(self, layer: Any, subspace: str | None) -> None:
        register_escnn_pickling()  # the layer holds field types: make them picklable
        self.in_type, self.out_type = layer.in_type, layer.out_type
        sub = subspace or default_subspace(self.kind, self.in_type.gspace)
        self.subspace = _check_subspace(sub, self.kind, self.in_type.gspace, type(layer).__name__)
        self.basis_recipe = _basis_recipe(layer) if self.kind != "Linear" else None
        with torch.no_grad():
            w, b = layer.expand_parameters()
        self.weight = nn.Parameter(w.detach().clone().reshape(self._weight_shape()))
        self.bias = nn.Parameter(b.detach().clone()) if b is not None else None
        _BASES.setdefault(self._basis_key(), sampled_bases(layer))

    def __setstate__(self, state: dict) -> None:
        register_escnn_pickling()  # unpickled in a fresh process: pickling it again must work too
        super().__setstate__(state)

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

    #: whether ``weight`` is laid out ``(in, out, *kernel)`` (transposed convolutions) instead of escnn's
    #: ``(out, in, *kernel)``
    transposed = False

    def steerable_weight(self) -> Tensor:
        """``weight`` in escnn's basis layout ``(out, in, *kernel)`` (a view)."""
        return self.weight.transpose(0, 1) if self.transposed else self.weight

    def projectors(self, subspace: str | None = None) -> dict[str, Projector]:
        """``{"weight": P, "bias": P}`` (no ``"bias"`` without a bias), cached per layer signature."""
        return layer_projectors(self, subspace)

    def to_escnn_layer(self) -> Any:
        """A fresh escnn layer of the same types and basis (not shared), coefficients unset."""
        raise NotImplementedError

    def _filled(self, out: nn.Module) -> nn.Module:
        """``out`` (a plain torch layer of the same shape) holding this layer's weight and bias."""
        with torch.no_grad():
            out.weight.copy_(self.weight)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out.to(self.weight.device, self.weight.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_type.size} -> {self.out_type.size}, subspace={self.subspace!r}"


def _basis_options(recipe: dict[str, Any]) -> dict[str, Any]:
    """The options that make escnn rebuild exactly the steerable basis a dense layer recorded."""
    kept = set(recipe["kept"])
    band = float(recipe["maximum_frequency"])
    return dict(
        sigma=list(recipe["sigma"]),
        rings=list(recipe["rings"]),
        frequencies_cutoff=lambda r: band,  # the recorded elements decide; this only fixes the band
        basis_filter=lambda attr: _signature(attr) in kept,
        recompute=True,  # a basis of its own: escnn shares cached bases between models
        initialize=False,
    )


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
        self.escnn_class = _escnn_class(type(conv), self._escnn_cls)
        # R3IcoConv samples its basis on the icosahedron, vertices or faces: to_escnn must too
        self.escnn_options = {"samples": conv._samples} if hasattr(conv, "_samples") else {}
        self._init_common(conv, subspace)

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
        return self._filled(out)

    def to_escnn_layer(self) -> Any:
        cls = getattr(self, "escnn_class", self._escnn_cls)
        options = dict(
            padding=self.padding,
            stride=self.stride,
            dilation=self.dilation,
            padding_mode=self.padding_mode,
            bias=self.bias is not None,
            **_basis_options(self.basis_recipe),
            **getattr(self, "escnn_options", {}),
        )
        accepted = inspect.signature(cls.__init__).parameters
        with keep_numpy_rng():
            return cls(
                self.in_type,
                self.out_type,
                self.kernel_size,
                **{k: v for k, v in options.items() if k in accepted},
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


class _DenseRdConvTransposed(_DenseLayer):
    """Common part of the dense transposed convolutions: weight ``(in, out, *kernel)``, as ConvTranspose."""

    d = 2
    kind = "R2ConvTransposed"
    transposed = True
    _escnn_cls: Any = None

    def __init__(self, conv: Any, subspace: str | None = None) -> None:
        super().__init__()
        if int(conv.groups) != 1:
            raise ValueError(
                f"{type(self).__name__}: grouped steerable convolutions (groups={conv.groups}) "
                "are not supported"
            )
        self.kernel_size, self.stride, self.dilation = int(conv.kernel_size), conv.stride, conv.dilation
        self.padding, self.output_padding = conv.padding, conv.output_padding
        self.escnn_class = _escnn_class(type(conv), self._escnn_cls)
        self._init_common(conv, subspace)

    def _weight_shape(self) -> tuple[int, ...]:
        return (self.in_type.size, self.out_type.size, *self._kernel())

    def _kernel(self) -> tuple[int, ...]:
        return (self.kernel_size,) * self.d

    def forward(self, x: Any) -> Any:
        t, geometric = self._wrap(x)
        conv = F.conv_transpose2d if self.d == 2 else F.conv_transpose3d
        y = conv(t, self.weight, self.bias, self.stride, self.padding, self.output_padding, 1, self.dilation)
        return self._unwrap(y, geometric)

    def evaluate_output_shape(self, input_shape: tuple) -> tuple:
        b, c, *spatial = input_shape
        pad = self.padding if isinstance(self.padding, tuple) else (self.padding,) * self.d
        extra = (
            self.output_padding if isinstance(self.output_padding, tuple) else (self.output_padding,) * self.d
        )
        out = [
            (n - 1) * self.stride - 2 * p + self.dilation * (self.kernel_size - 1) + e + 1
            for n, p, e in zip(spatial, pad, extra, strict=True)
        ]
        return (b, self.out_type.size, *out)

    def export(self) -> nn.Module:
        """A plain ``nn.ConvTranspose2d``/``nn.ConvTranspose3d`` with the same weight and bias."""
        cls = nn.ConvTranspose2d if self.d == 2 else nn.ConvTranspose3d
        out = cls(
            self.in_type.size,
            self.out_type.size,
            self.kernel_size,
            self.stride,
            self.padding,
            self.output_padding,
            bias=self.bias is not None,
            dilation=self.dilation,
        )
        return self._filled(out)

    def to_escnn_layer(self) -> Any:
        with keep_numpy_rng():
            return self.escnn_class(
                self.in_type,
                self.out_type,
                self.kernel_size,
                padding=self.padding,
                output_padding=self.output_padding,
                stride=self.stride,
                dilation=self.dilation,
                bias=self.bias is not None,
                **_basis_options(self.basis_recipe),
            )


class DenseR2ConvTransposed(_DenseRdConvTransposed):
    """An escnn ``R2ConvTransposed`` as a free dense ``ConvTranspose2d`` weight ``(in, out, k, k)``.

    Its E is that of an ``R2Conv`` between the same types, on the weight's transpose (a flipped
    filter satisfies the same constraint), so ``"grid"`` exists for C1, C2, C4, D1, D2, D4.

    Example:
        >>> from escnn import gspaces, nn as enn
        >>> gs = gspaces.rot2dOnR2(4)
        >>> t0, t1 = enn.FieldType(gs, [gs.trivial_repr]), enn.FieldType(gs, [gs.regular_repr])
        >>> up = DenseR2ConvTransposed(enn.R2ConvTransposed(t1, t0, 3, stride=2, padding=1))
        >>> up.weight.shape, up.subspace, up.projectors()["weight"].dim
        (torch.Size([4, 1, 3, 3]), 'grid', 9)
    """

    d = 2
    kind = "R2ConvTransposed"
    _escnn_cls = enn.R2ConvTransposed


class DenseR3ConvTransposed(_DenseRdConvTransposed):
    """An escnn ``R3ConvTransposed`` as a free dense ``ConvTranspose3d`` weight (``subspace="basis"``)."""

    d = 3
    kind = "R3ConvTransposed"
    _escnn_cls = enn.R3ConvTransposed


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

    def _weight_shape(self) -> tuple[int, ...]:
        return (self.out_type.size, self.in_type.size)

    def forward(self, x: Any) -> Any:
        t, geometric = self._wrap(x)
        return self._unwrap(F.linear(t, self.weight, self.bias), geometric)

    def evaluate_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], self.out_type.size)

    def export(self) -> nn.Linear:
        out = nn.Linear(self.in_type.size, self.out_type.size, bias=self.bias is not None)
        return self._filled(out)

    def to_escnn_layer(self) -> Any:
        with keep_numpy_rng():
            return enn.Linear(
                self.in_type, self.out_type, bias=self.bias is not None, recompute=True, initialize=False
            )


class TransposedProjector(Projector):
    """A projector of ``(out, in, *kernel)`` weights acting on ``(in, out, *kernel)`` ones (``ConvTranspose``
    layout): transpose, project, transpose back. Transposing permutes entries, so exactness and
    orbit-constancy are those of the inner projector.

    Example:
        >>> from lightning_equi.subspace import OrbitMeanProjector, TensorAction
        >>> from lightning_equi.groups import CyclicGroup, regular, trivial
        >>> C4 = CyclicGroup(4)
        >>> inner = OrbitMeanProjector(TensorAction((4, 1), [(regular(C4), 1), (trivial(C4), 1)]))
        >>> TransposedProjector(inner).project(torch.arange(4.0)[None]).tolist()
        [[1.5, 1.5, 1.5, 1.5]]
    """

    def __init__(self, inner: Projector) -> None:
        super().__init__((inner.shape[1], inner.shape[0], *inner.shape[2:]))
        self.inner = inner
        self.kind = inner.kind
        self.exact = inner.exact
        self.orbit_constant = inner.orbit_constant

    @property
    def dim(self) -> int:
        return self.inner.dim

    def project(self, w: Tensor) -> Tensor:
        self.check_shape(w)
        return self.inner.project(w.transpose(0, 1)).transpose(0, 1).contiguous()


DENSE_LAYERS = (DenseR2Conv, DenseR3Conv, DenseR2ConvTransposed, DenseR3ConvTransposed, DenseLinear)


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
        if layer.transposed:
            weight = TransposedProjector(weight)
        _PROJECTORS[key] = {"weight": weight, "bias": bias_projector(layer.out_type)}
    out = dict(_PROJECTORS[key])
    if layer.bias is None:
        out.pop("bias")
    return out
