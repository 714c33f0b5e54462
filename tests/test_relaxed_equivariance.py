"""RelaxedEquivariance (modes reg and aug+reg) in real Trainer runs on CPU, against hand-written loops."""

from __future__ import annotations

import copy
import csv
import math
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_equi.callbacks import HaarAugmentation, RelaxedEquivariance, build_callbacks
from lightning_equi.cli import EquiCLI, ModeConfigError
from lightning_equi.schedules import WarmUp
from lightning_equi.subspace import resolve_spec
from lightning_equi.testing import BoringEquiModel, IrrepsEquiModel

BORING = "lightning_equi.testing.BoringEquiModel"


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
        yield
    torch.set_num_threads(threads)


def _trainer(tmp_path: Path, callbacks, **kwargs) -> L.Trainer:
    options = dict(
        default_root_dir=tmp_path,
        max_steps=8,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    options.update(kwargs)
    return L.Trainer(callbacks=callbacks, **options)


def _fit(tmp_path, model, callbacks, **kwargs):
    trainer = _trainer(tmp_path, callbacks, **kwargs)
    trainer.fit(model)
    return trainer


def _model(seed: int = 0, **kwargs) -> BoringEquiModel:
    torch.manual_seed(seed)
    return BoringEquiModel(**kwargs)


def _rel_dist(model) -> float:
    return float(resolve_spec(model).relative_total_distance())


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- gamma = 0 is nom; gamma = inf is E -------------------------------------------------------------


@pytest.mark.parametrize("penalty", ["proximal", "additive"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_gamma_zero_reproduces_nom_bit_for_bit(tmp_path, penalty, optimizer):
    nom, reg, pulled = (_model(optimizer=optimizer, lr=0.01) for _ in range(3))
    _fit(tmp_path, nom, [])
    _fit(tmp_path, reg, [RelaxedEquivariance(gamma=0.0, penalty=penalty)])
    _fit(tmp_path, pulled, [RelaxedEquivariance(gamma=1.0, penalty=penalty)])
    assert _same_weights(nom, reg)
    assert not _same_weights(nom, pulled)  # the comparison can fail: gamma > 0 changes the run
    assert _rel_dist(pulled) < _rel_dist(nom)


@pytest.mark.parametrize("gamma", [1e12, math.inf])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_huge_gamma_with_the_proximal_form_stays_in_E_to_float_precision(tmp_path, gamma, optimizer):
    model = _model(optimizer=optimizer, lr=0.01)
    assert _rel_dist(model) > 0.1
    _fit(tmp_path, model, [RelaxedEquivariance(gamma=gamma)], max_steps=6)
    assert resolve_spec(model).within_rounding()


def test_additive_form_is_sgd_on_the_penalised_loss(tmp_path):
    """The Trainer run equals a hand-written loop: autograd of loss + gamma/2 ||w - P w||^2, then SGD."""
    model = _model(optimizer="sgd", lr=0.05, momentum=0.9).double()
    reference = copy.deepcopy(model)
    gamma = 3.0
    _fit(
        tmp_path,
        model,
        [RelaxedEquivariance(gamma=gamma, penalty="additive")],
        max_steps=6,
        precision="64-true",
    )
    projection = resolve_spec(reference)
    opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    batches = list(reference.train_dataloader())
    for step in range(6):
        x, y = (t.double() for t in batches[step % len(batches)])
        loss = torch.nn.functional.mse_loss(reference(x), y)
        for e in projection.parameters:
            loss = loss + 0.5 * gamma * (e.tensor - e.projector.project(e.tensor)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=name)


def test_proximal_form_is_the_optimizer_step_then_the_shrink_with_the_groups_lr(tmp_path):
    class TwoGroups(BoringEquiModel):
        def configure_optimizers(self):
            head = list(self.net[7].parameters())
            rest = [p for p in self.parameters() if all(p is not q for q in head)]
            return torch.optim.Adam([{"params": rest, "lr": 0.01}, {"params": head, "lr": 0.1}])

    torch.manual_seed(0)
    model = TwoGroups().double()
    reference = copy.deepcopy(model)
    gamma = 20.0
    _fit(tmp_path, model, [RelaxedEquivariance(gamma=gamma)], max_steps=5, precision="64-true")
    projection = resolve_spec(reference)
    opt = reference.configure_optimizers()
    lr = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    batches = list(reference.train_dataloader())
    for step in range(5):
        x, y = (t.double() for t in batches[step % len(batches)])
        opt.zero_grad()
        torch.nn.functional.mse_loss(reference(x), y).backward()
        opt.step()
        with torch.no_grad():
            for e in projection.parameters:
                inside = e.projector.project(e.tensor)
                e.tensor.copy_(inside + (e.tensor - inside) / (1 + lr[id(e.tensor)] * gamma))
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=name)


# ---- the discrete-time trap: explicit SGD diverges for lr * gamma > 2, the proximal form does not ---


def test_explicit_sgd_diverges_beyond_two_and_the_proximal_form_stays_bounded(tmp_path):
    lr = 0.01
    start = _rel_dist(_model())
    model = _model(lr=lr, momentum=0.0)
    _fit(tmp_path, model, [RelaxedEquivariance(gamma=3.0 / lr, penalty="additive")], max_steps=6)
    spec = resolve_spec(model)
    # Pi_perp A is multiplied by about 1 - 3 = -2 per step: 2^6 = 64 after six steps
    assert float(spec.relative_total_distance()) > 0.99  # A is dominated by its growing E-perp part
    assert float(spec.total_distance()) > 30 * float(resolve_spec(_model()).total_distance())
    for eta_gamma in (0.5, 1.0, 10.0, 100.0):
        model = _model(lr=lr, momentum=0.0)
        _fit(tmp_path, model, [RelaxedEquivariance(gamma=eta_gamma / lr)], max_steps=12)
        assert _rel_dist(model) < start
    model = _model(lr=lr, momentum=0.0)  # below 2 the explicit form is stable too
    _fit(tmp_path, model, [RelaxedEquivariance(gamma=1.0 / lr, penalty="additive")], max_steps=12)
    assert _rel_dist(model) < start


# ---- mixed precision ---------------------------------------------------------------------------------


class _FusedSGD(BoringEquiModel):
    def __init__(self, fused: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fused = fused

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, fused=self.fused)


def _fp16_plugin() -> MixedPrecision:
    # a GradScaler on the CPU ("16-mixed" alone picks bfloat16 without a scaler there)
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))


def test_16_mixed_with_a_fused_optimizer_scales_the_added_gradient(tmp_path):
    """Lightning leaves a fused optimizer's gradients scaled in on_before_optimizer_step."""
    runs = {}
    for fused in (False, True):
        for gamma in (0.0, 5.0):
            torch.manual_seed(0)
            model = _FusedSGD(fused)
            cb = RelaxedEquivariance(gamma=gamma, penalty="additive")
            _fit(tmp_path, model, [cb], max_steps=6, plugins=[_fp16_plugin()])
            runs[fused, gamma] = model
    unfused, fused = runs[False, 5.0], runs[True, 5.0]
    for (name, a), b in zip(unfused.state_dict().items(), fused.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    # the penalty had a visible effect, so the agreement is not that of two unpenalised runs
    assert _rel_dist(runs[True, 0.0]) - _rel_dist(fused) > 10 * abs(_rel_dist(unfused) - _rel_dist(fused))


# ---- logging, resume ---------------------------------------------------------------------------------


def test_penalty_and_gamma_are_logged(tmp_path):
    model = _model()
    gamma = 4.0
    logger = CSVLogger(tmp_path, name="", version="log")
    cb = RelaxedEquivariance(gamma=WarmUp(gamma, steps=4))
    _fit(tmp_path, model, [cb], max_steps=6, logger=logger, log_every_n_steps=1)
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    gammas = [float(r["reg/gamma"]) for r in rows if r.get("reg/gamma")]
    assert gammas == [0.0, 1.0, 2.0, 3.0, 4.0, 4.0]  # gamma(t) of steps t = 0 .. 5
    last = float([r["reg/penalty"] for r in rows if r.get("reg/penalty")][-1])
    expected = sum(
        0.5 * gamma * float(e.projector.distance(e.tensor)) ** 2 for e in resolve_spec(model).parameters
    )
    assert last == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    ("penalty", "optimizer", "mode"), [("proximal", "adam", "reg"), ("additive", "sgd", "aug+reg")]
)
def test_resume_is_exact_in_reg_mode(tmp_path, penalty, optimizer, mode):
    def callbacks():
        return build_callbacks(
            mode, group="C4", monitor=False, seed=0, gamma=WarmUp(30.0, steps=6), penalty=penalty
        )

    # stopped by max_epochs (4 batches each): Lightning 2.6 resumes a run stopped by max_steps on an
    # epoch's last batch with one extra batch, with or without callbacks
    epochs = dict(max_steps=-1)
    full = _model(optimizer=optimizer, lr=0.01)
    _fit(tmp_path, full, callbacks(), max_epochs=2, **epochs)
    first = _model(optimizer=optimizer, lr=0.01)
    trainer = _fit(tmp_path / "a", first, callbacks(), max_epochs=1, **epochs)
    ckpt = tmp_path / "half.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = _model(seed=1, optimizer=optimizer, lr=0.01)  # other weights: the checkpoint restores them
    trainer = _trainer(tmp_path / "b", callbacks(), max_epochs=2, **epochs)
    trainer.fit(resumed, ckpt_path=ckpt)
    assert trainer.global_step == 8
    assert _same_weights(full, resumed)
    assert not _same_weights(full, first)


def test_a_stateful_gamma_provider_is_written_into_the_checkpoint(tmp_path):
    class Level:
        def __init__(self) -> None:
            self.level = 0.0

        def __call__(self, step: int) -> float:
            self.level += 1.0
            return self.level

        def state_dict(self) -> dict:
            return {"level": self.level}

        def load_state_dict(self, state: dict) -> None:
            self.level = state["level"]

    trainer = _fit(tmp_path, _model(), [RelaxedEquivariance(gamma=Level())], max_steps=-1, max_epochs=1)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    provider = Level()
    _trainer(tmp_path, [RelaxedEquivariance(gamma=provider)], max_steps=-1, max_epochs=2).fit(
        _model(), ckpt_path=tmp_path / "c.ckpt"
    )
    assert provider.level == 8.0  # 4 restored + 4 more steps, one call each


# ---- the mode flag -----------------------------------------------------------------------------------


def test_modes_reg_and_aug_reg_build_their_callbacks():
    reg = build_callbacks("reg", model=BoringEquiModel(), gamma=10.0, penalty="additive")
    assert [type(cb).__name__ for cb in reg] == ["EquivarianceMonitor", "RelaxedEquivariance"]
    assert (reg[1].gamma, reg[1].penalty) == (10.0, "additive")
    both = build_callbacks("aug+reg", model=BoringEquiModel(), seed=0, monitor=False)
    assert [type(cb) for cb in both] == [HaarAugmentation, RelaxedEquivariance]
    assert both[1].penalty == "proximal" and both[1].gamma == 1.0
    with pytest.raises(
        MisconfigurationException, match=r"\['gamma'\] apply to modes 'reg' and 'aug\+reg' only"
    ):
        build_callbacks("aug", model=BoringEquiModel(), gamma=1.0)


def test_the_cli_takes_the_mode_gamma_penalty_and_schedule():
    base = ["--model", BORING, "--trainer.logger", "false"]
    cli = EquiCLI(args=[*base, "--mode", "reg", "--gamma", "inf"], run=False)
    assert cli.mode_callbacks[-1].gamma == math.inf
    cli = EquiCLI(
        args=[*base, "--mode", "aug+reg", "--penalty", "additive", "--gamma", "{net.0: 3, '*': 1}"], run=False
    )
    cb = cli.mode_callbacks[-1]
    assert (cb.penalty, cb.gamma) == ("additive", {"net.0": 3.0, "*": 1.0})
    cli = EquiCLI(
        args=[*base, "--mode", "reg", "--gamma_schedule", "{kind: warmup, gamma: 9, steps: 3}"], run=False
    )
    assert cli.mode_callbacks[-1].gamma == WarmUp(9.0, steps=3)
    with pytest.raises(ModeConfigError, match="--gamma and --gamma_schedule both set"):
        EquiCLI(
            args=[*base, "--mode", "reg", "--gamma", "1", "--gamma_schedule", "{kind: constant, gamma: 1}"],
            run=False,
        )
    with pytest.raises(ModeConfigError, match="apply to modes 'reg' and 'aug\\+reg' only"):
        EquiCLI(args=[*base, "--mode", "nom", "--gamma", "1"], run=False)
    with pytest.raises(ModeConfigError, match="unknown gamma schedule 'step'"):
        EquiCLI(args=[*base, "--mode", "reg", "--gamma_schedule", "{kind: step}"], run=False)


# ---- refusals ----------------------------------------------------------------------------------------


def test_bad_options_are_refused_at_construction():
    with pytest.raises(
        MisconfigurationException, match=r"`penalty` must be one of \('proximal', 'additive'\)"
    ):
        RelaxedEquivariance(penalty="implicit")
    with pytest.raises(MisconfigurationException, match="`gamma` must be a number >= 0"):
        RelaxedEquivariance(gamma=-1.0)
    with pytest.raises(MisconfigurationException, match="`gamma=inf` needs penalty='proximal'"):
        RelaxedEquivariance(gamma=math.inf, penalty="additive")
    with pytest.raises(MisconfigurationException, match="`gamma` must be a number >= 0"):
        RelaxedEquivariance(gamma={"net.0": "x"})


def test_bad_setups_are_refused_at_setup(tmp_path):
    with pytest.raises(MisconfigurationException, match=r"RelaxedEquivariance: gamma names \['net.9'\]"):
        _fit(tmp_path, _model(), [RelaxedEquivariance(gamma={"net.9": 1.0, "*": 1.0})])

    class NoSpec(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)

    with pytest.raises(MisconfigurationException, match="RelaxedEquivariance needs the symmetry spec"):
        RelaxedEquivariance().setup(_trainer(tmp_path, []), NoSpec(), "fit")

    class _Trainer:  # setup only reads trainer.strategy
        strategy = FSDPStrategy.__new__(FSDPStrategy)

    with pytest.raises(MisconfigurationException, match="does not support the sharded strategy FSDPStrategy"):
        RelaxedEquivariance().setup(_Trainer(), _model(), "fit")
    with pytest.raises(MisconfigurationException, match="trained with penalty='additive'"):
        RelaxedEquivariance().load_state_dict({"penalty": "additive", "providers": []})


def test_irreps_model_with_adam_and_the_proximal_form(tmp_path):
    """Basis projectors (not permutations) and Adam: gamma = inf keeps the model in E to rounding."""
    model = IrrepsEquiModel()
    _fit(tmp_path, model, [RelaxedEquivariance(gamma=math.inf)], max_steps=5)
    assert resolve_spec(model).within_rounding()


# ---- DDP on CPU (2 processes, gloo), launched as a script ---------------------------------------

_DDP_SCRIPT = """
import json, sys, warnings
import torch, lightning as L
warnings.filterwarnings("ignore")
torch.set_num_threads(1)
from lightning_equi.callbacks import build_callbacks
from lightning_equi.subspace import resolve_spec
from lightning_equi.testing import BoringEquiModel

if __name__ == "__main__":
    out, mode, penalty, optimizer = sys.argv[1:5]
    L.seed_everything(0, verbose=False)
    callbacks = build_callbacks(mode, group="C4", monitor=False, seed=3, gamma=50.0, penalty=penalty)
    trainer = L.Trainer(
        strategy="ddp", accelerator="cpu", devices=2, max_steps=6, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=out, callbacks=callbacks,
    )
    model = BoringEquiModel(optimizer=optimizer, lr=0.01, n_samples=64, batch_size=8)
    start = float(resolve_spec(model).relative_total_distance())
    trainer.fit(model)
    rank = trainer.global_rank
    torch.save(dict(model.named_parameters()), f"{out}/rank{rank}.pt")
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"start": start, "rel_dist": float(resolve_spec(model).relative_total_distance())}, f)
"""


@pytest.mark.parametrize(
    ("mode", "penalty", "optimizer"), [("reg", "proximal", "adam"), ("aug+reg", "additive", "sgd")]
)
def test_ddp_two_processes_keep_the_ranks_equal(tmp_path, mode, penalty, optimizer):
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp_reg.py"
    script.write_text(_DDP_SCRIPT)
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), mode, penalty, optimizer],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s0, s1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    # the parameters are identical, bit for bit (BatchNorm's running statistics are per rank: DDP
    # broadcasts rank 0's before each forward, and the last forward moves each rank's own)
    assert len(s0) == 8 and all(torch.equal(s0[k], s1[k]) for k in s0)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    assert r0["rel_dist"] < 0.5 * r0["start"]  # the penalty pulled the model towards E


def test_reg_infers_the_spec_of_a_model_without_one(tmp_path):
    """Zero lines (#14): build_callbacks infers the spec for reg as for equi."""
    from lightning_equi.testing import PlainCNNModel

    torch.manual_seed(0)
    model = PlainCNNModel()
    callbacks = build_callbacks("reg", group="C4", inputs="image", monitor=False, gamma=math.inf)
    _fit(tmp_path, model, callbacks, max_steps=3)
    assert resolve_spec(model, group="C4", inputs="image").within_rounding()
