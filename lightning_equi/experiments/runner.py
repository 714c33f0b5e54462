"""The three-mode comparison: train one task as nom, aug and equi for several seeds, then draw and tabulate.

For each seed the model is built and projected onto E once
(:func:`~lightning_equi.subspace.equivariant_init_`), and all three modes start from that same state. Each
run trains with its own Lightning ``Trainer``, logs to TensorBoard in ``<out>/<name>/<mode>/seed<k>/`` and
leaves ``trajectory.json`` (distance to E and distance from the start after every epoch) and
``result.json`` there. A run whose ``result.json`` says ``"ok"`` is skipped when the comparison is run
again; a run that raises is recorded as failed (with its traceback in ``error.txt``), reported at the end,
and retried on the next run.

The protocol of a run (its loader and the callbacks of its mode) is in
:mod:`~lightning_equi.experiments.protocol`, the config in :mod:`~lightning_equi.experiments.config`, what a
run records while it trains in :mod:`~lightning_equi.experiments.recording`.
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
from pathlib import Path

import torch
import yaml
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, Dataset

from lightning_equi.experiments.config import PROTOCOLS, builtin_names, load_config, parse_overrides
from lightning_equi.experiments.data import build_dataset
from lightning_equi.experiments.figure import (
    format_table,
    load_runs,
    plot_comparison,
    summary_table,
    write_table,
)
from lightning_equi.experiments.models import SymmetricTask, network_class
from lightning_equi.experiments.protocol import mode_callbacks, train_loader
from lightning_equi.experiments.recording import ProgressLines, TrajectoryRecorder, use_progress_bar
from lightning_equi.metrics import model_equivariance_error
from lightning_equi.subspace import equivariant_init_

__all__ = [
    "run_comparison",
    "report",
    "train_run",
    "evaluate",
    "build_model",
    "initial_state",
    "main",
]

# --------------------------------------------------------------------------------------------------
# one run


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
    error = model_equivariance_error(model, x, g, in_action, out_action, exact=True)["total"]
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
    loader, accumulate = train_loader(config, dataset, mode, model)
    logger = TensorBoardLogger(
        save_dir=str(run_dir.parent), name="", version=run_dir.name, default_hp_metric=False
    )
    logger.log_hyperparams(
        {
            "mode": mode,
            "seed": seed,
            **{k: config[k] for k in ("protocol", "lr", "variant", "sampler", "optimizer")},
        }
    )
    trainer = Trainer(
        max_epochs=int(config["epochs"]),
        accelerator=config["accelerator"],
        devices=1,
        logger=logger,
        callbacks=[*mode_callbacks(config, mode, model, seed), recorder, *([progress] if progress else [])],
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
    """The task's LightningModule in the config's ``variant``, with its ``model:`` arguments, ``lr`` and
    ``optimizer``."""
    cls = network_class(config["task"], config["variant"])
    return cls(**config["model"], lr=float(config["lr"]), optimizer=config["optimizer"])


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
    dataset = build_dataset(config["task"], config["variant"], **copy.deepcopy(config["data"]))
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
        "config", help=f"a YAML config, or a built-in one: {', '.join(sorted(builtin_names()))}"
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
