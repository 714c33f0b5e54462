"""The README's examples of the core functions run as written (a new user copies them)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).parents[1] / "README.md"


def _block(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_check_a_model_yourself_runs_and_says_what_it_shows():
    scope: dict = {}
    exec(compile(_block("### Check a model yourself"), str(README), "exec"), scope)  # noqa: S102
    err, x4 = scope["err"], scope["x4"]
    assert float(err["total"]) > 1e-3  # the free convolution is not equivariant, as the comment says
    assert torch.isnan(err["inexact"])  # C4 acts exactly: no interpolated part
    assert x4.shape == (32, 1, 9, 9)
