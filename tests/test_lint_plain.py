"""The plain-torch lint (lightning_equi.subspace.lint_model): each flagged layer really breaks
equivariance in E, and what it calls exact really is exact (checked with torch.rot90/flip/roll)."""

from __future__ import annotations

import pytest
import torch
from test_inference import PositionalEmbedding, _one_thread  # noqa: F401  (tests/ is on the path)
from torch import Tensor, nn

from lightning_equi.subspace import GridWarning, SymmetrySpec, lint_model


def _in_E(net: nn.Module, group: str, inputs: str = "image", outputs: object = "image") -> nn.Module:
    """The network with its weights projected onto E of the inferred spec (no lint warnings)."""
    torch.manual_seed(0)
    spec = SymmetrySpec.infer(net, group, inputs=inputs, outputs=outputs, lint=False)
    spec.bind(net).project_parameters_()
    return net.eval()


def _turn_error(net: nn.Module, x: Tensor) -> float:
    """max |f(rot90 x) - rot90 f(x)| for a network mapping images to images."""
    with torch.no_grad():
        return float(
            (net(torch.rot90(x, 1, dims=(-2, -1))) - torch.rot90(net(x), 1, dims=(-2, -1))).abs().max()
        )


def test_even_kernel_with_symmetric_padding_is_exact_and_same_padding_is_not() -> None:
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    symmetric = _in_E(nn.Sequential(nn.Conv2d(1, 4, 2, padding=1), nn.Conv2d(4, 1, 2)).double(), "C4")
    assert lint_model(symmetric, "C4", (1, 8, 8), warn=False) == []
    assert _turn_error(symmetric, x) < 1e-12  # the half-pixel offset is symmetric: exact
    same = _in_E(
        nn.Sequential(nn.Conv2d(1, 4, 2, padding="same"), nn.Conv2d(4, 1, 3, padding=1)).double(), "C4"
    )
    (message,) = lint_model(same, "C4", (1, 8, 8), warn=False)
    assert message.startswith("layer '0' (Conv2d): padding='same' with the even kernel (2, 2)")
    assert _turn_error(same, x) > 1e-3  # the negative control: torch pads one side more


def test_asymmetric_padding_layer_is_flagged_and_breaks_turns() -> None:
    net = _in_E(
        nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(1, 4, 3), nn.Conv2d(4, 1, 1)).double(), "C4"
    )
    (message,) = lint_model(net, "C4", (1, 8, 8), warn=False)
    assert (
        "layer '0' (ZeroPad2d): pads (0, 1, 0, 1)" in message
        and "quarter turns need equal padding" in message
    )
    assert _turn_error(net, torch.randn(2, 1, 8, 8, dtype=torch.float64)) > 1e-3
    # under the mirror x -> -x alone (D1), top and bottom may differ: only left/right matter
    flipped = nn.Sequential(nn.ZeroPad2d((1, 1, 0, 1)), nn.Conv2d(1, 2, 3))
    assert lint_model(flipped, "D1", warn=False) == []
    assert lint_model(nn.Sequential(nn.ZeroPad2d((0, 1, 1, 1))), "D1", warn=False)[0].endswith(
        "mirrors need equal padding on the sides they exchange"
    )


def test_strides_name_the_exact_sizes_and_are_exact_there() -> None:
    def net() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
            nn.Conv2d(4, 1, 1),
        ).double()  # fmt: skip

    model = _in_E(net(), "C4")
    (first, second) = lint_model(model, "C4", (1, 16, 16), warn=False)
    assert first.startswith("layer '0' (Conv2d, kernel 3, stride 2, padding 1) sees width 16")
    assert first.endswith("exact input sides: 13, 17") and "layer '2'" in second
    assert _turn_error(model, torch.randn(2, 1, 16, 16, dtype=torch.float64)) > 1e-3
    assert lint_model(model, "C4", (1, 17, 17), warn=False) == []
    assert _turn_error(model, torch.randn(2, 1, 17, 17, dtype=torch.float64)) < 1e-12


def test_padding_mode_under_cyclic_shifts() -> None:
    zeros = nn.Sequential(
        nn.Conv1d(1, 2, 3, padding=1), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(2, 1)
    )
    (message,) = lint_model(zeros, "C8", warn=False)
    assert "layer '0' (Conv1d): pads with zeros" in message and "padding_mode='circular'" in message
    net = _in_E(zeros.double(), "C8", inputs="signal", outputs=None)
    x = torch.randn(3, 1, 8, dtype=torch.float64)
    with torch.no_grad():
        assert float((net(torch.roll(x, 3, -1)) - net(x)).abs().max()) > 1e-6  # zero padding breaks shifts
    # zero padding is symmetric: under rotations of an image it is fine
    assert lint_model(nn.Conv2d(1, 4, 3, padding=1), "C4", warn=False) == []
    assert (
        "padding_mode='zeros' does not commute with the shifts of T8x8"
        in lint_model(nn.Conv2d(1, 4, 3, padding=1), "T8x8", warn=False)[0]
    )


def test_positional_embedding_is_flagged() -> None:
    messages = lint_model(PositionalEmbedding(), "C4", inputs="image", warn=False)
    assert messages[0].startswith("parameter 'pos' (shape (1, 4, 6, 6)) belongs to no layer")
    assert "the spec cannot be inferred: " in messages[1] and "a positional embedding" in messages[1]


def test_nonlinearity_on_standard_fields_is_flagged_and_breaks_equivariance() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1)).double()
    spec = SymmetrySpec.infer(net, "C4", inputs="image", outputs="image", hidden="standard", lint=False)
    (finding,) = spec.findings
    assert (
        finding.layer == "layer '1' (ReLU)"
        and "standard fields, which are not a permutation" in finding.message
    )
    with pytest.warns(GridWarning, match=r"layer '1' \(ReLU\): ReLU acts pointwise on standard fields"):
        SymmetrySpec.infer(net, "C4", inputs="image", outputs="image", hidden="standard")
    torch.manual_seed(0)
    spec.bind(net).project_parameters_()
    assert _turn_error(net.eval(), torch.randn(2, 1, 6, 6, dtype=torch.float64)) > 1e-3
    # the same network on regular fields: not flagged, and exact
    assert SymmetrySpec.infer(net, "C4", inputs="image", outputs="image", lint=False).findings == []


def test_sequential_without_an_input_type_does_not_crash() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1))
    assert lint_model(net, "D4", (3, 9, 9), warn=False)[0].startswith(
        "layer '1' (MaxPool2d, kernel 2, stride 2"
    )
    assert lint_model(net, "D4", (3, 8, 8), warn=False) == []
    with pytest.warns(GridWarning, match=r"D4 at input \(3, 9, 9\):\n  layer '1' \(MaxPool2d"):
        lint_model(net, "D4", torch.zeros(2, 3, 9, 9))


@pytest.mark.parametrize(("upsample", "flagged"), [
    (nn.Upsample(scale_factor=1.5), True),
    (nn.Upsample(scale_factor=2), False),
    (nn.Upsample(scale_factor=1.5, mode="bilinear"), False),
])  # fmt: skip
def test_nearest_upsampling_by_a_fraction_is_flagged_and_breaks_mirrors(
    upsample: nn.Module, flagged: bool
) -> None:
    net = nn.Sequential(upsample).double()
    messages = lint_model(net, "D4", (1, 4, 4), warn=False)
    assert bool(messages) == flagged
    if flagged:
        assert messages[0].startswith(
            "layer '0' (Upsample): nearest resizing by a factor that is not an integer"
        )
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        error = float((net(x.flip(-1)) - net(x).flip(-1)).abs().max())
        error = max(error, _turn_error(net, x))
    assert (error > 1e-3) == flagged


def test_an_ambiguous_set_shape_is_refused_and_an_example_input_settles_it() -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    with pytest.raises(ValueError, match=r"layer '0' .*in_features == n == 4: the input may be \(B, 4\)"):
        SymmetrySpec.infer(net, "S4", inputs="set")
    assert "'standard', 'standard'" in SymmetrySpec.infer(net, "S4", "set", example_input=(4,)).declarations()
    per_element = SymmetrySpec.infer(net, "S4", "set", outputs="set", example_input=(4, 4))
    assert "'trivial', 'trivial'" in per_element.declarations()  # per-element layers: nothing to constrain
    with pytest.raises(
        ValueError, match=r"outputs=None asks for an invariant output.*'set' for one output per"
    ):
        SymmetrySpec.infer(net, "S4", "set", example_input=(4, 4))
