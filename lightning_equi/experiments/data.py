"""The paper's three data sets (appendix D), generated from a seed or read from disk.

- :func:`two_block_graphs` -- *Perm*: adjacency matrices of two-block random graphs, label connected or not;
- :func:`digits` and :func:`load_mnist` -- *Trans*: digits on a torus (scikit-learn's 8 x 8 digits, shipped
  with scikit-learn, or MNIST idx files the user has locally, resized);
- :func:`shapes` -- *Rot*: triangles and pentagons at a fixed orientation with one mask per shape;
- :func:`paper_shapes` -- *Rot* as the paper's code drew it (its canvas, shape sizes, grey levels and masks).

Every function returns float32 tensors ``(inputs, targets)``; :func:`build_dataset` picks one by task name
and variant (``paper``: the distributions of the paper's v1 code, drawn by our own code; ``project``: ours).
The paper's Perm graphs are :func:`two_block_graphs` with its defaults (the same stochastic block model).
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
    "paper_shapes",
    "PAPER_CANVAS",
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


def digits(limit: int | None = None, size: int = 8) -> tuple[Tensor, Tensor]:
    """scikit-learn's 8 x 8 handwritten digits (shipped with scikit-learn), in [0, 1].

    Args:
        limit: keep the first ``limit`` images.
        size: side of the returned images; other than 8, bilinear resampling (``size=14`` stands in for the
            paper's 14 x 14 MNIST when its files are absent).

    Returns:
        images ``(N, 1, size, size)`` and labels ``(N,)`` (long), ``N = 1797`` or ``limit``.

    Example:
        >>> x, y = digits(5, size=14)
        >>> x.shape, float(x.min()) >= 0, float(x.max()) <= 1
        (torch.Size([5, 1, 14, 14]), True, True)
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    images, labels = images[:limit], labels[:limit]
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return images, labels


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


#: the paper's drawing canvas: a 640 x 480 matplotlib figure, ``set_aspect("equal")``, ``axis("off")``,
#: ``tight_layout()``: the data square [-1, 1]^2 fills this box of the figure (fractions from the left and
#: from the top; measured with matplotlib 3), and the whole figure is resized to the image
PAPER_CANVAS = {
    "width": 640,
    "height": 480,
    "left": 0.1484375,
    "right": 0.8515625,
    "top": 0.03125,
    "bottom": 0.96875,
}
#: grey level of the paper's shapes: the RGB mean of matplotlib's default fill colour C0 (#1f77b4)
_C0_GREY = (0x1F + 0x77 + 0xB4) / 3 / 255


def _blur_and_sample(cover: Tensor, out: tuple[int, int]) -> Tensor:
    """skimage's ``resize(..., anti_aliasing=True)`` of a ``(B, H, W)`` canvas to ``out``: a Gaussian of
    sigma ``(scale - 1) / 2`` per axis, then bilinear samples at the output pixels' centres."""
    b, h, w = cover.shape
    x = cover[:, None].float()
    for axis, (n_in, n_out) in enumerate(((h, out[0]), (w, out[1]))):
        sigma = max(0.0, (n_in / n_out - 1) / 2)
        if sigma == 0:
            continue
        radius = int(math.ceil(4 * sigma))
        taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
        kernel = (
            (kernel / kernel.sum()).reshape(1, 1, -1, 1)
            if axis == 0
            else (kernel / kernel.sum()).reshape(1, 1, 1, -1)
        )
        pad = (0, 0, radius, radius) if axis == 0 else (radius, radius, 0, 0)
        x = F.conv2d(F.pad(x, pad, mode="reflect"), kernel)
    return F.interpolate(x, size=out, mode="bilinear", align_corners=False)[:, 0]


def paper_shapes(
    n_images: int = 3000, size: int = 14, oversample: int = 8, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """*Rot*'s data as the paper's code drew it (``SimpleShapes.generate_dataset`` at v1), by our own code.

    Each image holds one filled polygon, a triangle or (fair coin) a pentagon with vertices
    ``r (cos 2 pi k / c, sin 2 pi k / c) + v`` (a vertex at angle 0: pointing right, never rotated),
    ``r = 0.7 + 0.1 U``, ``v = 1/2 - (U_1, U_2)``, on the paper's canvas (:data:`PAPER_CANVAS`: the data
    square is drawn in the middle of a 4:3 figure, so shapes are squeezed horizontally once the figure is
    resized to ``size x size``). The image is the RGB mean: background 1, shape ``0.431``, anti-aliased by
    the paper's resize (Gaussian, then bilinear). Each mask is its canvas resized the same way, min-max
    normalised, inverted and thresholded at 1/2; the mask of the *absent* shape is **all ones** (a blank
    canvas has min = max, which the paper's code maps to 1), as in the paper's data.

    Args:
        n_images: number of images (paper: 3000).
        size: side of the images (paper: 14).
        oversample: the canvas is drawn at ``1 / oversample`` of the figure's 640 x 480 pixels.
        seed: seed of the draws.

    Returns:
        images ``(N, 1, size, size)`` in [0.43, 1] and masks ``(N, 2, size, size)`` (channel 0 triangle,
        1 pentagon).

    Example:
        >>> x, m = paper_shapes(4, seed=0)
        >>> x.shape, m.shape, bool((m.flatten(1).amin(1) == 0).all())  # every image has one shape
        (torch.Size([4, 1, 14, 14]), torch.Size([4, 2, 14, 14]), True)
    """
    gen = torch.Generator().manual_seed(int(seed))
    is_triangle = torch.rand(n_images, generator=gen) > 0.5  # the paper: rand() > .5 -> triangle
    r = 0.7 + 0.1 * torch.rand(n_images, generator=gen, dtype=torch.float64)
    v = 0.5 - torch.rand(n_images, 2, generator=gen, dtype=torch.float64)
    c = PAPER_CANVAS
    w, h = c["width"] // oversample, c["height"] // oversample
    # canvas pixel centres in data coordinates (y up; row 0 is the top of the figure)
    px = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    py = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    xs = -1 + 2 * (px - c["left"]) / (c["right"] - c["left"])
    ys = 1 - 2 * (py - c["top"]) / (c["bottom"] - c["top"])
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)
    cover = torch.zeros(n_images, h * w, dtype=torch.float64)
    for corners, which in ((3, is_triangle), (5, ~is_triangle)):
        angles = 2 * math.pi * torch.arange(corners, dtype=torch.float64) / corners
        unit = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
        verts = r[which, None, None] * unit[None] + v[which, None, :]
        inside = torch.ones(int(which.sum()), h * w, dtype=torch.bool)
        for k in range(corners):  # counter-clockwise convex polygon: left of every edge
            a, b = verts[:, k, None, :], verts[:, (k + 1) % corners, None, :]
            cross = (b[..., 0] - a[..., 0]) * (points[None, :, 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (
                points[None, :, 0] - a[..., 0]
            )
            inside &= cross >= 0
        cover[which] = inside.double()
    # the drawn canvas has grey 1 - (1 - C0) * coverage; resizing is linear, so resize the coverage
    small = _blur_and_sample(cover.reshape(n_images, h, w), (size, size)).clamp(0, 1)
    images = 1 - (1 - _C0_GREY) * small
    # a mask's canvas after min-max normalisation and inversion is coverage / max coverage
    peak = small.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    present = (small / peak > 0.5).float()
    ones = torch.ones_like(present)
    masks = torch.stack(
        [
            torch.where(is_triangle[:, None, None], present, ones),
            torch.where(is_triangle[:, None, None], ones, present),
        ],
        dim=1,
    )
    return images.float()[:, None], masks.float()


def build_dataset(task: str, variant: str = "paper", **options) -> TensorDataset:
    """The data set of a task in a variant; ``options`` go to the generator.

    - ``"perm"``: :func:`two_block_graphs` (both variants: the paper's stochastic block model);
    - ``"trans"``: :func:`load_mnist` when ``mnist_root`` is given, else :func:`digits` (``paper``: resized
      to ``size``, default 14, as the paper's 14 x 14 MNIST; ``project``: 8 x 8);
    - ``"rot"``: :func:`paper_shapes` (``paper``) or :func:`shapes` (``project``);
    - ``"groups"`` (appendix E.2): as ``"trans"``.

    Raises:
        ValueError: for an unknown task or variant.

    Example:
        >>> len(build_dataset("rot", n_images=3)), build_dataset("trans", limit=2)[0][0].shape
        (3, torch.Size([1, 14, 14]))
    """
    if variant not in ("paper", "project"):
        raise ValueError(f"unknown variant {variant!r}; choose 'paper' or 'project'")
    if task == "perm":
        return TensorDataset(*two_block_graphs(**options))
    if task in ("trans", "groups"):
        root = options.pop("mnist_root", None)
        if root:
            return TensorDataset(*load_mnist(root, **options))
        if variant == "paper":
            options.setdefault("size", 14)
        return TensorDataset(*digits(**options))
    if task == "rot":
        return TensorDataset(*(paper_shapes(**options) if variant == "paper" else shapes(**options)))
    raise ValueError(f"unknown task {task!r}; choose one of 'perm', 'trans', 'rot', 'groups'")
