"""The eq_aug_reg experiment (Nordenfors and Flinth, arXiv 2502.06547) with modes reg and aug+reg.

Three studies of the penalty ``gamma/2 sum_k ||A_k - Pi_E A_k||^2``, each an ordinary ``Trainer.fit`` per
run with the callbacks of :func:`~lightning_equi.callbacks.build_callbacks`, and each ending in a JSON file
of runs, a table and a figure:

* ``attractor`` -- their setting: the C4 CNN of :class:`OmegaCNN`, plain SGD ``lr = 1e-3``, batch 10, data
  term ``CE / 10`` (their ``loss = CE(pred, y) / K + gamma/2 * reg`` with ``K`` the batch size), arms
  ``nom+reg`` and ``aug+reg`` (one uniform ``rot90`` per sample) for each gamma, and ``equi``; every arm
  starts from one equivariant initialisation per seed, the non-equivariant arms with an E-perp
  perturbation of ``1e-3`` per entry (their ``perturb_weights``). Checks: the final distance to E of
  ``nom+reg`` falls like ``1 / gamma``; ``aug+reg`` stays below ``nom+reg`` at every gamma;
* ``divergence`` -- the discrete-time trap: ``nom+reg`` with the additive penalty (explicit SGD) and with
  the proximal step, at ``lr * gamma`` in ``{0.5, 1, 2.5, 10, 100}``: explicit SGD diverges beyond 2;
* ``accuracy`` -- accuracy against exactness on approximately symmetric data: digits turned by a random
  quarter turn that prefers the upright orientation (``rotation_bias``: the share of samples left upright
  on top of the uniform draw), held-out accuracy and the functional equivariance error against gamma
  (proximal form), beside nom, aug and equi.

Data: scikit-learn's 8 x 8 digits, upsampled to 16 x 16 by repeating pixels (which commutes with
``rot90`` exactly), split 1500 / 297. MNIST (their data) is not shipped; the sizes are arguments, so a
user can run at their size.

Run ``python -m lightning_equi.experiments.eq_aug_reg attractor --out docs/results/reg`` (and
``divergence``, ``accuracy``); ``--help`` lists the sizes.

Example:
    >>> from lightning_equi.subspace import resolve_spec
    >>> model = OmegaCNN()
    >>> projection = resolve_spec(model)
    >>> [e.projector.dim for e in projection.parameters]  # (mid, side, corner) per pair; 4 orbits of 4x4
    [48, 768, 640]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_equi.callbacks import build_callbacks
from lightning_equi.subspace import SymmetrySpec, equivariant_init_, resolve_spec

__all__ = [
    "OmegaCNN",
    "digits_16",
    "rotation_biased",
    "perturb_perp_",
    "train_arm",
    "run_attractor",
    "run_divergence",
    "run_accuracy",
    "loglog_slope",
    "main",
]

GAMMAS = (1.0, 10.0, 100.0, 1000.0)


class OmegaCNN(L.LightningModule):
    """Their C4 CNN: conv 1->16 (3x3) -> AvgPool 2 -> tanh -> LayerNorm (no affine) -> conv 16->16 -> pool
    -> tanh -> LayerNorm -> Linear to 10 (no bias), on ``size x size`` images.

    Every channel is a scalar field (their projection averages each kernel over its four ``rot90``), the
    support is the full 3 x 3, the head reads the pooled pixel grid and its logits are invariant. No biases
    anywhere, so the penalty acts on the three weight tensors, as in their code.

    Args:
        size: the image side (a multiple of 4).
        hidden: channels of the two convolutions (theirs: 16).
        lr, momentum: plain SGD (theirs: ``1e-3``, no momentum).
        loss_divisor: the data term is ``CE / loss_divisor`` (theirs: the batch size, 10).
    """

    def __init__(
        self,
        size: int = 16,
        hidden: int = 16,
        lr: float = 1e-3,
        momentum: float = 0.0,
        loss_divisor: float = 10.0,
    ) -> None:
        super().__init__()
        if size % 4:
            raise ValueError(f"OmegaCNN: size must be a multiple of 4 (two 2x2 poolings), got {size}")
        self.save_hyperparameters()
        self.conv1 = nn.Conv2d(1, hidden, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1, bias=False)
        self.head = nn.Linear(hidden * (size // 4) ** 2, 10, bias=False)
        self.norm1 = nn.LayerNorm((size // 2, size // 2), elementwise_affine=False)
        self.norm2 = nn.LayerNorm((size // 4, size // 4), elementwise_affine=False)

    def symmetry_spec(self) -> SymmetrySpec:
        side = self.hparams.size // 4
        return (
            SymmetrySpec("C4")
            .layer("conv1", "trivial", "trivial")
            .layer("conv2", "trivial", "trivial")
            .layer("head", f"grid{side}x{side}", "trivial")
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(torch.tanh(F.avg_pool2d(self.conv1(x), 2)))
        x = self.norm2(torch.tanh(F.avg_pool2d(self.conv2(x), 2)))
        return self.head(x.flatten(1))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y) / self.hparams.loss_divisor

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)


# ---- data ------------------------------------------------------------------------------------------------


def digits_16(train: int = 1500) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's digits at 16 x 16 (each pixel repeated 2 x 2), split into ``train`` and the rest."""
    from lightning_equi.experiments.data import digits

    x, y = digits()
    x = x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    return TensorDataset(x[:train], y[:train]), TensorDataset(x[train:], y[train:])


def rotation_biased(data: TensorDataset, bias: float, seed: int) -> TensorDataset:
    """Each image turned by ``k`` quarter turns, ``P(k) = (1 - bias) / 4 + bias [k = 0]``.

    ``bias = 0``: C4-symmetric data (uniform orientations); ``bias = 1``: upright as drawn. A small bias is
    the approximately symmetric case, where the orientation still tells a 6 from a 9.

    Example:
        >>> data = TensorDataset(torch.arange(16.0).reshape(1, 1, 4, 4), torch.zeros(1, dtype=torch.long))
        >>> torch.equal(rotation_biased(data, 1.0, seed=0).tensors[0], data.tensors[0])
        True
    """
    x, y = data.tensors
    gen = torch.Generator().manual_seed(seed)
    k = torch.randint(4, (len(x),), generator=gen)
    k[torch.rand(len(x), generator=gen) < bias] = 0
    turned = torch.stack([torch.rot90(img, int(q), dims=(-2, -1)) for img, q in zip(x, k, strict=True)])
    return TensorDataset(turned, y)


def perturb_perp_(model: nn.Module, sigma: float, seed: int) -> None:
    """Add ``noise - Pi_E noise`` (``noise ~ N(0, sigma^2)`` per entry) to every constrained weight: their
    ``perturb_weights``, an E-perp step away from an equivariant start."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for e in resolve_spec(model).parameters:
            noise = sigma * torch.randn(e.tensor.shape, generator=gen, dtype=e.tensor.dtype)
            e.tensor.add_(noise - e.projector.project(noise))


# ---- one run ---------------------------------------------------------------------------------------------


class _DistanceRecorder(L.Callback):
    """``||A - Pi_E A||`` over the model every ``every`` optimizer steps (and at the start)."""

    def __init__(self, every: int) -> None:
        self.every, self.steps, self.distances = every, [], []
        self._projection = None

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.steps.append(trainer.global_step)
        self.distances.append(float(self._projection.total_distance()))

    def on_train_start(self, trainer, pl_module) -> None:
        self._projection = resolve_spec(pl_module)  # bound once: the record is every few steps
        self._record(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self._record(trainer, pl_module)
            if not math.isfinite(self.distances[-1]):
                trainer.should_stop = True  # a diverged run: nothing more to learn from it


def _mode_of(arm: str) -> str:
    return {"nom+reg": "reg", "aug+reg": "aug+reg", "nom": "nom", "aug": "aug", "equi": "equi"}[arm]


def train_arm(
    arm: str,
    start: dict[str, Tensor],
    data: TensorDataset,
    steps: int,
    seed: int,
    gamma: float = 0.0,
    penalty: str = "additive",
    model_options: dict | None = None,
    record_every: int = 20,
    batch_size: int = 10,
    shuffle: bool = True,
) -> tuple[OmegaCNN, _DistanceRecorder]:
    """Train ``arm`` (``nom+reg``, ``aug+reg``, ``nom``, ``aug`` or ``equi``) for ``steps`` SGD steps from
    ``start``; returns the model and its distance record."""
    model = OmegaCNN(**(model_options or {}))
    model.load_state_dict(start)
    mode = _mode_of(arm)
    options: dict = {"monitor": False}
    if mode in ("aug", "aug+reg"):
        options.update(group="C4", inputs="image", seed=seed)
    if mode in ("reg", "aug+reg"):
        options.update(gamma=gamma, penalty=penalty)
    if mode == "equi":
        options.update(init="project")
    recorder = _DistanceRecorder(record_every)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    loader = DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=True)
    trainer = L.Trainer(
        max_steps=steps,
        max_epochs=-1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        callbacks=[*build_callbacks(mode, model=model, **options), recorder],
    )
    trainer.fit(model, loader)
    return model, recorder


def _start(seed: int, model_options: dict | None = None) -> dict[str, Tensor]:
    torch.manual_seed(seed)
    model = OmegaCNN(**(model_options or {}))
    equivariant_init_(model, model.symmetry_spec(), preserve_norm=True)
    return copy.deepcopy(model.state_dict())


def _quiet() -> warnings.catch_warnings:
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    caught = warnings.catch_warnings()
    caught.__enter__()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    return caught


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``.

    Example:
        >>> round(loglog_slope([1, 10, 100], [3.0, 0.3, 0.03]), 6)
        -1.0
    """
    lx, ly = [math.log(v) for v in x], [math.log(v) for v in y]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def _tail_mean(values: Sequence[float], share: float = 0.2) -> float:
    """The mean of the last ``share`` of a record: the stationary distance, averaged over SGD's noise."""
    tail = values[-max(1, int(len(values) * share)) :]
    return statistics.fmean(tail)


def _save(fig, title: str, path: Path) -> None:
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _write(out: Path, name: str, payload: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1))
    return path


# ---- study 1: the attractor ------------------------------------------------------------------------------


def run_attractor(
    out: Path,
    seeds: int = 3,
    steps: int = 3000,
    gammas: Sequence[float] = GAMMAS,
    penalty: str = "additive",
    shuffle: bool = True,
    record_every: int = 20,
    echo=print,
) -> dict:
    """nom+reg and aug+reg at each gamma, and equi, for ``seeds`` seeds; ``attractor.json`` and ``.png``."""
    caught = _quiet()
    train, _ = digits_16()
    runs = []
    try:
        for seed in range(seeds):
            start = _start(seed)
            arms = [(arm, g) for g in gammas for arm in ("nom+reg", "aug+reg")] + [("equi", 0.0)]
            for arm, gamma in arms:
                begin = time.perf_counter()
                model = OmegaCNN()
                model.load_state_dict(start)
                if arm != "equi":
                    perturb_perp_(model, 1e-3, seed)
                _, rec = train_arm(
                    arm,
                    model.state_dict(),
                    train,
                    steps,
                    seed,
                    gamma,
                    penalty,
                    None,
                    record_every,
                    10,
                    shuffle,
                )
                runs.append(
                    {
                        "arm": arm,
                        "gamma": gamma,
                        "seed": seed,
                        "steps": rec.steps,
                        "distance": rec.distances,
                        "final": _tail_mean(rec.distances),
                        "seconds": time.perf_counter() - begin,
                    }
                )
                echo(
                    f"attractor seed {seed} {arm:<7} gamma {gamma:g}: final distance {runs[-1]['final']:.3e}"
                )
    finally:
        caught.__exit__(None, None, None)
    summary = _attractor_summary(runs, gammas)
    payload = {
        "settings": {
            "seeds": seeds,
            "steps": steps,
            "gammas": list(gammas),
            "penalty": penalty,
            "shuffle": shuffle,
            "lr": 1e-3,
            "batch_size": 10,
            "data": "sklearn digits 16x16, 1500 train",
        },
        "summary": summary,
        "runs": runs,
    }
    _write(out, "attractor", payload)
    _plot_attractor(payload, out / "attractor.png")
    return payload


def _attractor_summary(runs: list[dict], gammas: Sequence[float]) -> dict:
    def median(arm: str, gamma: float) -> float:
        return statistics.median(r["final"] for r in runs if r["arm"] == arm and r["gamma"] == gamma)

    nom = [median("nom+reg", g) for g in gammas]
    aug = [median("aug+reg", g) for g in gammas]
    stable = [g for g in gammas if g * 1e-3 < 2]
    return {
        "gammas": list(gammas),
        "nom+reg": nom,
        "aug+reg": aug,
        "equi": statistics.median(r["final"] for r in runs if r["arm"] == "equi"),
        "slope_nom+reg": loglog_slope(stable, [nom[list(gammas).index(g)] for g in stable]),
        "slope_aug+reg": loglog_slope(stable, [aug[list(gammas).index(g)] for g in stable]),
        "aug_below_nom": [a < n for a, n in zip(aug, nom, strict=True)],
    }


def _plot_attractor(payload: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    runs, summary = payload["runs"], payload["summary"]
    gammas = summary["gammas"]
    fig = Figure(figsize=(11, 4))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    colours = dict(zip(gammas, ["tab:purple", "tab:blue", "tab:orange", "tab:red"], strict=False))
    for gamma in gammas:
        for arm, style in (("nom+reg", ":"), ("aug+reg", "-")):
            chosen = [r for r in runs if r["arm"] == arm and r["gamma"] == gamma]
            steps = chosen[0]["steps"]
            median = [statistics.median(r["distance"][i] for r in chosen) for i in range(len(steps))]
            left.plot(steps, median, style, color=colours.get(gamma), label=f"{arm}, $\\gamma$={gamma:g}")
    equi = [r for r in runs if r["arm"] == "equi"]
    left.plot(
        equi[0]["steps"],
        [max(v, 1e-12) for v in equi[0]["distance"]],
        "-",
        color="tab:green",
        label="equi (0, drawn at 1e-12)",
    )
    left.set_yscale("log")
    left.set_xlabel("SGD step")
    left.set_ylabel(r"$\|A - \Pi_E A\|$ (median over seeds)")
    left.legend(fontsize=7, ncol=2)
    for arm, marker in (("nom+reg", "o:"), ("aug+reg", "s-")):
        right.loglog(gammas, summary[arm], marker, label=f"{arm} (slope {summary['slope_' + arm]:.2f})")
    ref = [summary["nom+reg"][0] / g * gammas[0] for g in gammas]
    right.loglog(gammas, ref, "--", color="grey", label=r"$\propto 1/\gamma$")
    right.set_xlabel(r"$\gamma$")
    right.set_ylabel("final distance to E (median)")
    right.legend(fontsize=8)
    s = payload["settings"]
    title = "eq_aug_reg: C4 CNN, digits 16x16, SGD lr 1e-3, batch 10"
    _save(fig, f"{title}, {s['steps']} steps, {s['seeds']} seeds, {s['penalty']} penalty", path)


# ---- study 2: explicit SGD against the proximal step -----------------------------------------------------


def run_divergence(
    out: Path,
    steps: int = 300,
    eta_gammas: Sequence[float] = (0.5, 1.0, 2.5, 10.0, 100.0),
    seed: int = 0,
    echo=print,
) -> dict:
    """nom+reg at ``lr = 1e-3`` with both forms at each ``lr * gamma``; ``divergence.json`` and ``.png``."""
    caught = _quiet()
    train, _ = digits_16()
    runs = []
    try:
        start = _start(seed)
        model = OmegaCNN()
        model.load_state_dict(start)
        perturb_perp_(model, 1e-3, seed)
        for eta_gamma in eta_gammas:
            for penalty in ("additive", "proximal"):
                _, rec = train_arm(
                    "nom+reg", model.state_dict(), train, steps, seed, eta_gamma / 1e-3, penalty, None, 1
                )
                finite = [d for d in rec.distances if math.isfinite(d)]
                runs.append(
                    {
                        "eta_gamma": eta_gamma,
                        "penalty": penalty,
                        "steps": rec.steps[: len(finite)],
                        "distance": finite,
                        "diverged": len(finite) < len(rec.distances) or finite[-1] > 1e3 * finite[0],
                        "max": max(finite),
                    }
                )
                echo(f"divergence lr*gamma {eta_gamma:g} {penalty:<8}: max distance {runs[-1]['max']:.3e}")
    finally:
        caught.__exit__(None, None, None)
    payload = {"settings": {"steps": steps, "lr": 1e-3, "seed": seed, "arm": "nom+reg"}, "runs": runs}
    _write(out, "divergence", payload)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for i, eta_gamma in enumerate(eta_gammas):
        for r in runs:
            if r["eta_gamma"] == eta_gamma:
                style = "-" if r["penalty"] == "proximal" else ":"
                ax.plot(
                    r["steps"],
                    r["distance"],
                    style,
                    color=f"C{i}",
                    label=f"{r['penalty']}, $\\eta\\gamma$={eta_gamma:g}",
                )
    ax.set_yscale("log")
    ax.set_xlabel("SGD step (lr 1e-3)")
    ax.set_ylabel(r"$\|A - \Pi_E A\|$")
    ax.set_title(
        "explicit SGD (dotted) diverges for $\\eta\\gamma > 2$; the proximal step (solid) does not",
        fontsize=8,
    )
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "divergence.png", dpi=110)
    return payload


# ---- study 3: accuracy against exactness -----------------------------------------------------------------


def _evaluate(model: OmegaCNN, data: TensorDataset) -> dict[str, float]:
    from lightning_equi.actions import ImageAction
    from lightning_equi.metrics import model_equivariance_error

    model.eval()
    x, y = data.tensors
    with torch.no_grad():
        accuracy = float((model(x).argmax(-1) == y).float().mean())
    g = torch.arange(1, 4).repeat(len(x))  # every non-trivial quarter turn of every sample
    error = model_equivariance_error(model, x.repeat_interleave(3, 0), g, ImageAction("C4"), None, exact=True)
    return {"accuracy": accuracy, "equivariance_error": float(error["total"])}


def run_accuracy(
    out: Path,
    seeds: int = 3,
    steps: int = 1500,
    gammas: Sequence[float] = (0.1, 1.0, 10.0, 100.0, 1000.0),
    rotation_bias: float = 0.3,
    lr: float = 0.05,
    echo=print,
    name: str = "accuracy",
) -> dict:
    """Held-out accuracy and equivariance error against gamma (aug+reg and nom+reg, proximal), beside nom,
    aug and equi, on rotation-biased digits; ``<name>.json`` and ``.png``."""
    caught = _quiet()
    train, test = digits_16()
    options = {"lr": lr, "momentum": 0.9, "loss_divisor": 1.0}
    runs = []
    try:
        for seed in range(seeds):
            tr, te = (
                rotation_biased(train, rotation_bias, seed),
                rotation_biased(test, rotation_bias, 100 + seed),
            )
            start = _start(seed, options)
            arms = [("nom", 0.0), ("aug", 0.0), ("equi", 0.0)]
            arms += [(arm, g) for g in gammas for arm in ("nom+reg", "aug+reg")]
            for arm, gamma in arms:
                model, _ = train_arm(arm, start, tr, steps, seed, gamma, "proximal", options, 10**9)
                runs.append({"arm": arm, "gamma": gamma, "seed": seed, **_evaluate(model, te)})
                echo(
                    f"accuracy seed {seed} {arm:<7} gamma {gamma:g}: accuracy {runs[-1]['accuracy']:.3f}, "
                    f"equivariance error {runs[-1]['equivariance_error']:.2e}"
                )
    finally:
        caught.__exit__(None, None, None)
    payload = {
        "settings": {
            "seeds": seeds,
            "steps": steps,
            "gammas": list(gammas),
            "rotation_bias": rotation_bias,
            "optimizer": f"SGD lr {lr} momentum 0.9",
            "batch_size": 10,
            "penalty": "proximal",
        },
        "runs": runs,
    }
    _write(out, name, payload)
    _plot_accuracy(payload, out / f"{name}.png")
    return payload


def _plot_accuracy(payload: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    runs, gammas = payload["runs"], payload["settings"]["gammas"]

    def values(arm: str, gamma: float, key: str) -> list[float]:
        return [r[key] for r in runs if r["arm"] == arm and r["gamma"] == gamma]

    fig = Figure(figsize=(10, 4))
    for i, (key, label) in enumerate(
        (("accuracy", "held-out accuracy"), ("equivariance_error", "equivariance error"))
    ):
        ax = fig.add_subplot(1, 2, i + 1)
        for arm, style, colour in (("nom+reg", "o:", "tab:purple"), ("aug+reg", "s-", "tab:orange")):
            per = [values(arm, g, key) for g in gammas]
            ax.plot(gammas, [statistics.median(v) for v in per], style, color=colour, label=f"{arm} (median)")
            ax.fill_between(gammas, [min(v) for v in per], [max(v) for v in per], color=colour, alpha=0.15)
        for arm, colour in (("nom", "tab:red"), ("aug", "tab:blue"), ("equi", "tab:green")):
            ax.axhline(statistics.median(values(arm, 0.0, key)), color=colour, linestyle="--", label=arm)
        ax.set_xscale("log")
        if key == "equivariance_error":
            ax.set_yscale("log")
        ax.set_xlabel(r"$\gamma$ (proximal)")
        ax.set_ylabel(f"{label} (band: range of seeds)")
        ax.legend(fontsize=7)
    s = payload["settings"]
    title = f"digits 16x16 with rotation bias {s['rotation_bias']}, {s['optimizer']}"
    _save(fig, f"{title}, {s['steps']} steps, {s['seeds']} seeds", path)


# ---- command line ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m lightning_equi.experiments.eq_aug_reg {attractor,divergence,accuracy}``."""
    parser = argparse.ArgumentParser(prog="python -m lightning_equi.experiments.eq_aug_reg")
    parser.add_argument("study", choices=["attractor", "divergence", "accuracy"])
    parser.add_argument("--out", default="runs/reg", help="folder of the JSON files and figures")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, help="SGD steps per run (their run: 60000)")
    parser.add_argument("--penalty", choices=["additive", "proximal"], default="additive", help="attractor")
    parser.add_argument("--no-shuffle", action="store_true", help="attractor: their fixed batch order")
    parser.add_argument("--rotation-bias", type=float, default=0.3, help="accuracy: share left upright")
    parser.add_argument("--name", default=None, help="accuracy: file name (default: accuracy)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.study == "attractor":
        steps = args.steps or 3000
        result = run_attractor(out, args.seeds, steps, penalty=args.penalty, shuffle=not args.no_shuffle)
        print(json.dumps(result["summary"], indent=1))
    elif args.study == "divergence":
        run_divergence(out, args.steps or 300)
    else:
        run_accuracy(
            out,
            args.seeds,
            args.steps or 1500,
            rotation_bias=args.rotation_bias,
            name=args.name or "accuracy",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
