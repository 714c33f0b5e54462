"""The one way this package imports escnn: :func:`require_escnn` (a helpful error if it is missing,
and a compatibility fix for escnn 1.0.11 with scikit-learn >= 1.6, applied on the first call).

With a cold cache escnn computes Clebsch-Gordan coefficients of dihedral groups, O(2) and friends
numerically, through ``escnn.group._numerical.null``, which calls scikit-learn's ``randomized_svd``
on an ``np.matrix`` whenever scikit-learn is installed. Recent scikit-learn rejects ``np.matrix``
("np.matrix is not supported"), so building a first ``R2Conv`` on ``flipRot2dOnR2(4)`` fails, and the
randomized SVD also draws from NumPy's global random state. escnn falls back to the exact, deterministic
``scipy.linalg.svd`` when ``randomized_svd`` is ``None``; :func:`patch_escnn_numerics` selects that
fallback (the SVD is of a full-rank square block, so nothing is lost).

Example:
    >>> escnn = require_escnn()
    >>> import escnn.group._numerical as numerical
    >>> numerical.randomized_svd is None
    True
"""

from __future__ import annotations

from typing import Any

__all__ = ["require_escnn", "patch_escnn_numerics"]

INSTALL_HINT = (
    "escnn is not installed. Install it with `./run setup`, or with "
    "`pip install --no-deps escnn==1.0.11` followed by `pip install 'lightning_equi[escnn]'` "
    "(escnn's own dependency py3nj needs a Fortran compiler and is optional)"
)

_PATCHED = False


def require_escnn() -> Any:
    """Import and return the ``escnn`` package, or raise an ImportError saying how to install it.

    The first call also applies :func:`patch_escnn_numerics`, so every path that reaches escnn
    through this package builds dihedral/O(2) bases without scikit-learn's ``randomized_svd`` (which
    rejects escnn's ``np.matrix`` and draws global random numbers).
    """
    global _PATCHED
    try:
        import escnn
        import escnn.group  # noqa: F401
        import escnn.gspaces  # noqa: F401
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    if not _PATCHED:
        patch_escnn_numerics()
        _PATCHED = True
    return escnn


def patch_escnn_numerics() -> None:
    """Make escnn use ``scipy.linalg.svd`` instead of scikit-learn's ``randomized_svd`` (idempotent).

    Example:
        >>> patch_escnn_numerics()
        >>> import escnn.group._numerical as numerical
        >>> numerical.randomized_svd is None
        True
    """
    try:
        import escnn.group._numerical as numerical
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    numerical.randomized_svd = None
