"""Smoke demo: sample Haar elements of each built-in group and check the group laws.

Run with ``./run demo``. (The three-mode comparison replaces this once the callbacks land.)
"""

from __future__ import annotations

import time

import torch

from lightning_equi.groups import get_group, make_generator


def main() -> None:
    gen = make_generator(0)
    print(f"{'group':<8} {'order':>6} {'samples':>8} {'g*g^-1 == e':>12} {'ms':>7}")
    for name in ["C4", "D4", "C8", "SO2", "O2", "SO3", "O3", "T14x14", "S10"]:
        group = get_group(name)
        start = time.perf_counter()
        g = group.sample(10_000, generator=gen)
        ok = bool(group.equal(group.compose(g, group.inverse(g)), group.identity(len(g))).all())
        ms = 1e3 * (time.perf_counter() - start)
        order = group.order if group.is_finite else "inf"
        print(f"{name:<8} {order!s:>6} {len(g):>8} {ok!s:>12} {ms:>7.1f}")
    print("torch", torch.__version__)


if __name__ == "__main__":
    main()
