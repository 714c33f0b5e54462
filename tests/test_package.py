"""Package hygiene: a light import, a public API that resolves, doctests that pass."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import lightning_equi
import lightning_equi.groups

HEAVY = ("escnn", "tensorboard", "lightning", "pytorch_lightning", "lightning_fabric", "matplotlib")

_PROBE = """
import json, sys, time
t = time.perf_counter()
import lightning_equi, lightning_equi.groups
elapsed = time.perf_counter() - t
print(json.dumps({"seconds": elapsed, "modules": sorted(sys.modules)}))
"""


def test_import_is_light() -> None:
    # A fresh interpreter: the test session itself has imported everything already.
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    loaded = {m.split(".")[0] for m in report["modules"]}
    assert not loaded.intersection(HEAVY), f"import lightning_equi pulled in {loaded.intersection(HEAVY)}"
    assert "torch" in loaded  # sanity: the probe really imported the package
    print(f"import lightning_equi, lightning_equi.groups: {report['seconds']:.2f} s (torch included)")


def test_public_names_resolve() -> None:
    assert lightning_equi.__all__ and len(set(lightning_equi.__all__)) == len(lightning_equi.__all__)
    for name in lightning_equi.__all__:
        assert getattr(lightning_equi, name) is not None, name
    for name in lightning_equi.groups.__all__:
        assert getattr(lightning_equi.groups, name) is not None, name
        assert name in lightning_equi.__all__, f"lightning_equi.groups.{name} is not re-exported"
    with pytest.raises(AttributeError, match="module 'lightning_equi' has no attribute 'nope'"):
        lightning_equi.nope  # noqa: B018


def _group_modules() -> list[str]:
    prefix = lightning_equi.groups.__name__ + "."
    return [lightning_equi.groups.__name__] + [
        m.name for m in pkgutil.iter_modules(lightning_equi.groups.__path__, prefix)
    ]


# Modules without a docstring example, each for a reason: package indexes and message tables hold no
# code of their own; demo, runner, figure and models are exercised end to end by their own tests.
_NO_EXAMPLE = {
    "lightning_equi.callbacks",
    "lightning_equi.callbacks.messages",
    "lightning_equi.demo",
    "lightning_equi.experiments",
    "lightning_equi.experiments.figure",
    "lightning_equi.experiments.runner",
    "lightning_equi.groups",
    "lightning_equi.subspace",
    "lightning_equi.testing",
}


def _all_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(lightning_equi.__path__, "lightning_equi.")]
    if importlib.util.find_spec("escnn") is None:  # as the doctest collection does (conftest.py)
        names = [n for n in names if not n.startswith("lightning_equi.adapters")]
    return ["lightning_equi", *names]


def test_pytest_collects_the_docstring_examples_of_the_package() -> None:
    """`./run tests` runs every `>>>` line of the package: pytest collects its doctests (pyproject)."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"]["pytest"]
    options = config["ini_options"]
    assert "--doctest-modules" in options["addopts"].split()
    assert "lightning_equi" in options["testpaths"]
    assert "ELLIPSIS" in options["doctest_optionflags"]


def test_every_module_has_examples_unless_listed() -> None:
    finder = doctest.DocTestFinder()
    bare = set()
    for name in _all_modules():
        tests = finder.find(importlib.import_module(name))
        if not any(t.examples for t in tests):
            bare.add(name)
    assert bare == _NO_EXAMPLE, (
        f"without examples: {sorted(bare - _NO_EXAMPLE)}; now with examples: {sorted(_NO_EXAMPLE - bare)}"
    )


def test_doctests_exist() -> None:
    # the examples promised by the style guide are really there (and so really run by pytest)
    finder = doctest.DocTestFinder()
    attempted = sum(
        len(t.examples) for m in _group_modules() for t in finder.find(importlib.import_module(m))
    )
    assert attempted >= 15


# ---- the public name lists stay in step -------------------------------------------------------------

_SUBPACKAGES = [
    "groups",
    "actions",
    "subspace",
    "callbacks",
    "testing",
    "adapters",
    "experiments",
    "stability",
]
# subpackages whose every public name is also a name of the top-level package
_MIRRORED = ["groups", "actions", "callbacks", "metrics"]


def _declared() -> dict[str, set[str]]:
    """Module name -> its ``__all__``, for every module of the package."""
    return {name: set(getattr(importlib.import_module(name), "__all__", ())) for name in _all_modules()}


def test_every_module_defines_what_its_all_lists() -> None:
    for name, public in _declared().items():
        module = importlib.import_module(name)
        assert not (missing := sorted(n for n in public if not hasattr(module, n))), (name, missing)


def test_subpackages_export_only_names_their_modules_declare() -> None:
    declared = _declared()
    everything = set().union(*declared.values())
    for package in _SUBPACKAGES:
        name = f"lightning_equi.{package}"
        own = set().union(*(v for k, v in declared.items() if k.startswith(name + ".")))
        exported = declared[name]
        # a subpackage re-exports its own modules' names, or (callbacks) names of another core module
        assert exported <= everything, (name, sorted(exported - everything))
        assert not (foreign := sorted(exported - own)) or package == "callbacks", (name, foreign)
        for public in exported:  # lazy tables resolve too
            assert getattr(importlib.import_module(name), public) is not None, (name, public)


def test_the_top_level_lazy_table_points_where_each_name_is_declared() -> None:
    table = lightning_equi._LAZY
    assert lightning_equi.__all__ == sorted(table)
    for public, module in table.items():
        assert public in getattr(importlib.import_module(module), "__all__", ()), (public, module)
        assert getattr(lightning_equi, public) is getattr(importlib.import_module(module), public), public
    for package in _MIRRORED:
        names = set(importlib.import_module(f"lightning_equi.{package}").__all__)
        assert not (missing := sorted(names - set(table))), (package, missing)
