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

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Table  # noqa: E402


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18(classes: int = 10) -> nn.Module:
    """ResNet-18 for 3-channel images, CIFAR stem (see the module docstring)."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    c = 64
    for i, w in enumerate((64, 128, 256, 512)):
        for b in range(2):
            layers.append(_Block(c, w, 2 if i > 0 and b == 0 else 1))
            c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    return nn.Sequential(*layers)


def _times(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def bench_inference(repeats: int = 9) -> Table:
    from lightning_equi.subspace import SymmetrySpec

    model = resnet18()
    params = sum(p.numel() for p in model.parameters())
    table = Table(
        f"Spec inference for ResNet-18 ({params / 1e6:.1f}M parameters, C4, regular hidden fields)",
        ["what", "median (ms)", "IQR (ms)", "ratio to tracing"],
        notes=[
            f"median and interquartile range over {repeats} runs after one warm-up; "
            "the floor is `torch.fx.symbolic_trace` of the same model",
            "goal (issue 14): inference well under a second; `bind` (building the projectors) is what "
            "the callbacks do next at setup, shown for scale",
        ],
    )
    spec = SymmetrySpec.infer(model, "C4", inputs="image")
    rows = [
        ("torch.fx.symbolic_trace (floor)", lambda: fx.symbolic_trace(model), repeats),
        ("SymmetrySpec.infer", lambda: SymmetrySpec.infer(model, "C4", inputs="image"), repeats),
        (
            "SymmetrySpec.infer, example_input=(3, 33, 33)",
            lambda: SymmetrySpec.infer(model, "C4", inputs="image", example_input=(3, 33, 33)),
            repeats,
        ),
        ("bind of the inferred spec (projectors)", lambda: spec.bind(model), max(3, repeats // 3)),
    ]
    floor = None
    for name, fn, n in rows:
        times = _times(fn, n)
        q1, med, q3 = statistics.quantiles(times, n=4, method="inclusive")
        floor = floor or med
        table.add(name, med * 1e3, f"{q1 * 1e3:.3g}-{q3 * 1e3:.3g}", f"{med / floor:.2f}")
    return table


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    print(bench_inference().markdown())
