"""Whole escnn models in the dense parameter space: train them nom / aug / equi, and convert back.

:func:`to_dense` takes a model built from escnn modules and returns the same network with every
``R2Conv``, ``R3Conv`` and ``escnn.nn.Linear`` replaced by a
:class:`~lightning_equi.adapters.dense_layers.DenseR2Conv`,
:class:`~lightning_equi.adapters.dense_layers.DenseR3Conv` or
:class:`~lightning_equi.adapters.dense_layers.DenseLinear`: the weight is a free dense filter
(escnn's expanded filter, so the model starts in E) and the layer still takes and returns
``GeometricTensor`` s of the same types, so the rest of the model (nonlinearities, batch norms,
pooling, user forward code) is unchanged. It also returns the model's
:class:`~lightning_equi.subspace.ModelProjection` (:func:`escnn_spec`): a projector per dense weight
and bias, built from the layers' field types with nothing written by the user. :func:`to_escnn` goes
back: least squares onto escnn's basis, block by block.

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
    >>> back = to_escnn(dense)
    >>> type(back[0]).__name__, torch.allclose(back(x).tensor, net(x).tensor, atol=1e-5)
    ('R2Conv', True)
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from escnn import nn as enn
from torch import nn

from lightning_equi.adapters.dense_layers import (
    DENSE_LAYERS,
    DenseLinear,
    DenseR2Conv,
    DenseR3Conv,
    layer_projectors,
)
from lightning_equi.adapters.escnn_groups import group_from_escnn
from lightning_equi.adapters.escnn_projectors import keep_numpy_rng
from lightning_equi.subspace import ModelProjection, ProjectedTensor

if TYPE_CHECKING:
    from lightning_equi.adapters.dense_layers import _DenseLayer

__all__ = ["to_dense", "to_escnn", "escnn_spec", "EQUIVARIANT_BY_CONSTRUCTION"]

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
# escnn layer -> the dense layer that replaces it
_REPLACE = {enn.R2Conv: DenseR2Conv, enn.R3Conv: DenseR3Conv, enn.Linear: DenseLinear}


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
    """The :class:`~lightning_equi.subspace.ModelProjection` of a model holding dense escnn layers.

    Every ``weight``/``bias`` of a dense layer (:data:`~lightning_equi.adapters.dense_layers.DENSE_LAYERS`)
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
