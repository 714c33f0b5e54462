"""Projection under FSDP2 (``torch.distributed.fsdp.fully_shard``) on 2 gloo processes on the CPU.

Every rank trains a sharded copy of a small C4 CNN on its half of each batch and, beside it, the same
model unsharded on the whole batch (the single-process reference: FSDP2 averages the gradients of the
halves, which is the gradient of the whole batch's mean loss). Checked: the sharded Equi run equals the
reference after a few steps (SGD with momentum, Adam with the weight re-projection); the shard-local
projection issues no collective (``CommDebugMode``), a parameter whose shards split orbits costs one
all-gather; the distances of the sharded model equal the reference's, with one all-reduce.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lightning_equi.subspace import SymmetrySpec

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

WORLD = 2


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),  # 2 regular fields: chunks of 4 channels hold whole orbits
        nn.ReLU(),
        # 1 regular field: chunks of 2 output channels split it, chunks of 4 input channels do not
        nn.Conv2d(8, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),  # invariant head: rows are independent
    )


def spec(prefix: str = "") -> SymmetrySpec:
    return (
        SymmetrySpec("C4")
        .layer(f"{prefix}0", "trivial", "regular")
        .layer(f"{prefix}2", "regular", "regular")
        .layer(f"{prefix}6", "regular", "trivial")
    )


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 1, 6, 6, generator=g), torch.randint(3, (8,), generator=g)


def _train(model, projection, optimizer, x, y, steps: int, reproject: bool) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        projection.project_gradients_()
        optimizer.step()
        if reproject:
            projection.project_tensors_([e.tensor for e in projection.entries], unless_in_E=True)


def _optimizer(name: str, params):
    if name == "adam":
        return torch.optim.Adam(params, lr=1e-2)
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def _full(tensor):
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _worker(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        queue.put((rank, _scenarios(rank)))
    except BaseException as err:  # the parent reports it: a failing rank must not hang the other
        import traceback

        queue.put((rank, traceback.format_exc()))
        raise err
    finally:
        dist.destroy_process_group()


def _scenarios(rank: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.debug import CommDebugMode

    from lightning_equi.subspace.sharding import check_shard_placement, shard_placement_fn

    mesh = init_device_mesh("cpu", (WORLD,))
    x, y = data()
    half = slice(rank * 4, rank * 4 + 4)
    out: dict = {}
    for optimizer, placed in (("sgd", False), ("adam", True)):
        reference = small_cnn()
        ref_projection = spec().bind(reference)
        ref_projection.project_parameters_()
        ref_opt = _optimizer(optimizer, reference.parameters())

        model = small_cnn()
        if placed:
            out[f"{optimizer}/misplaced"] = sorted(check_shard_placement(spec().bind(model), WORLD))
            place = shard_placement_fn(spec().bind(model), WORLD)
            fully_shard(model, mesh=mesh, shard_placement_fn=place)
        else:
            fully_shard(model, mesh=mesh)
        projection = spec().bind(model)  # bound to the sharded model: DTensor parameters
        start = projection.snapshot()
        with CommDebugMode() as comm:
            projection.project_parameters_()  # into E on the shards, gathering where they split orbits
        out[f"{optimizer}/init_comm"] = {str(k): v for k, v in comm.get_comm_counts().items()}
        opt = _optimizer(optimizer, model.parameters())
        _train(reference, ref_projection, ref_opt, x, y, 3, reproject=optimizer == "adam")
        _train(model, projection, opt, x[half], y[half], 2, reproject=optimizer == "adam")
        # the third step, counted: the gradient projection and the post-step re-projection
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[half]), y[half]).backward()
        with CommDebugMode() as comm:
            projection.project_gradients_()
        out[f"{optimizer}/grad_comm"] = {str(k): v for k, v in comm.get_comm_counts().items()}
        opt.step()
        reproject = optimizer == "adam"  # as EquivariantProjection decides: SGD keeps the weights in E
        with CommDebugMode() as comm:
            projection.project_tensors_(
                [e.tensor if reproject or e.is_buffer else None for e in projection.entries], unless_in_E=True
            )
        out[f"{optimizer}/step_comm"] = {str(k): v for k, v in comm.get_comm_counts().items()}

        worst = 0.0
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            full = _full(p.detach())
            worst = max(worst, float((full - q.detach()).norm() / q.detach().norm()))
        out[f"{optimizer}/worst_relative_difference"] = worst
        ref_start = {name: _full(t) for name, t in start.items()}
        reference_report = ref_projection.report(
            {n: t.to(torch.float32) for n, t in ref_start.items()}, layers=True
        )
        with CommDebugMode() as comm:
            report = projection.report(start, layers=True)
        out[f"{optimizer}/report_comm"] = {str(k): v for k, v in comm.get_comm_counts().items()}
        out[f"{optimizer}/report_keys_equal"] = sorted(report) == sorted(reference_report)
        out[f"{optimizer}/report_worst"] = max(
            float((report[k] - reference_report[k]).abs() / (reference_report[k].abs() + 1e-12))
            for k in report
        )
        out[f"{optimizer}/in_E"] = bool(projection.is_equivariant(1e-5))
        out[f"{optimizer}/local_shapes"] = {
            name: tuple(p.to_local().shape) for name, p in model.named_parameters()
        }
    return out


@pytest.fixture(scope="module")
def results() -> dict[int, dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=240) for _ in range(WORLD))
    for p in procs:
        p.join(timeout=60)
    for rank, value in got.items():
        if isinstance(value, str):
            pytest.fail(f"rank {rank} failed:\n{value}")
    return got


def test_fully_shard_runs_on_cpu_with_gloo(results):
    # uneven shards: 4 output channels over 2 ranks, 3 head rows as 2 + 1
    shapes = results[1]["sgd/local_shapes"]
    assert shapes["0.weight"] == (4, 1, 3, 3) and shapes["6.weight"] == (1, 4)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_equi_under_fsdp2_equals_the_single_process_run(results, optimizer):
    for rank in range(WORLD):
        assert results[rank][f"{optimizer}/worst_relative_difference"] < 1e-5
        assert results[rank][f"{optimizer}/in_E"]


def test_shard_local_projection_issues_no_collective(results):
    for rank in range(WORLD):
        # placed by shard_placement_fn: every parameter projected on its shard
        assert results[rank]["adam/misplaced"] == ["2.weight"]
        assert results[rank]["adam/grad_comm"] == {}
        assert results[rank]["adam/step_comm"] == {}
        assert results[rank]["adam/init_comm"] == {}


def test_a_parameter_whose_shards_split_orbits_costs_one_all_gather(results):
    for rank in range(WORLD):
        # default Shard(0): conv 2's weight (one field of 4 output channels in chunks of 2) is gathered
        comm = results[rank]["sgd/grad_comm"]
        assert comm == {"c10d_functional.all_gather_into_tensor": 1}, comm
        assert results[rank]["sgd/init_comm"] == comm
        assert results[rank]["sgd/step_comm"] == {}  # SGD: buffers only, none in this model


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_distances_of_the_sharded_model_equal_the_reference_with_one_all_reduce(results, optimizer):
    for rank in range(WORLD):
        assert results[rank][f"{optimizer}/report_keys_equal"]
        assert results[rank][f"{optimizer}/report_worst"] < 1e-4
        comm = results[rank][f"{optimizer}/report_comm"]
        assert comm.get("c10d.allreduce_") == 1, comm
