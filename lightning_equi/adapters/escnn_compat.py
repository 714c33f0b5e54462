"""A compatibility fix for escnn 1.0.11 with scikit-learn >= 1.6 (applied on import of the adapters).

With a cold cache escnn computes Clebsch-Gordan coefficients of dihedral groups, O(2) and friends
numerically, through ``escnn.group._numerical.null``, which calls scikit-learn's ``randomized_svd``
on an ``np.matrix`` whenever scikit-learn is installed. Recent scikit-learn rejects ``np.matrix``
("np.matrix is not supported"), so building a first ``R2Conv`` on ``flipRot2dOnR2(4)`` fails, and the
randomized SVD also draws from NumPy's global random state. escnn falls back to the exact, deterministic
``scipy.linalg.svd`` when ``randomized_svd`` is ``None``; :func:`patch_escnn_numerics` selects that
fallback (the SVD is of a full-rank square block, so nothing is lost).

Example:
    >>> patch_escnn_numerics()
    >>> import escnn.group._numerical as numerical
    >>> numerical.randomized_svd is None
    True
"""

from __future__ import annotations

from lightning_equi.adapters.escnn_groups import require_escnn

__all__ = ["patch_escnn_numerics"]


def patch_escnn_numerics() -> None:
    """Make escnn use ``scipy.linalg.svd`` instead of scikit-learn's ``randomized_svd`` (idempotent)."""
    require_escnn()
    import escnn.group._numerical as numerical

    numerical.randomized_svd = None
