"""#12 item 4: declarations reach the layer they name (by identity), or fail naming what works; the
pixel-grid field; tied, frozen-free, lazy and malformed declarations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_equi.subspace import SymmetrySpec


def _blocks_constant(weight: torch.Tensor, size: int = 4) -> bool:
    """Each row constant on each block of ``size`` inputs: the E of ``regular -> trivial`` under C4,
    written by hand (a map from a regular field to a scalar sees only the field's mean)."""
    w = weight.detach().reshape(weight.shape[0], -1, size)
    return bool(torch.allclose(w, w.mean(dim=-1, keepdim=True).expand_as(w), atol=1e-6))


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))


def test_a_module_declared_by_an_alias_gets_its_declaration():
    net = _mlp()
    net.head = net[2]  # registered twice: canonical name "2"
    spec = SymmetrySpec("C4").layers(nn.Linear, fields="regular").layer("head", "regular", "trivial")
    spec.bind(net).project_parameters_()
    assert _blocks_constant(net[2].weight)  # the alias's declaration, not the type-wide one
    assert not _blocks_constant(net[0].weight)


def test_a_submodule_wrapped_by_torch_compile_is_declared_by_the_users_name():
    net = _mlp()
    net[2] = torch.compile(net[2])  # named "2._orig_mod" in named_modules()
    for target in ("2", net[2]):
        spec = SymmetrySpec("C4").layers(nn.Linear, fields="regular").layer(target, "regular", "trivial")
        projection = spec.bind(net)
        projection.project_parameters_()
        assert _blocks_constant(net[2]._orig_mod.weight)
        assert "2._orig_mod.weight" in {e.name for e in projection.entries}


def test_a_compiled_root_binds_the_names_of_the_model():
    net = _mlp()
    compiled = torch.compile(net)
    spec = SymmetrySpec("C4").layer("0", "regular", "regular").layer("2", "regular", "trivial")
    spec.bind(compiled).project_parameters_()
    assert _blocks_constant(net[2].weight)


def test_an_unknown_name_lists_the_names_that_work():
    with pytest.raises(ValueError, match=r"no submodule named 'head'; its layers are '0', '2'"):
        SymmetrySpec("C4").layers(nn.Linear, fields="regular").layer("head", "regular", "trivial").bind(
            _mlp()
        )


def test_free_takes_a_parameter_by_any_of_its_names():
    net = _mlp()
    net.head = net[2]
    spec = SymmetrySpec("C4").layers(nn.Linear, fields="regular").free("head.weight", "head.bias")
    projection = spec.bind(net)
    assert projection.free_names == ["2.bias", "2.weight"]
    assert {e.name for e in projection.entries} == {"0.weight", "0.bias"}


def test_a_parameter_name_given_as_a_layer_says_so():
    with pytest.raises(ValueError, match=r"layer\('0.weight'\).*is a parameter: spec.free\(\) takes"):
        SymmetrySpec("C4").layer("0.weight", "regular", "regular").bind(_mlp())


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(8, 8, bias=False)
        self.dec = nn.Linear(8, 8, bias=False)
        self.dec.weight = self.enc.weight


def test_a_tied_parameter_declared_on_one_side_is_bound_once():
    model = _Tied()
    for side in ("enc", "dec"):
        projection = SymmetrySpec("C4").layer(side, "regular", "trivial").bind(model)
        assert [e.name for e in projection.entries] == ["enc.weight"]
        projection.project_parameters_()
        assert _blocks_constant(model.dec.weight)


def test_a_tied_parameter_declared_differently_on_each_side_is_refused():
    spec = SymmetrySpec("C4").layer("enc", "regular", "trivial").layer("dec", "regular", "regular")
    with pytest.raises(
        ValueError,
        match=r"'enc.weight' is shared by two layers.*layer 'enc'.*layer 'dec' as 'dec.weight'",
    ):
        spec.bind(_Tied())


def test_a_tied_parameter_declared_nowhere_is_listed_by_its_name():
    with pytest.raises(ValueError, match=r"1 parameter\(s\) of the model:\n  enc.weight"):
        SymmetrySpec("C4").bind(_Tied())


@pytest.mark.parametrize("fields", [3, None, [], [3]])
def test_fields_that_are_not_fields_are_refused_when_declared(fields):
    with pytest.raises(TypeError, match=r"layer\('fc'\) in_fields: fields are a field name"):
        SymmetrySpec("C4").layer("fc", fields, "trivial")
    with pytest.raises(TypeError, match=r"layers\(Linear\) in_fields: fields are a field name"):
        SymmetrySpec("C4").layers(
            nn.Linear, in_fields=fields if fields is not None else 3, out_fields="regular"
        )


def test_a_lazy_layer_is_refused_naming_it():
    net = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 1))
    spec = SymmetrySpec("C4").layers(nn.Linear, fields="regular")
    with pytest.raises(ValueError, match=r"the layers '0' \(LazyLinear\) are lazy.*forward pass"):
        spec.bind(net)
    net(torch.zeros(1, 4))  # materialised: binds
    assert spec.layer("2", "regular", "trivial").bind(net).dim > 0


# ---- the pixel grid --------------------------------------------------------------------------------


def _flat_image_model() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 1))


@torch.no_grad()
def _invariance_error(net: nn.Module, x: torch.Tensor) -> float:
    """Against torch.rot90 of the image, the independent reference of C4 on pixels."""
    out = net(x)
    return max(float((net(torch.rot90(x, k, dims=(-2, -1))) - out).abs().max()) for k in (1, 2, 3))


@pytest.mark.parametrize("grid", ["grid8x8", "grid"])
def test_a_linear_layer_on_a_flattened_image_reads_a_pixel_grid(grid):
    net = _flat_image_model()
    spec = SymmetrySpec("C4").layer("1", grid, "regular").layer("3", "regular", "trivial")
    spec.bind(net).project_parameters_()
    x = torch.randn(5, 1, 8, 8)
    assert _invariance_error(net, x) < 1e-5


def test_regular_fields_after_flatten_warn_and_name_the_grid():
    net = _flat_image_model()
    spec = SymmetrySpec("C4").layer("1", "regular", "regular").layer("3", "regular", "trivial")
    with pytest.warns(
        UserWarning, match=r"layer '1' \(Linear\(64, 8\)\) follows nn.Flatten.*in_fields='grid8x8'"
    ):
        projection = spec.bind(net)
    projection.project_parameters_()
    assert _invariance_error(net, torch.randn(5, 1, 8, 8)) > 1e-2  # the wrong subspace, as the warning says
    grid = SymmetrySpec("C4").layer("1", "grid8x8", "regular").layer("3", "regular", "trivial").bind(net)
    assert grid.dim == projection.dim  # same dim E: only the action tells them apart


def test_no_warning_after_global_pooling_or_for_a_representation():
    import warnings

    from lightning_equi.groups import get_group, regular

    pooled = nn.Sequential(nn.Conv2d(1, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1))
    rho = 2 * regular(get_group("C4"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SymmetrySpec("C4").layer("0", "trivial", "regular").layer("3", "regular", "trivial").bind(pooled)
        SymmetrySpec("C4").layer("1", 16 * regular(get_group("C4")), "regular").layer(
            "3", rho, "trivial"
        ).bind(_flat_image_model())


def test_a_grid_that_is_not_square_or_not_a_pixel_group_is_refused():
    with pytest.raises(ValueError, match=r"'grid' is a square image of side sqrt\(48\).*grid<H>x<W>"):
        SymmetrySpec("C4").layer("0", "grid", "trivial").bind(nn.Sequential(nn.Linear(48, 1)))
    with pytest.raises(ValueError, match=r"C8 does not act exactly on a pixel grid"):
        SymmetrySpec("C8").layer("0", "grid8x8", "trivial").bind(nn.Sequential(nn.Linear(64, 1)))
    with pytest.raises(ValueError, match=r"grid<H>x<W>"):
        SymmetrySpec("C4").layer("0", "pixels", "trivial").bind(nn.Sequential(nn.Linear(64, 1)))


def test_the_readme_example_of_the_pixel_grid_runs():
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text[text.index("A `Linear` reading a flattened image reads pixels") :]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(block, "README.md", "exec"), {})  # noqa: S102  (asserts the rot90 invariance itself)
    assert "grid8x8" in block


def test_free_takes_a_module_by_an_alias():
    net = _mlp()
    net.head = net[2]
    projection = SymmetrySpec("C4").layers(nn.Linear, fields="regular").free("head").bind(net)
    assert projection.free_names == ["2.bias", "2.weight"]
