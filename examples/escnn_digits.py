"""A steerable CNN on rotated digits, trained four ways: nom, aug, equi and escnn-native.

The digits are scikit-learn's ``load_digits`` (8x8, no download), upsampled to 19x19 and padded to
29x29 so that every rotation keeps the digit inside the image. The models train on *upright* digits
and are tested on upright digits and on rotated ones: by exact group elements (quarter turns, and
mirrors for D4, by ``rot90``/``flip``) for C4 and D4, by uniform random angles (bilinear
interpolation) for SO2.

One escnn network (``R2Conv`` + batch norm + nonlinearity + pooling, an invariant head) is trained

* ``escnn``: as escnn builds it, coefficients on escnn's steerable basis;
* ``nom``, ``aug``, ``equi``: in the dense parameter space of
  :func:`~lightning_equi.adapters.escnn_convert.to_dense` (a free filter per layer); ``aug`` with
  :class:`~lightning_equi.callbacks.HaarAugmentation`, ``equi`` with
  :class:`~lightning_equi.callbacks.EquivariantProjection`.

All four start from the same network function: escnn's initialisation, which lies in E, so the dense
runs start where Corollary 1 and Proposition 3 of the paper look: ``nom`` leaves E at once, ``aug``
drifts away from it more slowly, ``equi`` stays (watch ``equi/dist_to_E/total`` in TensorBoard).
The E of C4 and D4 is the ``"grid"`` one (every filter fixed by the group acting on the pixel grid,
larger than escnn's band-limited span); SO2 uses the span of escnn's basis.

Each run logs to TensorBoard under ``<out>/<mode>`` (``tensorboard --logdir <out>``). The table at the
end gives test accuracy and the functional equivariance error ``E_g ||f(g x) - f(x)|| / ||f(x)||`` of
the logits on test digits: over every element for C4/D4 (exact), and for SO2 over the quarter turns
(exact on the pixel grid) and over 16 equally spaced angles (``approx``: includes the interpolation
error of rotating the input, so it is never zero).

Run::

    python examples/escnn_digits.py                  # C4, a few minutes on 2 CPU cores
    python examples/escnn_digits.py --group D4
    python examples/escnn_digits.py --group SO2      # norm nonlinearities on irreps
"""

from __future__ import annotations

import argparse
import logging
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_equi.actions import ImageAction
from lightning_equi.adapters import escnn_spec, grid_lint, require_escnn, to_dense
from lightning_equi.callbacks import build_callbacks
from lightning_equi.groups import get_group
from lightning_equi.metrics import model_equivariance_error
from lightning_equi.subspace import ModelProjection

GROUPS = ("C4", "D4", "SO2")
MODES = ("nom", "aug", "equi", "escnn")
SIZE, DIGIT = 29, 19  # image side, digit side after upsampling (19 * sqrt(2) < 29: rotations stay inside)
SO2_ANGLES = 16  # grid of angles for SO2's approximate equivariance error
# default fields in the first layer: 24 channels for C4, 32 for D4, 21 for SO2 (7 per field: irreps 0-3;
# escnn's norm nonlinearity and batch norm make SO2 ~10x slower per channel than ReLU)
WIDTHS = {"C4": 6, "D4": 4, "SO2": 3}


# ---- data ------------------------------------------------------------------------------------------


def load_digits_images(group: str, test_fraction: float = 0.25, seed: int = 0) -> dict[str, Tensor]:
    """Upright train/test digits ``(N, 1, 29, 29)`` in [0, 1], and the test digits rotated by ``group``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(DIGIT, DIGIT), mode="bilinear", align_corners=False)
    pad = (SIZE - DIGIT) // 2
    x = F.pad(x, (pad, SIZE - DIGIT - pad, pad, SIZE - DIGIT - pad))
    y = torch.tensor(digits.target, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(x.shape[0], generator=generator)
    n_test = int(round(test_fraction * x.shape[0]))
    test, train = order[:n_test], order[n_test:]
    g = get_group(group).sample(n_test, generator=generator)
    rotated = ImageAction(group)(g, x[test])  # exact rot90/flips for C4/D4, bilinear for SO2
    return {
        "x_train": x[train],
        "y_train": y[train],
        "x_test": x[test],
        "y_test": y[test],
        "x_rot": rotated,
        "y_rot": y[test],
    }


# ---- the steerable network ----------------------------------------------------------------------


class SteerableCNN(nn.Module):
    """Three steerable conv blocks, an invariant pooling of each field, a spatial mean, a linear head.

    Takes and returns plain tensors: ``(B, 1, 29, 29)`` images -> ``(B, 10)`` logits, invariant under
    the group up to the layers' equivariance.
    """

    def __init__(self, group: str = "C4", width: int | None = None, classes: int = 10) -> None:
        super().__init__()
        width = WIDTHS.get(group, 1) if width is None else width
        escnn = require_escnn()
        enn, gspaces = escnn.nn, escnn.gspaces
        if group in ("C4", "D4"):
            gs = gspaces.rot2dOnR2(4) if group == "C4" else gspaces.flipRot2dOnR2(4)
            fields = [gs.regular_repr]
        elif group == "SO2":
            gs = gspaces.rot2dOnR2(-1, maximum_frequency=3)
            fields = [gs.irrep(k) for k in range(4)]
        else:
            raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
        self.group = group
        self.in_type = enn.FieldType(gs, [gs.trivial_repr])
        types = [enn.FieldType(gs, n * fields) for n in (width, 2 * width, 2 * width)]
        blocks: list[nn.Module] = []
        prev = self.in_type
        for i, (ft, k) in enumerate(zip(types, (5, 5, 3), strict=True)):
            blocks.append(enn.R2Conv(prev, ft, k, padding=k // 2))
            if group == "SO2":  # irreps: norm nonlinearities and per-field batch norm
                blocks += [enn.IIDBatchNorm2d(ft), enn.NormNonLinearity(ft, "n_sigmoid")]
            else:  # regular fields: pointwise nonlinearities
                blocks += [enn.InnerBatchNorm(ft), enn.ReLU(ft)]
            if i < 2:  # 29 -> 15 -> 8: kernel 3, stride 2, padding 1 is centred on odd widths
                blocks.append(enn.PointwiseAvgPool2D(ft, 3, stride=2, padding=1))
            prev = ft
        blocks.append(enn.NormPool(prev) if group == "SO2" else enn.GroupPooling(prev))
        self.features = enn.SequentialModule(*blocks)
        self.head = nn.Linear(self.features.out_type.size, classes)

    def forward(self, x: Tensor) -> Tensor:
        z = self.features(self.in_type(x)).tensor
        return self.head(z.mean(dim=(-2, -1)))


class DigitsClassifier(LightningModule):
    """Cross-entropy classification of digits; validation on the rotated test digits."""

    def __init__(self, net: nn.Module, lr: float = 3e-3, dense: bool = True) -> None:
        super().__init__()
        self.net, self.lr, self.dense = net, lr, dense

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def symmetry_spec(self) -> ModelProjection:
        """The spec of the dense steerable layers (what ``equi`` projects onto, what the monitor measures)."""
        if not self.dense:
            raise ValueError("the escnn-native model has no dense weights to project; use to_dense")
        return escnn_spec(self)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", (logits.argmax(1) == y).float().mean())
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val/loss_rotated", F.cross_entropy(logits, y))
        self.log("val/acc_rotated", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


# ---- evaluation --------------------------------------------------------------------------------------


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 256) -> float:
    model.eval()
    correct = sum(
        int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch)
    )
    return correct / len(x)


@torch.no_grad()
def equivariance_errors(model: nn.Module, x: Tensor, group: str) -> dict[str, float]:
    """Mean ``||f(g x) - f(x)|| / ||f(x)||`` of the logits: ``exact`` over elements acting exactly on the
    grid (every element of C4/D4; the quarter turns of SO2), ``approx`` over 16 angles (SO2 only)."""
    exact_group = "C4" if group == "SO2" else group
    out = {}
    for key, action, g in (
        ("exact", ImageAction(exact_group), get_group(exact_group).elements()),
        (
            "approx",
            ImageAction("SO2"),
            torch.arange(SO2_ANGLES, dtype=torch.float64) * (2 * math.pi / SO2_ANGLES),
        ),
    ):
        if key == "approx" and group != "SO2":
            continue
        g_rep = g.repeat_interleave(x.shape[0], dim=0)  # every element for every sample
        out[key] = float(model_equivariance_error(model, x, g_rep, action, exact=True)["total"])
    return out


# ---- one run per mode ----------------------------------------------------------------------------------


def build_model(mode: str, args: argparse.Namespace) -> DigitsClassifier:
    """The escnn network (same seed in every mode), made dense for nom/aug/equi."""
    seed_everything(args.seed, verbose=False)
    net = SteerableCNN(args.group, width=args.width)
    if mode == "escnn":
        return DigitsClassifier(net, lr=args.lr, dense=False)
    dense, _ = to_dense(net, invariant=["head"])  # escnn's expanded filters: the same function, in E
    return DigitsClassifier(dense, lr=args.lr, dense=True)


def run_mode(mode: str, args: argparse.Namespace, data: dict[str, Tensor]) -> dict[str, Any]:
    """Train one mode, log to ``<out>/<mode>``, and return its row of the table."""
    model = build_model(mode, args)
    callbacks = (
        []
        if mode == "escnn"
        else build_callbacks(
            mode, group=args.group, inputs="image", model=model, seed=args.seed, every_n_steps=args.log_every
        )
    )
    logger = TensorBoardLogger(save_dir=str(args.out), name="", version=mode, default_hp_metric=False)
    trainer = Trainer(
        max_epochs=args.epochs,
        max_steps=args.max_steps,
        logger=logger,
        callbacks=callbacks,
        accelerator="cpu",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=args.log_every,
        num_sanity_val_steps=0,
    )
    train = DataLoader(
        TensorDataset(data["x_train"], data["y_train"]),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,  # a last batch of a few digits would skew the batch-norm running statistics
        generator=torch.Generator().manual_seed(args.seed),
    )
    val = DataLoader(TensorDataset(data["x_rot"], data["y_rot"]), batch_size=256)
    start = time.perf_counter()
    trainer.fit(model, train, val)
    seconds = time.perf_counter() - start
    probe = data["x_test"][: args.probe]
    row = {
        "mode": mode,
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "acc_upright": accuracy(model, data["x_test"], data["y_test"]),
        "acc_rotated": accuracy(model, data["x_rot"], data["y_rot"]),
        **{f"equi_err_{k}": v for k, v in equivariance_errors(model, probe, args.group).items()},
        "seconds": seconds,
        "steps": trainer.global_step,
    }
    logger.log_metrics(
        {f"test/{k}": float(v) for k, v in row.items() if k != "mode"}, step=trainer.global_step
    )
    logger.finalize("success")
    return row


def format_table(rows: Sequence[dict[str, Any]], group: str) -> str:
    """The results as a Markdown table."""
    cols = [k for k in rows[0] if k != "mode"]
    lines = ["| mode | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for row in rows:
        cells = [f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in cols]
        lines.append(f"| {row['mode']} | " + " | ".join(cells) + " |")
    exact = "every element of " + group if group != "SO2" else "the quarter turns (exact on the grid)"
    lines.append(f"\nequi_err_exact: mean ||f(gx) - f(x)|| / ||f(x)|| of the logits over {exact}.")
    if group == "SO2":
        lines.append(
            f"equi_err_approx: over {SO2_ANGLES} equally spaced angles; approximate: rotating the input "
            "interpolates it, so even an exactly equivariant network shows this error."
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--group", choices=GROUPS, default="C4")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (-1: epochs decide)")
    p.add_argument("--out", type=Path, default=Path("lightning_logs/escnn_digits"))
    p.add_argument(
        "--width",
        type=int,
        default=None,
        help=f"fields in the first layer, twice as many after (default per group: {WIDTHS})",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe", type=int, default=64, help="test digits for the equivariance error")
    p.add_argument("--log-every", type=int, default=10)
    args = p.parse_args(argv)
    if args.width is None:
        args.width = WIDTHS[args.group]
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Train every mode, print the table, and return its rows."""
    args = parse_args(argv)
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # one table, not four banners
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*py3nj.*")
            rows = _run_all(args)
    finally:
        lightning_log.setLevel(level)
    return rows


def _run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    data = load_digits_images(args.group, seed=args.seed)
    lint = grid_lint(SteerableCNN(args.group, width=args.width).features, (SIZE, SIZE), warn=False)
    for message in lint:
        print("grid lint:", message)
    rows = []
    for mode in args.modes:
        rows.append(run_mode(mode, args, data))
        print(f"{mode}: done in {rows[-1]['seconds']:.1f} s", flush=True)
    n_train, n_test = len(data["x_train"]), len(data["x_rot"])
    print(f"\n{args.group}: {n_train} upright training digits, {n_test} rotated test digits")
    print(format_table(rows, args.group))
    print(f"\nTensorBoard logs: tensorboard --logdir {args.out}")
    return rows


if __name__ == "__main__":
    main()
