"""What one lambda_min/lambda_max pair of the augmented Hessian on E-perp costs (issue 17).

The ~1M-parameter C4 reference CNN of ``run.py`` (conv k5 1->32->64->128->128->128, BatchNorm in eval,
ReLU, max pooling, a linear head), projected onto E, one frozen batch of ``batch`` 1x28x28 inputs
augmented by the full C4 orbit (``4 * batch`` samples), cross-entropy. Timed: a gradient of that risk
(the unit), one forward-over-reverse HVP, one projection onto E-perp, and one Lanczos run on E-perp to
``tol`` (at most ``steps`` HVPs) giving lambda_min and lambda_max together. The pair is reported in HVPs
and in multiples of the gradient's time, both from the same run.

Run alone with ``python benchmarks/bench_stability.py [--batch 8 --steps 60]`` or as the ``stability``
section of ``run.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Table, sync  # noqa: E402


def _clock(device: str):
    """CPU time of this process on the CPU (robust on a shared machine: the run is single-threaded by
    default, and other processes' load does not count), wall time on a GPU."""
    return time.process_time if torch.device(device).type == "cpu" else time.perf_counter


def _median(fn, clock, device: str, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        sync(device)
        times.append(clock() - start)
    return statistics.median(times)


def bench_stability(batch: int = 8, steps: int = 60, tol: float = 1e-6, device: str = "cpu") -> Table:
    from run import reference_cnn, reference_spec

    from lightning_equi.actions import ImageAction
    from lightning_equi.stability import FrozenRisk, ParameterSpace, restricted_extremes

    torch.manual_seed(0)
    model = reference_cnn().to(device)
    projection = reference_spec(model).bind(model)
    projection.project_parameters_()
    space = ParameterSpace(model, projection)
    x = torch.randn(batch, 1, 28, 28, device=device)
    y = torch.randint(10, (batch,), device=device)
    risk = FrozenRisk(space, F.cross_entropy, (x, y), [ImageAction("C4"), None], augmentation="orbit")
    theta = space.vector()
    v = space.project_perp(torch.randn_like(theta))
    clock = _clock(device)
    t_grad = _median(lambda: risk.gradient(theta), clock, device)
    hvp_times = []
    for _ in range(5):  # interleaved with gradients: each HVP over the gradient next to it
        start = clock()
        risk.hvp(theta, v)
        sync(device)
        mid = clock()
        risk.gradient(theta)
        sync(device)
        hvp_times.append((mid - start) / (clock() - mid))
    t_proj = _median(lambda: space.project_perp(v), clock, device)
    start = clock()
    out = restricted_extremes(risk, "perp", theta, steps=steps, tol=tol)
    sync(device)
    t_pair = clock() - start
    table = Table(
        f"Stability: one lambda_min/lambda_max pair on E-perp, {space.numel / 1e6:.2f}M-parameter C4 CNN",
        ["what", "HVPs", "seconds", "x gradient"],
    )
    table.add(f"gradient of the orbit risk ({risk.samples} samples)", "-", t_grad, 1.0)
    table.add(
        "one HVP (forward-over-reverse)",
        1,
        statistics.median(hvp_times) * t_grad,
        statistics.median(hvp_times),
    )
    table.add("one projection onto E-perp", "-", t_proj, t_proj / t_grad)
    table.add(
        f"lambda_min, lambda_max on E-perp (Lanczos, tol {tol:g})", out.products, t_pair, t_pair / t_grad
    )
    table.notes += [
        f"device {device}, {torch.get_num_threads()} threads, "
        f"{'process CPU time' if clock is time.process_time else 'wall time'}; "
        f"batch {batch} x |C4| = {risk.samples} samples; "
        f"dim E = {space.dim_E}, dim E-perp = {space.dim_perp}",
        f"lambda_min = {out.lambda_min:.4g}, lambda_max = {out.lambda_max:.4g}, converged: {out.converged} "
        f"(residuals {out.residual_min:.2g}, {out.residual_max:.2g})",
        "HVP / gradient: median of 5 interleaved pairs "
        f"[{min(hvp_times):.2f}, {max(hvp_times):.2f}]; the pair's multiple includes the "
        "re-orthogonalisation and the projections",
    ]
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(bench_stability(args.batch, args.steps, args.tol, args.device).markdown())


if __name__ == "__main__":
    main()
