"""EquivarianceMonitor and the EquivarianceError metric."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_equi.callbacks import TAGS, EquivarianceMonitor, EquivariantProjection, build_callbacks
from lightning_equi.metrics import EquivarianceError, equivariance_error, relative_errors
from lightning_equi.subspace import SymmetrySpec
from lightning_equi.testing import BoringEquiModel, IrrepsEquiModel


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        yield
    torch.set_num_threads(threads)


def _fit(tmp_path: Path, model, callbacks, max_steps=4, **kwargs) -> L.Trainer:
    options = dict(
        default_root_dir=tmp_path,
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        deterministic=True,
    )
    options.update(kwargs)
    trainer = L.Trainer(callbacks=callbacks, **options)
    trainer.fit(model)
    return trainer


# ---- the metric ----------------------------------------------------------------------------------


def _reference(f_gx, g_fx, fx) -> list[float]:
    """One sample at a time, in float64, with the plain definition."""
    out = []
    for a, b, c in zip(f_gx.double(), g_fx.double(), fx.double(), strict=True):
        out.append(math.sqrt(float(((a - b) ** 2).sum())) / math.sqrt(float((c**2).sum())))
    return out


def test_metric_matches_a_float64_reference_and_accumulates():
    gen = torch.Generator().manual_seed(0)
    fx = torch.randn(10, 3, 2, generator=gen)
    g_fx = torch.randn(10, 3, 2, generator=gen)
    f_gx = g_fx + 1e-3 * torch.randn(10, 3, 2, generator=gen)
    exact = torch.arange(10) % 3 == 0
    ref = _reference(f_gx, g_fx, fx)
    assert torch.allclose(relative_errors(f_gx, g_fx, fx), torch.tensor(ref, dtype=torch.float64), rtol=1e-12)
    metric = EquivarianceError()
    metric.update(f_gx[:4], g_fx[:4], fx[:4], exact[:4])  # two batches == one
    metric.update(f_gx[4:], g_fx[4:], fx[4:], exact[4:])
    out = metric.compute()
    assert out["total"].dtype == torch.float64
    assert math.isclose(float(out["total"]), sum(ref) / 10, rel_tol=1e-12)
    exact_ref = [r for r, e in zip(ref, exact.tolist(), strict=True) if e]
    inexact_ref = [r for r, e in zip(ref, exact.tolist(), strict=True) if not e]
    assert math.isclose(float(out["exact"]), sum(exact_ref) / len(exact_ref), rel_tol=1e-12)
    assert math.isclose(float(out["inexact"]), sum(inexact_ref) / len(inexact_ref), rel_tol=1e-12)
    functional = equivariance_error(f_gx, g_fx, fx, exact)
    assert all(torch.allclose(functional[k], out[k]) for k in out)


def test_metric_states_merge_by_sum_like_a_distributed_sync():
    gen = torch.Generator().manual_seed(1)
    fx, g_fx, f_gx = (torch.randn(6, 4, generator=gen) for _ in range(3))
    exact = torch.tensor([True, False, True, False, False, True])
    whole, rank0, rank1 = EquivarianceError(), EquivarianceError(), EquivarianceError()
    whole.update(f_gx, g_fx, fx, exact)
    rank0.update(f_gx[:2], g_fx[:2], fx[:2], exact[:2])  # uneven shards
    rank1.update(f_gx[2:], g_fx[2:], fx[2:], exact[2:])
    rank0.merge_state(rank1)  # the same reduction (sum) as the sync across ranks
    assert all(torch.equal(rank0.compute()[k], whole.compute()[k]) for k in ("total", "exact", "inexact"))
    assert all(getattr(whole, name).dtype == torch.float64 for name in whole._defaults)


def test_metric_empty_part_is_nan_and_exact_by_default():
    metric = EquivarianceError()
    x = torch.ones(3, 2)
    metric.update(2 * x, x, x)
    out = metric.compute()
    assert float(out["total"]) == 1.0 and float(out["exact"]) == 1.0 and math.isnan(float(out["inexact"]))


def test_metric_nan_strategies():
    x = torch.ones(3, 2)
    bad = x.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(RuntimeError, match="1 of 3 samples is not finite"):
        EquivarianceError().update(bad, x, x)
    metric = EquivarianceError(nan_strategy="ignore")
    metric.update(bad, x, x)
    assert float(metric.compute()["total"]) == 0.0 and float(metric.count_exact) == 2.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [(dict(eps=0.0), "Expected `eps` to be a positive float"), (dict(nan_strategy="skip"), "nan_strategy")],
)
def test_metric_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EquivarianceError(**kwargs)


def test_metric_shape_errors():
    with pytest.raises(ValueError, match=r"same shape, but got \(2, 3\), \(2, 3\) and \(2, 4\)"):
        relative_errors(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"`exact` to have shape \(2,\)"):
        EquivarianceError().update(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 3), torch.ones(3).bool())


# ---- the monitor in a run ------------------------------------------------------------------------


def test_tensorboard_holds_the_documented_tags(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    L.seed_everything(0, verbose=False)
    logger = TensorBoardLogger(tmp_path, name="tb")
    monitor = EquivarianceMonitor(every_n_steps=2)
    _fit(tmp_path, BoringEquiModel(), [monitor], max_steps=4, logger=logger)
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = set(tags["scalars"])
    layers = ["net.0", "net.1", "net.3", "net.7", "total"]
    for prefix in [t.removesuffix("<layer>") for t in TAGS if t.endswith("<layer>")]:
        assert {prefix + layer for layer in layers} <= scalars, prefix
    assert {"equi/grad_perp_share", "equi/functional_error"} <= scalars
    assert not any("functional_error_" in t for t in scalars)  # C4 on a grid: every element is exact
    assert [e.step for e in acc.Scalars("equi/dist_to_E/total")] == [0, 2, 4]
    assert "equi/trajectory" in tags["images"]
    assert "custom_scalars__config__" in tags["tensors"]
    layout = acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0]
    assert b"equi/dist_to_E/.*" in layout and b"equi/functional_error.*" in layout


def test_monitor_values_reach_callback_metrics(tmp_path):
    monitor = EquivarianceMonitor(every_n_steps=2)
    trainer = _fit(tmp_path, BoringEquiModel(), [monitor], max_steps=4)
    assert {"equi/dist_to_E/total", "equi/rel_dist_to_E/net.3", "equi/functional_error"} <= set(
        trainer.callback_metrics
    )


def test_monitor_cadence_and_epoch_ends(tmp_path):
    monitor = EquivarianceMonitor(every_n_steps=3)
    _fit(tmp_path, BoringEquiModel(n_samples=40, batch_size=8), [monitor], max_steps=7)  # 5 batches/epoch
    assert [h["step"] for h in monitor.history] == [0.0, 3.0, 5.0, 6.0, 7.0]
    assert [h["step"] for h in monitor.history if h.get("epoch_end")] == [5.0, 7.0]
    first = monitor.history[0]
    assert first["equi/dist_from_start/total"] == 0.0 and first["equi/dist_to_E/total"] > 0


def test_distance_from_start_splits_into_orthogonal_parts(tmp_path):
    monitor = EquivarianceMonitor(every_n_steps=2, log_functional_error=False)
    _fit(tmp_path, BoringEquiModel(), [monitor], max_steps=4)
    last = monitor.history[-1]
    total, in_e, perp = (last[f"equi/dist_from_start{k}/total"] for k in ("", "_in_E", "_perp"))
    assert total > 0 and in_e > 0 and perp > 0
    assert math.isclose(total**2, in_e**2 + perp**2, rel_tol=1e-9)


def test_equi_vs_nom_functional_error_and_gradient_share(tmp_path):
    results = {}
    for mode in ("equi", "nom"):
        L.seed_everything(0, verbose=False)
        callbacks = build_callbacks(mode, every_n_steps=2)
        _fit(tmp_path, BoringEquiModel(), callbacks, max_steps=4)
        results[mode] = callbacks[0].history[-1]
    assert results["equi"]["equi/functional_error"] < 1e-5
    assert results["nom"]["equi/functional_error"] > 1e-2  # negative control
    assert results["equi"]["equi/dist_to_E/total"] < 1e-6 and results["nom"]["equi/dist_to_E/total"] > 0.1
    # the monitor reads the gradient before EquivariantProjection projects it
    assert results["equi"]["equi/grad_perp_share"] > 0.05 and results["nom"]["equi/grad_perp_share"] > 0.05


def _history(monitor: EquivarianceMonitor) -> list[dict[str, float]]:
    return [dict(h) for h in monitor.history]


@pytest.mark.parametrize("accumulate", [1, 2])
def test_monitor_figures_do_not_depend_on_the_callback_order(tmp_path, accumulate):
    """Lightning's rule: callbacks are independent of their order. The monitor reads the gradient in
    on_after_backward, before EquivariantProjection projects it, whichever comes first."""
    histories = []
    for first_monitor in (True, False):
        L.seed_everything(0, verbose=False)
        monitor, projection = EquivarianceMonitor(every_n_steps=1), EquivariantProjection()
        callbacks = [monitor, projection] if first_monitor else [projection, monitor]
        _fit(tmp_path, BoringEquiModel(), callbacks, max_steps=4, accumulate_grad_batches=accumulate)
        histories.append(_history(monitor))
    assert histories[0] == histories[1]
    shares = [h["equi/grad_perp_share"] for h in histories[0] if "equi/grad_perp_share" in h]
    assert len(shares) == 4 and min(shares) > 0.05  # the gradient before projection, not after


def test_monitor_figures_do_not_depend_on_the_projection_being_present(tmp_path):
    """From weights already in E, nom and equi take their first step from the same gradient: the
    monitor logs the same share of it outside E, whether EquivariantProjection is there or not."""
    histories = []
    for present in (False, True):
        L.seed_everything(0, verbose=False)
        model = BoringEquiModel()
        model.symmetry_spec().bind(model).project_parameters_()
        monitor = EquivarianceMonitor(every_n_steps=1)
        # pooled BatchNorm statistics would change the forward pass itself, so leave them per channel
        extra = [EquivariantProjection(pool_batch_stats=False)] if present else []
        _fit(tmp_path, model, [*extra, monitor], max_steps=1)
        histories.append(_history(monitor))
    (start_nom, step_nom), (start_equi, step_equi) = histories
    assert start_nom.keys() == start_equi.keys()
    for key in start_nom:
        assert math.isclose(start_nom[key], start_equi[key], rel_tol=1e-6, abs_tol=1e-9), key
    assert math.isclose(step_nom["equi/grad_perp_share"], step_equi["equi/grad_perp_share"], rel_tol=1e-6)
    assert step_nom["equi/grad_perp_share"] > 0.05


class _NoSpecModel(BoringEquiModel):
    symmetry_spec = None  # the spec is only given to EquivariantProjection


def test_monitor_binds_the_spec_an_equivariant_projection_was_given(tmp_path):
    """Without a spec of its own or on the model, the monitor binds (itself) the spec configured on
    EquivariantProjection, and logs what it logs when given that spec directly."""
    spec = BoringEquiModel().symmetry_spec()
    histories = []
    for own_spec in (False, True):
        L.seed_everything(0, verbose=False)
        monitor = EquivarianceMonitor(every_n_steps=1, spec=spec if own_spec else None)
        _fit(tmp_path, _NoSpecModel(), [monitor, EquivariantProjection(spec=spec)], max_steps=3)
        assert monitor.projection is not None
        histories.append(_history(monitor))
    assert histories[0] == histories[1]


class _PooledImageModel(L.LightningModule):
    """Invariant under every planar rotation of the continuum: a linear map of the image's mean. On a
    pixel grid, quarter turns keep the mean exactly; other angles resample the image and change it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))

    def symmetry_spec(self) -> SymmetrySpec:
        return SymmetrySpec(self.group).layer("fc", "trivial", "trivial")

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.rand(16, 1, 9, 9, generator=g), torch.rand(16, 1, generator=g))
        return DataLoader(data, batch_size=8)


@pytest.mark.parametrize("group", ["C8", "D8", "C16", "SO2", "O2"])
def test_exact_and_interpolated_split_for_every_planar_group(tmp_path, group):
    """The action flags each element: C8, D8 and C16 probe their quarter turns (exact on the grid)
    beside the other angles, as SO2 and O2 do; so each logs the split."""
    model = _PooledImageModel()
    model.group = group
    monitor = EquivarianceMonitor(every_n_steps=1, probe_size=4)
    _fit(tmp_path, model, [monitor], max_steps=1)
    last = monitor.history[-1]  # the probe is the first training batch
    assert last["equi/functional_error_exact"] < 1e-6
    # resampling the corners of a 9 x 9 image moves its mean by a few parts in ten thousand
    assert last["equi/functional_error_inexact"] > 1e-4
    exact = monitor.state_dict()["probe"]["exact"]
    assert 0 < int(exact.sum()) < exact.numel()


def test_figure_plots_the_history(tmp_path):
    monitor = EquivarianceMonitor(every_n_steps=1, log_functional_error=False)
    _fit(tmp_path, BoringEquiModel(), [monitor], max_steps=3)
    fig = monitor.figure()
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == [h["equi/dist_from_start/total"] for h in monitor.history]
    assert list(line.get_ydata()) == [h["equi/dist_to_E/total"] for h in monitor.history]


def test_probe_batch_argument_and_state_round_trip(tmp_path):
    probe = torch.randn(3, 1, 6, 6)
    monitor = EquivarianceMonitor(every_n_steps=2, probe_batch=probe)
    _fit(tmp_path, BoringEquiModel(), [monitor], max_steps=2)
    state = monitor.state_dict()
    assert torch.equal(state["probe"]["x"], probe)
    assert state["probe"]["g"].shape == (12,)  # every element of C4 for each probe sample
    restored = EquivarianceMonitor()
    restored.load_state_dict(state)
    assert restored.history == monitor.history and restored._last_step == 2


class _MeanModel(L.LightningModule):
    """f(x) = w mean(x) + b: SO(2)-invariant up to what rotating a square image moves in or out."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 1)

    def symmetry_spec(self):
        return SymmetrySpec("SO2").layer("fc", "trivial", "trivial")

    def forward(self, x):
        return self.fc(x.mean(dim=(-2, -1)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(16, 1, 8, 8, generator=gen) + 1.0
        return DataLoader(TensorDataset(x, torch.randn(16, 1, generator=gen)), batch_size=8)


def test_functional_error_splits_exact_and_interpolated_elements(tmp_path):
    monitor = EquivarianceMonitor(every_n_steps=1, inputs="image")
    _fit(tmp_path, _MeanModel(), [monitor], max_steps=1)
    last = monitor.history[-1]
    assert last["equi/functional_error_exact"] < 1e-6  # quarter turns permute the pixels
    assert last["equi/functional_error_inexact"] > 1e-3  # other angles interpolate and cut corners
    assert (
        last["equi/functional_error_exact"]
        <= last["equi/functional_error"]
        <= last["equi/functional_error_inexact"]
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(every_n_steps=0), r"`every_n_steps` must be an int >= 1, got 0"),
        (dict(probe_size=-2), r"`probe_size` must be an int >= 1, got -2"),
        (dict(probe_elements=1.5), r"`probe_elements` must be an int >= 1, got 1.5"),
        (dict(probe_batch=[1, 2]), r"`probe_batch` must be None, a tensor or a function"),
        (dict(spec="C4"), r"`spec` must be a SymmetrySpec, a ModelProjection or None, got str"),
        (dict(inputs=None), r"log_functional_error=True needs `inputs`"),
    ],
)
def test_monitor_misconfiguration(kwargs, match):
    with pytest.raises(MisconfigurationException, match=match):
        EquivarianceMonitor(**kwargs)


class _NoSpecModel(BoringEquiModel):
    symmetry_spec = None


def test_monitor_without_spec(tmp_path):
    with pytest.raises(
        MisconfigurationException,
        match=r"(?s)EquivarianceMonitor needs the symmetry spec.*leave the monitor out",
    ):
        _fit(tmp_path, _NoSpecModel(), [EquivarianceMonitor()], max_steps=1)


class _ReluOnRotations(IrrepsEquiModel):
    """Weights in E, but a ReLU on SO(2)-standard fields: not equivariant, whatever the weights."""

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("broken", [True, False])
def test_monitor_warns_when_weights_in_E_do_not_make_an_equivariant_network(tmp_path, broken):
    L.seed_everything(0, verbose=False)
    model = (_ReluOnRotations if broken else IrrepsEquiModel)(n_samples=16, batch_size=8)
    monitor = EquivarianceMonitor(inputs="points", outputs="points", every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, model, [monitor, EquivariantProjection()], max_steps=3)
    hits = [w for w in caught if "the weights are in E" in str(w.message)]
    if broken:
        assert len(hits) == 1  # once, not at every measurement
        assert "ReLU after 'standard'" in str(hits[0].message)
        assert monitor.history[-1]["equi/functional_error"] > 1e-3  # (step 0 has no probe yet)
    else:
        assert hits == []
        errors = [h["equi/functional_error"] for h in monitor.history if "equi/functional_error" in h]
        assert errors and max(errors) < 1e-5


def test_the_in_E_diagnosis_checks_the_network_with_its_weights_projected(quiet_trainer):
    """The "in E but not equivariant" warning asks whether the network with its tensors projected
    exactly onto E is equivariant: a departure within the rounding gate that the network amplifies is
    not blamed on something outside the weights. The check leaves every tensor as it was."""
    torch.manual_seed(0)
    model = BoringEquiModel()
    monitor = EquivarianceMonitor()
    quiet_trainer([EquivariantProjection(), monitor], max_steps=2).fit(model)
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=1e-2)  # far off E: the network is not equivariant
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        off = monitor._functional_error(model)["equi/functional_error"]
        projected = monitor._error_in_E(model)
    assert float(off) > 1e-3  # the perturbed network errs ...
    assert projected < 1e-5  # ... and with its tensors projected onto E it does not
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # restored bit for bit
