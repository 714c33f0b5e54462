"""What the :class:`~lightning_equi.callbacks.EquivarianceMonitor` shows: its tags, the TensorBoard
custom-scalars layout, and the trajectory figure (distance to E against distance from the start).

Plain data and matplotlib: nothing here knows the Trainer, so the layout and the figure can be built
and checked on their own.

Example:
    >>> history = [{"equi/dist_from_start/total": 0.0, "equi/dist_to_E/total": 0.0},
    ...            {"equi/dist_from_start/total": 1.0, "equi/dist_to_E/total": 0.5, "epoch_end": 1.0}]
    >>> fig = trajectory_figure(history)
    >>> [line.get_label() for line in fig.axes[0].get_lines()]
    ['every logged step', 'epoch ends']
    >>> sorted(custom_scalars_layout()["equi"])[:2]
    ['distance from start', 'distance to E']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["TAGS", "custom_scalars_layout", "trajectory_figure"]

#: the tag prefixes the monitor logs; ``<layer>`` is a module name of the model, or ``total``
TAGS = {
    "equi/dist_to_E/<layer>": "||A - Pi_E A||, Frobenius",
    "equi/rel_dist_to_E/<layer>": "||A - Pi_E A|| / ||A||",
    "equi/dist_from_start/<layer>": "||A - A0||",
    "equi/dist_from_start_in_E/<layer>": "||Pi_E (A - A0)||: the move along E",
    "equi/dist_from_start_perp/<layer>": "||(I - Pi_E)(A - A0)||: the move away from E",
    "equi/grad_perp_share": "||(I - Pi_E) grad|| / ||grad||, before any gradient projection",
    "equi/functional_error": "E_g ||f(g x) - g f(x)|| / ||f(x)|| on the probe batch",
    "equi/functional_error_exact": "the same, over elements acting exactly on the data grid",
    "equi/functional_error_inexact": "the same, over elements acting by interpolation",
    "equi/functional_error/<entry>": "the same, for one entry of a model with several outputs",
}


def custom_scalars_layout() -> dict[str, dict[str, list[Any]]]:
    """TensorBoard's CUSTOM SCALARS layout: one chart per quantity, comparing all layers."""
    return {
        "equi": {
            "distance to E": ["Multiline", [r"equi/dist_to_E/.*"]],
            "relative distance to E": ["Multiline", [r"equi/rel_dist_to_E/.*"]],
            "distance from start": ["Multiline", [r"equi/dist_from_start/.*"]],
            "move along E vs across E (total)": [
                "Multiline",
                [r"equi/dist_from_start_in_E/total", r"equi/dist_from_start_perp/total"],
            ],
            "gradient share outside E": ["Multiline", [r"equi/grad_perp_share"]],
            "functional equivariance error": ["Multiline", [r"equi/functional_error.*"]],
        }
    }


def trajectory_figure(history: Sequence[dict[str, float]]) -> Any:
    """A matplotlib figure of ``||A - Pi_E A||`` against ``||A - A0||`` over the logged ``history``
    (one dict per measurement, keyed by tag; ``"epoch_end"`` marks the measurements at epoch ends)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    x = [h["equi/dist_from_start/total"] for h in history]
    y = [h["equi/dist_to_E/total"] for h in history]
    ax.plot(x, y, "-", color="C0", label="every logged step")
    ends = [h for h in history if h.get("epoch_end")]
    ax.plot(
        [h["equi/dist_from_start/total"] for h in ends],
        [h["equi/dist_to_E/total"] for h in ends],
        "o",
        color="C1",
        label="epoch ends",
    )
    ax.set_xlabel(r"distance from start $\|A - A_0\|$")
    ax.set_ylabel(r"distance to E $\|A - \Pi_E A\|$")
    ax.legend(loc="best")
    fig.tight_layout()
    return fig
