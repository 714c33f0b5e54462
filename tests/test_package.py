"""Package hygiene: a light import, a public API that resolves, doctests that pass."""

from __future__ import annotations

import doctest
import importlib
import json
import pkgutil
import subprocess
import sys

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


@pytest.mark.parametrize("module", ["lightning_equi", *_group_modules()])
def test_doctests(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {module}"


def test_doctests_exist() -> None:
    # the examples promised by the style guide are really there (and so really run above)
    attempted = sum(
        doctest.testmod(importlib.import_module(m), verbose=False).attempted for m in _group_modules()
    )
    assert attempted >= 15
