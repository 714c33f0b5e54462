"""BatchNorm with batch statistics pooled over channel orbits: InnerBatchNorm exactly, and equivariant."""

from __future__ import annotations

import copy
import pickle

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_equi.callbacks import EquivariantProjection
from lightning_equi.groups import CyclicGroup, SymmetricGroup, TorusTranslations, regular, standard, trivial
from lightning_equi.subspace import BasisProjector, SymmetrySpec, TensorAction, make_projector, orbit_ids
from lightning_equi.subspace.batchnorm import PooledBatchNormForward, channel_orbits, pool_batch_statistics
from lightning_equi.testing import BoringEquiModel

G = CyclicGroup(4)


def _bn_in_E(fields: int, **kwargs) -> tuple[nn.BatchNorm2d, object]:
    bn = nn.BatchNorm2d(4 * fields, **kwargs)
    net = nn.Sequential(bn)
    projection = SymmetrySpec(G).norm("0", fields="regular").bind(net)
    if bn.affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.normal_()
    projection.project_parameters_()
    return bn, projection


def test_pooled_statistics_are_inner_batch_norm():
    """Regular fields: the pooled layer is BatchNorm3d over (field, rotation, H, W), outputs, running
    statistics and gradients alike."""
    bn, projection = _bn_in_E(3, momentum=0.3)
    ref = nn.BatchNorm3d(3, momentum=0.3)
    with torch.no_grad():
        ref.weight.copy_(bn.weight[::4])
        ref.bias.copy_(bn.bias[::4])
    pooled = pool_batch_statistics(projection)
    assert pooled.layers == ["0"]
    assert bn.forward.block == 4  # equal consecutive fields: the native kernel on (N, 3, 4, H, W)
    for step in range(3):
        x = torch.randn(5, 12, 6, 6, dtype=torch.float64) * (1 + step) + step
        x32 = x.float().requires_grad_(True)
        xr = x.float().reshape(5, 3, 4, 6, 6).requires_grad_(True)
        y, yr = bn(x32), ref(xr)
        torch.testing.assert_close(y, yr.reshape(5, 12, 6, 6), atol=1e-5, rtol=1e-5)
        (y.square() * torch.arange(12.0)[:, None, None]).sum().backward()
        (yr.reshape(5, 12, 6, 6).square() * torch.arange(12.0)[:, None, None]).sum().backward()
        torch.testing.assert_close(x32.grad, xr.grad.reshape(5, 12, 6, 6), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bn.running_mean, ref.running_mean.repeat_interleave(4), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(bn.running_var, ref.running_var.repeat_interleave(4), atol=1e-6, rtol=1e-6)
    # a field's weight acts on its 4 channels: its gradient is theirs summed
    torch.testing.assert_close(bn.weight.grad.reshape(3, 4).sum(1), ref.weight.grad, atol=1e-2, rtol=1e-4)
    assert int(bn.num_batches_tracked) == 3
    assert projection.is_equivariant(atol=1e-6)  # running statistics in E without re-projection
    bn.eval()  # evaluation with running statistics: the layer's own forward
    x = torch.randn(2, 12, 3, 3)
    ref.eval()
    torch.testing.assert_close(
        bn(x), ref(x.reshape(2, 3, 4, 3, 3)).reshape(2, 12, 3, 3), atol=1e-5, rtol=1e-5
    )


def _cnn() -> tuple[nn.Sequential, object]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8, momentum=None),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    spec = (
        SymmetrySpec("C4")
        .layers(nn.Conv2d, fields="regular")
        .layer("0", in_fields="trivial", out_fields="regular")
        .layer("8", in_fields="regular", out_fields="trivial")
    )
    projection = spec.bind(net)
    projection.project_parameters_()
    return net, projection


@pytest.mark.parametrize("pool", [True, False])
def test_training_mode_is_invariant_per_sample_only_when_pooled(pool):
    net, projection = _cnn()
    if pool:
        pool_batch_statistics(projection)
    x = torch.randn(16, 1, 7, 7) + torch.linspace(0, 2, 7)  # not symmetric: a gradient along W
    k = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(1))
    gx = torch.stack([torch.rot90(xi, int(ki), (-2, -1)) for xi, ki in zip(x, k, strict=True)])
    net.train()
    y, gy = net(x), net(gx)  # each sample turned by its own quarter turn, in training mode
    err = float((gy - y).detach().norm() / y.detach().norm())
    if pool:
        assert err < 1e-5, err
    else:  # the negative control: per-channel batch statistics break invariance
        assert err > 1e-3, err


def test_remove_restores_the_layers_and_the_model_pickles_while_pooled():
    net, projection = _cnn()
    pooled = pool_batch_statistics(projection)
    assert sorted(pooled.layers) == ["1", "4"]
    assert pool_batch_statistics(projection).layers == []  # already pooled: left alone
    x = torch.randn(4, 1, 5, 5)
    copied = pickle.loads(pickle.dumps(net))
    torch.testing.assert_close(copied(x), copy.deepcopy(net)(x))
    assert isinstance(copied[1].__dict__["forward"], PooledBatchNormForward)
    pooled.remove()
    assert "forward" not in net[1].__dict__ and "forward" not in net[4].__dict__


def test_no_running_statistics_pools_in_eval_too_and_half_precision():
    bn, projection = _bn_in_E(2, track_running_stats=False)
    pool_batch_statistics(projection)
    bn.eval()
    x = torch.randn(3, 8, 4, 4) + torch.arange(8.0)[:, None, None]
    y = bn(x)
    ref = nn.functional.batch_norm(x.reshape(3, 2, 4, 4, 4), None, None, bn.weight[::4], bn.bias[::4], True)
    torch.testing.assert_close(y, ref.reshape(3, 8, 4, 4), atol=1e-5, rtol=1e-5)
    yb = bn(x.bfloat16())
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), y, atol=5e-2, rtol=5e-2)


def test_channel_orbits_from_orbit_ids_and_from_any_other_exact_projector():
    cases = [
        (trivial(G) + regular(G) * 2, make_projector, "orbit-mean"),  # read off the projector's ids
        (standard(TorusTranslations((3, 2))) * 2, make_projector, "fourier"),  # from its averaging matrix
        (standard(SymmetricGroup(5)) + trivial(SymmetricGroup(5)), BasisProjector, "basis"),
    ]
    for rho, build, kind in cases:
        action = TensorAction((rho.dim,), [(rho, 1)])
        projector = build(action)
        assert projector.kind == kind
        torch.testing.assert_close(channel_orbits(projector), orbit_ids(action), rtol=0, atol=0)


def test_refusals():
    bn, projection = _bn_in_E(2)
    with pytest.raises(ValueError, match=r"BatchNorm2d\(8\) got orbit ids for 4 channels"):
        PooledBatchNormForward(bn, torch.zeros(4, dtype=torch.long))
    pool_batch_statistics(projection)
    with pytest.raises(
        ValueError, match=r"BatchNorm2d\(8\) expects \(N, 8, ...\) inputs, got \(2, 4, 3, 3\)"
    ):
        bn(torch.randn(2, 4, 3, 3))
    bn(torch.randn(1, 8, 1, 1))  # one value per channel, but four per regular field: fine
    scalars = nn.Sequential(nn.BatchNorm2d(2))
    pool_batch_statistics(SymmetrySpec(G).norm("0", fields="trivial").bind(scalars))
    with pytest.raises(ValueError, match="expected more than 1 value per field in training"):
        scalars(torch.randn(1, 2, 1, 1))


class _TrainModeProbe(L.Callback):
    """During the fit, the model in training mode: per-sample quarter turns leave the output unchanged."""

    def __init__(self) -> None:
        self.errors: list[float] = []
        self.patched: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        x = batch[0] + torch.linspace(0, 1, batch[0].shape[-1])  # not symmetric
        k = torch.arange(x.shape[0]) % 4
        gx = torch.stack([torch.rot90(xi, int(ki), (-2, -1)) for xi, ki in zip(x, k, strict=True)])
        with torch.no_grad():
            y, gy = pl_module(x), pl_module(gx)
        self.errors.append(float((gy - y).norm() / y.norm()))
        self.patched.append("forward" in pl_module.net[1].__dict__)


@pytest.mark.parametrize("pool", [True, False])
def test_equi_callback_pools_batch_norm_during_the_fit_only(quiet_trainer, pool):
    L.seed_everything(0, verbose=False)
    model = BoringEquiModel(channels=8, size=6, n_samples=32, batch_size=8)
    probe = _TrainModeProbe()
    quiet_trainer([EquivariantProjection(pool_batch_stats=pool), probe], max_steps=6).fit(model)
    assert probe.patched == [pool] * 6
    if pool:
        assert max(probe.errors) < 1e-5, probe.errors
    else:  # per-channel batch statistics: training mode is not invariant per sample
        assert min(probe.errors) > 1e-4, probe.errors
    assert "forward" not in model.net[1].__dict__  # the fit is over: the layer's own forward again


def test_pool_batch_stats_must_be_a_bool():
    with pytest.raises(MisconfigurationException, match="`pool_batch_stats` must be a bool, got 'yes'"):
        EquivariantProjection(pool_batch_stats="yes")


_SYNC_SCRIPT = """
import gc, sys, weakref
import torch, torch.distributed as dist, torch.multiprocessing as mp
from torch import nn
from lightning_equi.subspace import SymmetrySpec, pool_batch_statistics

def run(rank, out):
    # rendezvous through a file in the test's own tmp_path: no TCP port to pick, share or race for
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=2)
    world = weakref.ref(dist.group.WORLD)
    torch.manual_seed(0)
    x = torch.randn(6, 8, 3, 3) * 2 + torch.arange(8.0)[:, None, None]  # the global batch
    mine = x[3 * rank : 3 * rank + 3].clone().requires_grad_(True)
    bn = nn.SyncBatchNorm(8, momentum=0.5)
    pool_batch_statistics(SymmetrySpec("C4").norm("0", fields="regular").bind(nn.Sequential(bn)))
    y = bn(mine)
    (y.square() * torch.arange(8.0)[:, None, None]).sum().backward()
    # the reference: InnerBatchNorm (BatchNorm3d over fields) on the whole batch, in one process
    ref = nn.BatchNorm3d(2, momentum=0.5)
    xr = x.reshape(6, 2, 4, 3, 3).clone().requires_grad_(True)
    yr = ref(xr).reshape(6, 8, 3, 3)
    (yr.square() * torch.arange(8.0)[:, None, None]).sum().backward()
    part = slice(3 * rank, 3 * rank + 3)
    ok = [
        torch.allclose(y, yr[part], atol=1e-5),
        torch.allclose(bn.running_mean, ref.running_mean.repeat_interleave(4), atol=1e-6),
        torch.allclose(bn.running_var, ref.running_var.repeat_interleave(4), atol=1e-5),
        torch.allclose(mine.grad, xr.grad.reshape(6, 8, 3, 3)[part], atol=1e-4),
    ]
    dist.destroy_process_group()
    # the pooled layer must not keep the process group alive: a group that outlives
    # destroy_process_group keeps its gloo worker threads running into interpreter shutdown,
    # where they abort the process
    gc.collect()
    with open(f"{out}/rank{rank}.txt", "w") as f:
        f.write(" ".join(str(v) for v in ok) + f" released={world() is None}")

if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1],), nprocs=2)
"""


def test_sync_batch_norm_pools_over_the_global_batch(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "sync_bn.py"
    script.write_text(_SYNC_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):  # output, running statistics, input gradient: as one process on the whole batch;
        # and the process group freed by destroy_process_group
        assert (tmp_path / f"rank{rank}.txt").read_text() == "True True True True released=True"


def test_mixed_fields_pool_each_orbit_separately():
    """Scalar + regular fields (the general path): per-channel statistics for the scalar, pooled ones
    for each regular field, as two reference batch norms would compute them."""
    rho = trivial(G) + regular(G) * 2  # channels: [scalar, field 1 (4), field 2 (4)]
    bn = nn.BatchNorm2d(9, momentum=0.2)
    net = nn.Sequential(bn)
    projection = SymmetrySpec(G).norm("0", fields=rho).bind(net)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_()
    projection.project_parameters_()
    pooled = pool_batch_statistics(projection)
    assert pooled.installed["0"].forward.block is None  # not one block size: the general path
    scalar, fields = nn.BatchNorm2d(1, momentum=0.2), nn.BatchNorm3d(2, momentum=0.2)
    with torch.no_grad():
        scalar.weight.copy_(bn.weight[:1]), scalar.bias.copy_(bn.bias[:1])
        fields.weight.copy_(bn.weight[1::4]), fields.bias.copy_(bn.bias[1::4])
    for _ in range(2):
        x = (torch.randn(4, 9, 5, 5) * torch.linspace(1, 3, 9)[:, None, None]).requires_grad_(True)
        y = bn(x)
        ref = torch.cat([scalar(x[:, :1]), fields(x[:, 1:].reshape(4, 2, 4, 5, 5)).reshape(4, 8, 5, 5)], 1)
        torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
        gx = torch.autograd.grad((y * torch.arange(9.0)[:, None, None]).square().sum(), x)[0]
        gref = torch.autograd.grad((ref * torch.arange(9.0)[:, None, None]).square().sum(), x)[0]
        torch.testing.assert_close(gx, gref, atol=1e-3, rtol=1e-4)
    expected = torch.cat([scalar.running_var, fields.running_var.repeat_interleave(4)])
    torch.testing.assert_close(bn.running_var, expected, atol=1e-6, rtol=1e-6)
    assert projection.is_equivariant(atol=1e-6)
