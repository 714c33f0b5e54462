"""Batch statistics pooled over each field, so that a BatchNorm layer in training mode is equivariant.

``nn.BatchNorm`` normalises every channel by its own batch mean and variance. When the group permutes
channels (the channels of a regular field are one filter turned |G| ways), per-channel statistics of
data that is not itself symmetric differ inside a field: in training mode the layer is then not
equivariant, and the network trained (with batch statistics) is not the one evaluated (with running
statistics, which equi keeps in E). Pooling the statistics over each orbit of channels -- escnn's
``InnerBatchNorm`` -- fixes both: the pooled statistics are invariant under the group acting on any
sample, and the running statistics they feed are in E at every step.

:func:`pool_batch_statistics` installs the pooled forward on every BatchNorm layer of a bound
:class:`~lightning_equi.subspace.projection.ModelProjection` and returns a handle that restores the layers.

Running statistics are a moving average of batch statistics taken at *past* weights. When the
weights still move fast (a large step against their norm, as after a plain projection of the
initial weights, which halves a regular C4 layer) the average lags behind them, and an invariant
head, which sums each field, turns the lag of a field's mean into one shift of every logit: the
network evaluated is then not the one trained (on 8x8 digits, C4, Adam 1e-2, 64 steps: 0.16 held-out
accuracy in evaluation mode against 0.49 with statistics recomputed at the final weights).
:func:`recompute_running_statistics` recomputes them at the current weights from a few batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_equi.subspace.base import Projector
from lightning_equi.subspace.orbit import OrbitMeanProjector

__all__ = [
    "PooledBatchNormForward",
    "PooledBatchNorms",
    "channel_orbits",
    "pool_batch_statistics",
    "recompute_running_statistics",
]


def channel_orbits(projector: Projector) -> Tensor:
    """Orbit id of each channel (numbered from 0 in order of first appearance) for the projector of a
    normalisation layer's ``(C,)`` vectors, which averages each orbit of channels.

    Example:
        >>> from lightning_equi.groups import CyclicGroup, regular, trivial
        >>> from lightning_equi.subspace import TensorAction
        >>> G = CyclicGroup(4)
        >>> channel_orbits(OrbitMeanProjector(TensorAction((5,), [(trivial(G) + regular(G), 1)])))
        tensor([0, 1, 1, 1, 1])
    """
    if len(projector.shape) != 1:
        raise ValueError(
            f"channel_orbits needs the projector of a (C,) vector, got shape {tuple(projector.shape)}"
        )
    if isinstance(projector, OrbitMeanProjector):
        return projector.ids.clone()
    # any other exact projector of a permutation action: row c of the averaging matrix is the
    # indicator of c's orbit over its size (C is a channel count: a C x C matrix is small)
    n = projector.shape[0]
    rows = torch.stack([projector.project(e) for e in torch.eye(n, dtype=torch.float64)])
    first = (rows.abs() > 1e-9).to(torch.int8).argmax(dim=1)  # the smallest channel of each orbit
    return torch.unique(first, return_inverse=True)[1]


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over the ranks of ``group`` (``None``: the default group when called).

    Not ``torch.distributed.nn.functional.all_reduce``: its ``group=group.WORLD`` default is bound when
    that module is first imported, so importing it after ``init_process_group`` keeps the default process
    group alive for the rest of the process. ``destroy_process_group`` then cannot free it, and its gloo
    worker threads are still running when the interpreter exits, where they can abort the process.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor, group) -> Tensor:
        ctx.group = group
        tensor = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
        return tensor

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _AllReduceSum.apply(grad, ctx.group), None


class PooledBatchNormForward:
    """The forward of one BatchNorm layer with batch statistics pooled over each orbit of channels.

    Installed as the layer's ``forward`` attribute (a plain object, so the model still pickles and
    deep-copies). In evaluation mode with running statistics it defers to the layer's own forward.
    Statistics are computed in float32 or wider; under DDP a ``SyncBatchNorm`` layer sums them over
    ranks (differentiably) before pooling.
    """

    def __init__(self, module: _BatchNorm, orbits: Tensor) -> None:
        if orbits.shape != (module.num_features,):
            raise ValueError(
                f"{type(module).__name__}({module.num_features}) got orbit ids for {orbits.numel()} channels"
            )
        self.module = module
        self.orbits = orbits.long()
        self.n_orbits = int(self.orbits.max()) + 1 if self.orbits.numel() else 0
        self.orbit_size = torch.bincount(self.orbits, minlength=self.n_orbits)[self.orbits]  # per channel
        # fields of one size k on consecutive channels (regular fields; k = 1: scalars) need no pooling
        # code: (N, C, ...) viewed as (N, C / k, k, ...) is InnerBatchNorm for the native kernel
        k = int(self.orbit_size[0]) if self.orbits.numel() else 1
        # read once here: a Python number taken from a tensor in forward would wait for the device
        self.min_orbit = int(self.orbit_size.min()) if self.orbits.numel() else 1
        blocks = torch.arange(self.orbits.numel()) // k
        regular = torch.equal(self.orbits, blocks) and not isinstance(module, nn.SyncBatchNorm)
        self.block = k if regular else None

    def _pool(self, per_channel: Tensor) -> Tensor:
        """Sum each orbit's entries (differentiable), per channel."""
        orbits = self.orbits.to(per_channel.device)
        sums = per_channel.new_zeros(self.n_orbits).index_add(0, orbits, per_channel)
        return sums[orbits]

    def __call__(self, x: Tensor) -> Tensor:
        m = self.module
        batch_stats = m.training or not m.track_running_stats
        if not batch_stats:
            return type(m).forward(m, x)
        if x.dim() < 2 or x.shape[1] != m.num_features:
            raise ValueError(
                f"{type(m).__name__}({m.num_features}) expects (N, {m.num_features}, ...) inputs, "
                f"got {tuple(x.shape)}"
            )
        if m.training and x.numel() // x.shape[1] * self.min_orbit <= 1:
            raise ValueError(
                f"{type(m).__name__}: expected more than 1 value per field in training, got input of shape "
                f"{tuple(x.shape)}"
            )
        if self.block == 1:  # every channel its own orbit: per-channel statistics are the pooled ones
            return type(m).forward(m, x)
        if self.block is not None:
            return self._blocks(x)
        acc = torch.promote_types(x.dtype, torch.float32)
        dims = [0, *range(2, x.dim())]
        xs = x.to(acc)
        s1, s2 = xs.sum(dims), xs.square().sum(dims)
        count = torch.full((), float(x.numel() // x.shape[1]), dtype=acc, device=x.device)  # no copy
        if isinstance(m, nn.SyncBatchNorm) and dist.is_available() and dist.is_initialized():
            stacked = _AllReduceSum.apply(torch.cat([s1, s2, count[None]]), m.process_group)
            s1, s2, count = stacked[: s1.numel()], stacked[s1.numel() : -1], stacked[-1]
        n = count * self.orbit_size.to(device=x.device, dtype=acc)  # entries pooled per channel
        mean = self._pool(s1) / n
        var = (self._pool(s2) / n - mean.square()).clamp_min(0)
        if m.training and m.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), n)
        shape = [1, -1] + [1] * (x.dim() - 2)
        scale = torch.rsqrt(var + m.eps)
        if m.weight is not None:
            scale = scale * m.weight.to(acc)
        shift = -mean * scale
        if m.bias is not None:
            shift = shift + m.bias.to(acc)
        return (xs * scale.reshape(shape) + shift.reshape(shape)).to(x.dtype)

    def _blocks(self, x: Tensor) -> Tensor:
        """Equal consecutive fields: one native batch norm over ``(N, fields, k, ...)`` with the field
        means of the affine parameters (equal to them in E; their gradient is the projected one) and
        field-level running statistics, written back to the channels."""
        m, k = self.module, self.block
        fields = m.num_features // k
        track = m.training and m.track_running_stats
        if track and m.momentum is None:  # a cumulative average: its factor lives on the device
            return self._blocks_cumulative(x)
        factor = 0.0
        if track:
            m.num_batches_tracked.add_(1)
            factor = m.momentum
        running = m.running_mean is not None and (track or not m.training)
        mean = m.running_mean.view(fields, k)[:, 0].clone() if running else None  # in E: one per field
        var = m.running_var.view(fields, k)[:, 0].clone() if running else None
        weight = None if m.weight is None else m.weight.view(fields, k).mean(1)
        bias = None if m.bias is None else m.bias.view(fields, k).mean(1)
        y = nn.functional.batch_norm(
            x.reshape(x.shape[0], fields, k, *x.shape[2:]), mean, var, weight, bias, True, factor, m.eps
        )
        if track:
            with torch.no_grad():
                m.running_mean.copy_(mean.repeat_interleave(k))
                m.running_var.copy_(var.repeat_interleave(k))
        return y.reshape(x.shape)

    def _blocks_cumulative(self, x: Tensor) -> Tensor:
        """``_blocks`` with ``momentum=None`` (the recalibration's cumulative average): torch's own
        batch norm reads ``1 / num_batches_tracked`` into a Python float, a wait for the device at
        every call; here the batch statistics of each field update the running ones by tensor
        arithmetic on the device."""
        m, k = self.module, self.block
        fields = m.num_features // k
        xr = x.reshape(x.shape[0], fields, k, *x.shape[2:])
        weight = None if m.weight is None else m.weight.view(fields, k).mean(1)
        bias = None if m.bias is None else m.bias.view(fields, k).mean(1)
        y = nn.functional.batch_norm(xr, None, None, weight, bias, True, 0.0, m.eps)
        with torch.no_grad():
            dims = [0, *range(2, xr.dim())]
            acc = torch.promote_types(x.dtype, torch.float32)
            var, mean = torch.var_mean(xr.detach().to(acc), dim=dims, correction=1)
            self._update_running_stats(mean.repeat_interleave(k), var.repeat_interleave(k), None)
        return y.reshape(x.shape)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, n: Tensor | None) -> None:
        """Move the running statistics towards ``mean`` and ``var`` (biased over ``n`` entries per
        channel; ``None``: already unbiased), on the device: no Python number is read from a tensor."""
        m = self.module
        m.num_batches_tracked.add_(1)
        unbiased = var if n is None else var * n / (n - 1)
        if m.momentum is None:  # cumulative average: the factor 1 / num_batches_tracked as a tensor
            factor = m.num_batches_tracked.reciprocal().to(m.running_mean.dtype)
            m.running_mean.mul_(1 - factor).add_(mean.to(m.running_mean.dtype) * factor)
            m.running_var.mul_(1 - factor).add_(unbiased.to(m.running_var.dtype) * factor)
        else:
            m.running_mean.mul_(1 - m.momentum).add_(mean.to(m.running_mean.dtype), alpha=m.momentum)
            m.running_var.mul_(1 - m.momentum).add_(unbiased.to(m.running_var.dtype), alpha=m.momentum)


class PooledBatchNorms:
    """What :func:`pool_batch_statistics` installed: ``layers`` (names), and :meth:`remove`."""

    def __init__(self, installed: dict[str, _BatchNorm]) -> None:
        self.installed = installed

    @property
    def layers(self) -> list[str]:
        return list(self.installed)

    def remove(self) -> None:
        """Give every layer its own forward back."""
        for module in self.installed.values():
            if isinstance(module.__dict__.get("forward"), PooledBatchNormForward):
                del module.forward
        self.installed = {}


def pool_batch_statistics(projection) -> PooledBatchNorms:
    """Pool the batch statistics of every BatchNorm layer of ``projection`` over its channel orbits.

    Layers whose tensors the spec leaves free, and layers already pooled, are left as they are.

    Example:
        >>> from lightning_equi.subspace import SymmetrySpec
        >>> net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8))
        >>> projection = SymmetrySpec("C4").layer("0", "trivial", "regular").bind(net)
        >>> pooled = pool_batch_statistics(projection)
        >>> pooled.layers
        ['1']
        >>> projection.project_parameters_()
        >>> _ = net(torch.randn(4, 1, 6, 6))  # training mode: pooled batch statistics ...
        >>> projection.is_equivariant()  # ... so the running statistics they update stay in E
        True
        >>> pooled.remove()
    """
    installed: dict[str, _BatchNorm] = {}
    for entry in projection.entries:
        module = entry.module
        if not isinstance(module, _BatchNorm) or entry.layer in installed:
            continue
        if isinstance(module.__dict__.get("forward"), PooledBatchNormForward):
            continue
        module.forward = PooledBatchNormForward(module, channel_orbits(entry.projector))
        installed[entry.layer] = module
    return PooledBatchNorms(installed)


@torch.no_grad()
def recompute_running_statistics(
    layers: Sequence[_BatchNorm], model: nn.Module, inputs: Sequence[tuple[tuple, dict[str, Any]]]
) -> None:
    """Recompute the running statistics of ``layers`` at the model's current weights.

    Each layer's statistics are reset and replaced by the cumulative average of its batch statistics
    over the forwards ``model(*args, **kwargs)`` for ``(args, kwargs)`` in ``inputs``, in training mode
    (the statistics the moving average estimates, without its lag), as
    ``torch.optim.swa_utils.update_bn`` does. Nothing else changes: other BatchNorm layers keep their
    buffers, every module its training flag and momentum, and the random number generators their state.

    Example:
        >>> from lightning_equi.subspace import SymmetrySpec
        >>> net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8))
        >>> pooled = pool_batch_statistics(SymmetrySpec("C4").layer("0", "trivial", "regular").bind(net))
        >>> x = torch.randn(16, 1, 6, 6)
        >>> recompute_running_statistics([net[1]], net, [((x[:8],), {}), ((x[8:],), {})])
        >>> ref = net[0](x).transpose(0, 1).reshape(2, 4, -1).reshape(2, -1)  # each field's 4 channels
        >>> torch.allclose(net[1].running_mean[::4], ref.mean(1), atol=1e-6)
        True
        >>> pooled.remove()
    """
    if not inputs or not layers:
        return
    chosen = {id(m) for m in layers}
    others = [m for m in model.modules() if isinstance(m, _BatchNorm) and id(m) not in chosen]
    saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for m in others]
    flags = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in layers]
    devices = sorted({b.device.index for b in model.buffers() if b.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):  # dropout in training mode draws numbers
            for m in layers:
                m.reset_running_stats()
                m.momentum = None  # the cumulative average over the batches below
            model.train()
            for args, kwargs in inputs:
                model(*args, **kwargs)
    finally:
        for m, momentum in momenta:
            m.momentum = momentum
        for m, buffers in zip(others, saved, strict=True):
            for name, value in buffers.items():
                getattr(m, name).copy_(value)
        for m, flag in flags:
            m.training = flag
