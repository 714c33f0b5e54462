"""The stability of E under augmented training: the augmented Hessian on E-perp, matrix-free.

Pure torch (no Lightning). The paper shows that E is invariant under the augmented gradient flow and that
its stability is decided by the spectrum of the augmented risk's Hessian restricted to E-perp; this
package computes that spectrum. The modules:

* ``space`` -- :class:`ParameterSpace`: the flat parameter vector, ``Pi_E``, ``Pi_perp``, ``rho_bar(g)`` and
  the isotypic components of finite abelian groups;
* ``risk`` -- :class:`FrozenRisk`: the loss of a frozen (augmented) batch and its HVPs (forward-over-reverse);
* ``lanczos`` -- :func:`lanczos`: extremes of ``P A P`` with full re-orthogonalisation and re-projection;
* ``spectrum`` -- :func:`restricted_extremes`, :func:`stability_spectrum`, the twirl, the dense reference
  and the prediction check.
"""

from lightning_equi.stability.lanczos import LanczosResult, lanczos
from lightning_equi.stability.risk import FrozenRisk, evaluating
from lightning_equi.stability.space import IsotypicComponent, ParameterSpace
from lightning_equi.stability.spectrum import (
    PredictionCheck,
    dense_restricted_spectrum,
    prediction_check,
    restricted_extremes,
    stability_spectrum,
    twirled_hvp,
)

__all__ = [
    "ParameterSpace",
    "IsotypicComponent",
    "FrozenRisk",
    "evaluating",
    "lanczos",
    "LanczosResult",
    "restricted_extremes",
    "stability_spectrum",
    "twirled_hvp",
    "dense_restricted_spectrum",
    "prediction_check",
    "PredictionCheck",
]
