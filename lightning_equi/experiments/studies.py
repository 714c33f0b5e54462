"""Studies around the paper's experiments, each a few comparisons and one figure and table.

- :func:`sampler_study`: Rot's aug with each sampler (``haar``, ``batch``, ``paper``): does the paper's
  C2 draw explain why its aug stays closer to nom on Rot than on Perm and Trans?
- :func:`dimension_table`: the paper's appendix E.1, ``dim E / dim L`` of every constrained layer of each
  experiment's network, from the bound projectors;
- :func:`practical_study`: aug against nom when trained as users train (minibatches; SGD, momentum, Adam;
  batch size; augmented copies per step).

Every study takes a built-in config name and overrides (the sizes), so a user reruns it at the paper's
size by passing fewer overrides; ``python -m lightning_equi.experiments.studies <study> --out DIR`` runs
the reduced sizes used in ``docs/results/``.

Example:
    >>> rows = dimension_table(["perm"])
    >>> [(r["layer"], r["dim_E"], r["dim_L"]) for r in rows]
    [('equivariant.weight', 480, 320000), ('invariant.weight', 4096, 204800)]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from lightning_equi.experiments.config import load_config, merge_config
from lightning_equi.experiments.figure import STYLE, median_curve
from lightning_equi.experiments.runner import build_model, run_comparison

__all__ = [
    "SAMPLER_STYLE",
    "sampler_study",
    "dimension_table",
    "groups_study",
    "practical_study",
    "plot_ratios",
    "ratio_row",
    "main",
]

#: line styles of aug under each sampler (nom and equi keep the paper's)
SAMPLER_STYLE = {
    "haar": {"color": "tab:blue", "linestyle": "--"},
    "batch": {"color": "tab:purple", "linestyle": "-."},
    "paper": {"color": "tab:orange", "linestyle": (0, (5, 1))},
}


def _final(outcome: dict, mode: str, key: str = "distance_to_E") -> list[float]:
    root = outcome["root"]
    return [
        json.loads(p.read_text())[key]
        for p in sorted((root / mode).glob("seed*/result.json"))
        if json.loads(p.read_text()).get("status") == "ok"
    ]


def _median(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    return float(
        torch.quantile(torch.tensor(list(values), dtype=torch.float64), 0.5)
    )  # mean of the middle two


def ratio_row(label: str, nom: dict, aug: dict) -> dict:
    """Medians over seeds of nom's and aug's final distances, and the ratio of the medians."""
    row = {"setting": label, "seeds": len(_final(aug, "aug"))}
    for mode, outcome in (("nom", nom), ("aug", aug)):
        row[f"{mode}_distance_to_E"] = _median(_final(outcome, mode))
        row[f"{mode}_distance_from_start"] = _median(_final(outcome, mode, "distance_from_start"))
    row["nom_over_aug"] = row["nom_distance_to_E"] / row["aug_distance_to_E"]
    return row


def _runs(outcome: dict, mode: str) -> list[dict]:
    from lightning_equi.experiments.figure import load_runs

    return [r for r in load_runs(outcome["root"] / mode) if r.get("status") == "ok" and r.get("trajectory")]


def sampler_study(
    out_dir: str | Path,
    task: str = "rot",
    overrides: dict | None = None,
    samplers: Sequence[str] = ("haar", "batch", "paper"),
    echo: Callable[[str], None] = print,
) -> dict:
    """Nom, equi and aug under each sampler from the same starts; the figure and table of the answer.

    Returns:
        ``{"rows": [...], "figure": path, "table": path}``: one row per sampler with nom's and aug's median
        final distances and their ratio.
    """
    out_dir = Path(out_dir)
    base = merge_config({"out_dir": str(out_dir), "progress_bar": False}, overrides or {})
    outcomes = {}
    for sampler in samplers:
        modes = ["nom", "aug", "equi"] if sampler == samplers[0] else ["aug"]
        config = load_config(
            task, merge_config(base, {"name": f"{task}_{sampler}", "sampler": sampler, "modes": modes})
        )
        outcomes[sampler] = run_comparison(config, echo=echo)
    first = outcomes[samplers[0]]
    rows = [ratio_row(f"aug sampler {s}", first, outcomes[s]) for s in samplers]
    curves = {"nom": _runs(first, "nom"), "equi": _runs(first, "equi")}
    curves.update({f"aug ({s})": _runs(outcomes[s], "aug") for s in samplers})
    styles = {
        "nom": STYLE["nom"],
        "equi": STYLE["equi"],
        **{f"aug ({s})": SAMPLER_STYLE[s] for s in samplers},
    }
    figure = _plot(
        curves, styles, out_dir / "figure.png", f"{task}: aug by sampler ({rows[0]['seeds']} seeds)"
    )
    table = _write_rows(rows, out_dir / "table")
    return {"rows": rows, "figure": figure, "table": table}


def _plot(curves: dict[str, list[dict]], styles: dict[str, dict], path: Path, title: str) -> Path:
    """Distance to E against distance from the start: medians bold, runs faint; left all, right log-scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    series = {}
    for label, runs in curves.items():
        if not runs:
            continue
        mx, my = median_curve(runs)
        series[label] = {"runs": len(runs), "median_x": mx, "median_y": my}
        for ax in axes:
            for r in runs:
                t = r["trajectory"]
                ax.plot(
                    t["distance_from_start"],
                    t["distance_to_E"],
                    color=styles[label]["color"],
                    alpha=0.2,
                    lw=0.7,
                )
            ax.plot(mx, my, lw=2.2, label=f"{label} (median of {len(runs)})", **styles[label])
    for ax, scale in ((axes[0], "linear"), (axes[1], "log")):
        ax.set_yscale(scale)
        ax.set_xlabel(r"distance from the start $\Vert A - A_0 \Vert$")
        ax.set_ylabel(r"distance to E $\Vert A - \Pi_E A \Vert$")
        ax.grid(alpha=0.3)
    axes[1].set_ylim(
        bottom=max(
            1e-12,
            min(
                (min(s["median_y"][1:]) for s in series.values() if min(s["median_y"][1:]) > 0), default=1e-12
            )
            / 3,
        )
    )
    axes[0].legend(loc="upper left", fontsize=8)
    axes[1].set_title("log scale")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    path.with_suffix(".json").write_text(json.dumps(series))
    return path


def _write_rows(rows: list[dict], stem: Path) -> Path:
    import csv

    stem.parent.mkdir(parents=True, exist_ok=True)
    with stem.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    return stem.with_suffix(".csv")


def dimension_table(
    tasks: Sequence[str] = ("perm", "trans", "rot"), overrides: dict | None = None
) -> list[dict]:
    """Appendix E.1: ``dim E`` and ``dim L`` of every constrained layer of each task's network.

    ``dim E`` is the projector's (:attr:`~lightning_equi.subspace.base.Projector.dim`: the number of orbits,
    of basis maps, or of kept frequencies, computed exactly); ``dim L`` the layer's number of entries.
    The built-in configs are at the paper's size; the models are built on the meta device when possible.
    """
    rows = []
    for task in tasks:
        config = load_config(task, copy.deepcopy(overrides or {}))
        model = build_model(config)
        projection = model.symmetry_spec().bind(model)
        for entry in projection.parameters:
            dim_e, dim_l = int(entry.projector.dim), int(entry.tensor.numel())
            rows.append(
                {
                    "task": task,
                    "group": projection.group.name,
                    "layer": entry.name,
                    "shape": list(entry.tensor.shape),
                    "dim_E": dim_e,
                    "dim_L": dim_l,
                    "ratio": dim_e / dim_l,
                }
            )
        del model, projection
    return rows


def practical_study(
    out_dir: str | Path,
    task: str,
    settings: dict[str, dict],
    overrides: dict | None = None,
    echo: Callable[[str], None] = print,
) -> list[dict]:
    """Nom and aug trained with each of ``settings`` (name -> overrides: optimizer, lr, batch size, copies);
    one row per setting with the medians and the ratio nom / aug of the final distances to E."""
    out_dir = Path(out_dir)
    rows = []
    base = merge_config(
        {"out_dir": str(out_dir), "progress_bar": False, "modes": ["nom", "aug"]}, overrides or {}
    )
    for name, setting in settings.items():
        config = load_config(task, merge_config(base, {"name": f"{task}_{name}", **setting}))
        outcome = run_comparison(config, echo=echo)
        row = {"task": task, **ratio_row(name, outcome, outcome)}
        for key in ("optimizer", "lr", "batch_size", "aug_passes", "epochs"):
            row[key] = config[key]
        row["final_loss_nom"] = _median(_final(outcome, "nom", "loss"))
        row["final_loss_aug"] = _median(_final(outcome, "aug", "loss"))
        rows.append(row)
    _write_rows(rows, out_dir / "table")
    return rows


def plot_ratios(rows: Sequence[dict], path: str | Path, references: dict[str, float] | None = None) -> Path:
    """Bars of nom / aug (final distance to E) per setting, one group of bars per task; ``references``
    (task -> ratio) are drawn as dashed lines (the full-batch protocol's ratio)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fig, ax = plt.subplots(figsize=(10, 4.2), constrained_layout=True)
    width = 0.8 / len(tasks)
    colours = ["tab:blue", "tab:orange", "tab:green"]
    for k, task in enumerate(tasks):
        values = {r["setting"]: r["nom_over_aug"] for r in rows if r["task"] == task}
        xs = [i + k * width for i in range(len(settings))]
        ax.bar(xs, [values.get(s, math.nan) for s in settings], width, label=task, color=colours[k % 3])
        if references and task in references:
            ax.axhline(references[task], color=colours[k % 3], ls="--", lw=1,
                       label=f"{task}, full-batch protocol: {references[task]:.0f}")  # fmt: skip
    ax.axhline(1, color="black", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks([i + width * (len(tasks) - 1) / 2 for i in range(len(settings))], settings, rotation=15)
    ax.set_ylabel("nom / aug: final distance to E")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# the reduced sizes of docs/results/

#: Rot reduced: 8 x 8 paper shapes, channels [8, 8, 4], 400 images, batch 50 (K = 8), 30 full-batch steps
ROT_REDUCED = {
    "seeds": 2,
    "epochs": 30,
    "batch_size": 50,
    "threads": 1,
    "model": {"size": 8, "channels": [8, 8, 4]},
    "data": {"n_images": 400, "size": 8},
}


#: Trans reduced: the paper's network at 14 x 14 with 4 channels, 300 resized digits, batch 25, 20 steps
TRANS_REDUCED = {
    "seeds": 2,
    "epochs": 20,
    "batch_size": 25,
    "threads": 1,
    "model": {"channels": 4},
    "data": {"limit": 300},
}

#: E.2 reduced: as Trans reduced, 12 steps, batch 50, lr 5e-5 (the paper's for E.2), nom and aug only
GROUPS_REDUCED = {**TRANS_REDUCED, "epochs": 12, "batch_size": 50, "modes": ["nom", "aug"]}

#: practical training: minibatches, 10 epochs; name -> overrides
PRACTICAL = {
    "sgd_b50": {"optimizer": "sgd", "lr": 1e-2, "batch_size": 50, "aug_passes": 1},
    "momentum_b50": {"optimizer": "momentum", "lr": 1e-2, "batch_size": 50, "aug_passes": 1},
    "adam_b50": {"optimizer": "adam", "lr": 1e-3, "batch_size": 50, "aug_passes": 1},
    "adam_b200": {"optimizer": "adam", "lr": 1e-3, "batch_size": 200, "aug_passes": 1},
    "adam_b50_copies8": {"optimizer": "adam", "lr": 1e-3, "batch_size": 50, "aug_passes": 8},
    "sgd_b50_copies8": {"optimizer": "sgd", "lr": 1e-2, "batch_size": 50, "aug_passes": 8},
}


def groups_study(out_dir: str | Path, groups: Sequence[str], overrides: dict, echo=print) -> list[dict]:
    """Appendix E.2: nom and aug of the Trans network under each group; ratio and ``dim E / dim L``."""
    rows, curves, styles = [], {}, {}
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:purple"]
    for k, group in enumerate(groups):
        setting = merge_config(overrides, {"model": {"group": group}, "name": f"groups_{group}"})
        common = {"out_dir": str(out_dir), "progress_bar": False}
        config = load_config("groups", merge_config(common, setting))
        outcome = run_comparison(config, echo=echo)
        row = ratio_row(group, outcome, outcome)
        dims = dimension_table(["groups"], {"model": config["model"]})
        row["dim_E_over_dim_L"] = sum(r["dim_E"] for r in dims) / sum(r["dim_L"] for r in dims)
        rows.append(row)
        for mode, style in (("nom", ":"), ("aug", "--")):
            curves[f"{mode} {group}"] = _runs(outcome, mode)
            styles[f"{mode} {group}"] = {"color": colours[k % 4], "linestyle": style}
    _write_rows(rows, Path(out_dir) / "table")
    _plot(curves, styles, Path(out_dir) / "figure.png", "E.2: the Trans network under each group")
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m lightning_equi.experiments.studies sampler|dims|trans|groups|practical --out DIR``."""
    parser = argparse.ArgumentParser(prog="python -m lightning_equi.experiments.studies")
    parser.add_argument("study", choices=["sampler", "dims", "trans", "groups", "practical"])
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="TASK=RATIO",
        help="practical: the full-batch protocol's nom / aug ratio of a task, drawn as a line",
    )
    args = parser.parse_args(argv)
    args.references = {k: float(v) for k, _, v in (r.partition("=") for r in args.reference)}
    out = Path(args.out)
    if args.study == "sampler":
        outcome = sampler_study(out, "rot", ROT_REDUCED)
        print(json.dumps(outcome["rows"], indent=1))
    elif args.study == "dims":
        rows = dimension_table()
        _write_rows(rows, out / "table")
        print(json.dumps(rows, indent=1))
    elif args.study == "trans":
        run_comparison(load_config("trans", {**TRANS_REDUCED, "out_dir": str(out), "progress_bar": False}))
    elif args.study == "groups":
        rows = groups_study(out, ["T14", "T14x14", "C4"], GROUPS_REDUCED)
        print(json.dumps(rows, indent=1))
    elif args.study == "practical":
        common = {"protocol": "minibatch", "seeds": 2, "threads": 1, "minibatch": {"epochs": 10}}
        rot = {**common, "model": ROT_REDUCED["model"], "data": ROT_REDUCED["data"]}
        rows = practical_study(
            out / "perm", "perm", {k: {"minibatch": v} for k, v in PRACTICAL.items()}, common
        )
        rows += practical_study(out / "rot", "rot", {k: {"minibatch": v} for k, v in PRACTICAL.items()}, rot)
        _write_rows(rows, out / "table")
        plot_ratios(rows, out / "figure.png", args.references)
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
