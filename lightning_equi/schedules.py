"""Schedules ``gamma(t)`` of the equivariance penalty's strength, as functions of the optimizer step.

A schedule is any callable ``step -> gamma`` (an ``int`` step counted from 0, a ``float`` gamma >= 0);
the classes here are the common ones, plain Python (no torch, no Lightning), picklable and with a
``state_dict`` so that a stateful provider (an automatic gamma computed from the training itself) can
be written into a checkpoint and resumed exactly. Why a module of its own rather than part of
``subspace``: a schedule is a function of time, not of the subspace E; the penalty
(:mod:`lightning_equi.subspace.penalty`) only calls it.

* :class:`Constant` -- ``gamma`` at every step;
* :class:`WarmUp` -- a linear ramp from ``start`` to ``gamma`` over ``steps``, then ``gamma``;
* :class:`Cosine` -- a half-cosine ramp from ``start`` to ``end`` over ``steps``, then ``end`` (either
  direction: rising into E or relaxing away from it);
* :class:`RelaxThenReturn` -- ``relax`` (small: train relaxed) for ``relax_steps``, then a geometric
  ramp to ``final`` over ``return_steps``; ``final=math.inf`` with the proximal penalty ends exactly in E.

``gamma = 0`` is the unpenalised mode (nom, or aug with augmentation); ``gamma -> inf`` with the
proximal form is the projection onto E after each step (equi).

Example:
    >>> s = WarmUp(100.0, steps=4)
    >>> [s(t) for t in range(6)]
    [0.0, 25.0, 50.0, 75.0, 100.0, 100.0]
    >>> r = RelaxThenReturn(relax=1.0, final=1e4, relax_steps=2, return_steps=4)
    >>> [round(r(t), 6) for t in range(7)]
    [1.0, 1.0, 1.0, 10.0, 100.0, 1000.0, 10000.0]
    >>> make_schedule({"kind": "cosine", "start": 0.0, "end": 10.0, "steps": 2})(1)
    5.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "GammaSchedule",
    "Constant",
    "WarmUp",
    "Cosine",
    "RelaxThenReturn",
    "SCHEDULES",
    "make_schedule",
    "check_gamma",
]


def check_gamma(value: Any, what: str = "gamma", allow_inf: bool = True) -> float:
    """``value`` as a float gamma: a real number >= 0 (``math.inf`` only if ``allow_inf``).

    Raises:
        ValueError: naming ``what``, for a bool, a non-number, NaN, a negative value or a refused inf.

    Example:
        >>> check_gamma(10)
        10.0
        >>> check_gamma(-1.0, "gamma['conv1']")
        Traceback (most recent call last):
        ...
        ValueError: gamma['conv1'] must be a number >= 0, got -1.0
    """
    number = None
    if not isinstance(value, (bool, str)):
        try:  # ints, floats, numpy scalars, 0-d tensors (what a provider may return)
            number = float(value)
        except (TypeError, ValueError):
            number = None
    if number is None or math.isnan(number) or number < 0:
        raise ValueError(f"{what} must be a number >= 0, got {value!r}")
    value = number
    if math.isinf(value) and not allow_inf:
        raise ValueError(
            f"{what} is inf, which only the proximal form allows (it projects onto E after each step); "
            "use penalty='proximal', or a finite gamma"
        )
    return float(value)


def _check_steps(steps: Any, what: str, positive: bool = True) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < (1 if positive else 0):
        raise ValueError(f"`{what}` must be an int >= {1 if positive else 0}, got {steps!r}")
    return steps


class GammaSchedule:
    """Base class of the schedules: ``schedule(step) -> gamma``; stateless unless a subclass says so.

    Subclasses implement :meth:`value`; ``__call__`` checks the step. A provider that learns its gamma
    while training (an automatic gamma) keeps what it learned in :meth:`state_dict`, which the
    :class:`~lightning_equi.callbacks.RelaxedEquivariance` callback writes into checkpoints.
    """

    def value(self, step: int) -> float:
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"a schedule's step must be an int >= 0, got {step!r}")
        return self.value(step)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Stateless: nothing to restore."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(vars(self).items()))))


class Constant(GammaSchedule):
    """``gamma`` at every step.

    Example:
        >>> Constant(3.0)(1000)
        3.0
    """

    def __init__(self, gamma: float) -> None:
        self.gamma = check_gamma(gamma)

    def value(self, step: int) -> float:
        return self.gamma


class WarmUp(GammaSchedule):
    """A linear ramp from ``start`` (at step 0) to ``gamma`` (at step ``steps``), then ``gamma``.

    Starting unpenalised lets the data shape the weights before the pull towards E sets in.

    Example:
        >>> WarmUp(10.0, steps=10, start=1.0)(5)
        5.5
    """

    def __init__(self, gamma: float, steps: int, start: float = 0.0) -> None:
        self.gamma = check_gamma(gamma, "gamma", allow_inf=False)
        self.steps = _check_steps(steps, "steps")
        self.start = check_gamma(start, "start", allow_inf=False)

    def value(self, step: int) -> float:
        s = min(step / self.steps, 1.0)
        return self.start + (self.gamma - self.start) * s


class Cosine(GammaSchedule):
    """A half-cosine ramp from ``start`` (step 0) to ``end`` (step ``steps``), then ``end``.

    ``start < end`` tightens towards E smoothly; ``start > end`` relaxes away from it.

    Example:
        >>> c = Cosine(start=10.0, end=0.0, steps=4)
        >>> [round(c(t), 4) for t in range(6)]
        [10.0, 8.5355, 5.0, 1.4645, 0.0, 0.0]
    """

    def __init__(self, start: float, end: float, steps: int) -> None:
        self.start = check_gamma(start, "start", allow_inf=False)
        self.end = check_gamma(end, "end", allow_inf=False)
        self.steps = _check_steps(steps, "steps")

    def value(self, step: int) -> float:
        s = min(step / self.steps, 1.0)
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * s))


class RelaxThenReturn(GammaSchedule):
    """Train relaxed, then return to E: ``relax`` for ``relax_steps``, then a ramp to ``final``.

    The ramp over ``return_steps`` is geometric (``relax ** (1 - s) * final ** s``, even steps in
    ``log gamma``, the scale on which gamma acts) when ``relax > 0``, linear from 0 otherwise; then
    ``final``. With ``final=math.inf`` (``return_steps=0``: a jump) and the proximal penalty, every step
    after ``relax_steps`` ends exactly in E: an equivariant model at the end of a relaxed training.

    Example:
        >>> r = RelaxThenReturn(relax=0.0, final=math.inf, relax_steps=3, return_steps=0)
        >>> [r(t) for t in range(5)]
        [0.0, 0.0, 0.0, inf, inf]
    """

    def __init__(self, relax: float, final: float, relax_steps: int, return_steps: int) -> None:
        self.relax = check_gamma(relax, "relax", allow_inf=False)
        self.final = check_gamma(final, "final")
        self.relax_steps = _check_steps(relax_steps, "relax_steps", positive=False)
        self.return_steps = _check_steps(return_steps, "return_steps", positive=False)
        if math.isinf(self.final) and self.return_steps:
            raise ValueError(
                "RelaxThenReturn(final=inf) has no ramp to infinity: pass return_steps=0 (a jump into E at "
                "relax_steps), or a finite final (e.g. 1e6 / lr) to ramp to"
            )

    def value(self, step: int) -> float:
        if step < self.relax_steps:
            return self.relax
        if step >= self.relax_steps + self.return_steps:
            return self.final
        s = (step - self.relax_steps) / self.return_steps
        if self.relax > 0 and self.final > 0:
            return math.exp((1 - s) * math.log(self.relax) + s * math.log(self.final))
        return self.relax + (self.final - self.relax) * s


#: schedule kind -> class, for configs and the command line (:func:`make_schedule`)
SCHEDULES: dict[str, type[GammaSchedule]] = {
    "constant": Constant,
    "warmup": WarmUp,
    "cosine": Cosine,
    "relax_return": RelaxThenReturn,
}


def make_schedule(config: float | Mapping[str, Any] | Callable[[int], float]) -> Callable[[int], float]:
    """A schedule from a number (:class:`Constant`), ``{"kind": <name>, **arguments}``, or a callable.

    Raises:
        ValueError: for an unknown kind (listing the known ones) or arguments the kind does not take.

    Example:
        >>> make_schedule(5.0)
        Constant(gamma=5.0)
        >>> make_schedule({"kind": "warmup", "gamma": 100.0, "steps": 50})
        WarmUp(gamma=100.0, steps=50, start=0.0)
        >>> make_schedule({"kind": "linear"})
        Traceback (most recent call last):
        ...
        ValueError: unknown gamma schedule 'linear'; known: ['constant', 'cosine', 'relax_return', 'warmup']
    """
    if callable(config):
        return config
    if isinstance(config, Mapping):
        options = dict(config)
        kind = options.pop("kind", None)
        if kind not in SCHEDULES:
            raise ValueError(f"unknown gamma schedule {kind!r}; known: {sorted(SCHEDULES)}")
        try:
            return SCHEDULES[kind](**options)
        except TypeError as err:
            raise ValueError(f"gamma schedule {kind!r}: {err}") from err
    return Constant(check_gamma(config))
