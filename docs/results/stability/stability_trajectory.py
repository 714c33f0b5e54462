"""lambda_min of the augmented Hessian on E-perp along the equi trajectory of Perm, Trans and Rot (issue 17).

For each task: the experiments' network (``--variant``: the paper's v1 networks by default) and data at
a reduced size (``SIZES``), float64, trained in *equi* mode (``EquivariantProjection``, plain SGD, one
full-batch step per epoch) for ``steps`` steps with a :class:`~lightning_equi.callbacks.StabilityMonitor`
freezing the whole (small) training set and augmenting it by the full orbit of a finite group (every
sample by every element: the exact augmented risk of the training set, whose Hessian decides the
stability of E; BatchNorm on its running statistics). The spectrum is also taken at the start A_0.

At the end A_T, the prediction check: full-batch augmented gradient descent on the same frozen risk from
``A_T + eps u`` (``u`` the unit eigenvector of lambda_min on E-perp) and from ``A_T``; the deviation across E
must grow per step as ``1 - eta lambda_min`` (and shrink as ``1 - eta lambda_max`` along the top eigenvector),
with ``|eta lambda| = RATE`` (capped so that the descent is stable along every direction).

Writes ``results.json`` and ``table.md`` next to this file (or to ``--out``). Rerun with
``OMP_NUM_THREADS=1 python docs/results/stability/stability_trajectory.py [--tasks perm trans rot]``;
the paper sizes are in ``PAPER_SIZES`` (``--paper``; hours on a CPU, sampled elements for S_10 since its
orbit has 3.6M elements).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_equi.callbacks import EquivariantProjection, StabilityMonitor
from lightning_equi.experiments.data import digits, shapes, two_block_graphs
from lightning_equi.experiments.models import VARIANTS, network_class
from lightning_equi.stability import (
    FrozenRisk,
    ParameterSpace,
    prediction_check,
    restricted_extremes,
    stability_spectrum,
)

HERE = Path(__file__).resolve().parent

# reduced sizes: (model options, data options, samples, augmentation, steps, isotypic)
SIZES = {
    "perm": dict(
        model=dict(nodes=6, channels=4, pooled=8, head=8),
        data=dict(n_graphs=16, block=3),
        augmentation="orbit",
    ),
    "trans": dict(
        model=dict(size=8, channels=2, pooled=8, classes=10), data=dict(limit=32), augmentation="orbit"
    ),
    "rot": dict(model=dict(size=8, channels=(4, 4)), data=dict(n_images=32, size=8), augmentation="orbit"),
}
PAPER_SIZES = {
    "perm": dict(
        model=dict(nodes=10, channels=32, pooled=64, head=32),
        data=dict(n_graphs=1000, block=5),
        augmentation=25,
    ),
    "trans": dict(model=dict(size=8, channels=32, pooled=32, classes=10), data=dict(), augmentation="orbit"),
    "rot": dict(
        model=dict(size=14, channels=(32, 32, 16)), data=dict(n_images=3000, size=14), augmentation="orbit"
    ),
}
# the prediction check's step: |eta lambda| per step. The deviation is linearised around the moving A_k, so
# the check needs the Hessian to change little while the deviation grows measurably: what it changes over
# the window scales with eta (the path along E is eta K ||grad||), the growth measured is relative
RATE = 0.01
LR_FRACTION = 0.05


def dataset(task: str, options: dict, dtype: torch.dtype = torch.float64) -> TensorDataset:
    if task == "perm":
        x, y = two_block_graphs(**options)
    elif task == "trans":
        x, y = digits(**options)
    else:
        x, y = shapes(**options)
    return TensorDataset(x.to(dtype), y.to(dtype) if y.is_floating_point() else y)


def run_task(
    task: str,
    size: dict,
    steps: int,
    isotypic: bool,
    variant: str = "paper",
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    echo=print,
) -> dict:
    torch.manual_seed(seed)
    data = dataset(task, dict(size["data"]), dtype)
    n = len(data)
    model = network_class(task, variant)(**size["model"], lr=1.0).to(dtype)
    projection = model.symmetry_spec().bind(model)
    projection.project_parameters_()
    space = ParameterSpace(model, projection)
    frozen = data.tensors
    risk = FrozenRisk(space, model.loss, frozen, model.data_actions(), augmentation=size["augmentation"])
    started = time.perf_counter()
    at_start = stability_spectrum(risk)
    # the step: eta * lambda_max = LR_FRACTION at the start, far below the edge of stability (2/eta) so that
    # progressive sharpening does not reach it and the trajectory settles (the prediction check needs A_T
    # close to stationary)
    lr = LR_FRACTION / max(at_start["lambda_max_E"], at_start["lambda_max_perp"])
    model.lr = lr
    echo(
        f"{task} ({type(model).__name__}): {space}, {risk.samples} augmented samples, lr {lr:.4g}; "
        f"at A_0: {fmt(at_start)}"
    )
    monitor = StabilityMonitor(
        every_n_steps=max(1, steps // 3), augmentation=size["augmentation"], max_samples=n, isotypic=False
    )
    trainer = L.Trainer(
        max_epochs=steps,
        callbacks=[EquivariantProjection(), monitor],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(data, batch_size=n))
    history = [{"step": 0.0, **at_start, "two_over_lr": 2 / lr}, *monitor.history]
    for h in history[1:]:
        echo(f"  step {int(h['step'])}: {fmt(h)}")
    # the prediction check at A_T, on the same frozen risk (eval mode, full orbit)
    theta = space.vector()
    end = restricted_extremes(risk, "perp", theta)
    last = history[-1]
    checks = {}
    for which, lam, u in (("min", end.lambda_min, end.vector_min), ("max", end.lambda_max, end.vector_max)):
        # |eta lambda| = RATE per step (a 16% change over 15 steps), and stable along E
        eta = min(RATE / abs(lam), 0.5 / max(last["lambda_max_E"], last["lambda_max_perp"]))
        # a deviation far above the rounding of a gradient difference, far below nonlinear effects
        eps = 1e-6 if dtype == torch.float64 else 1e-3
        check = prediction_check(risk, u, lam, eta, steps=15, eps=eps, theta=theta)
        checks[which] = check.as_dict()
        echo(
            f"  prediction along lambda_{which} = {lam:.4g}: predicted {check.predicted:.5f}/step, observed "
            f"{check.observed:.5f}/step, rate error {100 * check.rate_error:.1f}% (curvature drift "
            f"{100 * check.drift:.1f}%, path {check.path:.2g})"
        )
    out = {
        "task": task,
        "network": type(model).__name__,
        "dtype": str(dtype).removeprefix("torch."),
        "model": {k: list(v) if isinstance(v, tuple) else v for k, v in size["model"].items()},
        "data": size["data"],
        "augmentation": size["augmentation"],
        "group": space.group.name,
        "params": space.numel,
        "dim_E": space.dim_E,
        "dim_perp": space.dim_perp,
        "augmented_samples": risk.samples,
        "lr": lr,
        "steps": steps,
        "history": history,
        "prediction": checks,
    }
    if isotypic:
        parts = stability_spectrum(risk, theta, isotypic=True, steps=30)
        out["isotypic_at_end"] = {k: v for k, v in parts.items() if "/" in k}
        worst = min((v, k) for k, v in out["isotypic_at_end"].items() if k.startswith("lambda_min/"))
        label = worst[1][len("lambda_min/") :]
        echo(f"  isotypic at A_T: the most unstable component is {label} ({worst[0]:.4g})")
    out["seconds"] = time.perf_counter() - started
    return out


def fmt(h: dict) -> str:
    return (
        f"lambda_min_perp {h['lambda_min_perp']:.4g}, lambda_max_perp {h['lambda_max_perp']:.4g}, "
        f"lambda_max_E {h['lambda_max_E']:.4g}, gamma_crit {h['gamma_crit']:.4g}, "
        f"coupling {h['coupling']:.1e}, {int(h['hvps'])} HVPs"
    )


def table(results: list[dict]) -> str:
    rows = [
        "| task | network | group | params (dim E-perp) | aug. samples | step | lambda_min on E-perp "
        "| lambda_max on E-perp | lambda_max on E | gamma_crit | 2/eta |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for h in r["history"]:
            rows.append(
                f"| {r['task']} | {r['network']} | {r['group']} | {r['params']} ({r['dim_perp']}) | "
                f"{r['augmented_samples']} | "
                f"{int(h['step'])} | {h['lambda_min_perp']:.4g} | {h['lambda_max_perp']:.4g} | "
                f"{h['lambda_max_E']:.4g} | {h['gamma_crit']:.4g} | {h.get('two_over_lr', math.nan):.4g} |"
            )
    rows += [
        "",
        "| task | eigenvector | lambda | eta | predicted factor/step | observed | rate error "
        "| curvature drift |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for which, c in r["prediction"].items():
            rows.append(
                f"| {r['task']} | lambda_{which} | {c['lam']:.4g} | {c['lr']:.4g} | {c['predicted']:.5f} | "
                f"{c['observed']:.5f} | {100 * c['rate_error']:.1f}% | {100 * c['drift']:.1f}% |"
            )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--paper", action="store_true", help="the paper's sizes (PAPER_SIZES)")
    parser.add_argument(
        "--variant", default="paper", choices=VARIANTS, help="the experiments' network variant"
    )
    parser.add_argument(
        "--isotypic", nargs="*", default=["rot"], help="tasks that get the isotypic split at A_T"
    )
    parser.add_argument(
        "--dtype",
        default="float64",
        choices=["float64", "float32"],
        help="float32 for the paper networks, whose losses cast the targets to float32",
    )
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sizes = PAPER_SIZES if args.paper else SIZES
    dtype = getattr(torch, args.dtype)
    results = [run_task(t, sizes[t], args.steps, t in args.isotypic, args.variant, dtype) for t in args.tasks]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "table.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
