"""The batched whole-model projection: the same projection as tensor by tensor (against the group
average in float64), bit for bit on E, a fixed number of kernels whatever the depth, and the orbit
tables of slices that the sharded path uses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_equi.groups import CyclicGroup, DihedralGroup, grid_representation, regular, trivial
from lightning_equi.subspace import (
    BasisProjector,
    OrbitMeanProjector,
    SymmetrySpec,
    TensorAction,
    group_average,
)
from lightning_equi.subspace.batched import BatchedProjection, OrbitTables, count_kernels


def cnn(depth: int, width: int = 8) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3)]
    return nn.Sequential(*layers)


def bind(model: nn.Sequential, group: str = "C4"):
    head = len(model) - 1
    return (
        SymmetrySpec(group)
        .layers(nn.Conv2d, fields="regular")
        .layer("0", in_fields="trivial", out_fields="regular")
        .layer(str(head), in_fields="regular", out_fields="trivial")
        .bind(model)
    )


def conv_action(group, c_out: int, c_in: int, k: int = 3) -> TensorAction:
    n = group.order
    return TensorAction(
        (c_out, c_in, k, k),
        [
            (regular(group) * (c_out // n), 1),
            (regular(group) * (c_in // n), 1),
            (grid_representation(group, (k, k)), 2),
        ],
    )


@pytest.mark.parametrize("group", ["C4", "D4"])
def test_batched_matches_the_group_average(group):
    torch.manual_seed(0)
    model = cnn(3, width=8 if group == "C4" else 16).double()
    projection = bind(model, group)
    tensors = [e.tensor.detach().clone() for e in projection.entries]
    expected = []
    for e, t in zip(projection.entries, tensors, strict=True):
        expected.append(group_average(e.projector.action, t))  # the independent reference
    BatchedProjection([e.projector for e in projection.entries]).project_(tensors)
    for e, t, x in zip(projection.entries, tensors, expected, strict=True):
        assert torch.allclose(t, x, atol=1e-12), e.name


def test_model_projection_projects_like_each_projector():
    torch.manual_seed(1)
    model = cnn(2)
    projection = bind(model)
    for e in projection.parameters:
        e.tensor.grad = torch.randn_like(e.tensor)
    grads = [e.projector.project(e.tensor.grad) for e in projection.parameters]
    weights = [e.projector.project(e.tensor.detach()) for e in projection.entries]
    projection.project_gradients_()
    for e, g in zip(projection.parameters, grads, strict=True):
        torch.testing.assert_close(e.tensor.grad, g, rtol=0, atol=1e-6)
    projection.project_parameters_()
    for e, w in zip(projection.entries, weights, strict=True):
        torch.testing.assert_close(e.tensor.detach(), w, rtol=0, atol=1e-6)
    assert projection.is_equivariant(1e-5)


def test_a_model_in_E_comes_back_bit_for_bit():
    model = cnn(3)
    projection = bind(model)
    projection.project_parameters_()
    before = [e.tensor.detach().clone() for e in projection.entries]
    projection.project_parameters_()
    assert all(torch.equal(a, e.tensor) for a, e in zip(before, projection.entries, strict=True))


@pytest.mark.parametrize("depth", [2, 6])
def test_the_number_of_kernels_does_not_grow_with_depth(depth):
    model = cnn(depth)
    projection = bind(model)
    assert {e.projector.kind for e in projection.entries} == {"orbit-mean"}
    projection.project_parameters_()  # builds the index tables
    counts = count_kernels(projection.project_parameters_)
    assert sum(counts.values()) <= 10, counts
    assert counts["_foreach_copy_"] == 1 and counts["cat"] == 1  # one buffer in, one multi-tensor copy out
    # tensor by tensor, the count grows with the model
    per_tensor = count_kernels(lambda: [e.projector.project_(e.tensor) for e in projection.entries])
    assert sum(per_tensor.values()) >= 6 * len(projection.entries)


def test_index_tables_are_int32_and_groups_split_by_dtype_and_size():
    G = CyclicGroup(4)
    proj = OrbitMeanProjector(conv_action(G, 8, 8))
    a, b = torch.randn(proj.shape), torch.randn(proj.shape, dtype=torch.float64)
    c = torch.randn(proj.shape, dtype=torch.bfloat16)
    expected = [group_average(proj.action, t.double()) for t in (a, b, c)]
    batched = BatchedProjection([proj, proj, proj])
    batched.project_([a, b, c])
    plan = batched._plan([a, b, c])
    assert len(plan) == 3 and all(group.ids.dtype == torch.int32 for _, group in plan)
    torch.testing.assert_close(a.double(), expected[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(b, expected[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(c.double(), expected[2], rtol=0, atol=2e-2)  # bfloat16 storage
    x, y = torch.randn(proj.shape), torch.randn(proj.shape)
    want = [proj.project(x), proj.project(y)]
    small = BatchedProjection([proj, proj], max_numel=proj.shape.numel())
    small.project_([x, y])
    assert len(small._plan([x, y])) == 2
    torch.testing.assert_close(x, want[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(y, want[1], rtol=0, atol=1e-6)


def test_other_projectors_and_skipped_positions():
    from lightning_equi.groups import SO2, irrep

    S = SO2()
    fields = trivial(S) + irrep(S, 1)
    basis = BasisProjector(TensorAction((6, 6), [(fields * 2, 1), (fields * 2, 1)]))
    orbit = OrbitMeanProjector(conv_action(CyclicGroup(4), 4, 4))
    w, v = torch.randn(6, 6), torch.randn(orbit.shape)
    want = basis.project(w), orbit.project(v)
    BatchedProjection([basis, None, orbit]).project_([w, None, v])
    torch.testing.assert_close(w, want[0])
    torch.testing.assert_close(v, want[1], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="without a projector"):
        BatchedProjection([None]).project_([w])
    with pytest.raises(ValueError, match="has shape"):
        BatchedProjection([orbit]).project_([torch.zeros(2, 2)])
    with pytest.raises(ValueError, match="got 1 tensors for 2"):
        BatchedProjection([orbit, orbit]).project_([v])


def test_slices_that_hold_whole_orbits_project_on_their_own():
    G = DihedralGroup(4)  # regular fields of 8 channels
    proj = OrbitMeanProjector(conv_action(G, 16, 8))
    tables = OrbitTables.of(proj)
    w = torch.randn(proj.shape, dtype=torch.float64)
    full = proj.project(w)
    for start, stop in [(0, 8), (8, 16), (0, 16), (16, 16)]:
        piece = tables.narrow(0, start, stop)
        assert piece is not None
        part = w[start:stop].clone()
        BatchedProjection([piece]).project_([part])
        torch.testing.assert_close(part, full[start:stop], rtol=0, atol=1e-12)
        assert torch.allclose(piece.projector().project(w[start:stop]), full[start:stop])
    assert tables.narrow(0, 0, 4) is None and tables.narrow(0, 4, 12) is None  # fields split
    # the kernel axes are mixed by rotations: no slice of them holds whole orbits
    assert tables.narrow(2, 0, 2) is None
    # the input axis: chunks of whole input fields hold whole orbits
    piece = tables.narrow(1, 0, 8)
    assert piece is not None and piece.numel == proj.shape.numel()
    with pytest.raises(ValueError, match="no slice 0:20 of axis 0"):
        tables.narrow(0, 0, 20)


def test_count_kernels_skips_views_and_casts():
    x = torch.randn(4, 4)
    counts = count_kernels(lambda: x.view(16).double().t().sum())
    assert dict(counts) == {"sum": 1}


# ---- no host-device synchronisation in the hot paths ------------------------------------------------


def _bn_model(momentum):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8, momentum=momentum))
    spec = SymmetrySpec("C4").layer("0", "trivial", "regular").layer("1", "regular", "regular")
    return model, spec.bind(model)


def test_pooled_batchnorm_cumulative_average_without_reading_the_count():
    """``momentum=None`` (the recalibration's cumulative average) is updated by tensor arithmetic:
    against the hand-computed average of each batch's field statistics (unbiased variances)."""
    from lightning_equi.subspace import pool_batch_statistics

    model, projection = _bn_model(None)
    projection.project_parameters_()
    pool_batch_statistics(projection)
    model.train()
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(4, 1, 6, 6, generator=g) for _ in range(3)]
    means, variances = [], []
    for x in batches:
        h = model[0](x).detach().reshape(4, 2, 4, -1)  # (batch, field, channel in field, position)
        means.append(h.mean(dim=(0, 2, 3)))
        variances.append(h.transpose(0, 1).reshape(2, -1).var(dim=1))
        model(x)
    bn = model[1]
    assert int(bn.num_batches_tracked) == 3
    expected_mean = torch.stack(means).mean(0).repeat_interleave(4)
    expected_var = torch.stack(variances).mean(0).repeat_interleave(4)
    torch.testing.assert_close(bn.running_mean, expected_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, expected_var, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hot_paths_do_not_synchronise_with_the_device():
    """Projection (gradients, weights, buffers), the pooled BatchNorm forward and backward, and the
    augmentation of a batch from a CPU generator, under ``set_sync_debug_mode("error")``."""
    from lightning_equi.actions import ImageAction, augment
    from lightning_equi.subspace import pool_batch_statistics

    for momentum in (0.1, None):
        model, projection = _bn_model(momentum)
        model.cuda()
        projection.project_parameters_()  # builds the index tables (setup work may synchronise)
        pool_batch_statistics(projection)
        x = torch.randn(8, 1, 10, 10, device="cuda")
        model(x).sum().backward()
        projection.project_gradients_()
        gen = torch.Generator().manual_seed(0)
        augment(x, "C4", ImageAction("C4"), generator=gen)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(x).square().mean().backward()
            projection.project_gradients_()
            projection.project_parameters_()
            projection.project_buffers_()
            augment(x, "C4", ImageAction("C4"), generator=gen)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


def test_cpu_buffers_are_cache_sized_and_one_buffer_on_request():
    from lightning_equi.subspace.batched import CPU_NUMEL, MAX_NUMEL

    proj = OrbitMeanProjector(conv_action(CyclicGroup(4), 64, 64))  # 36864 entries each
    tensors = [torch.randn(proj.shape) for _ in range(4)]
    expected = [proj.project(t) for t in tensors]
    default, whole = BatchedProjection([proj] * 4), BatchedProjection([proj] * 4, max_numel=MAX_NUMEL)
    assert [len(m) for m, _ in default._plan(tensors)] == [3, 1]  # 3 * 36864 <= CPU_NUMEL < 4 * 36864
    assert 3 * proj.shape.numel() <= CPU_NUMEL < 4 * proj.shape.numel()
    assert len(whole._plan(tensors)) == 1
    whole.project_(tensors)
    assert sum(count_kernels(lambda: whole.project_(tensors)).values()) == 9
    for t, x in zip(tensors, expected, strict=True):
        torch.testing.assert_close(t, x, rtol=0, atol=1e-6)
