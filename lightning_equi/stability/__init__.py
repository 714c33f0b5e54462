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

The Lightning side is :class:`~lightning_equi.callbacks.StabilityMonitor`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_equi.actions import ImageAction
    >>> from lightning_equi.groups import get_group, grid_representation
    >>> from lightning_equi.subspace import SymmetrySpec
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(9, 9, bias=False), nn.Tanh(), nn.Linear(9, 9, bias=False))
    >>> net = net.double()
    >>> grid = grid_representation(get_group("C4"), (3, 3))
    >>> space = ParameterSpace(net, SymmetrySpec("C4").layers(nn.Linear, fields=grid).bind(net))
    >>> x = torch.rand(4, 1, 3, 3, dtype=torch.float64)
    >>> square = lambda out, target: ((out - target.flatten(1)) ** 2).mean()
    >>> risk = FrozenRisk(space, square, (x, x), [ImageAction("C4"), ImageAction("C4")], augmentation="orbit")
    >>> out = stability_spectrum(risk, isotypic=True)
    >>> sorted(k for k in out if "/" in k)
    ['lambda_max/k=1', 'lambda_max/k=2', 'lambda_min/k=1', 'lambda_min/k=2']
    >>> out["gamma_crit"] == max(0.0, -out["lambda_min_perp"])
    True
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
