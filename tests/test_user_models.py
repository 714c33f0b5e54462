"""Models of the kinds users bring, written by hand (torchvision is not installable here): each bound with
named fields in a few lines, equivariant after projection and after training in ``equi``, checked against
actions written independently of the library (``rot90``, ``flip``, ``roll``, index permutations), with
a negative control; and the refusals and warnings these models meet, each with ``match=``.
"""

from __future__ import annotations

import itertools

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_equi.actions import ImageAction, SetAction
from lightning_equi.callbacks import EquivarianceMonitor, build_callbacks
from lightning_equi.metrics import model_equivariance_error, output_action, transformed_outputs
from lightning_equi.subspace import SymmetrySpec


class _Wrap(L.LightningModule):
    """A plain torch network, its spec, random data and a loss: the Lightning side of every model here."""

    def __init__(self, net: nn.Module, spec: SymmetrySpec, x: torch.Tensor, loss) -> None:
        super().__init__()
        self.net, self._spec, self._x, self._loss = net, spec, x, loss

    def forward(self, x):
        return self.net(x)

    def symmetry_spec(self) -> SymmetrySpec:
        return self._spec

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self._loss(self(x))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self._x), batch_size=4)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


# ---- 1. a graph MLP with edge, node and graph outputs (S_n) ----------------------------------------

N, D, H = 4, 3, 5


class GraphMLP(nn.Module):
    """Node features ``(B, n, d)`` -> ``{"edge": (B, n, n, 1), "node": (B, n, 2), "graph": (B, 1)}``.

    Dense layers on the channel-major flattening ``x.transpose(1, 2).flatten(1)`` (``d`` standard
    fields of S_n), edges from inner products of the node embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(D * N, H * N)
        self.node = nn.Linear(H * N, 2 * N)
        self.graph = nn.Linear(H * N, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.fc1(x.transpose(1, 2).flatten(1)))  # (B, H * n), channel-major
        u = h.reshape(-1, H, N).transpose(1, 2)  # (B, n, H)
        return {
            "edge": (u @ u.transpose(1, 2))[..., None],
            "node": self.node(h).reshape(-1, 2, N).transpose(1, 2),
            "graph": self.graph(h),
        }


def _graph_spec(net: GraphMLP) -> SymmetrySpec:
    return (
        SymmetrySpec(f"S{N}")
        .layers(nn.Linear, fields="standard")
        .layer(net.graph, in_fields="standard", out_fields="trivial")
    )


GRAPH_OUTPUTS = {"edge": "graph", "node": "set", "graph": None}


def _permutation_reference(net: nn.Module, x: torch.Tensor) -> float:
    """The worst relative error over every permutation, by index permutations of the tensors."""
    worst = 0.0
    out = net(x)
    for perm in itertools.permutations(range(N)):
        p = torch.tensor(perm)
        moved = net(x[:, p])
        worst = max(
            worst,
            _relative(moved["edge"], out["edge"][:, p][:, :, p]),
            _relative(moved["node"], out["node"][:, p]),
            _relative(moved["graph"], out["graph"]),
        )
    return worst


def test_graph_mlp_with_several_outputs_is_equivariant_after_projection_and_training(quiet_trainer):
    torch.manual_seed(0)
    net = GraphMLP()
    x = torch.randn(8, N, D)
    with torch.no_grad():
        assert _permutation_reference(net, x) > 0.1  # negative control: a plain init is not equivariant
    model = _Wrap(net, _graph_spec(net), x, lambda out: sum(v.square().mean() for v in out.values()))
    callbacks = build_callbacks("equi", inputs="set", outputs=GRAPH_OUTPUTS, every_n_steps=1, probe_size=4)
    quiet_trainer(callbacks, max_steps=4).fit(model)
    with torch.no_grad():
        assert _permutation_reference(net, x) < 1e-5
    monitor = callbacks[0]
    last = monitor.history[-1]
    assert last["equi/functional_error"] < 1e-5
    assert set(k for k in last if k.startswith("equi/functional_error/")) == {
        "equi/functional_error/edge",
        "equi/functional_error/node",
        "equi/functional_error/graph",
    }


def test_the_monitor_reports_the_entry_declared_with_the_wrong_action(quiet_trainer):
    """Negative control: the node outputs declared invariant, the monitor's per-entry error points at them."""
    torch.manual_seed(0)
    net = GraphMLP()
    model = _Wrap(net, _graph_spec(net), torch.randn(8, N, D), lambda out: out["graph"].square().mean())
    wrong = dict(GRAPH_OUTPUTS, node=None)
    callbacks = build_callbacks("equi", inputs="set", outputs=wrong, every_n_steps=1, probe_size=4)
    with pytest.warns(UserWarning, match="not equivariant on the probe batch"):
        quiet_trainer(callbacks, max_steps=1).fit(model)
    last = callbacks[0].history[-1]
    assert last["equi/functional_error/node"] > 0.1
    assert last["equi/functional_error/edge"] < 1e-5 and last["equi/functional_error/graph"] < 1e-5


def test_model_equivariance_error_of_a_structured_output_against_a_per_entry_loop():
    torch.manual_seed(0)
    net = GraphMLP()
    x = torch.randn(3, N, D)
    act = SetAction(f"S{N}")
    g = act.group.sample(6 * 3)
    outputs = output_action(GRAPH_OUTPUTS, act.group)
    out = model_equivariance_error(net, x, g, act, outputs)
    # the reference: one sample and one element at a time, entries compared on their own
    per_entry: dict[str, list[float]] = {"edge": [], "node": [], "graph": []}
    worst = []
    with torch.no_grad():
        for j in range(g.shape[0]):
            xi = x[j % 3 : j % 3 + 1]
            src = torch.argsort(g[j])  # out[:, p[i]] = x[:, i]: read position j from p^-1[j]
            moved, fx = net(xi[:, src]), net(xi)
            errors = {
                "edge": _relative(moved["edge"], fx["edge"][:, src][:, :, src]),
                "node": _relative(moved["node"], fx["node"][:, src]),
                "graph": _relative(moved["graph"], fx["graph"]),
            }
            for k, v in errors.items():
                per_entry[k].append(v)
            worst.append(max(errors.values()))
    assert float(out["total"]) == pytest.approx(sum(worst) / len(worst), rel=1e-6)
    for k, values in per_entry.items():
        assert float(out[f"entry/{k}"]) == pytest.approx(sum(values) / len(values), rel=1e-6, abs=1e-12)


class _SegAndAux(nn.Module):
    """A U-Net-like head returning a map and an invariant auxiliary output, as a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y, y.mean(dim=(1, 2, 3))


def test_structured_outputs_refused_when_the_actions_do_not_describe_them():
    act = ImageAction("C4")
    x, g = torch.rand(2, 1, 6, 6), torch.arange(4).repeat_interleave(2)
    net = _SegAndAux()
    with pytest.raises(ValueError, match=r"one output action .* cannot act .* outputs=\[<action or None>"):
        transformed_outputs(net, x, g, act, act)
    with pytest.raises(
        ValueError, match=r"gives 3 actions, one per entry, but the model returns a tuple of 2"
    ):
        transformed_outputs(net, x, g, act, [act, None, None])
    with pytest.raises(ValueError, match=r"names the entries \['a', 'b'\]"):
        transformed_outputs(net, x, g, act, {"a": act, "b": None})
    with pytest.raises(ValueError, match=r"outputs\[1\]: unknown action 'imag'"):
        output_action(["image", "imag"], "C4")
    out = model_equivariance_error(net, x, g, act, [act, None])  # the spec is not projected: not equivariant
    assert set(out) == {"total", "exact", "inexact", "entry/0", "entry/1"}


def test_the_monitor_refuses_a_tuple_output_against_one_action_before_the_first_step(quiet_trainer):
    net = _SegAndAux()
    spec = SymmetrySpec("C4").layer(net.conv, "trivial", "trivial")
    model = _Wrap(net, spec, torch.rand(8, 1, 6, 6), lambda out: out[0].square().mean())
    monitor = EquivarianceMonitor(outputs="image", every_n_steps=1)
    with pytest.raises(MisconfigurationException, match=r"outputs='image'.*a tuple of 2 tensors"):
        quiet_trainer([monitor], max_steps=2).fit(model)
    assert model.global_step == 0


# ---- 7. inputs= left at "image" on an S_n model ----------------------------------------------------


def test_inputs_left_at_image_on_a_set_model_names_the_argument(quiet_trainer):
    net = GraphMLP()
    model = _Wrap(net, _graph_spec(net), torch.randn(8, N, D), lambda out: out["graph"].square().mean())
    with pytest.raises(
        MisconfigurationException, match=r"EquivarianceMonitor\(inputs='image'\).*\['set', 'graph'\]"
    ):
        quiet_trainer([EquivarianceMonitor()], max_steps=1).fit(model)
    with pytest.raises(
        MisconfigurationException, match=r"build_callbacks\(inputs='image'\).*\['set', 'graph'\]"
    ):
        build_callbacks("equi", model=model)
    with pytest.raises(MisconfigurationException, match=r"build_callbacks\(inputs\['x'\]='points'\)"):
        build_callbacks("aug", group="S4", inputs={"x": "points"})
    with pytest.raises(MisconfigurationException, match=r"outputs\['node'\].*\['set', 'graph'\]"):
        quiet_trainer([EquivarianceMonitor(inputs="set", outputs={"node": "image"})], max_steps=1).fit(model)
