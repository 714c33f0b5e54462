"""The training protocol of one run: its loader, its gradient accumulation and the callbacks of its mode.

Protocols (``protocol:`` in the config):

- ``full``, the paper's: gradients accumulated over the whole data set in batches of ``batch_size``, one plain
  SGD step per epoch; aug makes ``aug_passes`` augmented passes over the data per step (one Haar draw per
  sample and pass) and averages them. The passes are made as ``aug_passes`` augmented copies within each
  batch (the same average, in far fewer Lightning steps), except for a model with BatchNorm, whose batch
  statistics would then span the copies: there they are passes over the repeated data set;
- ``minibatch``: shuffled batches of ``batch_size``, one SGD step per batch; aug transforms
  ``aug_passes`` copies of each batch.

With ``sampler: batch`` or ``paper`` (:mod:`~lightning_equi.experiments.samplers`) aug draws one element per
batch, so the full protocol's passes are passes over the repeated data set, as in the paper's code.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback
from torch.utils.data import (
    BatchSampler,
    ConcatDataset,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from lightning_equi.callbacks import HaarAugmentation, build_callbacks
from lightning_equi.experiments.models import SymmetricTask
from lightning_equi.experiments.samplers import BatchDrawAugmentation, paper_weights

__all__ = ["batch_coupled", "train_loader", "mode_callbacks"]


def batch_coupled(model: torch.nn.Module) -> bool:
    """Whether a sample's output in training depends on the rest of its batch (a BatchNorm layer).

    Example:
        >>> batch_coupled(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)))
        True
        >>> batch_coupled(torch.nn.Linear(3, 3))
        False
    """
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _passes_as_data(config: dict, mode: str, model: torch.nn.Module) -> int:
    """How many times the full protocol's aug data set is repeated (1: the passes are batch copies instead).

    The ``aug_passes`` augmented passes of one step are made as copies within each batch (HaarAugmentation
    ``copies``, one Haar draw per sample and copy): the same mean over passes x samples, in ``aug_passes``
    times fewer, larger batches. A model with BatchNorm would then normalise over the copies of a batch rather
    than over one pass, which is another computation: there the passes are repeated data set passes; so
    they are with the per-batch samplers (one element per batch of a pass, as the paper's code draws).
    """
    if config["protocol"] != "full" or mode != "aug" or config["orbit"]:
        return 1
    if not batch_coupled(model) and config["sampler"] == "haar":
        return 1
    return int(config["aug_passes"])


def _batches(dataset: Dataset, batch: int, generator: torch.Generator | None = None) -> DataLoader:
    """Batches of ``batch`` samples in order (or shuffled by ``generator``).

    A :class:`~torch.utils.data.TensorDataset` is indexed once per batch (the same tensors as the default
    per-sample fetch and collate, without their per-sample overhead); no workers, no pinned memory.
    """
    sampler = RandomSampler(dataset, generator=generator) if generator else SequentialSampler(dataset)
    if isinstance(dataset, TensorDataset):
        return DataLoader(dataset, batch_size=None, sampler=BatchSampler(sampler, batch, drop_last=False))
    return DataLoader(dataset, batch_size=batch, sampler=sampler)


def train_loader(config: dict, dataset: Dataset, mode: str, model: torch.nn.Module) -> tuple[DataLoader, int]:
    """The training loader and ``accumulate_grad_batches`` for the protocol.

    Raises:
        ValueError: with the ``full`` protocol, if ``batch_size`` does not divide the data set.
    """
    n, batch = len(dataset), int(config["batch_size"])
    if config["protocol"] == "minibatch":
        return _batches(dataset, batch, torch.Generator().manual_seed(0)), 1
    if n % batch:
        raise ValueError(
            f"protocol 'full' averages the gradient over the whole data set in equal batches, but batch_size "
            f"{batch} does not divide the {n} samples; choose a divisor of {n}"
        )
    passes = _passes_as_data(config, mode, model)
    data = ConcatDataset([dataset] * passes) if passes > 1 else dataset
    return _batches(data, batch), passes * n // batch


def mode_callbacks(config: dict, mode: str, model: SymmetricTask, seed: int) -> list[Callback]:
    """The mode's callbacks (with an EquivarianceMonitor logging per-layer distances to TensorBoard)."""
    inputs, targets = model.data_actions()
    options: dict[str, Any] = {"every_n_steps": int(config["monitor_every_n_steps"]), "seed": seed}
    if mode == "aug":
        orbit = bool(config["orbit"])
        copies = 1 if orbit or _passes_as_data(config, mode, model) > 1 else int(config["aug_passes"])
        options.update(copies=copies, orbit=orbit)
    if mode == "equi":
        # the paper's protocol: A0 = Pi_E A (the runner projects it beforehand; the callback keeps it)
        # and the moving averages of any running statistics, as the paper evaluated them
        options.update(init="project", recalibrate_bn=0)
    callbacks = build_callbacks(
        mode, spec=model.symmetry_spec(), inputs=inputs, targets=targets, monitor=True, model=model, **options
    )
    if mode == "aug" and not config["orbit"]:
        callbacks = [
            _sampler(config, cb, seed) if isinstance(cb, HaarAugmentation) else cb for cb in callbacks
        ]
    return callbacks


def _sampler(config: dict, haar: HaarAugmentation, seed: int) -> Callback:
    """The config's sampler in place of the per-sample Haar augmentation (``haar`` keeps it)."""
    if config["sampler"] == "haar":
        return haar
    weights = paper_weights(haar.group) if config["sampler"] == "paper" else None
    if config["sampler"] == "paper" and weights is None:  # the paper's Perm: uniform per sample
        return haar
    return BatchDrawAugmentation(haar.group.name, haar.inputs, haar.targets, weights=weights, seed=seed)
