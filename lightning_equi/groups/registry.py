"""Groups by name, for config files: ``get_group("C4")``."""

from __future__ import annotations

import re

from lightning_equi.groups.base import Group
from lightning_equi.groups.finite import CyclicGroup, DihedralGroup
from lightning_equi.groups.permutation import SymmetricGroup
from lightning_equi.groups.planar import O2, SO2
from lightning_equi.groups.spatial import O3, SO3
from lightning_equi.groups.torus import TorusTranslations

__all__ = ["get_group", "GROUP_NAMES"]

GROUP_NAMES = {
    "C<N>": "cyclic group of order N (rotations by 360/N degrees), e.g. C4",
    "D<N>": "dihedral group of order 2N (rotations and mirrors), e.g. D4",
    "SO2": "all planar rotations",
    "O2": "all planar rotations and mirrors",
    "SO3": "all rotations of space",
    "O3": "all rotations and reflections of space",
    "T<N1>x<N2>...": "cyclic translations of an N1 x N2 x ... grid, e.g. T14x14 (or T28 in 1-D)",
    "S<n>": "permutations of n elements, e.g. S10",
}

_FIXED = {"SO2": SO2, "O2": O2, "SO3": SO3, "O3": O3}


def get_group(name: str | Group) -> Group:
    """The group called ``name`` (a group passes through unchanged).

    Example:
        >>> get_group("D4").order, get_group("T14x14").order, get_group("so2").name
        (8, 196, 'SO2')
    """
    if isinstance(name, Group):
        return name
    key = str(name).strip().upper().replace("(", "").replace(")", "").replace("_", "")
    if key in _FIXED:
        return _FIXED[key]()
    if m := re.fullmatch(r"C(\d+)", key):
        return CyclicGroup(int(m[1]))
    if m := re.fullmatch(r"D(\d+)", key):
        return DihedralGroup(int(m[1]))
    if m := re.fullmatch(r"S(\d+)", key):
        return SymmetricGroup(int(m[1]))
    if m := re.fullmatch(r"T(\d+(?:X\d+)*)", key):
        return TorusTranslations(tuple(int(s) for s in m[1].split("X")))
    valid = "\n".join(f"  {k:<16} {v}" for k, v in GROUP_NAMES.items())
    raise ValueError(f"unknown group name {name!r}. Valid names:\n{valid}")
