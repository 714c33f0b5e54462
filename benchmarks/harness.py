"""Timing helpers shared by the benchmark sections: medians of repeated runs, paired ratios with their
spread, kernel counts, machine facts."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], repeats: int = 20, warmup: int = 3, device="cpu") -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """``(first quartile, median, third quartile)`` of ``values``."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def paired_ratios(
    baseline: Callable[[], float], candidate: Callable[[], float], pairs: int
) -> tuple[float, float, float]:
    """Run ``baseline()`` and ``candidate()`` alternately ``pairs`` times (each returns a time) and
    return the quartiles of the per-pair ratios ``candidate / baseline``: a drift of the machine hits
    both members of a pair alike, and the interquartile range says how far the median can be trusted."""
    ratios = []
    for _ in range(pairs):
        base = baseline()
        ratios.append(candidate() / base)
    return quartiles(ratios)


def fmt_ratio(q: tuple[float, float, float]) -> str:
    """``median [q1, q3]`` of a ratio."""
    return f"{q[1]:.3f} [{q[0]:.3f}, {q[2]:.3f}]"


def kernels(fn: Callable[[], object]) -> int:
    """The number of kernels (aten calls that are not views or casts) that ``fn()`` launches."""
    from lightning_equi.subspace.batched import count_kernels

    return sum(count_kernels(fn).values())


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    import lightning

    info = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": platform.processor() or platform.machine(),
        "cores": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


@dataclass
class Table:
    """One section of the report: a title, column names, rows, and notes."""

    title: str
    columns: list[str]
    rows: list[list[object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *row: object) -> None:
        self.rows.append(list(row))

    def markdown(self) -> str:
        def fmt(v: object) -> str:
            if isinstance(v, float):
                return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
            return str(v)

        lines = [
            f"### {self.title}",
            "",
            "| " + " | ".join(self.columns) + " |",
            "|" + "---|" * len(self.columns),
        ]
        lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in self.rows]
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict:
        return {"title": self.title, "columns": self.columns, "rows": self.rows, "notes": self.notes}
