"""HaarAugmentation and EquivariantProjection in real Trainer runs (CPU, tiny models)."""

from __future__ import annotations

import copy
import csv
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_equi.actions import ImageAction
from lightning_equi.callbacks import (
    EquivarianceMonitor,
    EquivariantProjection,
    HaarAugmentation,
    build_callbacks,
)
from lightning_equi.subspace import resolve_spec
from lightning_equi.testing import BoringEquiModel, IrrepsEquiModel


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models: intra-op threads only add contention on a loaded 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        yield
    torch.set_num_threads(threads)


def _trainer(tmp_path: Path, callbacks, logger=False, **kwargs) -> L.Trainer:
    options = dict(
        default_root_dir=tmp_path,
        max_steps=8,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    options.update(kwargs)
    return L.Trainer(callbacks=callbacks, **options)


def _rel_dist(model) -> float:
    return float(resolve_spec(model).relative_total_distance())


# ---- the three modes -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["nom", "aug", "equi"])
def test_three_modes_fit(tmp_path, mode):
    L.seed_everything(0, verbose=False)
    model = BoringEquiModel()
    start = copy.deepcopy(model.state_dict())
    callbacks = build_callbacks(mode, group="C4", inputs="image", every_n_steps=2, seed=0)
    trainer = _trainer(tmp_path, callbacks, max_steps=4)
    trainer.fit(model)
    assert trainer.global_step == 4
    assert not torch.equal(model.net[0].weight, start["net.0.weight"])  # it trained
    monitor = callbacks[0]
    assert isinstance(monitor, EquivarianceMonitor)
    assert [h["step"] for h in monitor.history] == [0.0, 2.0, 4.0]
    if mode == "equi":
        assert _rel_dist(model) < 1e-6
    else:
        assert _rel_dist(model) > 0.1  # random init is far from E and nothing pulls it back


# ---- equi keeps the weights in E -----------------------------------------------------------------

_IN_E_CASES = {
    "sgd-momentum": (dict(model="boring", optimizer="sgd", momentum=0.9), {}),
    "adam-so2-irreps": (dict(model="irreps", group="SO2", optimizer="adam"), {}),
    "adamw-weight-decay": (dict(model="boring", optimizer="adamw", lr=0.01, weight_decay=0.1), {}),
    "clip-norm": (dict(model="boring", optimizer="sgd"), dict(gradient_clip_val=0.05)),
    "clip-value": (
        dict(model="boring", optimizer="sgd"),
        dict(gradient_clip_val=0.01, gradient_clip_algorithm="value"),
    ),
    "accumulate-4": (dict(model="boring", optimizer="sgd"), dict(accumulate_grad_batches=4)),
    "bf16-mixed": (dict(model="boring", optimizer="adam", lr=0.01), dict(precision="bf16-mixed")),
}


def _make(spec: dict):
    spec = dict(spec)
    kind = spec.pop("model")
    if kind == "boring":
        return BoringEquiModel(channels=4, size=5, n_samples=1600, **spec)
    return IrrepsEquiModel(n_samples=1600, **spec)


@pytest.mark.parametrize("case", list(_IN_E_CASES))
def test_equi_stays_in_E_and_nom_drifts(tmp_path, case):
    model_spec, trainer_kwargs = _IN_E_CASES[case]
    results = {}
    for mode in ("equi", "nom"):
        L.seed_everything(0, verbose=False)
        model = _make(model_spec)
        start = _rel_dist(model)
        callbacks = [EquivariantProjection()] if mode == "equi" else []
        _trainer(tmp_path, callbacks, max_steps=200, **trainer_kwargs).fit(model)
        results[mode] = (start, _rel_dist(model))
    equi_start, equi_end = results["equi"]
    nom_start, nom_end = results["nom"]
    assert equi_end < 1e-6, f"{case}: equi left E (relative distance {equi_end:.3g})"
    assert nom_end > 0.05 and nom_start > 0.05, f"{case}: the negative control is in E ({nom_end:.3g})"


def test_equi_adam_needs_weight_reprojection(tmp_path):
    """Negative control for re-projection: Adam on C3's standard->regular layers leaves E without it."""
    ends = {}
    for reproject in ("auto", False):
        L.seed_everything(0, verbose=False)
        model = IrrepsEquiModel(group="C3", optimizer="adam", lr=0.01, n_samples=64)
        _trainer(tmp_path, [EquivariantProjection(reproject_weights=reproject)], max_steps=50).fit(model)
        ends[reproject] = _rel_dist(model)
    assert ends["auto"] < 1e-6
    assert ends[False] > 1e-4


@pytest.mark.parametrize(
    ("model_kwargs", "trainer_kwargs", "expected"),
    [
        (dict(optimizer="sgd", momentum=0.9), {}, False),
        (dict(optimizer="sgd", weight_decay=0.01), {}, True),
        (dict(optimizer="adam"), {}, True),
        (dict(optimizer="sgd"), dict(gradient_clip_val=0.1, gradient_clip_algorithm="value"), True),
        (dict(optimizer="sgd"), dict(gradient_clip_val=0.1), False),
    ],
)
def test_reproject_auto_decision(tmp_path, model_kwargs, trainer_kwargs, expected):
    projection = EquivariantProjection()
    _trainer(tmp_path, [projection], max_steps=1, **trainer_kwargs).fit(BoringEquiModel(**model_kwargs))
    assert projection._reproject is expected


def test_reproject_auto_for_basis_projectors_even_with_sgd(tmp_path):
    projection = EquivariantProjection()
    _trainer(tmp_path, [projection], max_steps=1).fit(IrrepsEquiModel(optimizer="sgd"))
    assert projection._reproject is True


def test_running_statistics_stay_in_E(tmp_path):
    L.seed_everything(0, verbose=False)
    model = BoringEquiModel(optimizer="sgd")
    _trainer(tmp_path, [EquivariantProjection()], max_steps=12).fit(model)
    projection = resolve_spec(model)
    buffers = {e.name: e for e in projection.entries if e.is_buffer}
    assert set(buffers) == {"net.1.running_mean", "net.1.running_var"}
    assert not torch.equal(model.net[1].running_mean, torch.zeros(8))  # they were updated
    assert all(float(d) < 1e-6 for d in projection.distances(buffers=True).values())


def test_equi_model_is_functionally_invariant_after_training(tmp_path):
    L.seed_everything(0, verbose=False)
    model = BoringEquiModel(optimizer="adam", lr=0.01)
    _trainer(tmp_path, [EquivariantProjection()], max_steps=20).fit(model)
    model.eval()
    x = torch.randn(4, 1, 6, 6)
    with torch.no_grad():
        assert torch.allclose(model(torch.rot90(x, 1, dims=(-2, -1))), model(x), atol=1e-5)


# ---- crash and resume ----------------------------------------------------------------------------


def _csv_rows(logger: CSVLogger) -> dict[int, dict[str, str]]:
    logger.save()
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows: dict[int, dict[str, str]] = {}
        for row in csv.DictReader(f):
            rows.setdefault(int(row["step"]), {}).update(
                {k: v for k, v in row.items() if v not in ("", None)}
            )
    return rows


def _mode_callbacks(mode: str):
    return build_callbacks(
        mode, group="C4", inputs="image", every_n_steps=3, seed=7, copies=2 if mode == "aug" else 1
    )


@pytest.mark.parametrize("mode", ["nom", "aug", "equi"])
def test_resume_equals_uninterrupted(tmp_path, mode):
    # Stopped by max_epochs: in Lightning 2.6 a run stopped by max_steps on an epoch's last batch resumes
    # with one extra batch (a restarted epoch), with or without these callbacks.
    def run(max_epochs, ckpt_path=None, name="run"):
        L.seed_everything(0, verbose=False)
        model = BoringEquiModel(optimizer="adam", lr=0.01, n_samples=32, batch_size=8)  # 4 batches/epoch
        callbacks = _mode_callbacks(mode)
        logger = CSVLogger(tmp_path, name=name)
        trainer = _trainer(
            tmp_path, callbacks, logger=logger, max_steps=-1, max_epochs=max_epochs, log_every_n_steps=1
        )
        trainer.fit(model, ckpt_path=ckpt_path)
        return model, trainer, callbacks, logger

    full_model, _, full_callbacks, full_logger = run(3, name="full")
    _, first_trainer, _, _ = run(2, name="first")  # stopped after 8 of 12 steps
    ckpt = tmp_path / "crash.ckpt"
    first_trainer.save_checkpoint(ckpt)
    resumed_model, resumed_trainer, resumed_callbacks, resumed_logger = run(3, ckpt_path=ckpt, name="resumed")

    assert resumed_trainer.global_step == 12
    for (name, a), (_, b) in zip(
        full_model.state_dict().items(), resumed_model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), f"{mode}: {name} differs after resuming"
    assert full_callbacks[0].history == resumed_callbacks[0].history  # every logged equi/* value
    full_rows, resumed_rows = _csv_rows(full_logger), _csv_rows(resumed_logger)
    # Lightning logs the loss computed with the weights after s steps at step s, like the monitor
    assert set(resumed_rows) == {s for s in full_rows if s >= 8}
    assert {s for s, row in resumed_rows.items() if "train_loss" in row} == {8, 9, 10, 11}
    assert {s for s, row in resumed_rows.items() if "equi/dist_to_E/total" in row} == {9, 12}
    for step, row in resumed_rows.items():
        shared = set(row) - {"epoch"}
        assert {k: row[k] for k in shared} == {k: full_rows[step][k] for k in shared}, f"{mode}, step {step}"
    if mode == "aug":
        full_aug, resumed_aug = full_callbacks[1], resumed_callbacks[1]
        assert torch.equal(full_aug.generator.get_state(), resumed_aug.generator.get_state())


# ---- refusals and misconfiguration ---------------------------------------------------------------


@pytest.mark.parametrize("strategy_cls", [FSDPStrategy, DeepSpeedStrategy])  # FSDP2: tests/test_fsdp2*
def test_sharded_strategies_are_refused(strategy_cls):
    class _Trainer:  # setup only reads trainer.strategy
        strategy = strategy_cls.__new__(strategy_cls)

    with pytest.raises(MisconfigurationException, match=f"sharded strategy {strategy_cls.__name__}"):
        EquivariantProjection().setup(_Trainer(), BoringEquiModel(), "fit")
    EquivariantProjection().setup(_Trainer(), BoringEquiModel(), "validate")  # only fitting projects


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            dict(reproject_weights="always"),
            r"`reproject_weights` must be one of \('auto', True, False\), got 'always'",
        ),
        (dict(check_atol=-1.0), r"`check_atol` must be a float >= 0, got -1.0"),
        (dict(spec="C4"), r"`spec` must be a SymmetrySpec, a ModelProjection"),
    ],
)
def test_projection_misconfiguration(kwargs, match):
    with pytest.raises(MisconfigurationException, match=match):
        EquivariantProjection(**kwargs)


class _NoSpecModel(BoringEquiModel):
    symmetry_spec = None


def test_projection_without_spec_says_how_to_declare_one(tmp_path):
    with pytest.raises(
        MisconfigurationException,
        match=r"(?s)_NoSpecModel has no symmetry_spec\(\) method.*SymmetrySpec\('C4'\)",
    ):
        _trainer(tmp_path, [EquivariantProjection()], max_steps=1).fit(_NoSpecModel())


def test_projection_rejects_a_spec_that_does_not_fit(tmp_path, monkeypatch):
    projection = EquivariantProjection(check_atol=0.0)
    model = BoringEquiModel()
    bound = resolve_spec(model)
    monkeypatch.setattr(
        type(bound), "project_parameters_", lambda self: None
    )  # a projector that does nothing
    monkeypatch.setattr(
        "lightning_equi.callbacks.equivariant_projection.initialize_in_E_", lambda *a, **k: []
    )  # and an initialisation that does nothing
    with pytest.raises(RuntimeError, match="not in the equivariant subspace after projection.*net\\."):
        _trainer(tmp_path, [projection], max_steps=1).fit(model)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(group="C5x"), r"`group`: unknown group name 'C5x'"),
        (dict(group="C4", copies=0), r"`copies` must be an int >= 1, got 0"),
        (dict(group="SO2", orbit=True), r"orbit=True.*needs a finite group; SO2 is continuous"),
        (dict(group="C4", orbit=True, copies=2), r"leave copies=1 and per_sample=True"),
        (dict(group="C4", inputs="picture"), r"unknown action 'picture'. Valid names"),
        (dict(group="C4", inputs="image:vector"), r"unknown field name 'vector'"),
        (dict(group="C4", inputs=None, targets=None), r"needs an action for at least one batch entry"),
        (dict(group="C4", inputs=ImageAction("D4")), r"acts by D4, but group='C4'"),
        (dict(group="C4", seed=1.5), r"`seed` must be an int or None, got 1.5"),
    ],
)
def test_augmentation_misconfiguration(kwargs, match):
    with pytest.raises(MisconfigurationException, match=match):
        HaarAugmentation(**kwargs)


# ---- HaarAugmentation on batches -----------------------------------------------------------------


def _setup(aug: HaarAugmentation, rank: int = 0) -> HaarAugmentation:
    class _Trainer:
        global_rank, world_size = rank, 1

    aug.setup(_Trainer(), None, "fit")
    return aug


def test_augmentation_transforms_the_batch_in_place_and_leaves_the_source_alone():
    x, y = torch.randn(6, 1, 5, 5), torch.randn(6, 1)
    source = x.clone()
    batch = [x, y]  # the loader's output: x may be a view of the dataset
    aug = _setup(HaarAugmentation("C4", inputs="image", seed=0))
    aug.on_train_batch_start(None, None, batch, 0)
    assert batch[0] is x and batch[1] is y  # same objects, new data
    g = aug.group.sample(6, generator=torch.Generator().manual_seed(0))  # the callback's stream: seed + rank
    assert torch.equal(x, ImageAction("C4")(g, source))
    assert not torch.equal(x, source)


def test_augmentation_does_not_write_into_shared_storage():
    data = torch.randn(8, 1, 4, 4)
    view = data[:4]  # a view of the "dataset"
    before = data.clone()
    aug = _setup(HaarAugmentation("C4", inputs="image", seed=3))
    aug.on_train_batch_start(None, None, (view, torch.zeros(4)), 0)
    assert torch.equal(data, before)


def test_augmentation_dict_batch_with_mask_target():
    image = torch.randn(4, 1, 5, 5)
    mask = (image > 0).long().squeeze(1)
    batch = {"image": image, "mask": mask, "name": ["a", "b", "c", "d"]}
    aug = _setup(HaarAugmentation("D4", inputs={"image": "image"}, targets={"mask": "image"}, seed=1))
    aug.on_train_batch_start(None, None, batch, 0)
    assert torch.equal(batch["mask"], (batch["image"] > 0).long().squeeze(1))  # same element for both
    assert batch["name"] == ["a", "b", "c", "d"]


def test_augmentation_per_batch_uses_one_element():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(8, 1, 1, 1)
    aug = _setup(HaarAugmentation("C4", per_sample=False, seed=5))
    aug.on_train_batch_start(None, None, [x, torch.zeros(8)], 0)
    assert all(torch.equal(x[0], x[i]) for i in range(8))


def test_augmentation_copies_repeat_the_batch_with_independent_elements():
    x, y = torch.randn(4, 1, 5, 5), torch.arange(4.0)
    original = x.clone()
    batch = (x, y)
    aug = _setup(HaarAugmentation("C4", copies=3, seed=2))
    aug.on_train_batch_start(None, None, batch, 0)
    assert x.shape == (12, 1, 5, 5) and torch.equal(y, torch.arange(4.0).repeat(3))
    g = HaarAugmentation("C4").group.sample(12, generator=torch.Generator().manual_seed(2))
    assert torch.equal(x, ImageAction("C4")(g, original.repeat(3, 1, 1, 1)))


def test_augmentation_orbit_uses_every_element_once_per_sample():
    x = torch.randn(2, 1, 5, 5)
    original = x.clone()
    aug = _setup(HaarAugmentation("C4", orbit=True))
    aug.on_train_batch_start(None, None, [x, torch.zeros(2)], 0)
    assert x.shape == (8, 1, 5, 5)
    for i in range(2):
        rotations = torch.stack([x[k * 2 + i] for k in range(4)])
        expected = torch.stack([torch.rot90(original[i], k, dims=(-2, -1)) for k in range(4)])
        assert torch.equal(rotations, expected)


def test_orbit_augmentation_keeps_an_equivariant_model_in_E(tmp_path):
    """Corollary 1: with exact (full-orbit) augmentation, E is invariant under training."""
    L.seed_everything(0, verbose=False)
    model = BoringEquiModel(channels=4, size=5, optimizer="sgd", n_samples=16, batch_size=4)
    resolve_spec(model).project_parameters_()
    _trainer(tmp_path, [HaarAugmentation("C4", orbit=True)], max_steps=20).fit(model)
    assert _rel_dist(model) < 1e-5
    L.seed_everything(0, verbose=False)
    sampled = BoringEquiModel(channels=4, size=5, optimizer="sgd", n_samples=16, batch_size=4)
    resolve_spec(sampled).project_parameters_()
    _trainer(tmp_path, [HaarAugmentation("C4", seed=0)], max_steps=20).fit(sampled)
    assert _rel_dist(sampled) > 1e-4  # negative control: sampled elements drift away from E


def test_augmentation_streams_differ_by_rank_and_state_round_trips():
    a, b = _setup(HaarAugmentation("C4", seed=11), rank=0), _setup(HaarAugmentation("C4", seed=11), rank=1)
    draws_a = a.group.sample(32, generator=a.generator)
    draws_b = b.group.sample(32, generator=b.generator)
    assert not torch.equal(draws_a, draws_b)
    state = a.state_dict()
    expected = a.group.sample(16, generator=a.generator)
    c = _setup(HaarAugmentation("C4", seed=11))
    c.load_state_dict(state)
    assert torch.equal(c.group.sample(16, generator=c.generator), expected)


def test_augmentation_refuses_a_batch_it_cannot_write_back():
    class Batch:
        def __init__(self, x):
            self.x = x

    aug = _setup(HaarAugmentation("C4", inputs={"x": "image"}, seed=0))
    with pytest.raises((TypeError, ValueError)):
        aug.on_train_batch_start(None, None, Batch(torch.randn(2, 1, 4, 4)), 0)


# ---- DDP on CPU (2 processes, gloo), launched as a script ----------------------------------------

_DDP_SCRIPT = '''
import json, sys, warnings
import torch, lightning as L
warnings.filterwarnings("ignore")
torch.set_num_threads(1)
from lightning_equi.callbacks import EquivarianceMonitor, EquivariantProjection, HaarAugmentation
from lightning_equi.subspace import resolve_spec
from lightning_equi.testing import BoringEquiModel

class FirstDraws(L.Callback):
    """Records the augmentation's generator state before the first batch is transformed."""
    def __init__(self, aug):
        self.aug, self.state = aug, None
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.state is None:
            self.state = self.aug.generator.get_state().tolist()

if __name__ == "__main__":
    out = sys.argv[1]
    L.seed_everything(0, verbose=False)
    aug = HaarAugmentation("C4", seed=3)
    monitor = EquivarianceMonitor(every_n_steps=2)
    first = FirstDraws(aug)
    trainer = L.Trainer(
        strategy="ddp", accelerator="cpu", devices=2, max_steps=6, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=out,
        callbacks=[first, monitor, aug, EquivariantProjection()],
    )
    model = BoringEquiModel(optimizer="adam", lr=0.01, n_samples=64, batch_size=8)
    trainer.fit(model)
    trainer.save_checkpoint(out + "/ddp.ckpt")  # all ranks: the generator states are gathered
    rank = trainer.global_rank
    result = {
        "rank": rank,
        "rel_dist": float(resolve_spec(model).relative_total_distance()),
        "history": monitor.history,
        "first_state": first.state,
        "weight_sum": float(model.net[3].weight.double().sum()),
    }
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(result, f)
'''


def test_ddp_two_processes_on_cpu(tmp_path):
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp_run.py"
    script.write_text(_DDP_SCRIPT)
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["rel_dist"] < 1e-6 and r1["rel_dist"] < 1e-6  # equi stays in E
    assert r0["weight_sum"] == r1["weight_sum"]  # DDP kept the replicas identical
    assert r0["first_state"] != r1["first_state"]  # each rank its own Haar stream (seed + rank)
    assert r0["history"] == r1["history"]  # logged metrics agree (functional error summed over ranks)
    assert [h["step"] for h in r0["history"]] == [0.0, 2.0, 4.0, 6.0]
    ckpt = torch.load(tmp_path / "ddp.ckpt", weights_only=False)
    states = next(v for k, v in ckpt["callbacks"].items() if k.startswith("HaarAugmentation"))[
        "generator_states"
    ]
    assert len(states) == 2 and not torch.equal(states[0], states[1])


def test_projection_accepts_a_bound_model_projection(tmp_path: Path) -> None:
    """``spec=`` may be a ready ModelProjection (what ``adapters.to_dense`` returns)."""
    model = BoringEquiModel()
    projection = model.symmetry_spec().bind(model)
    callbacks = build_callbacks("equi", spec=projection, every_n_steps=5)
    _trainer(tmp_path, callbacks, max_steps=10).fit(model)
    assert callbacks[1].projection is projection and callbacks[0].projection is projection
    assert projection.is_equivariant(atol=1e-6)
    assert float(projection.relative_total_distance()) < 1e-6


def test_projection_refuses_a_model_projection_of_another_model(tmp_path: Path) -> None:
    other = BoringEquiModel()
    stranger = other.symmetry_spec().bind(other)
    with pytest.raises(
        MisconfigurationException, match="bound to a model that is not part of BoringEquiModel"
    ):
        _trainer(tmp_path, [EquivariantProjection(spec=stranger)], max_steps=2).fit(BoringEquiModel())
