"""Groups with batched Haar sampling, their element algebra and representations (pure torch)."""

from lightning_equi.groups.base import FiniteGroup, Group, make_generator
from lightning_equi.groups.finite import CyclicGroup, DihedralGroup
from lightning_equi.groups.permutation import SymmetricGroup
from lightning_equi.groups.planar import O2, SO2
from lightning_equi.groups.registry import GROUP_NAMES, get_group
from lightning_equi.groups.representations import (
    FIELD_NAMES,
    Representation,
    direct_sum,
    grid_representation,
    irrep,
    pair_representation,
    regular,
    representation_by_name,
    sign,
    standard,
    trivial,
)
from lightning_equi.groups.spatial import O3, SO3
from lightning_equi.groups.torus import TorusTranslations

__all__ = [
    "Group",
    "FiniteGroup",
    "make_generator",
    "get_group",
    "GROUP_NAMES",
    "CyclicGroup",
    "DihedralGroup",
    "SO2",
    "O2",
    "SO3",
    "O3",
    "TorusTranslations",
    "SymmetricGroup",
    "Representation",
    "trivial",
    "regular",
    "standard",
    "irrep",
    "sign",
    "direct_sum",
    "pair_representation",
    "grid_representation",
    "FIELD_NAMES",
    "representation_by_name",
]
