"""A frozen risk: the loss of a fixed batch as a function of the flat parameter vector, and its HVPs.

Lanczos needs the *same* symmetric matrix at every iteration, so everything random is fixed once, at
construction: the batch, the group elements of the augmentation (the whole orbit of every sample for a
small finite group, else ``copies`` seeded draws per sample), BatchNorm in eval mode and dropout off
(the model is put in eval mode for each evaluation and restored after). Hessian-vector products are
forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``, the cheapest exact HVP), with
reverse-over-reverse (double backward) as a fallback for operators without forward-mode derivatives.

The risk is the mean of ``loss`` over the (augmented) samples, evaluated in chunks of ``chunk`` samples
whose HVPs are summed with weights ``len(chunk) / N``; this is exact when ``loss`` is a mean over samples
and the model treats samples independently (eval mode), which is checked on the first two chunks.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_equi.actions import SetAction
    >>> from lightning_equi.subspace import SymmetrySpec
    >>> from lightning_equi.stability import ParameterSpace
    >>> net = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Tanh(), nn.Linear(3, 1)).double()
    >>> spec = SymmetrySpec("S3").layer("0", "standard", "standard").layer("2", "standard", "trivial")
    >>> space = ParameterSpace(net, spec.bind(net))
    >>> x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    >>> square = lambda out, target: ((out - target) ** 2).mean()
    >>> risk = FrozenRisk(space, square, (x, y), [SetAction("S3"), None], augmentation="orbit")
    >>> risk.samples  # 6 elements of S3 times 5 samples
    30
    >>> v = torch.randn(space.numel, dtype=torch.float64)
    >>> theta = space.vector()
    >>> bool(torch.allclose(risk.hvp(theta, v, mode="forward"), risk.hvp(theta, v, mode="reverse")))
    True
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from lightning_equi.actions import Action, BatchAction, augment
from lightning_equi.groups import FiniteGroup
from lightning_equi.stability.space import ParameterSpace

__all__ = ["FrozenRisk", "evaluating"]

Augmentation = Literal["nominal", "orbit"] | int
HVPMode = Literal["auto", "forward", "reverse"]


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode (BatchNorm on running statistics, dropout off), restore every module's
    own mode after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _split(batch: Any, n: int, size: int) -> list[tuple[Any, int]]:
    """The batch ``(inputs, targets)`` cut into chunks of ``size`` samples along dim 0."""
    out = []
    for start in range(0, n, size):
        stop = min(n, start + size)
        out.append((tuple(t[start:stop] if isinstance(t, Tensor) else t for t in batch), stop - start))
    return out


class FrozenRisk:
    """The mean loss of a frozen (augmented) batch as a function of the flat parameter vector.

    Args:
        space: the model's :class:`ParameterSpace`.
        loss: ``loss(outputs, targets) -> scalar``, a mean over samples.
        batch: ``(inputs, targets)``; the model is called as ``model(inputs)``.
        actions: how a group element acts on each batch entry (as for
            :func:`~lightning_equi.actions.augment`: a list such as ``[ImageAction("C4"), None]`` or a
            :class:`~lightning_equi.actions.BatchAction`); not needed for ``augmentation="nominal"``.
        augmentation: ``"nominal"`` (the batch as it is), ``"orbit"`` (every sample by every element of
            a finite group: the exact augmented risk of the batch), or an int ``m`` (``m`` seeded Haar
            draws per sample, frozen).
        seed: the seed of the draws.
        chunk: samples per evaluation (``None``: all at once); bounds the memory of an HVP.

    Raises:
        ValueError: for an orbit of a continuous group, actions missing, or a loss that is not a mean
            over independent samples while ``chunk`` splits the batch.
    """

    def __init__(
        self,
        space: ParameterSpace,
        loss: Callable[[Any, Any], Tensor],
        batch: Sequence[Any],
        actions: Sequence[Action | None] | BatchAction | None = None,
        augmentation: Augmentation = "orbit",
        seed: int = 0,
        chunk: int | None = None,
    ) -> None:
        self.space, self.model, self.loss = space, space.model, loss
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError("FrozenRisk: batch must be a pair (inputs, targets)")
        inputs = batch[0]
        if augmentation == "nominal":
            frozen = tuple(batch)
        else:
            if actions is None:
                raise ValueError(
                    f"FrozenRisk: augmentation={augmentation!r} needs the actions on the batch entries, e.g. "
                    "actions=[ImageAction('C4'), None] (the model's data_actions())"
                )
            group = self.space.group
            if augmentation == "orbit":
                if not isinstance(group, FiniteGroup):
                    raise ValueError(
                        f"FrozenRisk: augmentation='orbit' needs a finite group; {group.name} is continuous: "
                        "pass augmentation=m (m frozen draws per sample)"
                    )
                frozen = augment(tuple(batch), group, actions, orbit=True)
            elif isinstance(augmentation, int) and not isinstance(augmentation, bool) and augmentation >= 1:
                gen = torch.Generator(device=inputs.device).manual_seed(int(seed))
                frozen = augment(tuple(batch), group, actions, generator=gen, copies=augmentation)
            else:
                raise ValueError(
                    "FrozenRisk: augmentation must be 'nominal', 'orbit' or an int >= 1, "
                    f"got {augmentation!r}"
                )
        self.augmentation = augmentation
        self.samples = int(frozen[0].shape[0])
        self.batch = tuple(t.detach() if isinstance(t, Tensor) else t for t in frozen)
        size = self.samples if chunk is None else max(1, int(chunk))
        self.chunks = _split(self.batch, self.samples, size)
        self._auto = "forward"  # what mode="auto" uses: switched to "reverse" once forward mode fails
        if len(self.chunks) > 1:
            self._check_chunking()

    # ---- the function of theta ---------------------------------------------------------------------

    def _loss(self, theta: Tensor, chunk: tuple[Any, Any]) -> Tensor:
        params = self.space.unflatten(theta)
        outputs = functional_call(self.model, params, (chunk[0],))
        return self.loss(outputs, chunk[1])

    def _weights(self) -> Iterator[tuple[tuple[Any, Any], float]]:
        for chunk, size in self.chunks:
            yield chunk, size / self.samples

    def value(self, theta: Tensor) -> Tensor:
        """The risk at ``theta`` (detached)."""
        with evaluating(self.model), torch.no_grad():
            return sum(w * self._loss(theta, c) for c, w in self._weights())

    def gradient(self, theta: Tensor) -> Tensor:
        """The gradient of the risk at ``theta`` (a flat vector)."""
        with evaluating(self.model), torch.enable_grad():
            return sum(w * grad(self._loss)(theta, c) for c, w in self._weights())

    def hvp(self, theta: Tensor, v: Tensor, mode: HVPMode = "auto") -> Tensor:
        """``H(theta) v``: forward-over-reverse (``mode="forward"``), double backward (``"reverse"``), or
        ``"auto"``: forward-over-reverse unless an operator of the model or loss lacks it (torch 2.13's
        ``mse_loss`` does), then double backward from there on, with a warning naming the operator's error.
        """
        self.space._check(v)
        if mode not in ("auto", "forward", "reverse"):
            raise ValueError(f"mode must be 'auto', 'forward' or 'reverse', got {mode!r}")
        resolved = self._auto if mode == "auto" else mode
        if resolved == "forward":
            try:
                return self._hvp(theta, v, "forward")
            except RuntimeError as err:
                if mode != "auto":
                    raise
                warnings.warn(
                    f"FrozenRisk: forward-over-reverse HVPs fail on this model or loss ({err}); using double "
                    "backward (mode='reverse') instead, which is exact but slower",
                    stacklevel=2,
                )
                self._auto = "reverse"
        return self._hvp(theta, v, "reverse")

    def _hvp(self, theta: Tensor, v: Tensor, mode: str) -> Tensor:
        out = torch.zeros_like(theta)
        with evaluating(self.model), torch.enable_grad():
            for chunk, w in self._weights():
                if mode == "forward":
                    _, hv = jvp(lambda t, c=chunk: grad(self._loss)(t, c), (theta,), (v.to(theta.dtype),))
                else:
                    t = theta.detach().requires_grad_(True)
                    (g,) = torch.autograd.grad(self._loss(t, chunk), t, create_graph=True)
                    (hv,) = torch.autograd.grad(g, t, grad_outputs=v.to(theta.dtype))
                out += w * hv.detach()
        return out

    def hessian(self, theta: Tensor) -> Tensor:
        """The dense Hessian ``(numel, numel)`` at ``theta`` by ``torch.func.hessian`` (small models only)."""
        if self.space.numel > 20_000:
            raise ValueError(f"hessian() of {self.space.numel} parameters: use hvp() (matrix-free)")
        with evaluating(self.model), torch.enable_grad():
            return sum(w * torch.func.hessian(self._loss)(theta, c) for c, w in self._weights())

    def _check_chunking(self) -> None:
        """The chunked sum must equal the risk of the chunks together (a mean over independent samples)."""
        (a, na), (b, nb) = self.chunks[0], self.chunks[1]
        joint = tuple(torch.cat([x, y]) if isinstance(x, Tensor) else x for x, y in zip(a, b, strict=True))
        theta = self.space.vector()
        with evaluating(self.model), torch.no_grad():
            together = float(self._loss(theta, joint))
            split = float((na * self._loss(theta, a) + nb * self._loss(theta, b)) / (na + nb))
        if abs(together - split) > 1e-5 * max(1.0, abs(together)):
            raise ValueError(
                f"FrozenRisk: the loss of two chunks together ({together:.6g}) differs from their weighted "
                f"mean ({split:.6g}): the loss is not a mean over independent samples, so chunk= cannot "
                "split the batch; pass chunk=None"
            )

    def __repr__(self) -> str:
        return f"FrozenRisk({self.augmentation!r}, samples={self.samples}, chunks={len(self.chunks)})"
