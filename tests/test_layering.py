"""The layers of the package: the core (groups, actions, subspace, metrics) imports neither Lightning
nor escnn nor the layers above it, and escnn is imported only under ``lightning_equi/adapters/``."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import lightning_equi

PACKAGE = Path(lightning_equi.__file__).resolve().parent
CORE = (
    "lightning_equi.groups",
    "lightning_equi.actions",
    "lightning_equi.subspace",
    "lightning_equi.metrics",
    "lightning_equi.schedules",
    "lightning_equi.stability",
)
ABOVE_CORE = (
    "lightning_equi.adapters",
    "lightning_equi.callbacks",
    "lightning_equi.experiments",
    "lightning_equi.cli",
)
ADAPTERS = "lightning_equi.adapters"


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of everything ``module`` imports, at top level or inside functions: the
    modules of ``import`` / ``from ... import`` (relative ones resolved; ``from a import b`` also
    counts as ``a.b``) and the literal arguments of ``importlib.import_module`` / ``__import__``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.append((node.lineno, base))
            out.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant):
                if isinstance(arg.value, str):
                    out.append((node.lineno, arg.value))
    return out


def test_the_module_walk_sees_every_layer(tmp_path):
    modules = _modules()
    for name in (*CORE, *ABOVE_CORE, "lightning_equi.adapters.escnn_groups"):
        assert name in modules, name

    def imports(module: str, code: str, filename: str = "probe.py") -> list[tuple[int, str]]:
        path = tmp_path / filename
        path.write_text(code)
        return _imports(module, path)

    # the parser resolves relative imports and sees imports inside functions and by importlib
    assert (1, "lightning_equi.groups.base") in imports(
        "lightning_equi.groups", "from .base import x", "__init__.py"
    )
    assert (1, "lightning_equi.adapters") in imports("lightning_equi.actions.sets", "from .. import adapters")
    assert (2, "escnn.nn") in imports("lightning_equi.x", "def f():\n    import escnn.nn")
    assert (1, "escnn") in imports("lightning_equi.x", "importlib.import_module('escnn')")


def test_only_the_adapters_import_escnn():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
        for module, path in _modules().items()
        if not _under(module, (ADAPTERS,))
        for line, name in _imports(module, path)
        if _under(name, ("escnn",))
    ]
    assert not offenders, "escnn is imported outside lightning_equi/adapters/:\n" + "\n".join(offenders)


def test_the_core_imports_nothing_above_it():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
        for module, path in _modules().items()
        if _under(module, CORE)
        for line, name in _imports(module, path)
        if _under(name, ABOVE_CORE)
    ]
    assert not offenders, "a core module imports a layer above the core:\n" + "\n".join(offenders)


# imports every core module in turn, in a fresh interpreter, and names the first one after which a
# forbidden package appears in sys.modules
_FRESH = """
import importlib, json, pkgutil, sys

FORBIDDEN = ("lightning", "pytorch_lightning", "escnn")
CORE = {core!r}

def loaded():
    return sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))

names, culprits, seen = [], {{}}, set()
for core in CORE:
    module = importlib.import_module(core)
    names.append(core)
    if hasattr(module, "__path__"):
        names += [m.name for m in pkgutil.walk_packages(module.__path__, core + ".")]
for name in names:
    importlib.import_module(name)
    new = [m for m in loaded() if m not in seen]
    if new:
        culprits[name] = new
        seen.update(new)
print(json.dumps({{"imported": names, "culprits": culprits}}))
"""


def test_importing_the_core_pulls_in_neither_lightning_nor_escnn():
    code = _FRESH.format(core=CORE)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert "lightning_equi.subspace.base" in report["imported"]  # the walk found the submodules
    assert "lightning_equi.actions.images" in report["imported"]
    assert not report["culprits"], f"core modules that import Lightning or escnn: {report['culprits']}"
