"""The three modes under Lightning's ``ModelParallelStrategy`` (FSDP2) on 2 CPU processes with gloo.

The test runs this file as a script once (Lightning's launcher starts the second rank by running it
again); the script trains the small C4 CNN of ``test_fsdp2`` sharded with ``fully_shard`` in
``configure_model`` and writes what the tests compare: the weights after Equi training (against a
single-process run of the same steps on the whole batches, here), the group elements HaarAugmentation
drew on each rank, and the weights of a run resumed from a sharded (distributed) checkpoint against
the uninterrupted run. The refusals of FSDP1 and DeepSpeed are checked here too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_fsdp2 import data, small_cnn, spec  # noqa: E402

from lightning_equi.callbacks import (  # noqa: E402
    EquivarianceMonitor,
    EquivariantProjection,
    HaarAugmentation,
)

STEPS = 3


class Net(L.LightningModule):
    """The small CNN; ``shard``: ``fully_shard`` in ``configure_model`` on the data-parallel mesh, with
    the placement that keeps orbits in shards when ``place``."""

    def __init__(self, optimizer: str = "sgd", batch: int = 4, shard: bool = True, place: bool = True):
        super().__init__()
        self.net = small_cnn()
        self.optimizer, self.batch, self.shard, self.place = optimizer, batch, shard, place
        self.drawn: list[int] = []  # the rotation HaarAugmentation applied to each sample, in order

    def symmetry_spec(self):
        return spec(prefix="net.")

    def configure_model(self) -> None:
        from torch.distributed.fsdp import FSDPModule, fully_shard

        from lightning_equi.subspace.sharding import shard_placement_fn

        if not self.shard or isinstance(self.net, FSDPModule):
            return
        mesh = self.device_mesh["data_parallel"]
        place = shard_placement_fn(self.symmetry_spec().bind(self), mesh.size()) if self.place else None
        fully_shard(self.net, mesh=mesh, shard_placement_fn=place)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y, idx = batch
        raw = data()[0][idx]
        for sample, original in zip(x, raw, strict=True):  # which quarter turn the augmentation drew
            turns = [k for k in range(4) if torch.equal(sample, torch.rot90(original, k, dims=(-2, -1)))]
            self.drawn.append(turns[0] if turns else -1)
        return nn.functional.cross_entropy(self(x), y)

    def train_dataloader(self):
        x, y = data()
        return DataLoader(TensorDataset(x, y, torch.arange(len(x))), batch_size=self.batch)

    def configure_optimizers(self):
        if self.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=1e-2)
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def _trainer(callbacks, steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_steps=steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kwargs,
    )


def _sharded(callbacks, steps: int) -> L.Trainer:
    from lightning.pytorch.strategies import ModelParallelStrategy

    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    return _trainer(callbacks, steps, devices=2, strategy=strategy)


def _weights(model: Net) -> dict[str, torch.Tensor]:
    """Whole weights (gathered on every rank)."""
    return {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for n, p in model.named_parameters()
    }


def _full_tensor(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def main(out: Path) -> None:
    """The script: every rank runs it (the second one started by Lightning)."""
    torch.set_num_threads(1)
    results: dict = {}
    # Equi with SGD and with Adam (the weights re-projected after each step), orbits in shards
    for optimizer in ("sgd", "adam"):
        model = Net(optimizer)
        _sharded([EquivariantProjection()], STEPS).fit(model)
        results[f"equi/{optimizer}"] = _weights(model)
    # Equi with the default placement: a parameter whose shards split an orbit is gathered
    model = Net("sgd", place=False)
    _sharded([EquivariantProjection(), EquivarianceMonitor(every_n_steps=1)], STEPS).fit(model)
    results["equi/gathered"] = _weights(model)
    # Aug: each rank draws from its own stream (seed + rank)
    model = Net("sgd")
    _sharded([HaarAugmentation("C4", inputs={0: "image"}, seed=0)], STEPS).fit(model)
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    results[f"drawn/{rank}"] = list(model.drawn)
    # resume from a sharded checkpoint: 2 steps, save, 2 more, against 4 uninterrupted
    full = Net("adam")
    full_monitor = EquivarianceMonitor(every_n_steps=1)
    _sharded([EquivariantProjection(), full_monitor], 4).fit(full)
    results["resume/full"] = _weights(full)
    results["resume/full_monitor"] = (
        {n: _full_tensor(t) for n, t in full_monitor._w0.items()},
        full_monitor.history[-1],
    )
    first = Net("adam")
    trainer = _sharded([EquivariantProjection(), EquivarianceMonitor(every_n_steps=1)], 2)
    trainer.fit(first)
    checkpoint = out / "sharded.ckpt"
    trainer.save_checkpoint(checkpoint)
    results["resume/is_sharded"] = checkpoint.is_dir()
    resumed = Net("adam")
    monitor = EquivarianceMonitor(every_n_steps=1)
    _sharded([EquivariantProjection(), monitor], 4).fit(resumed, ckpt_path=checkpoint)
    results["resume/resumed_monitor"] = (
        {n: _full_tensor(t) for n, t in monitor._w0.items()},
        monitor.history[-1],
    )
    results["resume/resumed"] = _weights(resumed)
    torch.save(results, out / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[int, dict]:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    out = tmp_path_factory.mktemp("fsdp2")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, __file__, str(out)], env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        pytest.fail(
            f"the FSDP2 script failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return {r: torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)}


def _reference(optimizer: str, steps: int = STEPS) -> dict[str, torch.Tensor]:
    """The same Equi steps on one process, on the whole batches (both ranks' halves)."""
    model = Net(optimizer, batch=8, shard=False)
    _trainer([EquivariantProjection()], steps, devices=1).fit(model)
    return _weights(model)


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> float:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).norm() / b[k].norm()) for k in a)
    assert worst < tol, worst
    return worst


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_equi_under_model_parallel_equals_one_process(results, optimizer):
    reference = _reference(optimizer)
    for rank in range(2):
        _close(results[rank][f"equi/{optimizer}"], reference, 1e-5)


def test_equi_with_gathered_parameters_and_the_monitor(results):
    reference = _reference("sgd")
    for rank in range(2):
        _close(results[rank]["equi/gathered"], reference, 1e-5)
    projection = spec().bind(small_cnn())
    for name, tensor in results[0]["equi/gathered"].items():
        entry = next(e for e in projection.entries if f"net.{e.name}" == name)
        assert float(entry.projector.distance(tensor)) < 1e-5 * float(tensor.norm())


def test_aug_draws_different_elements_on_each_rank(results):
    drawn = [results[r][f"drawn/{r}"] for r in range(2)]
    assert all(len(d) == 4 * STEPS and -1 not in d for d in drawn), drawn  # every sample a quarter turn
    assert drawn[0] != drawn[1]


def test_resume_from_a_sharded_checkpoint(results):
    for rank in range(2):
        assert results[rank]["resume/is_sharded"]  # a directory: one file per rank
        _close(results[rank]["resume/resumed"], results[rank]["resume/full"], 1e-6)
        # the monitor's start travels whole in the checkpoint (rank 0's copy) and is laid out again
        (start, last), (full_start, full_last) = (
            results[rank]["resume/resumed_monitor"],
            results[rank]["resume/full_monitor"],
        )
        _close(start, full_start, 0.0 + 1e-12)
        assert last.keys() == full_last.keys() and len(last) > 4
        for key, value in full_last.items():
            assert abs(last[key] - value) <= 1e-5 * (abs(value) + 1e-6), key


@pytest.mark.parametrize(
    ("strategy_cls", "match"),
    [
        (FSDPStrategy, r"sharded strategy FSDPStrategy: FSDP1 keeps flattened shards.*ModelParallelStrategy"),
        (
            DeepSpeedStrategy,
            r"sharded strategy DeepSpeedStrategy: DeepSpeed partitions.*ModelParallelStrategy",
        ),
    ],
)
def test_flat_parameter_strategies_are_refused(strategy_cls, match):
    class _Trainer:  # setup only reads trainer.strategy
        strategy = strategy_cls.__new__(strategy_cls)

    with pytest.raises(MisconfigurationException, match=match):
        EquivariantProjection().setup(_Trainer(), Net(shard=False), "fit")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
