"""The three-mode comparison: train one task as nom, aug and equi for several seeds, then draw and tabulate.

For each seed the model is built and projected onto E once
(:func:`~lightning_equi.subspace.equivariant_init_`), and all three modes start from that same state. Each
run trains with its own Lightning ``Trainer``, logs to TensorBoard in ``<out>/<name>/<mode>/seed<k>/`` and
leaves ``trajectory.json`` (distance to E and distance from the start after every epoch) and
``result.json`` there. A run whose ``result.json`` says ``"ok"`` is skipped when the comparison is run
again; a run that raises is recorded as failed (with its traceback in ``error.txt``), reported at the end,
and retried on the next run.

Protocols (``protocol:`` in the config):

- ``full``, the paper's: gradients accumulated over the whole data set in batches of ``batch_size``, one plain
  SGD step per epoch; aug makes ``aug_passes`` augmented passes over the data per step (one Haar draw per
  sample and pass) and averages them. The passes are made as ``aug_passes`` augmented copies within each
  batch (the same average, in far fewer Lightning steps), except for a model with BatchNorm, whose batch
  statistics would then span the copies: there they are passes over the repeated data set;
- ``minibatch``: shuffled batches of ``batch_size``, one SGD step per batch; aug transforms
  ``aug_passes`` copies of each batch.

Configs are YAML files (``configs/perm.yaml``, ``trans.yaml``, ``rot.yaml`` are built in). Why not
LightningCLI: it builds one Trainer and one model per process from one config, while this driver loops over
modes and seeds, builds the callbacks per mode, shares one initial state across modes and aggregates the
runs; each run is still an ordinary ``Trainer.fit`` with the module's own hyper-parameters.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import (
    BatchSampler,
    ConcatDataset,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from lightning_equi.callbacks import build_callbacks
from lightning_equi.experiments.data import build_dataset
from lightning_equi.experiments.figure import (
    format_table,
    load_runs,
    plot_comparison,
    summary_table,
    write_table,
)
from lightning_equi.experiments.models import TASKS, SymmetricTask
from lightning_equi.metrics import equivariance_error
from lightning_equi.subspace import ModelProjection, equivariant_init_, total_distance

__all__ = [
    "parse_overrides",
    "merge_config",
    "DEFAULTS",
    "load_config",
    "run_comparison",
    "report",
    "train_run",
    "evaluate",
    "TrajectoryRecorder",
    "ProgressLines",
    "use_progress_bar",
    "batch_coupled",
    "main",
]

MODES = ("nom", "aug", "equi")
PROTOCOLS = ("full", "minibatch")

#: every key a config may set, with its default
DEFAULTS: dict[str, Any] = {
    "task": None,  # perm | trans | rot
    "name": None,  # output folder under out_dir (default: the task)
    "out_dir": "runs",
    "modes": list(MODES),
    "seeds": 3,  # a count (seeds 0 .. n-1) or a list
    "epochs": 50,
    "protocol": "full",
    "batch_size": 100,
    "lr": 1e-5,
    "aug_passes": 25,  # augmented passes (full) or copies (minibatch) averaged per step
    "orbit": False,  # aug over the whole orbit of every sample (finite groups; exact augmented gradient)
    "preserve_norm": False,  # equivariant_init_: keep each layer's norm after projecting (paper: no)
    "probe": 256,  # samples for the functional equivariance error in the table
    "monitor_every_n_steps": 50,  # EquivarianceMonitor: TensorBoard distances every n steps (and every epoch)
    "accelerator": "cpu",
    "threads": None,  # torch.set_num_threads for the runs (None: torch's default)
    "progress_bar": "auto",  # true: Lightning's bar; false: none; auto: the bar on a terminal, else lines
    "progress_lines": 5,  # without the bar: about this many progress lines per run (0: only the result line)
    "model": {},  # keyword arguments of the task's LightningModule
    "data": {},  # keyword arguments of the task's data set (see data.build_dataset)
    "minibatch": {},  # overrides applied with protocol: minibatch
}


# --------------------------------------------------------------------------------------------------
# configuration


def builtin_config(name: str) -> Path:
    """The path of a built-in config (``perm``, ``trans``, ``rot``)."""
    path = Path(str(resources.files("lightning_equi.experiments"))) / "configs" / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no built-in config {name!r}; built-in: {sorted(_builtin_names())}")
    return path


def _builtin_names() -> list[str]:
    folder = Path(str(resources.files("lightning_equi.experiments"))) / "configs"
    return [p.stem for p in folder.glob("*.yaml")]


def merge_config(base: dict, extra: dict) -> dict:
    """``base`` updated by ``extra``, nested dicts merged key by key (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = (
            merge_config(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def parse_overrides(pairs: list[str]) -> dict:
    """``["model.channels=8", "epochs=5"]`` -> nested dict; values parsed as YAML."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set takes key=value, got {pair!r}")
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def load_config(source: str | Path | dict, overrides: dict | None = None) -> dict:
    """The full config: defaults, then the YAML file (or built-in name, or dict), then ``overrides``.

    With ``protocol: minibatch`` the file's ``minibatch:`` section is applied after the file and before
    ``overrides`` (so ``--epochs`` on the command line wins over both).

    Raises:
        ValueError: for an unknown key, task, mode or protocol.
    """
    if isinstance(source, dict):
        loaded = source
    else:
        path = Path(source)
        if not path.exists() and path.suffix == "":
            path = builtin_config(str(source))
        loaded = yaml.safe_load(path.read_text()) or {}
    overrides = overrides or {}
    config = merge_config(merge_config(DEFAULTS, loaded), overrides)
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(DEFAULTS)}")
    if config["protocol"] not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {config['protocol']!r}")
    if config["protocol"] == "minibatch":
        config = merge_config(merge_config(merge_config(DEFAULTS, loaded), config["minibatch"]), overrides)
    if not (isinstance(config["progress_bar"], bool) or config["progress_bar"] == "auto"):
        raise ValueError(f"progress_bar must be true, false or 'auto', got {config['progress_bar']!r}")
    if config["task"] not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {config['task']!r}")
    bad = [m for m in config["modes"] if m not in MODES]
    if bad:
        raise ValueError(f"modes must be among {MODES}, got {bad}")
    if isinstance(config["seeds"], int):
        config["seeds"] = list(range(config["seeds"]))
    config["name"] = config["name"] or config["task"]
    return config


# --------------------------------------------------------------------------------------------------
# recording


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
        self.series: dict[str, list[float]] = {
            k: []
            for k in (
                "epoch",
                "distance_to_E",
                "relative_distance_to_E",
                "distance_from_start",
                "in_E",
                "loss",
            )
        }

    def _record(self, epoch: int, loss: float) -> None:
        moved = self.projection.distances_from(self.start)
        point = {
            "epoch": epoch,
            "distance_to_E": float(self.projection.total_distance()),
            "relative_distance_to_E": float(self.projection.relative_total_distance()),
            "distance_from_start": float(total_distance(moved["total"])),
            "in_E": float(total_distance(moved["in_E"])),
            "loss": loss,
        }
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
    """
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ValueError(f"progress_bar must be true, false or 'auto', got {setting!r}")
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


# --------------------------------------------------------------------------------------------------
# one run


def _callbacks(config: dict, mode: str, model: SymmetricTask, seed: int) -> list[Callback]:
    """The mode's callbacks (with an EquivarianceMonitor logging per-layer distances to TensorBoard)."""
    inputs, targets = model.data_actions()
    options: dict[str, Any] = {"every_n_steps": int(config["monitor_every_n_steps"]), "seed": seed}
    if mode == "aug":
        orbit = bool(config["orbit"])
        copies = 1 if orbit or _passes_as_data(config, mode, model) > 1 else int(config["aug_passes"])
        options.update(copies=copies, orbit=orbit)
    return build_callbacks(
        mode, spec=model.symmetry_spec(), inputs=inputs, targets=targets, monitor=True, model=model, **options
    )


def batch_coupled(model: torch.nn.Module) -> bool:
    """Whether a sample's output in training depends on the rest of its batch (a BatchNorm layer)."""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _passes_as_data(config: dict, mode: str, model: torch.nn.Module) -> int:
    """How many times the full protocol's aug data set is repeated (1: the passes are batch copies instead).

    The ``aug_passes`` augmented passes of one step are made as copies within each batch (HaarAugmentation
    ``copies``, one Haar draw per sample and copy): the same mean over passes x samples, in ``aug_passes``
    times fewer, larger batches. A model with BatchNorm would then normalise over the copies of a batch rather
    than over one pass, which is another computation: there the passes are repeated data set passes.
    """
    if config["protocol"] != "full" or mode != "aug" or config["orbit"] or not batch_coupled(model):
        return 1
    return int(config["aug_passes"])


def _batches(dataset: Dataset, batch: int, generator: torch.Generator | None = None) -> DataLoader:
    """Batches of ``batch`` samples in order (or shuffled by ``generator``).

    A :class:`~torch.utils.data.TensorDataset` is indexed once per batch (the same tensors as the default
    per-sample fetch and collate, without their per-sample overhead); no workers, no pinned memory.
    """
    sampler = RandomSampler(dataset, generator=generator) if generator else SequentialSampler(dataset)
    if isinstance(dataset, TensorDataset):
        return DataLoader(dataset, batch_size=None, sampler=BatchSampler(sampler, batch, drop_last=False))
    return DataLoader(dataset, batch_size=batch, sampler=sampler)


def _loader(config: dict, dataset: Dataset, mode: str, model: torch.nn.Module) -> tuple[DataLoader, int]:
    """The training loader and ``accumulate_grad_batches`` for the protocol."""
    n, batch = len(dataset), int(config["batch_size"])
    if config["protocol"] == "minibatch":
        return _batches(dataset, batch, torch.Generator().manual_seed(0)), 1
    if n % batch:
        raise ValueError(
            f"protocol 'full' averages the gradient over the whole data set in equal batches, but batch_size "
            f"{batch} does not divide the {n} samples; choose a divisor of {n}"
        )
    passes = _passes_as_data(config, mode, model)
    data = ConcatDataset([dataset] * passes) if passes > 1 else dataset
    return _batches(data, batch), passes * n // batch


@torch.no_grad()
def evaluate(
    model: SymmetricTask, dataset: Dataset, probe: int, seed: int, batch: int = 512
) -> dict[str, float]:
    """Loss and score over ``dataset``; the functional equivariance error on its first ``probe`` samples."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch)
    loss = score = 0.0
    for x, y in loader:
        out = model(x)
        loss += float(model.loss(out, y)) * len(x)
        score += float(model.score(out, y)) * len(x)
    x, _ = next(iter(DataLoader(dataset, batch_size=probe)))
    in_action, out_action = model.data_actions()[0], model.output_action()
    g = in_action.group.sample(len(x), generator=torch.Generator().manual_seed(seed))
    fx = model(x)
    gfx = fx if out_action is None else out_action(g, fx)
    error = equivariance_error(model(in_action(g, x)), gfx, fx)["total"]
    model.train()
    n = len(dataset)
    return {"loss": loss / n, "accuracy": score / n, "equivariance_error": float(error)}


def train_run(
    config: dict,
    mode: str,
    seed: int,
    start: dict[str, torch.Tensor],
    dataset: Dataset,
    run_dir: Path,
    progress: Callback | None = None,
) -> dict:
    """Train one mode from the state ``start`` and return its ``result.json`` content.

    ``progress``: an extra callback reporting progress (:class:`ProgressLines`); Lightning's bar is shown when
    :func:`use_progress_bar` says so.
    """
    model = build_model(config)
    model.load_state_dict(start)
    projection = equivariant_init_(model, model.symmetry_spec())  # already in E: binds, changes nothing
    run_dir.mkdir(parents=True, exist_ok=True)
    recorder = TrajectoryRecorder(projection, projection.snapshot(), run_dir / "trajectory.json")
    loader, accumulate = _loader(config, dataset, mode, model)
    logger = TensorBoardLogger(
        save_dir=str(run_dir.parent), name="", version=run_dir.name, default_hp_metric=False
    )
    logger.log_hyperparams({"mode": mode, "seed": seed, "protocol": config["protocol"], "lr": config["lr"]})
    trainer = Trainer(
        max_epochs=int(config["epochs"]),
        accelerator=config["accelerator"],
        devices=1,
        logger=logger,
        callbacks=[*_callbacks(config, mode, model, seed), recorder, *([progress] if progress else [])],
        accumulate_grad_batches=accumulate,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=use_progress_bar(config["progress_bar"]),
        num_sanity_val_steps=0,
    )
    started = time.perf_counter()
    trainer.fit(model, loader)
    model.cpu()
    last = {k: v[-1] for k, v in recorder.series.items()}
    return {
        "status": "ok",
        "task": config["task"],
        "mode": mode,
        "seed": seed,
        "epochs": int(config["epochs"]),
        "steps": int(trainer.global_step),
        "seconds": time.perf_counter() - started,
        "distance_to_E": last["distance_to_E"],
        "relative_distance_to_E": last["relative_distance_to_E"],
        "distance_from_start": last["distance_from_start"],
        **evaluate(model, dataset, int(config["probe"]), seed),
    }


def build_model(config: dict) -> SymmetricTask:
    """The task's LightningModule with the config's ``model:`` arguments and ``lr``."""
    return TASKS[config["task"]](**config["model"], lr=float(config["lr"]))


def initial_state(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """The seed's equivariant starting point, shared by all modes: default init drawn from ``seed``, then
    projected onto E."""
    torch.manual_seed(seed)
    model = build_model(config)
    equivariant_init_(model, model.symmetry_spec(), preserve_norm=bool(config["preserve_norm"]))
    return copy.deepcopy(model.state_dict())


# --------------------------------------------------------------------------------------------------
# the comparison


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Lightning's per-run banners and the warnings that do not apply here (tiny in-memory data)."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def run_comparison(config: dict, echo=print) -> dict:
    """Train every mode and seed of ``config`` (skipping finished runs), then write the figure and table.

    Every run ends with one line through ``echo``. Without the progress bar (``progress_bar: false``, or
    ``auto`` when stdout is not a terminal) a run also says when it starts, and makes about
    ``progress_lines`` lines while it trains.

    Returns:
        ``{"root", "figure", "table_csv", "table_json", "rows", "failed"}``; ``failed`` lists the runs that
        raised, as ``(mode, seed, error)``.
    """
    root = Path(config["out_dir"]) / config["name"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if config["threads"]:
        torch.set_num_threads(int(config["threads"]))
    dataset = build_dataset(config["task"], **copy.deepcopy(config["data"]))
    total, done, failed = len(config["seeds"]) * len(config["modes"]), 0, []
    for seed in config["seeds"]:
        start = None
        for mode in config["modes"]:
            done += 1
            run_dir = root / mode / f"seed{seed}"
            result_path = run_dir / "result.json"
            tag = f"[{done}/{total}] {config['name']} {mode:<4} seed {seed}"
            if result_path.exists() and json.loads(result_path.read_text()).get("status") == "ok":
                echo(f"{tag}: finished before, skipped")
                continue
            try:
                progress = None
                if not use_progress_bar(config["progress_bar"]):
                    echo(f"{tag}: training {config['epochs']} epochs")
                    if int(config["progress_lines"]) > 0:
                        every = math.ceil(int(config["epochs"]) / (int(config["progress_lines"]) + 1))
                        progress = ProgressLines(tag, every, echo)
                start = start if start is not None else initial_state(config, seed)
                with _quiet():
                    result = train_run(config, mode, seed, start, dataset, run_dir, progress)
                (run_dir / "error.txt").unlink(missing_ok=True)
                echo(
                    f"{tag}: distance to E {result['distance_to_E']:.3e}, from start "
                    f"{result['distance_from_start']:.3e}, loss {result['loss']:.4f}, "
                    f"accuracy {result['accuracy']:.3f} ({result['seconds']:.1f} s)"
                )
            except Exception as err:  # a failed run is recorded and reported, and the others go on
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "error.txt").write_text(traceback.format_exc())
                result = {
                    "status": "failed",
                    "task": config["task"],
                    "mode": mode,
                    "seed": seed,
                    "error": repr(err),
                }
                failed.append((mode, seed, repr(err)))
                echo(f"{tag}: FAILED: {err!r} (traceback in {run_dir / 'error.txt'})")
            result_path.write_text(json.dumps(result, indent=2))
    runs = [r for r in load_runs(root) if r["mode"] in config["modes"] and r["seed"] in config["seeds"]]
    seeds = len(config["seeds"])
    title = f"{config['name']}: {config['protocol']} protocol, lr {config['lr']:g}, {seeds} seed(s)"
    figure = plot_comparison(runs, root / "figure.png", title=title)
    rows = summary_table(runs)
    table_csv, table_json = write_table(rows, root / "table")
    echo("\n" + format_table(rows))
    return {
        "root": root,
        "figure": figure,
        "table_csv": table_csv,
        "table_json": table_json,
        "rows": rows,
        "failed": failed,
    }


def report(outcome: dict, echo=print) -> None:
    """Say where the figure, table and logs are, how to open TensorBoard, and which runs failed."""
    root = outcome["root"]
    echo(f"\nfigure:      {outcome['figure']}")
    echo(f"table:       {outcome['table_csv']}  (and {outcome['table_json'].name})")
    echo(f"TensorBoard: {root}/<mode>/seed<k>/   open with:  tensorboard --logdir {root}")
    if outcome["failed"]:
        echo(f"\n{len(outcome['failed'])} run(s) FAILED (re-running retries them):")
        for mode, seed, error in outcome["failed"]:
            echo(f"  {mode} seed {seed}: {error}  -> {root / mode / f'seed{seed}' / 'error.txt'}")


def main(argv: list[str] | None = None) -> int:
    """Console script ``lightning-equi-compare``."""
    parser = argparse.ArgumentParser(
        prog="lightning-equi-compare",
        description="Train a task as nom, aug and equi for several seeds; draw the paper's Figure 1.",
    )
    parser.add_argument(
        "config", help=f"a YAML config, or a built-in one: {', '.join(sorted(_builtin_names()))}"
    )
    parser.add_argument("--seeds", type=int, help="number of seeds (0 .. n-1)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--protocol", choices=PROTOCOLS)
    parser.add_argument("--out-dir", help="root folder of the runs (default: runs)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. model.channels=8"
    )
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set)
    for key in ("seeds", "epochs", "protocol", "out_dir"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    outcome = run_comparison(load_config(args.config, overrides))
    report(outcome)
    return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
