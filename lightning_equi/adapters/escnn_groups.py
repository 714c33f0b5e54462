"""Conversions between our groups and elements and escnn's (escnn is imported lazily, on first call).

The abstract elements correspond one to one: C_N ``k`` <-> ``G.element(k)``, D_N ``(f, k)`` <->
``G.element((f, k))``, SO2 ``theta`` <-> ``G.element(theta)``, O2 ``(f, theta)`` <->
``G.element((f, theta))``, SO3 ``R`` <-> ``G.element(R, "MAT")`` and O3 ``M = (-1)^f R`` <->
``G.element((f, R), "MAT")``.

How a *mirror* moves the plane is a property of escnn's gspace: ``flipRot2dOnR2(N, axis)``
reflects across the line at angle ``axis``. Ours is always ``x -> -x`` (escnn's default
``axis=pi/2``). Pass ``gspace=`` to :func:`escnn_element` to get the escnn element that moves the
plane as ours does, whatever the axis. Note that escnn's D_N/O(2) irreps ``(1, k)`` use the mirror
``diag(1, -1)`` while :func:`~lightning_equi.groups.irrep` uses ``diag(-1, 1)``: the two are
conjugate by the quarter turn ``R(pi/2)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lightning_equi.adapters.escnn_import import require_escnn
from lightning_equi.groups import O2, O3, SO2, SO3, CyclicGroup, DihedralGroup, Group, get_group

__all__ = [
    "escnn_group",
    "escnn_element",
    "element_from_escnn",
    "group_from_escnn",
    "mirror_offset",
]


def escnn_group(group: Group | str) -> Any:
    """The escnn group isomorphic to ``group`` (C_N, D_N, SO2, O2, SO3, O3).

    Example:
        >>> escnn_group("D4").order()
        8
    """
    group = get_group(group)
    eg = require_escnn().group
    if isinstance(group, CyclicGroup):
        return eg.cyclic_group(group.n)
    if isinstance(group, DihedralGroup):
        return eg.dihedral_group(group.n)
    if isinstance(group, O3):
        return eg.o3_group()
    if isinstance(group, SO3):
        return eg.so3_group()
    if isinstance(group, O2):
        return eg.o2_group()
    if isinstance(group, SO2):
        return eg.so2_group()
    raise ValueError(f"escnn has no group matching {group.name}: only C_N, D_N, SO2, O2, SO3 and O3 convert")


def _single(group: Group, g: Tensor) -> Tensor:
    if not isinstance(g, Tensor):
        g = torch.as_tensor(g)
    if tuple(g.shape) == (1, *group.element_shape):
        g = g[0]
    if tuple(g.shape) != group.element_shape:
        raise ValueError(
            f"g must be one {group.name} element of shape {group.element_shape} (or a batch of 1), "
            f"got {tuple(g.shape)}"
        )
    return g.detach().cpu()


def _is_cyclic(G: Any) -> bool:
    return isinstance(G, require_escnn().group.CyclicGroup)


def mirror_offset(gspace: Any, group: Group) -> float:
    """Angle ``phi`` with escnn's mirror ``= R(phi) @ diag(-1, 1)`` on the plane (0 for the default axis,
    and for a ``no_base_space`` gspace, whose elements act on no plane).

    Example:
        >>> from escnn import gspaces
        >>> round(mirror_offset(gspaces.flipRot2dOnR2(4, axis=0.0), get_group("D4")), 6)
        3.141593
    """
    if getattr(gspace, "basespace_action", None) is None:  # no_base_space: no plane, no mirror axis
        return 0.0
    G = gspace.fibergroup
    if isinstance(group, DihedralGroup):
        flip = G.element(1) if _is_cyclic(G) else G.element((1, 0))
    elif isinstance(group, O2):
        flip = G.element((1, 0.0))
    else:
        return 0.0
    b = gspace.basespace_action(flip)  # = R(phi) @ diag(-1, 1)
    phi = math.atan2(-b[1][0], -b[0][0])
    return phi % (2 * math.pi)


def _dihedral_shift(phi: float, n: int) -> int:
    m = phi * n / (2 * math.pi)
    if abs(m - round(m)) > 1e-6:
        raise ValueError(
            f"the gspace's mirror axis is not one of the D{n} mirrors of lightning_equi (x -> -x rotated by "
            f"multiples of 2 pi / {n}); build it with flipRot2dOnR2({n}) (default axis=pi/2)"
        )
    return round(m) % n


def escnn_element(group: Group | str, g: Tensor, gspace: Any = None) -> Any:
    """The escnn element of one of our elements ``g`` (shape ``group.element_shape`` or a batch of 1).

    With ``gspace``, the element is the one of ``gspace.fibergroup`` that moves the plane as ``g``
    does (``gspace.basespace_action`` equals :func:`~lightning_equi.groups.standard`), whatever the
    gspace's mirror axis; ``flip2dOnR2``'s C2 fiber group stands for our D1.

    Example:
        >>> escnn_element("D4", torch.tensor([1, 3]))
        (-, 3[2pi/4])
    """
    group = get_group(group)
    g = _single(group, g)
    G = escnn_group(group) if gspace is None else gspace.fibergroup
    if isinstance(group, CyclicGroup):
        return G.element(int(g) % group.n)
    if isinstance(group, DihedralGroup):
        f, k = int(g[0]), int(g[1])
        if gspace is not None:
            k = (k - f * _dihedral_shift(mirror_offset(gspace, group), group.n)) % group.n
            if _is_cyclic(G):  # flip2dOnR2: C2 of mirrors
                return G.element(f)
        return G.element((f, k % group.n))
    if isinstance(group, O3):
        f = int(torch.linalg.det(g) < 0)
        return G.element((f, (g * (1 - 2 * f)).numpy()), "MAT")
    if isinstance(group, SO3):
        return G.element(g.numpy(), "MAT")
    if isinstance(group, O2):
        f, theta = int(g[0]), float(g[1])
        if gspace is not None:
            theta -= f * mirror_offset(gspace, group)
        return G.element((f, theta % (2 * math.pi)))
    if isinstance(group, SO2):
        return G.element(float(g) % (2 * math.pi))
    raise ValueError(f"escnn has no group matching {group.name}")


def element_from_escnn(group: Group | str, element: Any, gspace: Any = None) -> Tensor:
    """Our element (a batch of one) for an escnn element: the inverse of :func:`escnn_element`.

    Example:
        >>> element_from_escnn("D4", escnn_element("D4", torch.tensor([1, 3])))
        tensor([[1, 3]])
    """
    group = get_group(group)
    if isinstance(group, (CyclicGroup, DihedralGroup)):
        # finite: find it by matching against every element (at most a few hundred)
        els = group.elements()
        for i in range(els.shape[0]):
            if escnn_element(group, els[i], gspace) == element:
                return els[i : i + 1].clone()
        raise ValueError(f"{element!r} is not an element of {group.name}")
    if isinstance(group, SO3):
        if isinstance(group, O3):
            f, rot = element.to("MAT")
            mat = torch.as_tensor(rot, dtype=torch.float64) * (1 - 2 * int(f))
        else:
            mat = torch.as_tensor(element.to("MAT"), dtype=torch.float64)
        return mat[None]
    if isinstance(group, O2):
        f, theta = element.to("radians")
        if gspace is not None:
            theta += int(f) * mirror_offset(gspace, group)
        return torch.tensor([[float(f), theta % (2 * math.pi)]], dtype=torch.float64)
    if isinstance(group, SO2):
        return torch.tensor([element.to("radians") % (2 * math.pi)], dtype=torch.float64)
    raise ValueError(f"escnn has no group matching {group.name}")


def group_from_escnn(obj: Any) -> Group:
    """Our group for an escnn group or gspace (its fiber group; ``flip2dOnR2`` gives D1).

    Example:
        >>> from escnn import gspaces
        >>> group_from_escnn(gspaces.rot2dOnR2(8)), group_from_escnn(gspaces.flip2dOnR2())
        (CyclicGroup('C8'), DihedralGroup('D1'))
    """
    escnn = require_escnn()
    eg = escnn.group
    gspace = obj if isinstance(obj, escnn.gspaces.GSpace) else None
    G = obj.fibergroup if gspace is not None else obj
    if not isinstance(G, eg.Group):
        raise TypeError(f"expected an escnn Group or GSpace, got {type(obj).__name__}")
    if isinstance(G, eg.CyclicGroup):
        # flip2dOnR2's fiber group is C2 acting by a mirror, i.e. our D1
        sg_id = getattr(gspace, "_sg_id", (None,))
        if gspace is not None and G.order() == 2 and sg_id[0] is not None:
            group: Group = DihedralGroup(1)
            _dihedral_shift(mirror_offset(gspace, group), 1)
            return group
        return CyclicGroup(G.order())
    if isinstance(G, eg.DihedralGroup):
        group = DihedralGroup(G.rotation_order)
        if gspace is not None:
            _dihedral_shift(mirror_offset(gspace, group), group.n)
        return group
    if isinstance(G, eg.SO2):
        return SO2()
    if isinstance(G, eg.O2):
        return O2()
    if isinstance(G, eg.SO3):
        return SO3()
    if isinstance(G, eg.O3):
        return O3()
    raise ValueError(
        f"no lightning_equi group matches escnn's {G.name}: C_N, D_N, SO(2), O(2), SO(3), O(3) convert"
    )
