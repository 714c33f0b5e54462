"""Spec inference for a ResNet-18-size model (issue 14, item 5: well under a second).

ResNet-18's layout for 3-channel images (CIFAR stem: one 3x3 convolution; four stages of two
BasicBlocks, 64-128-256-512 channels, strided downsampling with 1x1 shortcuts; global average pool;
a linear head; 11.2M parameters), under C4 with regular hidden fields. Rows:

* ``torch.fx.symbolic_trace`` alone: the floor (inference cannot skip tracing);
* ``SymmetrySpec.infer`` without an example input: tracing, field propagation and the static lint;
* ``SymmetrySpec.infer`` with ``example_input=(3, 33, 33)`` (a size at which every stride is exact):
  one shape-propagating forward pass and the lint's forward with hooks on top;
* ``bind`` of the inferred spec: what the callbacks do next at setup (a projector per parameter),
  for scale; it is not part of inference.

Run alone with ``python benchmarks/bench_inference.py`` or as ``./run bench --sections inference``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import fx, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the architectures of the tests
from harness import Table, fmt_ratio, paired_ratios, quartiles  # noqa: E402


def resnet18(classes: int = 10) -> nn.Module:
    """ResNet-18 for 3-channel images, CIFAR stem (see the module docstring): the ResNet of
    ``tests/test_inference.py`` at full size."""
    from test_inference import ResNet

    return ResNet(widths=(64, 128, 256, 512), blocks=2, classes=classes, cin=3)


def _once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_inference(repeats: int = 9) -> Table:
    from lightning_equi.subspace import SymmetrySpec

    model = resnet18()
    params = sum(p.numel() for p in model.parameters())
    table = Table(
        f"Spec inference for ResNet-18 ({params / 1e6:.1f}M parameters, C4, regular hidden fields)",
        ["what", "median (ms)", "IQR (ms)", "ratio to tracing [IQR]"],
        notes=[
            f"{repeats} runs after one warm-up, each paired with a run of the floor, "
            "`torch.fx.symbolic_trace` of the same model (the ratio is per pair, so a drift of a loaded "
            "machine hits both alike)",
            "goal (issue 14): inference well under a second; `bind` (building the projectors) is what "
            "the callbacks do next at setup, shown for scale",
        ],
    )
    spec = SymmetrySpec.infer(model, "C4", inputs="image")
    trace = lambda: fx.symbolic_trace(model)  # noqa: E731
    rows = [
        ("torch.fx.symbolic_trace (floor)", trace, repeats),
        ("SymmetrySpec.infer", lambda: SymmetrySpec.infer(model, "C4", inputs="image"), repeats),
        (
            "SymmetrySpec.infer, example_input=(3, 33, 33)",
            lambda: SymmetrySpec.infer(model, "C4", inputs="image", example_input=(3, 33, 33)),
            repeats,
        ),
        ("bind of the inferred spec (projectors)", lambda: spec.bind(model), max(3, repeats // 3)),
    ]
    for name, fn, n in rows:
        fn(), trace()  # warm-up
        times: list[float] = []

        def candidate(fn=fn, times=times) -> float:
            times.append(_once(fn))
            return times[-1]

        ratio = paired_ratios(lambda: _once(trace), candidate, n)
        q1, med, q3 = quartiles(times)
        table.add(name, med * 1e3, f"{q1 * 1e3:.3g}-{q3 * 1e3:.3g}", fmt_ratio(ratio))
    return table


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    print(bench_inference().markdown())
