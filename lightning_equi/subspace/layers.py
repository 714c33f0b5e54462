"""The one module that knows torch layer shapes: channels, kernels and the lifted action of each layer type.

:class:`~lightning_equi.subspace.spec.SymmetrySpec` declares *fields* (representations on the channels);
this module turns them into the :class:`~lightning_equi.subspace.base.TensorAction` of every parameter
of a supported layer: ``nn.Linear``, ``nn.Conv1d/2d/3d`` and ``nn.ConvTranspose1d/2d/3d``
(:func:`layer_actions`) and the normalisation layers BatchNorm, InstanceNorm, GroupNorm and LayerNorm
over the channels (:func:`norm_actions`). A new layer type is supported by teaching this module its
channels and its actions; nothing else in the package reads a layer's attributes.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from lightning_equi.groups import (
    CyclicGroup,
    FiniteGroup,
    Group,
    Representation,
    TorusTranslations,
    direct_sum,
    grid_representation,
    trivial,
)
from lightning_equi.subspace.base import TensorAction
from lightning_equi.subspace.orbit import orbit_ids

__all__ = [
    "LINEAR",
    "CONV",
    "CONV_T",
    "BATCH_NORM",
    "NORMS",
    "LAYERS",
    "layer_channels",
    "line_representation",
    "kernel_factors",
    "signal_geometry_warnings",
    "grouped_channel_factors",
    "layer_actions",
    "norm_actions",
    "describe_layer",
]

#: dense layers: the weight is ``(out, in)``
LINEAR = (nn.Linear,)
#: convolutions: the weight is ``(out, in, *kernel)``
CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: transposed convolutions: the weight is ``(in, out, *kernel)``
CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
#: layers normalising each channel by its own statistics (``num_features`` channels)
BATCH_NORM = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
#: every normalisation layer whose parameters and statistics follow a permutation of channels
NORMS = (*BATCH_NORM, nn.GroupNorm, nn.LayerNorm)
#: the layers whose weights carry fields in and out (:func:`layer_actions`)
LAYERS = (*LINEAR, *CONV, *CONV_T)


def layer_channels(module: nn.Module) -> tuple[int, int]:
    """``(in_channels, out_channels)`` of a layer of :data:`LAYERS` or :data:`NORMS` (a norm: twice
    the channels it normalises).

    Example:
        >>> layer_channels(nn.Conv2d(3, 16, 5)), layer_channels(nn.GroupNorm(4, 16))
        ((3, 16), (16, 16))
    """
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, (*CONV, *CONV_T)):
        return module.in_channels, module.out_channels
    if isinstance(module, BATCH_NORM):
        return module.num_features, module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels, module.num_channels
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[0], module.normalized_shape[0]
    raise AssertionError(type(module))


def line_representation(group: Group, size: int) -> Representation:
    """The action on a 1-d kernel of ``size`` taps: mirrors reverse it, shifts leave it alone.

    On a 1-D signal (:mod:`lightning_equi.actions.signals`) ``C2`` and ``D1`` are the mirror, and the
    mirrors of ``D_N`` reverse the kernel too; a shift of the cyclic grid (``C_N``, ``D_N``, ``T<N>``)
    moves the signal, which a convolution with circular padding commutes with, so it does not act on
    the kernel.

    Example:
        >>> from lightning_equi.groups import get_group
        >>> C2, D4 = get_group("C2"), get_group("D4")
        >>> line_representation(C2, 3).permutation(C2.elements())
        tensor([[0, 1, 2],
                [2, 1, 0]])
        >>> line_representation(D4, 3).permutation(torch.tensor([[0, 1], [1, 1]]))  # a shift, a mirror
        tensor([[0, 1, 2],
                [2, 1, 0]])
    """
    from lightning_equi.actions.signals import mirror_flags  # the one definition of a mirror of a signal

    def perm(g: Tensor) -> Tensor:
        flip = mirror_flags(group, g)
        ids = torch.arange(size, device=g.device)
        return torch.where(flip[:, None].bool(), ids.flip(0)[None], ids[None])

    def matrices(g: Tensor) -> Tensor:
        return torch.eye(size, dtype=torch.float64, device=g.device)[perm(g)]

    return Representation(group, size, f"line{size}", matrices, perm)


def _acts_on_signals(group: Group) -> bool:
    from lightning_equi.actions.signals import cyclic_length

    try:
        cyclic_length(group)
    except ValueError:
        return False
    return True


def kernel_factors(group: Group, kernel: tuple[int, ...], where: str) -> list[tuple[Representation, int]]:
    """The factors of a :class:`~lightning_equi.subspace.base.TensorAction` on a convolution's kernel axes.

    A 2-d kernel is acted on by quarter turns and mirrors of its grid
    (:func:`~lightning_equi.groups.grid_representation`), a 3-d kernel by the same on its last two axes
    (rotations about the depth axis), a 1-d kernel by :func:`line_representation` (C_N, D_N and T<N>
    on a cyclic 1-D grid, C2 and D1 by reversal).

    Raises:
        ValueError: for a group that does not act on the kernel (``where`` names the layer).

    Example:
        >>> from lightning_equi.groups import get_group
        >>> [(rep.name, axes) for rep, axes in kernel_factors(get_group("C4"), (2, 3, 3), "conv")]
        [('trivial+trivial', 1), ('grid3x3', 2)]
    """
    if len(kernel) == 1:
        if not _acts_on_signals(group):
            raise ValueError(
                f"{where}: {group.name} does not act on a 1-d kernel: C_N, D_N and T<N> act on a cyclic 1-D "
                "grid of N samples (shifts, and mirrors for D_N), C2 and D1 reverse a signal"
            )
        return [(line_representation(group, kernel[0]), 1)]
    try:
        grid = (grid_representation(group, kernel[-2:]), 2)
    except ValueError as err:
        raise ValueError(f"{where}: {err}. {_free_hint(group)}") from err
    if len(kernel) == 2:
        return [grid]
    return [(kernel[0] * trivial(group), 1), grid]  # rotations about the depth axis


def _free_hint(group: Group) -> str:
    """What to do with a convolution whose kernel the group does not act on: freeing it is right only
    when the group is made of translations, which a convolution already commutes with."""
    if isinstance(group, TorusTranslations):
        return (
            f"{group.name} only translates, and a convolution with circular padding is already "
            "translation-equivariant: leave its weights unconstrained with spec.free(...)"
        )
    return (
        "Leaving the layer free would not make it equivariant (its kernel would not follow the rotations "
        "and mirrors): use C4/D4 (or C2/D2), which act exactly on the grid, or an escnn model with steerable "
        "kernels (lightning_equi.adapters)"
    )


def signal_geometry_warnings(module: nn.Module, group: Group, where: str) -> list[str]:
    """Why a 1-d convolution does not commute with the group's shifts and mirrors, whatever its weights:
    zero padding on a cyclic grid, strides, an off-centre window under mirrors (``[]`` when it does).

    Example:
        >>> from lightning_equi.groups import get_group
        >>> D8 = get_group("D8")
        >>> signal_geometry_warnings(nn.Conv1d(1, 1, 3, padding=1), D8, "conv")  # doctest: +ELLIPSIS
        ["conv: pads with zeros, which does not commute with the shifts of D8's cyclic grid: ..."]
        >>> signal_geometry_warnings(nn.Conv1d(1, 1, 3, padding=1, padding_mode="circular"), D8, "c")
        []
    """
    from lightning_equi.actions.signals import cyclic_length

    out = []
    (size,), (stride,), (dilation,) = module.kernel_size, module.stride, module.dilation
    padding = module.padding if isinstance(module.padding, str) else module.padding[0]
    cyclic = cyclic_length(group) is not None
    transposed = isinstance(module, CONV_T)
    if cyclic and size > 1 and not transposed and module.padding_mode != "circular":
        out.append(
            f"{where}: pads with zeros, which does not commute with the shifts of {group.name}'s cyclic "
            "grid: pass padding_mode='circular'"
        )
    if stride != 1:
        out.append(
            f"{where}: stride {stride} keeps one sample in {stride}, which does not commute with every shift "
            "and mirror of the signal: use stride=1 (and pool invariantly)"
        )
    mirrors = not (isinstance(group, (CyclicGroup, TorusTranslations)) and cyclic)
    centred = padding == "same" or (not isinstance(padding, str) and 2 * padding == dilation * (size - 1))
    if mirrors and not transposed and size > 1 and not centred:
        out.append(
            f"{where}: the window of {size} taps is not centred (padding {padding!r}), so a mirror of the "
            f"signal does not reverse it: use an odd kernel_size and padding={dilation * (size - 1) // 2}"
        )
    return out


def layer_actions(
    module: nn.Module, rho_in: Representation, rho_out: Representation, where: str
) -> dict[str, TensorAction]:
    """Parameter name (within the module) -> lifted action, for Linear and (transposed) convolutions.

    ``rho_in`` and ``rho_out`` are the fields the layer reads and writes; a convolution's kernel axes
    get :func:`kernel_factors`, and a transposed convolution's weight is laid out ``(in, out, ...)``.

    A grouped convolution (``groups > 1``) gets :func:`grouped_channel_factors`.

    Raises:
        ValueError: for fields a grouped convolution cannot carry, or a kernel the group does not act on.

    Example:
        >>> from lightning_equi.groups import get_group, regular
        >>> C4 = get_group("C4")
        >>> actions = layer_actions(nn.Conv2d(4, 8, 3), regular(C4), 2 * regular(C4), "conv")
        >>> {name: [(rep.name, axes) for rep, axes in a.factors] for name, a in actions.items()}
        {'weight': [('regular+regular', 1), ('regular', 1), ('grid3x3', 2)], 'bias': [('regular+regular', 1)]}
    """
    group = rho_in.group
    actions: dict[str, TensorAction] = {}
    if isinstance(module, nn.Linear):
        actions["weight"] = TensorAction(module.weight.shape, [(rho_out, 1), (rho_in, 1)])
    else:
        kernel = kernel_factors(group, tuple(module.kernel_size), where)
        if len(module.kernel_size) == 1:
            for message in signal_geometry_warnings(module, group, where):
                warnings.warn(message, UserWarning, stacklevel=4)
        if module.groups != 1:
            channels = grouped_channel_factors(module, rho_in, rho_out, where)
        elif isinstance(module, CONV_T):
            channels = [(rho_in, 1), (rho_out, 1)]
        else:
            channels = [(rho_out, 1), (rho_in, 1)]
        actions["weight"] = TensorAction(module.weight.shape, channels + kernel)
    if module.bias is not None:
        actions["bias"] = TensorAction(module.bias.shape, [(rho_out, 1)])
    return actions


def _split_fields(rho: Representation, groups: int) -> list[list[Representation]] | None:
    """The fields of ``rho`` in ``groups`` consecutive chunks of equal dimension, or ``None`` when a
    field crosses a boundary between chunks."""
    size, chunks, current, filled = rho.dim // groups, [], [], 0
    for field in rho.summands:
        current.append(field)
        filled += field.dim
        if filled > size:
            return None
        if filled == size:
            chunks.append(current)
            current, filled = [], 0
    return chunks


def grouped_channel_factors(
    module: nn.Module, rho_in: Representation, rho_out: Representation, where: str
) -> list[tuple[Representation, int]]:
    """The factors on the two channel axes of a grouped convolution's weight (``groups > 1``).

    The weight of ``Conv2d(c_in, c_out, k, groups=G)`` is ``(c_out, c_in / G, k, k)``: output group ``j``
    reads only input group ``j``. Two layouts of fields keep the block structure equivariant:

    * every group of channels carries whole fields and the input fields are the same in every group
      (``in_fields="regular"`` with whole regular fields per group): the weight is acted on by the
      output fields and one group's input fields;
    * a depthwise convolution (``c_in / G == 1``, MobileNet/ConvNeXt style) on permutation fields that
      the group moves group by group (``"regular"`` fields, each channel filtered by its own kernel):
      the group permutes the kernels along with their channels, and the single input channel of a
      group is acted on trivially.

    A transposed convolution is the same with the roles of input and output exchanged (its weight is
    ``(c_in, c_out / G, ...)``).

    Raises:
        ValueError: naming the layer, for fields that cross the groups of channels, differ between
            groups, or (depthwise) are not moved group by group.

    Example:
        >>> from lightning_equi.groups import get_group, regular, trivial
        >>> C4 = get_group("C4")
        >>> depthwise = nn.Conv2d(8, 8, 3, groups=8)
        >>> [r.name for r, _ in grouped_channel_factors(depthwise, 2 * regular(C4), 2 * regular(C4), "dw")]
        ['regular+regular', 'trivial']
        >>> grouped = nn.Conv2d(8, 16, 3, groups=2)  # one regular field in, two out, per group
        >>> [r.name for r, _ in grouped_channel_factors(grouped, 2 * regular(C4), 4 * regular(C4), "g")]
        ['regular+regular+regular+regular', 'regular']
    """
    groups, group = module.groups, rho_in.group
    transposed = isinstance(module, CONV_T)
    full, local = (rho_in, rho_out) if transposed else (rho_out, rho_in)
    full_side, local_side = ("in", "out") if transposed else ("out", "in")
    full_chunks, local_chunks = _split_fields(full, groups), _split_fields(local, groups)
    if full_chunks is not None and local_chunks is not None:
        names = {tuple(f.name for f in chunk) for chunk in local_chunks}
        if len(names) == 1:
            first = local_chunks[0]
            return [(full, 1), (first[0] if len(first) == 1 else direct_sum(first), 1)]
    fix = (
        f"Declare fields that fit: whole fields in every group of channels, the same {local_side}_fields in "
        f"each (e.g. a field type whose dimension divides the {local.dim // groups} {local_side}put channels "
        "of a group), or, for a depthwise convolution (one channel per group), permutation fields such as "
        "'regular' on both sides; else declare the weight with spec.parameter(name, TensorAction(...))"
    )
    head = (
        f"{where}: a grouped convolution (groups={groups}) maps each group of {rho_in.dim // groups} input "
        f"channels to its own {rho_out.dim // groups} output channels"
    )
    if local.dim != groups:
        crossing = [
            f"{side}_fields"
            for side, chunks in sorted([(full_side, full_chunks), (local_side, local_chunks)])
            if chunks is None
        ]
        reason = (
            f"its {' and '.join(crossing)} cross the boundaries between groups"
            if crossing
            else f"its {local_side}_fields differ between groups"
        )
        raise ValueError(f"{head}, but {reason}. {fix}")
    if not (full.is_permutation and local.is_permutation and isinstance(group, FiniteGroup)):
        raise ValueError(
            f"{head}: a depthwise convolution filters each channel alone, which commutes with {group.name} "
            f"only on permutation fields, but the fields are {rho_in.name} -> {rho_out.name}. {fix}"
        )
    elements = group.elements()
    per = full.dim // groups
    # (rho v)[j] = v[src[j]]: the block of outputs j must come from the block of the input it reads
    if not torch.equal(
        full.permutation(elements) // per, local.permutation(elements).repeat_interleave(per, 1)
    ):
        multiplier = (
            f" A channel multiplier ({per} {full_side}puts per channel) would need those {per} channels to "
            "move together, which fields laid out field after field do not: keep in_channels == "
            "out_channels == groups and widen with a pointwise 1x1 convolution."
            if per > 1
            else ""
        )
        raise ValueError(
            f"{head}: {group.name} moves the {full_side}put channels and the {local_side}put channels of the "
            f"groups differently under the fields {rho_in.name} -> {rho_out.name}, so it does not map the "
            f"depthwise weight to a depthwise weight.{multiplier} {fix}"
        )
    return [(full, 1), (trivial(group), 1)]


def norm_actions(module: nn.Module, rho: Representation, where: str) -> dict[str, TensorAction]:
    """Affine weight and bias, running mean and variance: vectors fixed by a permutation of channels.

    For a permutation representation ``diag(gamma)`` commutes with ``rho`` iff ``gamma`` is fixed by
    ``rho``, so every tensor of the layer has the same action, and E is constant on channel orbits.

    Raises:
        ValueError: for fields that are not a permutation representation, a LayerNorm over more than
            the channels, or a GroupNorm whose groups split orbits of channels.

    Example:
        >>> from lightning_equi.groups import get_group, regular
        >>> sorted(norm_actions(nn.BatchNorm2d(8), 2 * regular(get_group("C4")), "bn"))
        ['bias', 'running_mean', 'running_var', 'weight']
    """
    if not rho.is_permutation:
        raise ValueError(
            f"{where}: {type(module).__name__} normalises each channel by its own statistics, which commutes "
            f"with {rho.group.name} only when it permutes channels, but the fields {rho.name} are not a "
            "permutation representation (and left free, its per-channel scales would break equivariance "
            "too). Use permutation fields (e.g. 'regular') before it, or a norm-based normalisation "
            "(e.g. escnn's IIDBatchNorm)"
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


def describe_layer(module: nn.Module) -> str:
    """A short description of a layer for error messages: its type, channels and kernel.

    Example:
        >>> describe_layer(nn.Conv2d(1, 16, 3)), describe_layer(nn.ReLU())
        ('Conv2d(1, 16, kernel_size=(3, 3))', 'ReLU')
    """
    if isinstance(module, nn.Linear):
        return f"Linear({module.in_features}, {module.out_features})"
    if isinstance(module, (*CONV, *CONV_T)):
        kernel = f"kernel_size={module.kernel_size}"
        return f"{type(module).__name__}({module.in_channels}, {module.out_channels}, {kernel})"
    return type(module).__name__
