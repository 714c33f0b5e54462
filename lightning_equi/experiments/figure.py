"""The paper-style figure (its Figure 1) and the summary table, from the runs a comparison left on disk.

Every finished run folder holds ``trajectory.json`` (one entry per epoch, epoch 0 = the start) and
``result.json`` (final values); a failed run holds ``result.json`` with ``"status": "failed"`` and the error.
This module only reads those files, so a figure can be redrawn without training.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

__all__ = [
    "MODES",
    "STYLE",
    "TABLE_METRICS",
    "load_runs",
    "median_curve",
    "plot_comparison",
    "summary_table",
    "format_table",
    "write_table",
]

MODES = ("nom", "aug", "equi")
#: the paper's colours and line styles: Nom red dotted, Aug blue dashed, Equi green solid
STYLE = {
    "nom": {"color": "tab:red", "linestyle": ":"},
    "aug": {"color": "tab:blue", "linestyle": "--"},
    "equi": {"color": "tab:green", "linestyle": "-"},
}
#: columns of the table: the final value of each over the seeds of a mode
TABLE_METRICS = (
    "distance_to_E",
    "relative_distance_to_E",
    "distance_from_start",
    "loss",
    "accuracy",
    "equivariance_error",
)


def load_runs(root: str | Path) -> list[dict]:
    """Every run under ``root`` (any depth): its ``result.json`` merged with ``trajectory`` (when present)."""
    runs = []
    for result in sorted(Path(root).rglob("result.json")):
        run = json.loads(result.read_text())
        trajectory = result.with_name("trajectory.json")
        run["trajectory"] = json.loads(trajectory.read_text()) if trajectory.exists() else None
        run["path"] = str(result.parent)
        runs.append(run)
    return runs


def _finished(runs: Iterable[dict], mode: str) -> list[dict]:
    return [r for r in runs if r["mode"] == mode and r.get("status") == "ok" and r.get("trajectory")]


def median_curve(runs: Sequence[dict], x: str = "distance_from_start", y: str = "distance_to_E") -> tuple:
    """Per-epoch medians over runs of ``x`` and ``y`` (over the epochs every run reached)."""
    epochs = min(len(r["trajectory"][x]) for r in runs)
    xs = torch.tensor([r["trajectory"][x][:epochs] for r in runs], dtype=torch.float64)
    ys = torch.tensor([r["trajectory"][y][:epochs] for r in runs], dtype=torch.float64)
    # quantile, not Tensor.median: with an even number of runs the mean of the middle two, not the lower one
    return torch.quantile(xs, 0.5, dim=0).tolist(), torch.quantile(ys, 0.5, dim=0).tolist()


def plot_comparison(runs: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Distance to E against distance from the start, one colour per mode, faint runs and bold medians.

    The left panel is scaled to the largest median, the right one zoomed to Aug's median (the paper's
    Figure 1). The plotted medians are also written next to the PNG (same stem, ``.json``: per mode
    ``runs``, ``median_x``, ``median_y``). Returns the path of the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    peaks: dict[str, tuple[float, float]] = {}
    series: dict[str, dict] = {}
    for mode in MODES:
        group = _finished(runs, mode)
        if not group:
            continue
        mx, my = median_curve(group)
        for ax in axes:
            for r in group:
                t = r["trajectory"]
                faint = {"color": STYLE[mode]["color"], "alpha": 0.25, "linewidth": 0.8}
                ax.plot(t["distance_from_start"], t["distance_to_E"], **faint)
            ax.plot(mx, my, linewidth=2.4, label=f"{mode} (median of {len(group)})", **STYLE[mode])
        peaks[mode] = (max(mx), max(my))
        series[mode] = {"runs": len(group), "median_x": mx, "median_y": my}
    if peaks:
        x_max = 1.1 * max(p[0] for p in peaks.values()) or 1.0
        y_full = 1.1 * max(p[1] for p in peaks.values()) or 1.0
        y_zoom = 1.5 * peaks.get("aug", (0.0, 0.0))[1] or y_full
        for ax, y_max, name in ((axes[0], y_full, "all modes"), (axes[1], y_zoom, "zoomed to aug")):
            ax.set_xlim(0, x_max)
            ax.set_ylim(-y_max / 20, y_max)
            ax.set_title(name)
            ax.set_xlabel(r"distance from the start $\Vert A - A_0 \Vert$")
            ax.set_ylabel(r"distance to E $\Vert A - \Pi_E A \Vert$")
            ax.grid(alpha=0.3)
            ax.ticklabel_format(axis="both", style="sci", scilimits=(-2, 3))
        axes[0].legend(loc="upper left")
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    path.with_suffix(".json").write_text(json.dumps(series))
    return path


def _stats(values: list[float]) -> dict[str, float]:
    v = torch.tensor([x for x in values if x is not None and math.isfinite(x)], dtype=torch.float64)
    if v.numel() == 0:
        return {"median": math.nan, "q25": math.nan, "q75": math.nan, "min": math.nan, "max": math.nan}
    q = torch.quantile(v, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return {
        "median": q[1].item(),
        "q25": q[0].item(),
        "q75": q[2].item(),
        "min": v.min().item(),
        "max": v.max().item(),
    }


def summary_table(runs: Sequence[dict]) -> list[dict]:
    """One row per mode: run counts, then median / quartiles / range over seeds of each final metric."""
    rows = []
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        if not mine:
            continue
        ok = [r for r in mine if r.get("status") == "ok"]
        row: dict = {"mode": mode, "runs": len(mine), "failed": len(mine) - len(ok)}
        for metric in TABLE_METRICS:
            for stat, value in _stats([r.get(metric) for r in ok]).items():
                row[f"{metric}_{stat}"] = value
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """The table as aligned text: ``median [q25, q75]`` per metric, one line per mode."""
    head = ["mode", "runs", "failed", *TABLE_METRICS]
    lines = [head]
    for row in rows:
        cells = [row["mode"], str(row["runs"]), str(row["failed"])]
        for m in TABLE_METRICS:
            med, lo, hi = row[f"{m}_median"], row[f"{m}_q25"], row[f"{m}_q75"]
            cells.append("-" if math.isnan(med) else f"{med:.3g} [{lo:.3g}, {hi:.3g}]")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def write_table(rows: Sequence[dict], stem: str | Path) -> tuple[Path, Path]:
    """Write ``stem.csv`` and ``stem.json``; returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = stem.with_suffix(".csv"), stem.with_suffix(".json")
    fields = list(rows[0]) if rows else ["mode"]
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps(list(rows), indent=2))
    return csv_path, json_path
