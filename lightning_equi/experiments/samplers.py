"""How aug draws its group elements: exact Haar draws, or the paper's code's draws (``sampler:`` in a config).

- ``haar`` (the default): one uniform element per sample and pass
  (:class:`~lightning_equi.callbacks.HaarAugmentation`);
- ``batch``: one uniform element per batch of every pass (the paper's granularity, the right distribution);
- ``paper``: what the paper's v1 code draws, one element per batch of every pass:

  - *Rot*: ``Rotate.forward`` draws ``r = randint(0, 4)`` (five values), and the reshape of its
    ``(B, 1, 196)`` input to an image is discarded, so every ``r`` in {1, 2, 3} flips the flattened vector,
    which is the half turn of the image: 0 degrees with probability 2/5, 180 degrees with 3/5, never a
    quarter turn. It augments by C2 while E is C4's;
  - *Trans*: ``Shift`` draws each shift with Python's ``randint(0, 14)``, which includes 14 = 0: shift 0
    has probability 2/15 per axis, every other 1/15;
  - *Perm*: the data set permutes every sample uniformly when loaded, so the draw is exact Haar per sample
    (as ``haar``).

:func:`paper_weights` gives the paper's distribution over a group's elements, :class:`BatchDrawAugmentation`
draws from it (or uniformly) once per batch.

Example:
    >>> from lightning_equi.groups import get_group
    >>> paper_weights(get_group("C4")).tolist()
    [0.4, 0.0, 0.6, 0.0]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_equi.callbacks import HaarAugmentation
from lightning_equi.groups import Group
from lightning_equi.groups.finite import CyclicGroup
from lightning_equi.groups.torus import TorusTranslations

__all__ = ["SAMPLERS", "paper_weights", "BatchDrawAugmentation"]

#: the samplers a config may name
SAMPLERS = ("haar", "batch", "paper")


def paper_weights(group: Group) -> Tensor | None:
    """The paper's code's probability of each of ``group.elements()`` (float64), ``None`` for uniform.

    Raises:
        ValueError: for a group the paper's code does not sample (none of C4, a torus, S_n).

    Example:
        >>> from lightning_equi.groups import get_group
        >>> w = paper_weights(get_group("T14x14")).reshape(14, 14)
        >>> round(float(w[0].sum()), 6), round(float(w[1].sum()), 6)  # shift 0 along axis 0: 2/15
        (0.133333, 0.066667)
    """
    if isinstance(group, CyclicGroup) and group.n == 4:
        # randint(0, 4): r = 0 or 4 -> identity, r = 1, 2, 3 -> a flip of the flattened image = half turn
        return torch.tensor([2 / 5, 0.0, 3 / 5, 0.0], dtype=torch.float64)
    if isinstance(group, TorusTranslations):
        weights = torch.ones((), dtype=torch.float64)
        for n in group.shape:  # randint(0, n): n + 1 outcomes, n and 0 the same shift
            axis = torch.full((n,), 1.0 / (n + 1), dtype=torch.float64)
            axis[0] = 2.0 / (n + 1)
            weights = (weights[..., None] * axis).reshape(-1)
        return weights  # group.elements() enumerates the shifts in row-major order
    if group.name.startswith("S"):
        return None
    raise ValueError(
        f"the paper's code samples C4, tori and S_n, not {group.name}; use sampler: haar or batch"
    )


class BatchDrawAugmentation(HaarAugmentation):
    """Aug with one group element per batch, drawn with probabilities ``weights`` (``None``: uniform).

    Args:
        group, inputs, targets, seed: as for :class:`~lightning_equi.callbacks.HaarAugmentation`.
        weights: the probability of each of ``group.elements()``, e.g. :func:`paper_weights`.

    Raises:
        ValueError: for weights of the wrong length, negative, or not summing to 1.

    Example:
        >>> from lightning_equi.actions import ImageAction
        >>> aug = BatchDrawAugmentation("C4", ImageAction("C4"), weights=[0, 0, 1, 0], seed=0)
        >>> x = torch.rand(3, 1, 4, 4)
        >>> out, = aug.transform((x,))
        >>> torch.equal(out, x.flip(-1, -2))  # the half turn, for the whole batch
        True
    """

    def __init__(
        self,
        group: str,
        inputs: Any = "image",
        targets: Any = None,
        weights: Tensor | list[float] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(group, inputs, targets, per_sample=False, copies=1, seed=seed)
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=torch.float64)
            if weights.shape != (self.group.order,) or bool((weights < 0).any()):
                raise ValueError(
                    f"weights must be {self.group.order} non-negative probabilities (one per element of "
                    f"{self.group.name}), got shape {tuple(weights.shape)}"
                )
            if abs(float(weights.sum()) - 1) > 1e-9:
                raise ValueError(f"weights must sum to 1, got {float(weights.sum())}")
        self.weights = weights

    def draw(self) -> Tensor:
        """One element of the group (a batch of one), from the callback's generator."""
        if self._generator is None:
            self._generator = self._make_generator(0)
        elements = self.group.elements()
        if self.weights is None:
            index = torch.randint(len(elements), (1,), generator=self._generator)
        else:
            index = torch.multinomial(self.weights, 1, generator=self._generator)
        return elements[index]

    def transform(self, batch: Any) -> Any:
        g = self.draw()
        n = self.action.batch_size(batch)
        return self.action(g.repeat_interleave(n, dim=0), batch)
