"""The escnn numerics fix, armed on ``import lightning_equi`` without importing escnn (standard library only).

escnn 1.0.11 computes the Clebsch-Gordan coefficients of dihedral groups, O(2), SO(3) (without
py3nj) and friends numerically, with a cold cache, through ``escnn.group._numerical.null``, which
calls scikit-learn's ``randomized_svd`` on an ``np.matrix`` whenever scikit-learn is installed.
scikit-learn >= 1.6 rejects ``np.matrix`` ("np.matrix is not supported"), so building a first D4,
O(2) or SO(3) layer fails inside escnn. escnn falls back to the exact, deterministic
``scipy.linalg.svd`` when ``randomized_svd`` is ``None``.

:func:`install` selects that fallback whatever the import order: at once if escnn's module is already
loaded, else by a meta-path hook that patches the module right after escnn imports it. The hook
itself never imports escnn, so ``import lightning_equi`` stays cheap. A model built before
``lightning_equi`` is imported at all is out of reach (nothing of ours has run yet).

Example:
    >>> import sys
    >>> install()
    >>> any(isinstance(f, _NumericsFinder) for f in sys.meta_path) or TARGET in sys.modules
    True
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any

__all__ = ["install", "patch_module", "TARGET"]

#: the escnn module whose ``randomized_svd`` is switched off
TARGET = "escnn.group._numerical"


def patch_module(module: Any) -> None:
    """Make escnn's ``null`` use ``scipy.linalg.svd`` (escnn's own fallback) instead of scikit-learn."""
    module.randomized_svd = None


class _PatchingLoader(importlib.abc.Loader):
    """escnn's own loader, then :func:`patch_module` on the freshly executed module."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        patch_module(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... for tracebacks and inspect
        return getattr(self._loader, name)


class _NumericsFinder(importlib.abc.MetaPathFinder):
    """Finds :data:`TARGET` through the other finders and wraps its loader; passes on everything else."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and not isinstance(spec.loader, _PatchingLoader):
                    spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Patch escnn's numerics now if escnn is loaded, else as soon as it is (idempotent)."""
    module = sys.modules.get(TARGET)
    if module is not None:
        patch_module(module)
    if not any(isinstance(f, _NumericsFinder) for f in sys.meta_path):
        # also kept when escnn is loaded: a reload (importlib.reload, a fresh escnn) is patched too
        sys.meta_path.insert(0, _NumericsFinder())
