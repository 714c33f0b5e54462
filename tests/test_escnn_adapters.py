"""escnn steerable layers in the dense parameter space: projectors, conversions and escnn's traps."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import time
import warnings
import weakref

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

escnn = pytest.importorskip("escnn")
from escnn import group as egroup  # noqa: E402
from escnn import gspaces  # noqa: E402
from escnn import nn as enn  # noqa: E402

from lightning_equi.adapters.dense_layers import DenseLinear, DenseR2Conv  # noqa: E402
from lightning_equi.adapters.escnn_convert import escnn_spec, to_dense, to_escnn  # noqa: E402
from lightning_equi.adapters.escnn_groups import group_from_escnn  # noqa: E402
from lightning_equi.adapters.escnn_lint import GridLintWarning, grid_lint  # noqa: E402
from lightning_equi.adapters.escnn_projectors import (  # noqa: E402
    escnn_basis_projector,
    grid_projector,
    type_representation,
)
from lightning_equi.groups import grid_representation  # noqa: E402
from lightning_equi.subspace import resolve_spec  # noqa: E402
from lightning_equi.subspace.base import TensorAction, group_average  # noqa: E402

warnings.filterwarnings("ignore", message=".*py3nj.*")


def _gspace(name: str):
    return {"C4": lambda: gspaces.rot2dOnR2(4), "D4": lambda: gspaces.flipRot2dOnR2(4)}[name]()


def _field(gs, kind: str):
    G = gs.fibergroup
    if kind == "trivial":
        return gs.trivial_repr
    if kind == "regular":
        return gs.regular_repr
    # C4: C4/C2 (2-dim); D4: D4/flips (4-dim)
    return G.quotient_representation(2) if G.order() == 4 else G.quotient_representation((0, 1))


def _escnn_group_average(in_type, out_type, w: torch.Tensor) -> torch.Tensor:
    """Independent reference: escnn's own exact 90-degree/flip transform and escnn's matrices."""
    gs = in_type.gspace
    o, i, k, _ = w.shape
    scalar = enn.FieldType(gs, [gs.trivial_repr])
    acc = torch.zeros_like(w, dtype=torch.float64)
    for g in gs.fibergroup.elements:
        wg = scalar(w.double().reshape(o * i, 1, k, k)).transform(g).tensor.reshape(o, i, k, k)
        ro = torch.as_tensor(out_type.representation(g), dtype=torch.float64)
        ri_inv = torch.as_tensor(in_type.representation(~g), dtype=torch.float64)
        acc += torch.einsum("ab,bcxy,cd->adxy", ro, wg, ri_inv)
    return acc / gs.fibergroup.order()


# ---- 1. the grid projector is the group average ---------------------------------------------------


@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("kind", ["trivial", "regular", "quotient"])
@pytest.mark.parametrize("gname", ["C4", "D4"])
def test_grid_projector_is_the_group_average(gname, kind, kernel):
    gs = _gspace(gname)
    in_type = enn.FieldType(gs, [_field(gs, kind)])
    out_type = enn.FieldType(gs, [gs.regular_repr, _field(gs, kind), gs.trivial_repr])
    conv = enn.R2Conv(in_type, out_type, kernel, padding=kernel // 2)
    dense, projection = to_dense(enn.SequentialModule(conv))
    (entry,) = [e for e in projection.entries if e.name == "0.weight"]
    proj = entry.projector
    assert entry.projector.kind == "orbit-mean"  # permutation fields: one scatter-mean
    w = torch.randn(
        out_type.size, in_type.size, kernel, kernel, generator=torch.Generator().manual_seed(kernel)
    )
    got = proj.project(w.double())
    group = group_from_escnn(gs)
    action = TensorAction(
        w.shape,
        [
            (type_representation(group, out_type), 1),
            (type_representation(group, in_type), 1),
            (grid_representation(group, (kernel, kernel)), 2),
        ],
    )
    torch.testing.assert_close(got, group_average(action, w.double()), atol=1e-12, rtol=0)
    torch.testing.assert_close(got, _escnn_group_average(in_type, out_type, w), atol=1e-12, rtol=0)
    # escnn's expanded filter (the dense layer's start) is a fixed point: basis within grid E
    w0 = dense[0].weight.detach().double()
    assert (proj.project(w0) - w0).norm() <= 1e-6 * w0.norm()


# ---- 2. the adapted model in E is equivariant to every element ------------------------------------


def _act_on_image(gname: str, idx: int, x: torch.Tensor) -> torch.Tensor:
    f, k = (idx // 4, idx % 4) if gname == "D4" else (0, idx)
    if f:
        x = torch.flip(x, (-1,))
    return torch.rot90(x, k, dims=(-2, -1))


def _escnn_element(gs, gname: str, idx: int):
    G = gs.fibergroup
    return G.element((idx // 4, idx % 4)) if gname == "D4" else G.element(idx)


@pytest.mark.parametrize("gname", ["C4", "D4"])
def test_dense_model_in_E_is_equivariant_for_every_element(gname):
    gs = _gspace(gname)
    t0 = enn.FieldType(gs, [gs.trivial_repr])
    t1 = enn.FieldType(gs, [gs.regular_repr, _field(gs, "quotient"), gs.trivial_repr])
    t2 = enn.FieldType(gs, 2 * [gs.regular_repr])
    net = enn.SequentialModule(
        enn.R2Conv(t0, t1, 5, padding=2),
        enn.ReLU(t1),
        enn.R2Conv(t1, t2, 3, padding=1, padding_mode="circular"),
    )
    dense, projection = to_dense(net)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # leave E, then project back as Equi mode does
        for p in dense.parameters():
            p.add_(torch.randn(p.shape, generator=gen))
    assert projection.total_distance() > 1e-2
    projection.project_parameters_()
    assert projection.is_equivariant(atol=1e-5)
    # one projected SGD step stays in E
    x = torch.randn(4, 1, 11, 11, generator=gen)
    dense(t0(x)).tensor.square().sum().backward()
    projection.project_gradients_()
    with torch.no_grad():
        for p in dense.parameters():
            p.sub_(0.1 * p.grad)
    assert projection.is_equivariant(atol=1e-5)
    with torch.no_grad():
        y = dense(t0(x)).tensor.double()
        for idx in range(gs.fibergroup.order()):
            g = _escnn_element(gs, gname, idx)
            rho = torch.as_tensor(t2.representation(g), dtype=torch.float64)
            lhs = dense(t0(_act_on_image(gname, idx, x))).tensor.double()
            rhs = torch.einsum("ab,nbxy->naxy", rho, _act_on_image(gname, idx, y))
            assert (lhs - rhs).norm() <= 1e-5 * rhs.norm(), idx


# ---- 3. the basis projector for C8 and SO(2) -------------------------------------------------------


def _dense_basis(layer) -> torch.Tensor:
    """escnn's basis as dense filters, one unit coefficient at a time (small layers only)."""
    out, w0 = [], layer.weights.data.clone()
    with torch.no_grad():
        for i in range(layer.weights.numel()):
            layer.weights.zero_()
            layer.weights[i] = 1
            out.append(layer.expand_parameters()[0].reshape(-1).double().clone())
        layer.weights.copy_(w0)
    return torch.stack(out, 1)


def _so2_type(gs, n: int):
    return enn.FieldType(gs, n * [gs.irrep(0), gs.irrep(1), gs.irrep(2)])


@pytest.mark.parametrize("gname", ["C8", "SO2"])
def test_basis_projector_is_the_orthogonal_projection_onto_escnn_span(gname):
    if gname == "C8":
        gs = gspaces.rot2dOnR2(8)
        it, ot = (
            enn.FieldType(gs, [gs.trivial_repr, gs.regular_repr]),
            enn.FieldType(gs, 2 * [gs.regular_repr]),
        )
    else:
        gs = gspaces.rot2dOnR2(-1)
        it, ot = _so2_type(gs, 1), _so2_type(gs, 2)
    conv = enn.R2Conv(it, ot, 5, padding=2)
    dense, projection = to_dense(enn.SequentialModule(conv))
    assert dense[0].subspace == "basis"
    with pytest.raises(ValueError, match="no exact grid subspace"):
        to_dense(enn.SequentialModule(conv), subspace="grid")
    proj = projection.entries[0].projector
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(proj.shape, generator=gen, dtype=torch.float64)
    b = torch.randn(proj.shape, generator=gen, dtype=torch.float64)
    pa, pb = proj.project(a), proj.project(b)
    torch.testing.assert_close(proj.project(pa), pa, atol=1e-10, rtol=0)  # idempotent
    torch.testing.assert_close((pa * b).sum(), (a * pb).sum(), atol=1e-9, rtol=0)  # self-adjoint
    basis = _dense_basis(conv)
    for j in range(min(8, basis.shape[1])):  # basis filters are fixed points
        v = basis[:, j].reshape(proj.shape)
        assert (proj.project(v) - v).norm() <= 1e-6 * v.norm()
    v = (basis @ torch.randn(basis.shape[1], generator=gen, dtype=torch.float64)).reshape(proj.shape)
    assert (proj.project(v) - v).norm() <= 1e-6 * v.norm()  # and so are their combinations
    reference = basis @ torch.linalg.pinv(basis) @ a.reshape(-1)  # least-squares onto the dense basis
    torch.testing.assert_close(pa.reshape(-1), reference, atol=1e-6, rtol=0)
    assert proj.dim == torch.linalg.matrix_rank(basis, rtol=1e-5)


# ---- 4. escnn -> dense -> escnn is the same function ------------------------------------------------


def test_round_trip_returns_the_same_function():
    gs = gspaces.rot2dOnR2(4)
    t0 = enn.FieldType(gs, [gs.trivial_repr])
    t1 = enn.FieldType(gs, [gs.regular_repr, gs.irrep(1), gs.fibergroup.quotient_representation(2)])
    t2 = enn.FieldType(gs, 2 * [gs.regular_repr])
    net = enn.SequentialModule(
        enn.R2Conv(t0, t1, 5, padding=2, frequencies_cutoff=1.5),  # a non-default band limit
        enn.IdentityModule(t1),
        enn.R2Conv(t1, t2, 3, padding=1, padding_mode="reflect"),
        enn.InnerBatchNorm(t2),
        enn.ReLU(t2),
        enn.GroupPooling(t2),
    ).eval()
    x = t0(torch.randn(3, 1, 9, 9))
    dense, _ = to_dense(net, subspace="basis")
    back = to_escnn(dense).eval()
    torch.testing.assert_close(dense.eval()(x).tensor, net(x).tensor, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(back(x).tensor, net(x).tensor, atol=1e-5, rtol=1e-5)
    assert back[0].weights.numel() == net[0].weights.numel()  # the same basis, not a richer one
    torch.testing.assert_close(back[0].weights, net[0].weights, atol=1e-5, rtol=1e-4)
    # escnn Linear on SO(2) irreps
    g2 = gspaces.no_base_space(egroup.so2_group())
    lt = enn.FieldType(g2, [g2.irrep(0), g2.irrep(1), g2.irrep(2), g2.irrep(1)])
    mlp = enn.SequentialModule(enn.Linear(lt, lt)).eval()
    dmlp, proj = to_dense(mlp)
    assert isinstance(dmlp[0], DenseLinear) and proj.entries[0].projector.exact
    v = lt(torch.randn(5, lt.size))
    torch.testing.assert_close(to_escnn(dmlp).eval()(v).tensor, mlp(v).tensor, atol=1e-5, rtol=1e-5)


def test_to_escnn_refuses_a_grid_weight_outside_escnn_span():
    gs = gspaces.rot2dOnR2(4)
    ft = enn.FieldType(gs, [gs.regular_repr])
    dense, projection = to_dense(enn.SequentialModule(enn.R2Conv(ft, ft, 5)), subspace="grid")
    with torch.no_grad():
        dense[0].weight.add_(torch.randn(dense[0].weight.shape))
    projection.project_parameters_()  # in the grid E, not in escnn's smaller span
    with pytest.raises(ValueError, match="not in span"):
        to_escnn(dense)
    with pytest.warns(UserWarning, match="not in span"):
        to_escnn(dense, strict=False)


# ---- 5. errors --------------------------------------------------------------------------------------


class _Mixed(enn.EquivariantModule):
    def __init__(self, gs):
        super().__init__()
        self.in_type = enn.FieldType(gs, [gs.trivial_repr])
        self.out_type = enn.FieldType(gs, [gs.regular_repr])
        self.steer = enn.R2Conv(self.in_type, self.out_type, 3)
        self.plain_conv = nn.Conv2d(4, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.steer(x)

    def evaluate_output_shape(self, input_shape):
        return input_shape


def test_a_module_escnn_cannot_describe_is_named():
    m = _Mixed(gspaces.rot2dOnR2(4))
    with pytest.raises(ValueError, match=r"plain_conv \(torch\.nn\.modules\.conv\.Conv2d\)"):
        to_dense(m)
    dense, projection = to_dense(m, invariant=["plain_conv", "head"])
    assert set(projection.free_names) == {"plain_conv.weight", "plain_conv.bias", "head.weight", "head.bias"}
    with pytest.raises(ValueError, match="subspace must be one of"):
        to_dense(m, subspace="exact", invariant=["plain_conv", "head"])
    with pytest.raises(ValueError, match="holds no dense escnn layer"):
        escnn_spec(nn.Linear(2, 2))


# ---- 6. escnn's traps -------------------------------------------------------------------------------


def test_trap_default_basis_is_a_strict_subspace_of_the_grid_E(capsys):
    gs = gspaces.rot2dOnR2(4)
    ft = enn.FieldType(gs, [gs.regular_repr])
    conv = enn.R2Conv(ft, ft, 5)
    basis, grid = escnn_basis_projector(conv), grid_projector(ft, ft, 5)
    assert (basis.dim, grid.dim, conv.weights.numel()) == (44, 100, 44)
    w = torch.randn(4, 4, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    pb, pg = basis.project(w), grid.project(w)
    torch.testing.assert_close(grid.project(pb), pb, atol=1e-6, rtol=0)  # span(basis) within grid E
    gap = float((pg - pb).norm() / pg.norm())
    assert gap > 0.3  # they differ a lot on a random filter
    with capsys.disabled():
        print(
            f"\n[C4 reg->reg 5x5] dim grid E = {grid.dim}, dim basis E = {basis.dim}, "
            f"||Pi_grid w - Pi_basis w|| / ||Pi_grid w|| = {gap:.3f}"
        )


def test_trap_padding_mode_is_kept():
    gs = gspaces.rot2dOnR2(4)
    ft = enn.FieldType(gs, [gs.regular_repr])
    conv = enn.R2Conv(ft, ft, 3, padding=1, padding_mode="circular").eval()
    x = ft(torch.randn(2, 4, 8, 8))
    dense = DenseR2Conv(conv)
    torch.testing.assert_close(dense(x).tensor, conv(x).tensor, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(dense.export()(x.tensor), conv(x).tensor, atol=1e-6, rtol=1e-6)
    assert dense.export().padding_mode == "circular"
    assert (conv.export()(x.tensor) - conv(x).tensor).abs().max() > 1e-2  # escnn's export drops it


def _small_net(gs):
    t0 = enn.FieldType(gs, [gs.trivial_repr])
    t1 = enn.FieldType(gs, 2 * [gs.regular_repr])
    return enn.SequentialModule(
        enn.R2Conv(t0, t1, 3, padding=1),
        enn.InnerBatchNorm(t1),
        enn.ReLU(t1),
        enn.PointwiseMaxPool2D(t1, 2),
        enn.R2Conv(t1, t1, 3, padding=1),
        enn.GroupPooling(t1),
    )


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_trap_pickle_deepcopy_and_state_dict_in_both_modes(mode):
    net = _small_net(gspaces.rot2dOnR2(4))
    dense, _ = to_dense(net)
    dense.train(mode == "train")
    x = net.in_type(torch.randn(2, 1, 8, 8))
    for clone in (pickle.loads(pickle.dumps(dense)), copy.deepcopy(dense)):
        clone.train(mode == "train")
        torch.testing.assert_close(clone(x).tensor, dense(x).tensor)
        assert clone[0].in_type == dense[0].in_type
    keys = set(dense.state_dict())
    dense.train(mode != "train")
    assert set(dense.state_dict()) == keys
    assert not any("filter" in k or "basis" in k for k in keys)


def test_trap_pickled_dense_model_loads_in_a_fresh_process(tmp_path):
    net = _small_net(gspaces.flipRot2dOnR2(4))
    dense, _ = to_dense(net)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        y = dense.eval()(net.in_type(x)).tensor
    torch.save({"model": dense, "x": x, "y": y}, tmp_path / "m.pt")
    code = (
        "import torch, warnings; warnings.simplefilter('ignore');"
        "from lightning_equi.adapters.escnn_convert import escnn_spec;"
        f"d = torch.load(r'{tmp_path / 'm.pt'}', weights_only=False); m = d['model'];"
        "y = m(m[0].in_type(d['x'])).tensor;"
        "assert torch.allclose(y, d['y'], atol=1e-6), (y - d['y']).abs().max();"
        "p = escnn_spec(m); assert p.is_equivariant(atol=1e-5);"
        "import pickle; assert pickle.loads(pickle.dumps(m))[0].in_type == m[0].in_type;"
        "print('ok', p.dim)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")


def test_trap_shared_bases_do_not_leak_between_models():
    gs = gspaces.rot2dOnR2(4)
    a, b = _small_net(gs), _small_net(gs)  # escnn shares their basis modules (module-level cache)
    da, _ = to_dense(a)
    db, pb = to_dense(b)
    da.double()
    assert all(p.dtype == torch.float32 for p in db.parameters())
    x = b.in_type(torch.randn(1, 1, 8, 8))
    db.eval()(x)  # still runs in float32
    assert all(bool(d < 1e-5) for d in pb.distances().values())
    a.double()  # escnn's own trap: b's basis turned float64 too ...
    try:
        be = b[0].basisexpansion
        pair = be._representations_pairs[0]
        assert getattr(be, f"block_expansion_{be._escape_pair(pair)}").sampled_basis.dtype == torch.float64
        db(x)  # ... but the dense copy of b holds no basis and still works
    finally:
        a.float()  # escnn's cache is process-wide: restore it for the other tests


def test_trap_cold_cache_numpy_draws_are_restored(monkeypatch):
    gs = gspaces.rot2dOnR2(4)
    dense, _ = to_dense(_small_net(gs))
    original = enn.R2Conv.__init__

    def drawing_init(self, *args, **kwargs):  # what a cold Clebsch-Gordan cache does
        np.random.rand(3)  # noqa: NPY002
        original(self, *args, **kwargs)

    monkeypatch.setattr(enn.R2Conv, "__init__", drawing_init)
    np.random.seed(7)  # noqa: NPY002 (escnn draws from the global state)
    expected = np.random.rand()  # noqa: NPY002
    np.random.seed(7)  # noqa: NPY002
    to_escnn(dense)
    assert np.random.rand() == expected  # noqa: NPY002


# ---- 7. grid lint -----------------------------------------------------------------------------------


def test_grid_lint_names_layer_and_exact_size():
    gs = gspaces.rot2dOnR2(4)
    t0, t1 = enn.FieldType(gs, [gs.trivial_repr]), enn.FieldType(gs, [gs.regular_repr])
    net = enn.SequentialModule(
        enn.R2Conv(t0, t1, 3, padding=1, stride=2), enn.ReLU(t1), enn.PointwiseMaxPool2D(t1, 2)
    )
    with pytest.warns(GridLintWarning, match=r"layer '0' .*width 28.*27, 29"):
        grid_lint(net, (28, 28))
    msgs = grid_lint(net, (29, 29), warn=False)
    assert len(msgs) == 1 and "layer '2'" in msgs[0] and "width 15" in msgs[0]  # the pool after it
    assert grid_lint(net, (27, 27), warn=False) == []
    dense, _ = to_dense(net)
    assert grid_lint(dense, (27, 27), warn=False) == []
    assert "exact input sizes: 27, 31" in grid_lint(dense, (28, 28), warn=False)[0]
    assert "square" in grid_lint(net, (27, 29), warn=False)[0]


# ---- 8. scale: memory and time ----------------------------------------------------------------------


class _PeakMemory(TorchDispatchMode):
    """Peak bytes of tensors allocated by torch ops while active (storages counted once, freed on gc)."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self._seen = 0, 0, {}

    def _free(self, ptr, nbytes):
        self._seen.pop(ptr, None)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                ptr = st.data_ptr()
                if ptr and ptr not in self._seen:
                    self._seen[ptr] = st.nbytes()
                    self.live += st.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, ptr, st.nbytes())
        return out


def test_memory_and_time_of_a_c8_64_channel_layer(capsys):
    gs = gspaces.rot2dOnR2(8)
    ft = enn.FieldType(gs, 8 * [gs.regular_repr])
    t = time.perf_counter()
    conv = enn.R2Conv(ft, ft, 5, padding=2, initialize=False)
    t_escnn = time.perf_counter() - t
    t = time.perf_counter()
    dense, projection = to_dense(enn.SequentialModule(conv))
    t_dense = time.perf_counter() - t
    proj = projection.entries[0].projector
    w = torch.randn(64, 64, 5, 5)
    proj.project(w)  # warm the per-dtype cache
    with _PeakMemory() as mem:
        out = proj.project(w)
    del out
    layer_bytes = w.numel() * w.element_size()
    assert mem.peak < 10 * layer_bytes, mem.peak / layer_bytes
    t = time.perf_counter()
    for _ in range(10):
        proj.project(w)
    t_apply = (time.perf_counter() - t) / 10
    with capsys.disabled():
        print(
            f"\n[C8 8reg->8reg 5x5, 64->64 ch] escnn build {t_escnn * 1e3:.0f} ms, "
            f"to_dense {t_dense * 1e3:.0f} ms, "
            f"project {t_apply * 1e3:.2f} ms, peak working memory {mem.peak / layer_bytes:.2f}x the layer "
            f"({layer_bytes / 1024:.0f} KiB), dim E {proj.dim} of {w.numel()}"
        )


def test_escnn_spec_and_resolve_spec_on_a_wrapper():
    class Wrapper(nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def symmetry_spec(self):
            return escnn_spec(self)

    dense, projection = to_dense(_small_net(gspaces.rot2dOnR2(4)))
    wrapped = Wrapper(dense)
    spec = resolve_spec(wrapped)
    assert [e.name for e in spec.entries] == ["body." + e.name for e in projection.entries]
    assert spec.group.name == "C4" and "body.1.batch_norm_[4].weight" in spec.free_names
