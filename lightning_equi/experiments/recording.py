"""What a run leaves behind while it trains: the trajectory for the figure, and progress for the log.

:class:`TrajectoryRecorder` writes ``trajectory.json`` (distance to E and from the start after every epoch);
:class:`ProgressLines` prints a few compact lines per run when Lightning's bar is off, which
:func:`use_progress_bar` decides.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_equi.subspace import ModelProjection

__all__ = ["TrajectoryRecorder", "ProgressLines", "use_progress_bar"]

#: the JSON series of a trajectory -> the key of :meth:`ModelProjection.report` it records
_SERIES = {
    "distance_to_E": "dist_to_E/total",
    "relative_distance_to_E": "rel_dist_to_E/total",
    "distance_from_start": "dist_from_start/total",
    "in_E": "dist_from_start_in_E/total",
}


class TrajectoryRecorder(Callback):
    """After every epoch: distance to E, distance from the start (split along E and across it), loss.

    Epoch 0 is the starting point. The series go to ``path`` (JSON), which the figure reads; TensorBoard gets
    the same distances, per layer, from the EquivarianceMonitor.

    Args:
        projection: the model's bound symmetry spec.
        start: the constrained tensors at the start (``projection.snapshot()``).
        path: where to write the series.
    """

    def __init__(self, projection: ModelProjection, start: dict[str, torch.Tensor], path: Path) -> None:
        self.projection, self.start, self.path = projection, start, Path(path)
        self.series: dict[str, list[float]] = {k: [] for k in ("epoch", *_SERIES, "loss")}

    def _record(self, epoch: int, loss: float) -> None:
        distances = self.projection.report(self.start, layers=False)
        point = {"epoch": epoch, **{k: float(distances[key]) for k, key in _SERIES.items()}, "loss": loss}
        for key, value in point.items():
            self.series[key].append(value)
        self.path.write_text(json.dumps(self.series))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.series["epoch"]:
            self._record(0, math.nan)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        self._record(trainer.current_epoch + 1, math.nan if loss is None else float(loss))


class ProgressLines(Callback):
    """Compact progress for logs (stdout not a terminal): one line every ``every`` epochs, none per batch.

    Args:
        tag: the run's name, the start of every line.
        every: print after every this many epochs (not after the last: the runner prints the result).
        echo: where the lines go.
    """

    def __init__(self, tag: str, every: int, echo=print) -> None:
        self.tag, self.every, self.echo = tag, max(1, int(every)), echo
        self._started = time.perf_counter()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch, epochs = trainer.current_epoch + 1, trainer.max_epochs
        if epoch % self.every or epoch >= epochs:
            return
        loss = trainer.callback_metrics.get("train/loss")
        loss_text = "" if loss is None else f", loss {float(loss):.4f}"
        elapsed = time.perf_counter() - self._started
        self.echo(f"{self.tag}: epoch {epoch}/{epochs}{loss_text} ({elapsed:.1f} s)")


def use_progress_bar(setting: bool | str, stream: Any = None) -> bool:
    """Whether to show Lightning's progress bar: ``setting`` True/False, or ``"auto"`` -- only when ``stream``
    (default ``sys.stdout``) is a terminal, since a bar redrawn in a log file floods it.

    Raises:
        ValueError: for another setting.

    Example:
        >>> import io
        >>> use_progress_bar("auto", io.StringIO()), use_progress_bar(True, io.StringIO())
        (False, True)
    """
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ValueError(f"progress_bar must be true, false or 'auto', got {setting!r}")
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
