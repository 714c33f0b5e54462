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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from escnn import nn as enn
from torch import Tensor, nn

from lightning_equi.adapters.dense_layers import (
    DENSE_LAYERS,
    DenseLinear,
    DenseR2Conv,
    DenseR2ConvTransposed,
    DenseR3Conv,
    DenseR3ConvTransposed,
    layer_projectors,
)
from lightning_equi.adapters.escnn_groups import group_from_escnn
from lightning_equi.adapters.escnn_projectors import keep_numpy_rng, keep_train_modes
from lightning_equi.subspace import ModelProjection, ProjectedTensor

if TYPE_CHECKING:
    from lightning_equi.adapters.dense_layers import _DenseLayer

__all__ = [
    "to_dense",
    "to_escnn",
    "escnn_spec",
    "EscnnModelProjection",
    "kept_escnn_modules",
    "output_change",
]

# escnn layer -> the dense layer that replaces it, matched with isinstance (subclasses such as
# R3IcoConv included), first match wins
_REPLACE: tuple[tuple[type, type], ...] = (
    (enn.R2Conv, DenseR2Conv),
    (enn.R3Conv, DenseR3Conv),
    (enn.R2ConvTransposed, DenseR2ConvTransposed),
    (enn.R3ConvTransposed, DenseR3ConvTransposed),
    (enn.Linear, DenseLinear),
)
_CONVERTIBLE = tuple(cls for cls, _ in _REPLACE)


def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _is_escnn_module(module: nn.Module) -> bool:
    """Whether ``module`` is one of escnn's own modules (or a subclass of one), whose parameters escnn
    keeps equivariant whatever their value. A user class deriving from ``EquivariantModule`` itself is
    not: its parameters are the user's, and nothing says how the group acts on them."""
    for cls in type(module).__mro__:
        if cls.__module__.split(".")[0] == "escnn":
            return cls is not enn.EquivariantModule
    return False


@dataclass
class _Walk:
    """What :func:`_walk` found: layers to make dense, escnn modules kept, modules refused."""

    convert: list[tuple[str, nn.Module]] = field(default_factory=list)
    kept: list[tuple[str, str, int]] = field(default_factory=list)  # (name, class name, #parameters)
    bad: list[tuple[str, type]] = field(default_factory=list)


def _own_part(module: nn.Module) -> tuple[int, list[tuple[str, nn.Module]]]:
    """Parameters of ``module`` and of its plain torch submodules (an escnn module's own ``BatchNorm3d``,
    ...), and the ``EquivariantModule`` s below them (relative names), which are visited on their own."""
    n = sum(p.numel() for p in module.parameters(recurse=False))
    below: list[tuple[str, nn.Module]] = []
    for cname, child in module.named_children():
        if isinstance(child, enn.EquivariantModule):
            below.append((cname, child))
        else:
            k, deeper = _own_part(child)
            n += k
            below += [(_join(cname, d), m) for d, m in deeper]
    return n, below


def _walk(model: nn.Module, invariant: Sequence[str] = ()) -> _Walk:
    """Sort the modules of ``model``: escnn layers to make dense, escnn modules kept as they are (with
    the number of their parameters, left free), and plain modules with parameters outside
    ``invariant`` (refused: escnn cannot say how the group acts on them)."""
    out = _Walk()

    def visit(name: str, module: nn.Module) -> None:
        if isinstance(module, _CONVERTIBLE):
            out.convert.append((name, module))
        elif isinstance(module, DENSE_LAYERS):
            return
        elif _is_escnn_module(module):
            n, below = _own_part(module)
            if n:
                out.kept.append((name or "<model>", type(module).__name__, n))
            for cname, child in below:
                visit(_join(name, cname), child)
        elif not (name and _under(name, invariant)):  # an invariant part is free, with all it holds
            if _owns_parameters(module):
                out.bad.append((name or "<model>", type(module)))
            for cname, child in module.named_children():
                visit(_join(name, cname), child)

    visit("", model)
    return out


def kept_escnn_modules(model: nn.Module) -> list[tuple[str, str, int]]:
    """``(name, class name, number of parameters)`` of the escnn modules of ``model`` that keep their own
    parameters (batch norms, gated nonlinearities, point convolutions, ...): every escnn
    ``EquivariantModule`` is equivariant for any value of its parameters, so they stay free."""
    return _walk(model).kept


def _replacement(module: nn.Module, subspace: str | None) -> nn.Module:
    for cls, dense_cls in _REPLACE:
        if isinstance(module, cls):
            return dense_cls(module, subspace)
    raise TypeError(f"no dense layer for {type(module).__name__}")  # unreachable: _walk filters


def _copy_in_train_mode(model: nn.Module, memo: dict[int, Any]) -> nn.Module:
    """``deepcopy(model, memo)``, the copy in train mode. escnn modules holding an expanded ``filter``
    (eval mode) refuse to be deep-copied, so an eval-mode model is switched to train mode for the
    copy and back afterwards, module by module."""
    with keep_train_modes(model):
        if not all(m.training for m in model.modules()):
            model.train()
        dense = copy.deepcopy(model, memo)
    return dense.train()


def to_dense(
    model: nn.Module, subspace: str | None = None, invariant: Sequence[str] = ()
) -> tuple[nn.Module, ModelProjection]:
    """A copy of ``model`` with every escnn ``R2Conv``/``R3Conv``/``Linear`` made dense, and its spec.

    Every escnn layer that is an instance of these classes (subclasses such as ``R3IcoConv``
    included) becomes a dense layer. Every other escnn module (``MaskModule``, batch norms,
    gated and norm nonlinearities, ``TensorProductModule``, point convolutions, pooling, ...) is
    kept as it is: escnn builds each of them equivariant for any value of its parameters, so those
    parameters stay free (listed by ``projection.summary()``).

    Args:
        model: an escnn model (``SequentialModule``, a user ``EquivariantModule``, any ``nn.Module``
            holding escnn modules). It is not modified. The copy is returned in train mode, whatever
            the mode of ``model``: it is a model to train.
        subspace: ``"grid"`` or ``"basis"`` for every steerable layer; ``None`` picks per layer
            (:func:`default_subspace`).
        invariant: names of plain torch submodules that act on invariant features (e.g. an MLP head
            after ``GroupPooling``): their parameters are left free. Any other plain torch module with
            parameters of its own inside the model is an error, because its action cannot be read
            from escnn.

    Returns:
        ``(dense_model, projection)``; ``projection`` is :func:`escnn_spec` of the dense model (pass it
        as ``spec=`` to the callbacks, or call ``escnn_spec(self)`` from a ``symmetry_spec`` method).

    Raises:
        ValueError: naming every module that cannot be adapted, and how to fix it.
    """
    walk = _walk(model, invariant)
    if walk.bad:
        rows = "\n".join(f"  {n} ({c.__module__}.{c.__name__})" for n, c in walk.bad)
        names = ", ".join(repr(n) for n, _ in walk.bad)
        raise ValueError(
            "to_dense: cannot read the group action of these modules from escnn:\n" + rows + "\n"
            "escnn's R2Conv, R3Conv and Linear are made dense and every other escnn module is kept as "
            "it is, but a plain torch module with parameters inside the model could break equivariance. "
            "Replace each by an escnn module, or, if they only see invariant features, pass "
            f"to_dense(model, invariant=[{names}])"
        )
    if not walk.convert:
        raise ValueError("to_dense: the model has no escnn R2Conv, R3Conv or Linear layer to make dense")
    with keep_numpy_rng():
        replace: dict[int, Any] = {id(m): _replacement(m, subspace) for _, m in walk.convert}
    # deepcopy with the steerable layers pre-mapped to their dense versions: their escnn bases are never
    # copied (deepcopy of an escnn conv fails in eval mode), everything else is
    dense = _copy_in_train_mode(model, dict(replace))
    return dense, escnn_spec(dense)


class EscnnModelProjection(ModelProjection):
    """A :class:`~lightning_equi.subspace.ModelProjection` that also knows which escnn modules were kept.

    Attributes:
        kept: ``(name, class name, number of parameters)`` per escnn module kept as it is, whose
            parameters are free (:func:`kept_escnn_modules`).
        layer_groups: dense layer name -> the group its projectors are built for.
        restrictions: the chain of groups along escnn's ``RestrictionModule`` s (``["D4", "C4"]``),
            empty for a model of one group; :attr:`group` is its last element.
    """

    def __init__(
        self,
        *args: Any,
        kept: Sequence[tuple[str, str, int]] = (),
        layer_groups: dict[str, str] | None = None,
        restrictions: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.kept = list(kept)
        self.layer_groups = dict(layer_groups or {})
        self.restrictions = list(restrictions)

    def summary(self) -> str:
        """:meth:`ModelProjection.summary`, then the group chain and the escnn modules kept free."""
        out = super().summary()
        if self.restrictions:
            parts = "; ".join(
                f"{g}: {', '.join(n for n, lg in self.layer_groups.items() if lg == g)}"
                for g in self.restrictions
            )
            out += (
                f"\ngroups {' -> '.join(self.restrictions)} (RestrictionModule); each layer is projected "
                f"with its own group's projectors ({parts}); the model is equivariant under {self.group.name}"
            )
        if self.kept:
            rows = ", ".join(f"{n} ({c}, {k} parameters)" for n, c, k in self.kept)
            out += f"\nkept as escnn modules (equivariant for any parameters, left free): {rows}"
        return out


def _model_group(model: nn.Module, layer_gspaces: dict[str, Any]) -> tuple[Any, list[str]]:
    """The gspace under which the whole model is equivariant, and the restriction chain that leads there.

    One group: that group. Several: escnn's ``RestrictionModule`` s must chain them, each group being
    restricted to one subgroup, so that every layer's group leads to the same last subgroup; a layer
    equivariant under ``G`` is equivariant under any subgroup of ``G``, so the model is equivariant
    under that last one.
    """
    by_group: dict[str, list[str]] = {}
    gspace_of: dict[str, Any] = {}
    for layer, gs in layer_gspaces.items():
        by_group.setdefault(gs.fibergroup.name, []).append(layer)
        gspace_of[gs.fibergroup.name] = gs
    if len(by_group) == 1:
        return next(iter(gspace_of.values())), []
    targets: dict[str, set[str]] = {}
    for _, m in model.named_modules():
        if isinstance(m, enn.RestrictionModule):
            a, b = m.in_type.gspace, m.out_type.gspace
            targets.setdefault(a.fibergroup.name, set()).add(b.fibergroup.name)
            gspace_of.setdefault(b.fibergroup.name, b)

    def names(groups: Sequence[str]) -> str:
        return " and ".join(f"{_display(gspace_of[g])} ({', '.join(by_group.get(g, []))})" for g in groups)

    branching = sorted(g for g, t in targets.items() if len(t) > 1)
    if branching:
        raise ValueError(
            f"escnn_spec: {names(branching)} is restricted to several subgroups "
            f"{sorted(targets[branching[0]])}: the model is equivariant only under their intersection, "
            "which lightning_equi cannot build; restrict once, along one chain of subgroups"
        )
    sinks = set()
    chain: dict[str, list[str]] = {}
    for g in by_group:
        path = [g]
        while path[-1] in targets and len(path) <= len(gspace_of):
            path.append(next(iter(targets[path[-1]])))
        sinks.add(path[-1])
        chain[g] = path
    if len(sinks) > 1:
        raise ValueError(
            f"escnn_spec: the dense layers use groups {names(sorted(by_group))}, and no RestrictionModule "
            "maps one onto the other; one model, one group: restrict the larger group to the smaller one "
            "with escnn.nn.RestrictionModule where the model changes group"
        )
    longest = max(chain.values(), key=len)
    return gspace_of[longest[-1]], [_display(gspace_of[g]) for g in longest]


def _display(gspace: Any) -> str:
    """Our name of a gspace's group (``flip2dOnR2`` is our D1), escnn's where we have none."""
    try:
        return group_from_escnn(gspace).name
    except (TypeError, ValueError):
        return str(gspace.fibergroup.name)


def escnn_spec(model: nn.Module, subspace: str | None = None) -> EscnnModelProjection:
    """The :class:`~lightning_equi.subspace.ModelProjection` of a model holding dense escnn layers.

    Every ``weight``/``bias`` of a dense layer (:data:`~lightning_equi.adapters.dense_layers.DENSE_LAYERS`)
    gets its projector, built from the layer's own field types, so each part of a model that changes
    group through escnn's ``RestrictionModule`` (e2wrn: D4, then C4) is projected onto its own group's
    E; the spec's group is the subgroup the restrictions end in, under which the whole model is
    equivariant. All other parameters are free. Use it from a LightningModule:
    ``def symmetry_spec(self): return escnn_spec(self)``.
    """
    entries, layer_gspaces = [], {}
    for name, module in model.named_modules():
        if not isinstance(module, DENSE_LAYERS):
            continue
        layer_gspaces[name] = module.in_type.gspace
        for attr, proj in layer_projectors(module, subspace).items():
            full = f"{name}.{attr}" if name else attr
            entries.append(ProjectedTensor(full, proj, False, name, module, attr))
    if not entries:
        raise ValueError(
            f"escnn_spec: {type(model).__name__} holds no dense escnn layer; "
            "convert it first with to_dense(model)"
        )
    gspace, chain = _model_group(model, layer_gspaces)
    group = group_from_escnn(gspace)
    covered = {e.name for e in entries}
    free = [n for n, _ in model.named_parameters() if n not in covered]
    return EscnnModelProjection(
        group,
        model,
        entries,
        free,
        kept=kept_escnn_modules(model),
        layer_groups={layer: _display(gs) for layer, gs in layer_gspaces.items()},
        restrictions=chain,
    )


def _least_squares(layer: _DenseLayer, target: Any) -> float:
    """Set ``target.weights`` (and ``bias``) to the least-squares coefficients of ``layer``'s dense weight;
    returns the relative residual ``||W - fit|| / ||W||`` of the weight."""
    be = target.basisexpansion
    w = layer.steerable_weight().detach().to("cpu", torch.float64)
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
    residual = float((w3 - fitted).norm() / w3.norm().clamp_min(1e-30))
    with torch.no_grad():
        target.weights.copy_(coeffs.to(target.weights.dtype))
        if layer.bias is not None:
            expansion = target.bias_expansion.detach().double()
            target.bias.copy_(
                (torch.linalg.pinv(expansion) @ layer.bias.detach().cpu().double()).to(target.bias.dtype)
            )
    target.to(layer.weight.device)
    return residual


#: a dense weight whose least-squares fit onto escnn's basis leaves more than this (relative) is not in
#: the basis span: escnn then computes a different function
SPAN_RTOL = 1e-4


def _outputs(model: nn.Module, probe: Any) -> Tensor:
    with keep_train_modes(model), torch.no_grad():
        model.eval()
        out = model(probe)
    return (out.tensor if isinstance(out, enn.GeometricTensor) else out).detach().double()


def output_change(dense: nn.Module, converted: nn.Module, probe: Any) -> float:
    """``||f_converted(probe) - f_dense(probe)|| / ||f_dense(probe)||``, both in eval mode (modes kept).

    Example:
        >>> from escnn import gspaces, nn as enn
        >>> gs = gspaces.rot2dOnR2(4)
        >>> it, ot = enn.FieldType(gs, [gs.trivial_repr]), enn.FieldType(gs, [gs.regular_repr])
        >>> dense, _ = to_dense(enn.SequentialModule(enn.R2Conv(it, ot, 3)))
        >>> output_change(dense, to_escnn(dense), it(torch.randn(2, 1, 7, 7))) < 1e-5
        True
    """
    ref = _outputs(dense, probe)
    diff = _outputs(converted, probe) - ref
    return float(diff.norm() / ref.norm().clamp_min(1e-30))


def to_escnn(model: nn.Module, strict: bool = True, probe: Any = None) -> nn.Module:
    """A copy of ``model`` with every dense layer turned back into escnn's own layer.

    Coefficients are the least-squares fit of the dense weight onto escnn's basis, block by block;
    escnn -> :func:`to_dense` -> ``to_escnn`` gives back the same function. The new escnn layers
    have bases of their own (``recompute=True``) and are left in train mode.

    A weight trained in the ``"grid"`` E (the default for C4/D4 convolutions) is in general not in
    escnn's smaller band-limited span: escnn keeps only its least-squares projection, a different
    function. To convert without any change, train the dense model in escnn's span:
    ``to_dense(escnn_model, subspace="basis")``.

    Args:
        model: a model holding dense escnn layers (from :func:`to_dense`).
        strict: refuse (``ValueError``) when a weight is not in escnn's span; else warn.
        probe: an input batch of the model (a tensor or ``GeometricTensor``, whatever its ``forward``
            takes): the refusal or warning then says how much the output changes on it,
            ``||f_escnn - f_dense|| / ||f_dense||`` (:func:`output_change`).

    Raises:
        ValueError: if a dense weight is not in span(escnn basis) and ``strict``, naming the layers,
            their residuals and, with ``probe``, the change of the output.
    """
    replace: dict[int, Any] = {}
    outside: list[tuple[str, float]] = []
    for name, module in model.named_modules():
        if isinstance(module, DENSE_LAYERS):
            target = module.to_escnn_layer()
            residual = _least_squares(module, target)
            if residual > SPAN_RTOL:
                outside.append((name or "<model>", residual))
            target.train(module.training)
            replace[id(module)] = target
    if not replace:
        raise ValueError(f"to_escnn: {type(model).__name__} holds no dense escnn layer")
    converted = copy.deepcopy(model, dict(replace))
    if outside:
        layers = ", ".join(f"{n} ({r:.3g})" for n, r in outside)
        change = (
            f"the output on the probe changes by {output_change(model, converted, probe):.3g} (relative)"
            if probe is not None
            else "pass probe=<an input batch> to see how much the output changes"
        )
        msg = (
            f"to_escnn: the weights of {layers} (relative residual) are not in span(escnn basis); escnn "
            f"keeps only their least-squares projection, a different function: {change}. To convert "
            "without change, train in escnn's span: to_dense(escnn_model, subspace='basis') (a layer "
            "trained with subspace='grid' would need a richer escnn basis: more rings, a higher "
            "frequencies_cutoff)"
        )
        if strict:
            raise ValueError(msg + "; pass strict=False to convert anyway")
        warnings.warn(msg, stacklevel=2)
    return converted
