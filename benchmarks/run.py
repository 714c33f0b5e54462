"""The benchmark suite: what each piece of lightning_equi costs, as ratios against its floor.

Run with ``./run bench`` (all sections, a few minutes on 2 CPU cores) or
``./run bench --sections projection augmentation``. Writes ``benchmarks/results/report.md`` and
``report.json`` (machine, versions, medians of repeated runs).

Sections:
  step          a training step of a ~1M-parameter C4 CNN in plain Lightning vs. with each callback
  projection    projecting all parameters vs. one elementwise pass over them, per projector type
  augmentation  per-sample exact C4 and interpolated SO(2) augmentation vs. their floors and kornia
  escnn         dense weights + projection vs. escnn's own basis expansion at every step
  inference     inferring the spec of a ResNet-18 by tracing vs. torch.fx tracing alone
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Table, fmt_ratio, kernels, machine, median_time, paired_ratios  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


# ---- the reference model ---------------------------------------------------------------------------


def reference_cnn(width: int = 128) -> nn.Sequential:
    """A C4 CNN of about 1M parameters for 1x28x28 inputs: conv k5 1->32->64->128->128->width."""
    chans = [1, 32, 64, 128, 128, width]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(chans[:-1], chans[1:], strict=False)):
        layers += [nn.Conv2d(a, b, 5, padding=2), nn.BatchNorm2d(b), nn.ReLU()]
        if i in (1, 3):
            layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    return nn.Sequential(*layers)


def reference_spec(model: nn.Sequential, prefix: str = ""):
    from lightning_equi.subspace import SymmetrySpec

    first = next(i for i, m in enumerate(model) if isinstance(m, nn.Conv2d))
    head = len(model) - 1
    return (
        SymmetrySpec("C4")
        .layers(nn.Conv2d, fields="regular")
        .layer(f"{prefix}{first}", in_fields="trivial", out_fields="regular")
        .layer(f"{prefix}{head}", in_fields="regular", out_fields="trivial")
    )


# ---- section: step overhead per mode -------------------------------------------------------------


def bench_step(steps: int = 8, pairs: int = 5, batch: int = 64, device: str = "cpu") -> Table:
    """Step time of each setup against plain Lightning with the same optimizer, as paired ratios.

    Every pair is two short fits run back to back in this process on the same batches (plain, then the
    setup); a pair's ratio is the ratio of the median step times of its two fits, and the table gives
    the median ratio over ``pairs`` pairs with its interquartile range. Kernels per step (aten calls
    that are not views or casts, counted on one step) are the noise-free figure beside the times.
    """
    import statistics
    import time

    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_equi.callbacks import (
        EquivarianceMonitor,
        EquivariantProjection,
        HaarAugmentation,
        RelaxedEquivariance,
    )
    from lightning_equi.subspace.batched import KernelCounter

    warmup = 3

    class Reference(L.LightningModule):
        def __init__(self, optimizer: str = "sgd") -> None:
            super().__init__()
            self.net, self.optimizer = reference_cnn(), optimizer

        def symmetry_spec(self):
            return reference_spec(self.net, prefix="net.")

        def forward(self, x):
            return self.net(x)

        def training_step(self, b, _):
            return nn.functional.cross_entropy(self(b[0]), b[1])

        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)  # the same batches in every fit
            x, y = (
                torch.randn(batch * (steps + warmup), 1, 28, 28, generator=g),
                torch.randint(10, (batch * (steps + warmup),), generator=g),
            )
            return DataLoader(TensorDataset(x, y), batch_size=batch)

        def configure_optimizers(self):
            if self.optimizer == "adam":
                return torch.optim.Adam(self.parameters(), lr=1e-3)
            return torch.optim.SGD(self.parameters(), lr=1e-2, momentum=0.9)

    class Unconstrained(Reference):  # the same network, no symmetry declared
        symmetry_spec = None

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_train_batch_start(self, *args) -> None:
            if device == "cuda":
                torch.cuda.synchronize()
            self.stamps.append(time.perf_counter())

    class StepKernels(L.Callback):  # the kernels of one training step (batch start to batch end)
        def __init__(self) -> None:
            self.counts: list[int] = []
            self.counter: KernelCounter | None = None

        def on_train_batch_start(self, trainer, *args) -> None:
            if trainer.global_step == 1:  # the first step builds index tables and optimizer states
                self.counter = KernelCounter().__enter__()

        def on_train_batch_end(self, *args) -> None:
            if self.counter is not None:
                self.counter.__exit__(None, None, None)
                self.counts.append(sum(self.counter.counts.values()))
                self.counter = None

    def fit(opt: str, callbacks: list, max_steps: int) -> L.Trainer:
        trainer = L.Trainer(
            max_steps=max_steps,
            callbacks=callbacks,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="gpu" if device == "cuda" else "cpu",
            devices=1,
        )
        # augmenting by another group than the spec's is refused: those rows train a model without one
        other = any(isinstance(c, HaarAugmentation) and c.group.name != "C4" for c in callbacks)
        trainer.fit(Unconstrained(opt) if other else Reference(opt))
        return trainer

    def step_time(opt: str, callbacks) -> float:
        timer = StepTimer()
        fit(opt, [timer, *callbacks()], steps + warmup)
        stamps = timer.stamps[warmup:]
        return statistics.median(b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True))

    def step_kernels(opt: str, callbacks) -> int:
        counter = StepKernels()
        fit(opt, [counter, *callbacks()], 3)
        return counter.counts[0]

    setups = {
        "plain Lightning (SGD)": ("sgd", lambda: []),
        "+ HaarAugmentation C4 (exact rot90 per sample)": (
            "sgd",
            lambda: [HaarAugmentation("C4", inputs={0: "image"}, seed=0)],
        ),
        "+ HaarAugmentation SO2 (interpolated per sample)": (
            "sgd",
            lambda: [HaarAugmentation("SO2", inputs={0: "image"}, seed=0)],
        ),
        "+ EquivariantProjection (SGD: gradients)": ("sgd", lambda: [EquivariantProjection()]),
        "plain Lightning (Adam)": ("adam", lambda: []),
        "+ EquivariantProjection (Adam: gradients + weights)": ("adam", lambda: [EquivariantProjection()]),
        "+ RelaxedEquivariance reg (SGD, additive gradient)": (
            "sgd",
            lambda: [RelaxedEquivariance(gamma=1.0, penalty="additive")],
        ),
        "+ RelaxedEquivariance reg (SGD, proximal step)": ("sgd", lambda: [RelaxedEquivariance(gamma=1.0)]),
        "+ RelaxedEquivariance reg (Adam, proximal step)": ("adam", lambda: [RelaxedEquivariance(gamma=1.0)]),
        "+ HaarAugmentation C4 + RelaxedEquivariance (aug+reg, SGD, proximal)": (
            "sgd",
            lambda: [HaarAugmentation("C4", inputs={0: "image"}, seed=0), RelaxedEquivariance(gamma=1.0)],
        ),
        "+ EquivarianceMonitor (every 50 steps)": (
            "sgd",
            lambda: [EquivarianceMonitor(every_n_steps=50)],
        ),
    }
    plain = {"sgd": "plain Lightning (SGD)", "adam": "plain Lightning (Adam)"}
    table = Table(
        f"Training step of the reference C4 CNN ({sum(p.numel() for p in reference_cnn().parameters()):,} "
        f"parameters, batch {batch}x1x28x28, {device}), {pairs} interleaved pairs of fits of {steps} steps",
        ["setup", "step (ms)", "ratio to plain: median [IQR]", "kernels / step", "added kernels"],
        notes=[
            "goal: at most 1.05x plain for projection and monitoring, 1.10x for augmentation, 1.02x for reg",
            "each pair: a fit of plain Lightning with the same optimizer, then a fit with the setup, on the "
            "same batches, in this process; the ratio of their median step times, median and "
            "interquartile range over the pairs",
            "kernels / step: aten calls that are not views or casts in one training step (the second)",
        ],
    )
    base_kernels = {opt: step_kernels(opt, lambda: []) for opt in plain}
    for name, (opt, callbacks) in setups.items():
        if name in plain.values():
            t = statistics.median(step_time(opt, lambda: []) for _ in range(max(1, pairs // 2)))
            table.add(name, 1e3 * t, "1", base_kernels[opt], 0)
            continue
        times: list[float] = []

        def candidate(opt=opt, callbacks=callbacks, times=times) -> float:
            times.append(step_time(opt, callbacks))
            return times[-1]

        q = paired_ratios(lambda opt=opt: step_time(opt, lambda: []), candidate, pairs)
        k = step_kernels(opt, callbacks)
        table.add(name, 1e3 * statistics.median(times), fmt_ratio(q), k, k - base_kernels[opt])
    return table


# ---- section: projection cost vs. its floor ----------------------------------------------------------


def _floor(params: list[torch.Tensor]) -> float:
    @torch.no_grad()
    def one_pass() -> None:
        for p in params:
            p.mul_(1)

    return median_time(one_pass, repeats=15, device=params[0].device)


def _gather_floor(params: list[torch.Tensor]) -> float:
    """One gather pass: ``index_select`` of every tensor by a precomputed index (each entry from its
    neighbour, the most cache-friendly permutation). Any projection that moves entries between
    positions (every orbit mean) does at least this on each tensor."""
    flats = [p.detach().reshape(-1) for p in params]
    index = [torch.arange(f.numel(), device=f.device).roll(1) for f in flats]
    outs = [torch.empty_like(f) for f in flats]

    def one_gather() -> None:
        for f, i, o in zip(flats, index, outs, strict=True):
            torch.index_select(f, 0, i, out=o)

    return median_time(one_gather, repeats=15, device=params[0].device)


def _adam_step(params: list[torch.Tensor]) -> float:
    """One ``torch.optim.Adam`` step (default foreach implementation) over the same tensors."""
    leaves = [p.detach().clone().requires_grad_(True) for p in params]
    for p in leaves:
        p.grad = torch.randn_like(p)
    opt = torch.optim.Adam(leaves, lr=1e-3)
    return median_time(opt.step, repeats=15, device=params[0].device)


def bench_projection(device: str = "cpu", pairs: int = 15) -> Table:
    from lightning_equi.groups import (
        CyclicGroup,
        SymmetricGroup,
        TorusTranslations,
        grid_representation,
        pair_representation,
        regular,
        standard,
    )
    from lightning_equi.subspace import BasisProjector, OrbitMeanProjector, TensorAction
    from lightning_equi.subspace.fourier import FourierProjector
    from lightning_equi.subspace.permutation import SymmetricProjector

    table = Table(
        f"Projection cost against one elementwise pass (`p.mul_(1)`), {device}",
        [
            "projector",
            "layer",
            "parameters",
            "project (ms)",
            "pass (ms)",
            "ratio",
            "gather (ms)",
            "/ gather",
            "kernels",
        ],  # fmt: skip
        notes=[
            "ratio = time of `project_` over all parameters / time of one elementwise pass `p.mul_(1)` "
            "over them (issue 3's goal: a few)",
            "gather = one `index_select` pass over the same tensors with a precomputed index (the most "
            "cache-friendly one): the least any projection that moves entries does; on this CPU one gather "
            "already costs many elementwise passes, because `index_select`/`scatter_add_` are not "
            "vectorised and a pass of `mul_` is",
        ],
    )
    G = CyclicGroup(4)
    for c in (16, 64, 256, 512):  # C4 regular -> regular conv k5: 25 c^2 parameters
        act = TensorAction(
            (c, c, 5, 5),
            [(regular(G) * (c // 4), 1), (regular(G) * (c // 4), 1), (grid_representation(G, (5, 5)), 2)],
        )
        _row(table, OrbitMeanProjector(act), f"C4 conv {c}->{c} k5", device)
    for c in (8, 32):  # torus dense layer on 14x14 with c channels
        T = TorusTranslations((14, 14))
        act = TensorAction((c * 196, c * 196), [(standard(T) * c, 1), (standard(T) * c, 1)])
        proj = FourierProjector.from_action(act)
        _row(table, proj, f"T14x14 dense {c}->{c} ch", device)
    for c in (4, 16):  # S_10 edge -> edge layer
        S = SymmetricGroup(10)
        act = TensorAction(
            (c * 100, c * 100), [(pair_representation(S) * c, 1), (pair_representation(S) * c, 1)]
        )
        proj = SymmetricProjector.from_action(act)
        _row(table, proj, f"S10 pairs {c}->{c} ch", device)
    from lightning_equi.groups import SO2, irrep, trivial

    S2 = SO2()
    fields = trivial(S2) + irrep(S2, 1) + irrep(S2, 2) + irrep(S2, 3)
    for m in (8, 32, 128):
        act = TensorAction((7 * m, 7 * m), [(fields * m, 1), (fields * m, 1)])
        _row(table, BasisProjector(act), f"SO2 irreps0-3 linear {7 * m}->{7 * m}", device)
    model = reference_cnn().to(device)
    projection = reference_spec(model).bind(model)
    params = [e.tensor for e in projection.entries]
    n = sum(p.numel() for p in params)

    def one_by_one() -> None:  # what project_parameters_ did before the batched projection
        for e in projection.entries:
            e.projector.project_(e.tensor)

    from lightning_equi.subspace.batched import MAX_NUMEL, BatchedProjection

    batched = projection.project_parameters_  # on the CPU: cache-sized buffers
    one_buffer = BatchedProjection([e.projector for e in projection.entries], max_numel=MAX_NUMEL)

    def gpu_setting() -> None:  # one buffer for the whole model, as on an accelerator
        one_buffer.project_([e.tensor for e in projection.entries])

    f, gather = _floor(params), _gather_floor(params)
    rows = [("spec, tensor by tensor", one_by_one), ("spec, batched (default)", batched)]
    if device == "cpu":
        rows.append(("spec, batched, one buffer (the GPU default)", gpu_setting))
    for label, fn in rows:
        t = median_time(fn, repeats=15, device=device)
        table.add(
            label, "reference C4 CNN, all params + BN stats", n, 1e3 * t, 1e3 * f, t / f, 1e3 * gather,
            t / gather, kernels(fn),
        )  # fmt: skip
    q = paired_ratios(
        lambda: median_time(one_by_one, repeats=5, warmup=1, device=device),
        lambda: median_time(batched, repeats=5, warmup=1, device=device),
        pairs,
    )
    table.notes.append(
        f"whole model, batched / tensor by tensor (the {len(params)} tensors): {fmt_ratio(q)} "
        f"(median [IQR] over {pairs} interleaved pairs of medians of 5 runs); kernels: "
        f"{kernels(batched)} against {kernels(one_by_one)}; in one buffer (the default on a GPU) "
        f"{kernels(gpu_setting)} (goal: at most 10 whatever the depth)"
    )
    adam = _adam_step([e.tensor for e in projection.parameters])
    t = median_time(batched, repeats=15, device=device)
    table.notes.append(
        f"for scale: one Adam step over the reference CNN's parameters takes {1e3 * adam:.3g} ms "
        f"({adam / f:.3g} passes); projecting them all {t / adam:.3g}x that"
    )
    return table


def _row(table: Table, proj, label: str, device: str = "cpu") -> None:
    w = torch.randn(proj.shape, device=device)
    t = median_time(lambda: proj.project_(w), repeats=15, device=device)
    f, gather = _floor([w]), _gather_floor([w])
    table.add(
        type(proj).__name__, label, w.numel(), 1e3 * t, 1e3 * f, t / f, 1e3 * gather, t / gather,
        kernels(lambda: proj.project_(w)),
    )  # fmt: skip


# ---- section: augmentation throughput ------------------------------------------------------------


def bench_augmentation(batch: int = 64) -> Table:
    import torch.nn.functional as F

    from lightning_equi.actions import ImageAction
    from lightning_equi.groups import SO2, CyclicGroup, make_generator

    table = Table(
        f"Augmentation of a {batch}x1x28x28 batch, one element per sample",
        ["what", "time (ms)", "floor", "ratio to floor"],
        notes=[
            "floor for exact C4: `torch.rot90` of the samples with each rotation count (masked); "
            "floor for interpolated rotation: one `affine_grid` + `grid_sample` call (what kornia and "
            "torchvision do; `affine_grid` rebuilds its base grid every call, which ImageAction caches), "
            "and, stricter, `grid_sample` alone on a precomputed grid; goal: ratio <= 1.2"
        ],
    )
    x = torch.randn(batch, 1, 28, 28)
    gen = make_generator(0)
    C4, S = CyclicGroup(4), SO2()

    def floor_c4() -> torch.Tensor:
        k = torch.randint(4, (batch,), generator=gen)
        out = torch.empty_like(x)
        for r in range(4):
            m = k == r
            out[m] = torch.rot90(x[m], r, dims=(-2, -1))
        return out

    def floor_rot() -> torch.Tensor:
        theta = torch.rand(batch, generator=gen) * 2 * torch.pi
        c, s = torch.cos(theta), torch.sin(theta)
        mat = torch.stack(
            [torch.stack([c, -s, torch.zeros_like(c)], 1), torch.stack([s, c, torch.zeros_like(c)], 1)], 1
        )
        grid = F.affine_grid(mat, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False)

    fixed_theta = torch.rand(batch, generator=gen) * 2 * torch.pi
    c0, s0, z0 = torch.cos(fixed_theta), torch.sin(fixed_theta), torch.zeros(batch)
    fixed_grid = F.affine_grid(
        torch.stack([torch.stack([c0, -s0, z0], 1), torch.stack([s0, c0, z0], 1)], 1),
        list(x.shape),
        align_corners=False,
    )

    def floor_sample_only() -> torch.Tensor:  # the sampling kernel alone: no angles, no grid
        return F.grid_sample(x, fixed_grid, align_corners=False)

    act_c4, act_so2 = ImageAction(C4), ImageAction(S)
    t_fc4 = median_time(floor_c4, repeats=50)
    t_frot = median_time(floor_rot, repeats=50)
    t_fsample = median_time(floor_sample_only, repeats=50)
    t_c4 = median_time(lambda: act_c4(C4.sample(batch, generator=gen), x), repeats=50)
    t_so2 = median_time(lambda: act_so2(S.sample(batch, generator=gen), x), repeats=50)
    table.add("floor: masked rot90 (exact C4)", 1e3 * t_fc4, "-", 1.0)
    table.add("lightning_equi ImageAction C4 (sample + act)", 1e3 * t_c4, "masked rot90", t_c4 / t_fc4)
    table.add("floor: affine_grid + grid_sample", 1e3 * t_frot, "-", 1.0)
    table.add("lightning_equi ImageAction SO2 (sample + act)", 1e3 * t_so2, "grid_sample", t_so2 / t_frot)
    table.add("floor: grid_sample alone, grid precomputed", 1e3 * t_fsample, "-", 1.0)
    table.add(
        "lightning_equi ImageAction SO2 (sample + act)", 1e3 * t_so2, "grid_sample alone", t_so2 / t_fsample
    )
    try:
        import kornia.augmentation as K

        rot = K.RandomRotation(degrees=180.0, p=1.0)
        t_k = median_time(lambda: rot(x), repeats=50)
        table.add("kornia RandomRotation(180)", 1e3 * t_k, "grid_sample", t_k / t_frot)
    except ImportError:
        table.notes.append("kornia is not installed: `pip install kornia` to compare")
    return table


def bench_escnn_section() -> Table:
    from bench_escnn import bench_escnn

    return bench_escnn()


SECTIONS = {
    "step": bench_step,
    "projection": bench_projection,
    "augmentation": bench_augmentation,
    "escnn": bench_escnn_section,
    "stability": lambda: __import__("bench_stability").bench_stability(),  # issue 17: lambda_min/max pair
    "inference": lambda: __import__("bench_inference").bench_inference(),  # issue 14: ResNet-18 spec
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sections", nargs="+", choices=sorted(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="where the step and projection sections run"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine()
    print(" ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    tables = []
    for name in args.sections:
        print(f"\n== {name} ==", flush=True)
        table = SECTIONS[name](device=args.device) if name in ("step", "projection") else SECTIONS[name]()
        print(table.markdown(), flush=True)
        tables.append(table)
    args.out.mkdir(parents=True, exist_ok=True)
    header = "## Benchmarks\n\n" + ", ".join(f"{k}: {v}" for k, v in info.items()) + "\n\n"
    (args.out / "report.md").write_text(header + "\n".join(t.markdown() for t in tables))
    (args.out / "report.json").write_text(
        json.dumps({"machine": info, "sections": [t.as_dict() for t in tables]}, indent=2, default=str)
    )
    print(f"report written to {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
