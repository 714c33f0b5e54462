"""Dense-equi against escnn-native (issue 7, item 4; issue 5's set-up and memory limits).

* Training step (forward + backward + SGD step, batch 64 of 1x29x29) of one steerable CNN in escnn's
  own parameterisation (the basis is expanded at every training forward) against the dense weights
  of :func:`~lightning_equi.adapters.escnn_convert.to_dense` with the gradient projected onto E before
  the step and the weights re-projected after it. ``subspace="basis"`` gives the same function class
  as escnn; for C4 the default ``"grid"`` E (larger) is timed too. The plain dense step (no
  projection) is the floor.
* Set-up: escnn's construction of the model against ``to_dense`` (dense copy + every projector), with
  the in-memory basis caches of escnn and of the adapters emptied before each build (escnn's joblib
  disk cache stays warm). Issue 5 asks ``to_dense <= 2x`` escnn's construction.
* Memory of the projector of a C8 64->64-channel 5x5 layer: what it stores, and the peak working
  memory of one projection (issue 5: below 10x the layer's own size).
"""

from __future__ import annotations

import statistics
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Table, median_time  # noqa: E402

BATCH, SIZE = 64, 29


class SteerableNet(nn.Module):
    """escnn.md's speed network: R2Conv k7, k5, k5, k3 (4, 8, 8, 8 regular fields), inner batch norm,
    ReLU, max pooling twice, group pooling, spatial mean, a linear head."""

    def __init__(self, n: int) -> None:
        super().__init__()
        from escnn import gspaces
        from escnn import nn as enn

        gs = gspaces.rot2dOnR2(n)
        self.in_type = enn.FieldType(gs, [gs.trivial_repr])
        blocks: list[nn.Module] = []
        prev = self.in_type
        for i, (fields, k) in enumerate(zip((4, 8, 8, 8), (7, 5, 5, 3), strict=True)):
            ft = enn.FieldType(gs, fields * [gs.regular_repr])
            blocks += [enn.R2Conv(prev, ft, k, padding=k // 2), enn.InnerBatchNorm(ft), enn.ReLU(ft)]
            if i in (1, 2):
                blocks.append(enn.PointwiseMaxPool2D(ft, 2))
            prev = ft
        blocks.append(enn.GroupPooling(prev))
        self.features = enn.SequentialModule(*blocks)
        self.head = nn.Linear(self.features.out_type.size, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(self.in_type(x)).tensor.mean(dim=(-2, -1)))


def _example_model() -> nn.Module:
    """The steerable CNN of ``examples/escnn_digits.py`` (C4)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from escnn_digits import SteerableCNN

    return SteerableCNN("C4")


def _train_step(model: nn.Module, x: Tensor, y: Tensor, projection: Any = None) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if projection is not None:
            projection.project_gradients_()
        opt.step()
        if projection is not None:
            projection.project_parameters_()

    return step


def _interleaved_medians(
    fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 2
) -> dict[str, float]:
    """Median seconds of each function, timed in alternation so that load changes hit all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _clear_basis_caches() -> None:
    """Forget the bases built so far in this process, so the next build is a first build."""
    from escnn.nn.modules.basismanager import basisexpansion_singleblock, basissampler_singleblock

    from lightning_equi.adapters import dense_layers

    basisexpansion_singleblock._stored_filters.clear()
    basissampler_singleblock._stored_filters.clear()
    dense_layers._PROJECTORS.clear()
    dense_layers._BASES.clear()


def _setup_times(
    build: Callable[[], nn.Module], repeats: int = 5, invariant: tuple[str, ...] = ("head",)
) -> tuple[float, float]:
    """Median seconds of escnn's construction and of ``to_dense`` (each after emptying the caches)."""
    from lightning_equi.adapters import to_dense

    t_escnn, t_dense = [], []
    build()  # groups, irreps, disk cache: one-time costs outside both measurements
    for _ in range(repeats):
        _clear_basis_caches()
        start = time.perf_counter()
        model = build()
        t_escnn.append(time.perf_counter() - start)
        _clear_basis_caches()
        start = time.perf_counter()
        to_dense(model, invariant=list(invariant))
        t_dense.append(time.perf_counter() - start)
    return sorted(t_escnn)[repeats // 2], sorted(t_dense)[repeats // 2]


class _PeakMemory(TorchDispatchMode):
    """Peak bytes of tensor storages allocated by torch ops while active (each storage counted once)."""

    def __init__(self) -> None:
        super().__init__()
        self.live, self.peak, self._seen = 0, 0, {}

    def _free(self, ptr: int, nbytes: int) -> None:
        self._seen.pop(ptr, None)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, Tensor):
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr and ptr not in self._seen:
                    self._seen[ptr] = storage.nbytes()
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, ptr, storage.nbytes())
        return out


def _stored_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of the distinct tensor storages reachable from ``obj``'s attributes (lists, dicts, tuples)."""
    seen = set() if seen is None else seen
    if isinstance(obj, Tensor):
        storage = obj.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(obj, dict):
        return sum(_stored_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_stored_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return sum(_stored_bytes(v, seen) for v in vars(obj).values())
    return 0


def _memory_rows(table: Table) -> None:
    from escnn import gspaces
    from escnn import nn as enn

    from lightning_equi.adapters import to_dense

    gs = gspaces.rot2dOnR2(8)
    ft = enn.FieldType(gs, 8 * [gs.regular_repr])
    conv = enn.R2Conv(ft, ft, 5, padding=2, initialize=False)
    _, projection = to_dense(enn.SequentialModule(conv))
    proj = projection.entries[0].projector
    w = torch.randn(proj.shape)
    layer = w.numel() * w.element_size()
    proj.project(w)  # builds the float32 copies it keeps
    with _PeakMemory() as mem:
        out = proj.project(w)
    del out
    stored = _stored_bytes(proj)
    dense_p = w.numel() ** 2 * w.element_size()
    t = median_time(lambda: proj.project_(w), repeats=20)
    table.notes.append(
        f"projector of a C8 64->64 5x5 layer ({w.numel()} weights, {layer / 1024:.0f} KiB, "
        f"dim E {proj.dim}): "
        f"stores {stored / 1024:.0f} KiB ({stored / layer:.2f}x the layer), peak working memory of one "
        f"projection {mem.peak / 1024:.0f} KiB ({mem.peak / layer:.2f}x; issue 5 limit 10x), "
        f"{1e3 * t:.2f} ms per projection; a dense P x P matrix would take {dense_p / 2**30:.0f} GiB"
    )


def bench_escnn(repeats: int = 15) -> Table:
    """Step time of dense-equi against escnn-native, set-up time, and projector memory."""
    from lightning_equi.adapters import to_dense

    table = Table(
        "Dense weights + projection against escnn's basis expansion "
        f"(training step, batch {BATCH}x1x{SIZE}x{SIZE})",
        [
            "model",
            "E",
            "dim E / dense",
            "escnn step (ms)",
            "dense step (ms)",
            "dense + projection (ms)",
            "equi / escnn",
            "equi / dense",
        ],
        notes=[
            "step = forward + backward + SGD (momentum) step; escnn: coefficients, basis expanded every "
            "forward; dense: the filters of to_dense, no projection (the floor); dense + projection: "
            "gradient projected onto E before the step and weights re-projected after it",
            "E = 'basis': span of escnn's basis (the same function class as escnn); 'grid': all filters "
            "fixed by the group acting on the grid (C4 only; larger than escnn's)",
        ],
    )
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 1, SIZE, SIZE, generator=generator)
    y = torch.randint(10, (BATCH,), generator=generator)
    for n, subspaces in ((4, ("basis", "grid")), (8, ("basis",))):
        torch.manual_seed(0)
        net = SteerableNet(n).train()
        coefficients = sum(p.numel() for p in net.parameters())
        dense, _ = to_dense(net, invariant=["head"])
        steps = {"escnn": _train_step(net, x, y), "dense": _train_step(dense.train(), x, y)}
        dims = {}
        for sub in subspaces:
            model, projection = to_dense(net, subspace=sub, invariant=["head"])
            steps[sub] = _train_step(model.train(), x, y, projection)
            dims[sub] = f"{projection.dim}/{projection.numel}"
        t = _interleaved_medians(steps, repeats)
        for sub in subspaces:
            table.add(
                f"C{n} ({coefficients} coefficients)",
                sub,
                dims[sub],
                1e3 * t["escnn"],
                1e3 * t["dense"],
                1e3 * t[sub],
                t[sub] / t["escnn"],
                t[sub] / t["dense"],
            )
    table.notes += setup_notes()
    _memory_rows(table)
    return table


def _escnn_style_models() -> list[tuple[str, Callable[[], nn.Module], tuple[str, ...]]]:
    """The networks in escnn's own style of ``tests/test_escnn_models.py`` (issue 13)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    try:
        import test_escnn_models as models
    finally:
        sys.path.pop(0)
    return [
        ("C8 tutorial-style (MaskModule, antialiased pooling)", models.C8Tutorial, ("fully_net",)),
        ("e2wrn-style D4 -> C4 (RestrictionModule)", models.E2WRNStyle, ("head",)),
        ("C4 U-Net (R2ConvTransposed)", models.C4UNet, ()),
        ("SO(2) irreps (gated, norm, IID batch norm)", models.SO2Irreps, ()),
        ("SO(3) R3Conv, gated", models.SO3Gated, ()),
    ]


def setup_notes() -> list[str]:
    """to_dense's set-up time against escnn's construction, per model (issue 5 and 13: at most 2x)."""
    builds = [
        ("example C4 (examples/escnn_digits.py)", _example_model, ("head",)),
        ("C4 speed net", lambda: SteerableNet(4), ("head",)),
        ("C8 speed net", lambda: SteerableNet(8), ("head",)),
        *_escnn_style_models(),
    ]
    notes = []
    for label, build, invariant in builds:
        t_build, t_to_dense = _setup_times(build, invariant=invariant)
        notes.append(
            f"set-up, {label}: escnn construction {1e3 * t_build:.0f} ms, to_dense (dense copy and every "
            f"projector) {1e3 * t_to_dense:.0f} ms, ratio {t_to_dense / t_build:.2f} (limit 2)"
        )
    return notes


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", ".*py3nj.*")
    torch.set_num_threads(2)
    if "--setup" in sys.argv:  # only the set-up times (a few seconds)
        print("\n".join(setup_notes()))
    else:
        print(bench_escnn().markdown())
