"""The paper's three data sets (appendix D), generated from a seed or read from disk.

- :func:`two_block_graphs` -- *Perm*: adjacency matrices of two-block random graphs, label connected or not;
- :func:`digits` and :func:`load_mnist` -- *Trans*: digits on a torus (scikit-learn's 8 x 8 digits, shipped
  with scikit-learn, or MNIST idx files the user has locally, resized);
- :func:`shapes` -- *Rot*: triangles and pentagons at a fixed orientation with one mask per shape.

Every function returns float32 tensors ``(inputs, targets)``; :func:`build_dataset` picks one by task name.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = [
    "two_block_graphs",
    "is_connected",
    "digits",
    "read_idx",
    "load_mnist",
    "shapes",
    "polygon",
    "build_dataset",
]


def is_connected(adjacency: Tensor) -> Tensor:
    """Whether each graph ``(B, n, n)`` is connected: every entry of ``(I + A)^(n-1)`` is positive.

    Computed by repeated boolean squaring of the reachability matrix (``ceil(log2(n - 1))`` products).
    """
    n = adjacency.shape[-1]
    reach = (adjacency > 0) | torch.eye(n, dtype=torch.bool, device=adjacency.device)
    for _ in range(max(1, math.ceil(math.log2(max(n - 1, 1))))):
        reach = (reach.double() @ reach.double()) > 0
    return reach.all(dim=-1).all(dim=-1)


def two_block_graphs(
    n_graphs: int = 1000,
    block: int = 5,
    p_in: float = 0.5,
    p_out: float = 0.05,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Two-block stochastic-block-model graphs and whether each is connected (paper, D.1).

    The ``2 * block`` nodes are split at random into two blocks of ``block``; an undirected edge joins two
    nodes with probability ``p_in`` inside a block and ``p_out`` between blocks.

    Returns:
        adjacency ``(n_graphs, n, n)`` (symmetric, zero diagonal) and labels ``(n_graphs,)`` in {0, 1}.

    Example:
        >>> a, y = two_block_graphs(4, seed=0)
        >>> a.shape, y.shape, bool((a == a.transpose(1, 2)).all())
        (torch.Size([4, 10, 10]), torch.Size([4]), True)
    """
    gen = torch.Generator().manual_seed(int(seed))
    n = 2 * block
    blocks = torch.rand(n_graphs, n, generator=gen).argsort(dim=1) < block  # a random half of the nodes
    same = blocks[:, :, None] == blocks[:, None, :]
    prob = torch.where(same, torch.tensor(p_in), torch.tensor(p_out))
    edges = torch.rand(n_graphs, n, n, generator=gen) < prob
    upper = torch.triu(edges, diagonal=1)
    adjacency = (upper | upper.transpose(1, 2)).float()
    return adjacency, is_connected(adjacency).float()


def digits(limit: int | None = None) -> tuple[Tensor, Tensor]:
    """scikit-learn's 8 x 8 handwritten digits (shipped with scikit-learn), in [0, 1].

    Returns:
        images ``(N, 1, 8, 8)`` and labels ``(N,)`` (long), ``N = 1797`` or ``limit``.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    return images[:limit], labels[:limit]


_IDX_DTYPES = {
    0x08: (torch.uint8, "B"),
    0x09: (torch.int8, "b"),
    0x0B: (torch.int16, ">h"),
    0x0C: (torch.int32, ">i"),
    0x0D: (torch.float32, ">f"),
    0x0E: (torch.float64, ">d"),
}


def read_idx(path: str | Path) -> Tensor:
    """Read an idx file (MNIST's format; plain or ``.gz``) into a tensor.

    Raises:
        ValueError: when the file does not start with an idx magic number.
    """
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (magic bytes {raw[:4].hex()})")
    dtype, code = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}i", raw[4 : 4 + 4 * ndim])
    count, offset = math.prod(dims), 4 + 4 * ndim
    if code in ("B", "b"):
        values = torch.frombuffer(bytearray(raw[offset : offset + count]), dtype=dtype)
    else:
        values = torch.tensor(
            struct.unpack(f">{count}{code[1]}", raw[offset : offset + count * struct.calcsize(code)])
        )
        values = values.to(dtype)
    if values.numel() != count:
        raise ValueError(f"{path} is truncated: header says {dims}, found {values.numel()} values")
    return values.reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(f"no {stem}[.gz] in {root}")


def load_mnist(
    root: str | Path, split: str = "t10k", size: int = 14, limit: int | None = None
) -> tuple[Tensor, Tensor]:
    """MNIST from local idx files, resized to ``size x size`` (the paper: the 10 000 test images, 14 x 14).

    Args:
        root: folder holding ``{split}-images-idx3-ubyte[.gz]`` and ``{split}-labels-idx1-ubyte[.gz]``.
        split: ``"t10k"`` (test) or ``"train"``.
        size: side of the resized images (area averaging when shrinking).
        limit: keep the first ``limit`` images.

    Returns:
        images ``(N, 1, size, size)`` in [0, 1] and labels ``(N,)`` (long).
    """
    root = Path(root)
    images = read_idx(_find(root, f"{split}-images-idx3-ubyte"))[:limit]
    labels = read_idx(_find(root, f"{split}-labels-idx1-ubyte"))[:limit]
    if images.dim() != 3 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"MNIST files in {root} hold images {tuple(images.shape)} and labels {tuple(labels.shape)}"
        )
    x = images.float()[:, None] / 255.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area" if size < x.shape[-1] else "bilinear")
    return x, labels.long()


def polygon(corners: int, radius: Tensor, centre: Tensor) -> Tensor:
    """Vertices ``(B, corners, 2)`` of regular polygons with a vertex pointing up (fixed orientation)."""
    angles = math.pi / 2 + 2 * math.pi * torch.arange(corners, dtype=torch.float64) / corners
    unit = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    return centre[:, None, :] + radius[:, None, None] * unit[None]


def _coverage(vertices: Tensor, size: int, supersample: int) -> Tensor:
    """Fraction of each pixel of a ``size x size`` canvas over [-1, 1]^2 inside each convex polygon."""
    fine = size * supersample
    ticks = -1 + (2 * torch.arange(fine, dtype=torch.float32) + 1) / fine
    ys, xs = torch.meshgrid(-ticks, ticks, indexing="ij")  # row 0 is the top of the canvas
    px, py = xs.reshape(1, -1), ys.reshape(1, -1)
    vertices = vertices.float()
    inside = torch.ones(vertices.shape[0], px.shape[1], dtype=torch.bool)
    for k in range(vertices.shape[1]):  # inside a convex counter-clockwise polygon: left of every edge a -> b
        a, b = vertices[:, k, :, None], vertices[:, (k + 1) % vertices.shape[1], :, None]
        inside &= (b[:, 0] - a[:, 0]) * (py - a[:, 1]) - (b[:, 1] - a[:, 1]) * (px - a[:, 0]) >= 0
    inside = inside.double().reshape(-1, size, supersample, size, supersample)
    return inside.mean(dim=(2, 4))


def shapes(
    n_images: int = 3000,
    size: int = 14,
    radius: tuple[float, float] = (0.5, 0.8),
    supersample: int = 4,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Triangles or pentagons (one per image, fair coin) at a fixed orientation, and their masks (paper, D.3).

    Each shape has its vertices on a circle of radius uniform in ``radius`` around a centre uniform over the
    positions that keep it on the canvas. Since every shape points up, the image distribution is not invariant
    under quarter turns; the task (segment what is there) is C4-equivariant.

    Returns:
        images ``(N, 1, size, size)`` (anti-aliased coverage in [0, 1]) and masks ``(N, 2, size, size)``
        (channel 0 triangle, 1 pentagon; pixel centre inside, i.e. coverage >= 1/2): the mask of the absent
        shape is all zeros.

    Example:
        >>> x, m = shapes(6, size=10, seed=1)
        >>> x.shape, m.shape, bool((m.flatten(2).amax(2).sum(1) == 1).all())  # exactly one non-empty mask
        (torch.Size([6, 1, 10, 10]), torch.Size([6, 2, 10, 10]), True)
    """
    gen = torch.Generator().manual_seed(int(seed))
    lo, hi = radius
    r = lo + (hi - lo) * torch.rand(n_images, generator=gen, dtype=torch.float64)
    centre = (2 * torch.rand(n_images, 2, generator=gen, dtype=torch.float64) - 1) * (1 - r)[:, None]
    is_pentagon = torch.rand(n_images, generator=gen) < 0.5
    cover = torch.empty(n_images, size, size, dtype=torch.float64)
    for corners, which in ((3, ~is_pentagon), (5, is_pentagon)):
        cover[which] = _coverage(polygon(corners, r[which], centre[which]), size, supersample)
    mask = (cover >= 0.5).float()
    masks = torch.stack([mask * ~is_pentagon[:, None, None], mask * is_pentagon[:, None, None]], dim=1)
    return cover.float()[:, None], masks


def build_dataset(task: str, **options) -> TensorDataset:
    """The data set of a task: ``"perm"`` (:func:`two_block_graphs`), ``"trans"`` (:func:`digits`, or
    :func:`load_mnist` when ``mnist_root`` is given) or ``"rot"`` (:func:`shapes`); ``options`` go to that
    function."""
    if task == "perm":
        return TensorDataset(*two_block_graphs(**options))
    if task == "trans":
        root = options.pop("mnist_root", None)
        return TensorDataset(*(load_mnist(root, **options) if root else digits(**options)))
    if task == "rot":
        return TensorDataset(*shapes(**options))
    raise ValueError(f"unknown task {task!r}; choose one of 'perm', 'trans', 'rot'")
