"""#12 items 4 and 5: the spec is bound and validated at setup, the monitor's state belongs to one fit and
one model, and bad weights or restored states fail naming what is wrong."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_equi.callbacks import (
    EquivarianceMonitor,
    EquivariantProjection,
    HaarAugmentation,
    build_callbacks,
)
from lightning_equi.subspace import SymmetrySpec
from lightning_equi.testing import BoringEquiModel


@pytest.fixture(autouse=True)
def _quiet():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
        yield
    torch.set_num_threads(threads)


def _trainer(tmp_path, callbacks, max_steps=4, **kwargs) -> L.Trainer:
    options = dict(
        default_root_dir=tmp_path,
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    options.update(kwargs)
    return L.Trainer(callbacks=callbacks, **options)


class _Hooks(L.Callback):
    """Records the hooks reached, to tell setup from fit start."""

    def __init__(self) -> None:
        self.reached: list[str] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        self.reached.append("on_fit_start")


class _WrongLayer(BoringEquiModel):
    def symmetry_spec(self) -> SymmetrySpec:
        return super().symmetry_spec().layer("net.9", "regular", "trivial")


# ---- item 4: bind and validate in setup, the same way in every mode ------------------------------


@pytest.mark.parametrize("mode", ["nom", "aug", "equi"])
def test_a_spec_error_is_raised_at_setup_before_fit_start_in_every_mode(tmp_path, mode):
    hooks = _Hooks()
    trainer = _trainer(tmp_path, [hooks, *build_callbacks(mode, group="C4", seed=0)])
    with pytest.raises(MisconfigurationException, match=r"no submodule named 'net.9'"):
        trainer.fit(_WrongLayer())
    assert hooks.reached == []  # raised in setup: no fit start, no model summary


@pytest.mark.parametrize("mode", ["nom", "aug", "equi"])
def test_build_callbacks_with_the_model_validates_its_spec_at_once(mode):
    with pytest.raises(
        MisconfigurationException, match=r"does not fit the model.*no submodule named 'net.9'"
    ):
        build_callbacks(mode, model=_WrongLayer())


def test_a_group_that_differs_from_the_models_spec_is_refused_in_every_mode(tmp_path):
    for mode in ("nom", "aug", "equi"):  # the spec comes from the model, at setup
        trainer = _trainer(tmp_path, build_callbacks(mode, group="D4", seed=0))
        with pytest.raises(MisconfigurationException, match=r"group='D4' but BoringEquiModel.symmetry_spec"):
            trainer.fit(BoringEquiModel())
    with pytest.raises(MisconfigurationException, match=r"group='D4' but BoringEquiModel.symmetry_spec"):
        build_callbacks("equi", group="D4", model=BoringEquiModel())
    alone = _trainer(tmp_path, [HaarAugmentation("D4", seed=0)])  # no monitor: the augmentation checks
    with pytest.raises(MisconfigurationException, match=r"draws elements of D4.*symmetry_spec\(\) is for C4"):
        alone.fit(BoringEquiModel())


def test_an_unknown_group_is_a_misconfiguration():
    with pytest.raises(MisconfigurationException, match=r"`group`: .*Z4"):
        build_callbacks("equi", group="Z4")


class _LateModel(BoringEquiModel):
    """Builds its head in setup(), after the callbacks' setup: binding waits for fit start."""

    def __init__(self) -> None:
        super().__init__()
        self.net[7] = nn.Identity()

    def setup(self, stage: str) -> None:
        self.net[7] = nn.Linear(8, 1)


def test_a_model_that_builds_layers_in_its_setup_is_bound_at_fit_start(tmp_path):
    monitor, projection = build_callbacks("equi", every_n_steps=2)
    _trainer(tmp_path, [monitor, projection]).fit(_LateModel())
    assert "net.7.weight" in {e.name for e in projection.projection.entries}
    assert projection.projection.is_equivariant()


# ---- item 5: the monitor's state belongs to one fit and one model -------------------------------


def test_callbacks_reused_for_a_second_fit_start_a_new_history_on_the_new_model(tmp_path):
    callbacks = build_callbacks("equi", every_n_steps=2)
    monitor = callbacks[0]
    _trainer(tmp_path, callbacks).fit(BoringEquiModel(seed=0))
    second = BoringEquiModel(seed=1, lr=0.2)
    _trainer(tmp_path, callbacks).fit(second)
    assert [h["step"] for h in monitor.history] == [0.0, 2.0, 4.0]
    assert monitor.history[0]["equi/dist_from_start/total"] == 0.0
    assert monitor.projection.model is second
    assert callbacks[1].projection.model is second


def _checkpoint(tmp_path, model, callbacks) -> str:
    trainer = _trainer(tmp_path, callbacks, max_steps=2)
    trainer.fit(model)
    path = str(tmp_path / "two.ckpt")
    trainer.save_checkpoint(path)
    return path


class _HeadFreed(BoringEquiModel):
    def symmetry_spec(self) -> SymmetrySpec:
        return super().symmetry_spec().free("net.7")


def test_resume_refuses_a_start_for_other_names(tmp_path):
    path = _checkpoint(tmp_path, BoringEquiModel(), [EquivarianceMonitor(every_n_steps=1)])
    trainer = _trainer(tmp_path, [EquivarianceMonitor(every_n_steps=1)])
    with pytest.raises(MisconfigurationException, match=r"not constrained \['net.7.bias', 'net.7.weight'\]"):
        trainer.fit(_HeadFreed(), ckpt_path=path)


def test_resume_refuses_a_start_of_another_shape(tmp_path):
    path = _checkpoint(tmp_path, BoringEquiModel(), [EquivarianceMonitor(every_n_steps=1)])
    checkpoint = torch.load(path, weights_only=False)
    (key,) = [k for k in checkpoint["callbacks"] if k.startswith("EquivarianceMonitor")]
    checkpoint["callbacks"][key]["w0"]["net.7.weight"] = torch.zeros(1)  # would be broadcast
    torch.save(checkpoint, path)
    trainer = _trainer(tmp_path, [EquivarianceMonitor(every_n_steps=1)])
    with pytest.raises(MisconfigurationException, match=r"net.7.weight: \(1,\) instead of \(1, 8\)"):
        trainer.fit(BoringEquiModel(), ckpt_path=path)


def test_resume_under_another_precision_casts_the_probe(tmp_path):
    path = _checkpoint(tmp_path, BoringEquiModel(), [EquivarianceMonitor(every_n_steps=1)])
    monitor = EquivarianceMonitor(every_n_steps=1)
    _trainer(tmp_path, [monitor], precision="64-true").fit(BoringEquiModel(), ckpt_path=path)
    assert [h["step"] for h in monitor.history] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [h["epoch"] for h in monitor.history if "equi/functional_error" in h] != []
    assert all(torch.isfinite(torch.tensor(h.get("equi/functional_error", 0.0))) for h in monitor.history)


class _EmptyFirst(BoringEquiModel):
    """Its first training batch holds no sample."""

    def train_dataloader(self):
        x, y = self.make_data(torch.Generator().manual_seed(0))
        batches = [(x[:0], y[:0]), (x[:8], y[:8]), (x[8:16], y[8:16])]
        return DataLoader(batches, batch_size=None)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return None if x.shape[0] == 0 else nn.functional.mse_loss(self(x), y)


def test_an_empty_first_batch_takes_the_probe_from_the_next(tmp_path):
    monitor = EquivarianceMonitor(every_n_steps=1)
    _trainer(tmp_path, [monitor], max_steps=2).fit(_EmptyFirst())
    assert "equi/functional_error" in monitor.history[-1]
    assert monitor._probe["x"].shape[0] == 8


class _BigInvariantConvSmallHead(L.LightningModule):
    """A conv layer in E with huge weights, then a small head far from E: the total relative distance
    is below 1e-6, but the model is not in E, and the head makes it non-invariant."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8, 1)
        spec = SymmetrySpec("C4").layer(self.conv, "trivial", "regular").free(self.head)
        spec.bind(self).project_parameters_()
        with torch.no_grad():
            self.conv.weight.mul_(1e7)

    def symmetry_spec(self) -> SymmetrySpec:
        return SymmetrySpec("C4").layer("conv", "trivial", "regular").layer("head", "regular", "trivial")

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean(dim=(-2, -1))
        return self.head(h)

    def training_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        gen = torch.Generator().manual_seed(0)
        return DataLoader(
            TensorDataset(torch.randn(8, 1, 6, 6, generator=gen), torch.randn(8, 1)), batch_size=8
        )


def test_in_E_is_judged_per_tensor_not_on_the_total(tmp_path):
    model = _BigInvariantConvSmallHead()
    monitor = EquivarianceMonitor(every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(tmp_path, [monitor], max_steps=1).fit(model)
    assert monitor.history[-1]["equi/rel_dist_to_E/total"] < 1e-6  # the old criterion said "in E"
    assert monitor.history[-1]["equi/functional_error"] > 1e-3
    assert not [w for w in caught if "the weights are in E" in str(w.message)]
    assert not monitor.projection.within_rounding()


def test_in_E_scales_with_the_dtype():
    net = nn.Sequential(nn.Linear(8, 8))
    projection = SymmetrySpec("C4").layer("0", "regular", "regular").bind(net)
    projection.project_parameters_()
    assert projection.within_rounding()  # float32, projected
    with torch.no_grad():
        net[0].weight[0, 0] += 1e-3 * float(net[0].weight.norm())
    assert not projection.within_rounding()
    net.double()
    projection.project_parameters_()
    with torch.no_grad():
        net[0].weight[0, 0] += 1e-9  # far below float32 rounding, far above float64's
    assert not projection.within_rounding()


def test_non_finite_weights_are_named_by_layer(tmp_path):
    model = BoringEquiModel()
    with torch.no_grad():
        model.net[3].weight[0, 0, 0, 0] = float("nan")
        model.net[7].bias[0] = float("inf")
    trainer = _trainer(tmp_path, [EquivariantProjection()])
    with pytest.raises(
        RuntimeError, match=r"non-finite .* at fit start: net.3.weight \(1 of 576 entries\), net.7.bias"
    ):
        trainer.fit(model)


def test_restored_weights_off_E_are_not_said_to_be_projected(tmp_path):
    path = _checkpoint(tmp_path, BoringEquiModel(), [EquivariantProjection()])
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["state_dict"]["net.7.weight"][0, 0] += 1.0
    torch.save(checkpoint, path)
    with pytest.raises(
        RuntimeError, match=r"restored from the checkpoint are not in the equivariant .* net.7.weight"
    ):
        _trainer(tmp_path, [EquivariantProjection()]).fit(BoringEquiModel(), ckpt_path=path)


def test_frozen_constrained_parameters_are_projected_with_a_warning(tmp_path):
    model = BoringEquiModel()
    model.net[7].weight.requires_grad_(False)
    before = model.net[7].weight.detach().clone()
    with pytest.warns(
        UserWarning, match=r"projects the frozen parameters \['net.7.weight'\].*spec.free\('net.7.weight'\)"
    ):
        _trainer(tmp_path, [EquivariantProjection(init="project")], max_steps=1).fit(model)
    after = model.net[7].weight.detach()
    assert not torch.equal(before, after)
    # regular -> trivial: constant on each of the two regular fields, their means
    expected = before.reshape(1, 2, 4).mean(dim=-1, keepdim=True).expand(1, 2, 4).reshape(1, 8)
    torch.testing.assert_close(after, expected)
