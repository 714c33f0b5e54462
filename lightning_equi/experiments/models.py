"""The paper's three networks (appendix D) as LightningModules that declare their symmetry.

Two variants of each task (``variant:`` in the config, :data:`NETWORKS`):

- ``paper`` (the default): the networks of the paper's code at its arXiv v1 (``eq_aug_dyn`` at
  ``e3d9c17d``): :class:`PaperPermNet`, :class:`PaperTransNet`, :class:`PaperRotNet`, with its Gaussian
  initialisation, its ``BatchNorm1d`` layers in training mode, heads without biases, and its losses
  (sigmoid + BCE; cross-entropy applied to a softmax output);
- ``project``: this project's versions (:class:`PermNet`, :class:`TransNet`, :class:`RotNet`): LayerNorm,
  logits and ``binary_cross_entropy_with_logits``, a biased head, PyTorch's default (Kaiming-uniform) init.

Every group-structured layer is a *dense* ``nn.Linear`` on the flattened features (channel-major,
``c * P + p``), without bias, as in the paper: the model is an MLP, and E is the subspace of layers that
commute with the group. The fully connected head after the invariant layer is left free. Each module
exposes what the comparison runner needs:

- ``group``: the group's name; ``symmetry_spec()``: the fields of every layer;
- ``data_actions()``: how a group element acts on each entry of a batch ``(inputs, targets)``
  (``None``: the entry is invariant), for Haar augmentation;
- ``output_action()``: how it acts on the outputs (``None``: invariant), for the equivariance error;
- ``score(outputs, targets)``: the accuracy reported in the table.

Training is plain SGD at ``lr`` (the paper's optimiser); the runner chooses the protocol.
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_equi.actions import Action, GraphAction, ImageAction
from lightning_equi.groups import get_group, grid_representation
from lightning_equi.subspace import SymmetrySpec

__all__ = [
    "SymmetricTask",
    "PermNet",
    "TransNet",
    "RotNet",
    "PaperPermNet",
    "PaperTransNet",
    "PaperRotNet",
    "PaperGroupsNet",
    "RowShiftAction",
    "VARIANTS",
    "NETWORKS",
    "TASKS",
    "network_class",
]


class SymmetricTask(L.LightningModule):
    """Shared training logic: SGD, the loss and the score logged per epoch.

    Args:
        lr: the learning rate.
        optimizer: ``"sgd"`` (plain SGD, no momentum, no weight decay: the paper's), ``"momentum"``
            (SGD with momentum 0.9) or ``"adam"`` (Adam with PyTorch's defaults).

    Raises:
        ValueError: for another optimizer name.
    """

    group: str

    def __init__(self, lr: float, optimizer: str = "sgd") -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        self.lr = float(lr)
        self.optimizer_name = optimizer

    def reset_parameters(self) -> None:
        """The initialisation; PyTorch's layer defaults here, the paper's in the ``Paper*`` networks."""

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def score(self, outputs: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def symmetry_spec(self) -> SymmetrySpec:
        raise NotImplementedError

    def data_actions(self) -> list[Action | None]:
        raise NotImplementedError

    def output_action(self) -> Action | None:
        return None

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        out = self(x)
        loss = self.loss(out, y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=x.shape[0])
        self.log(
            "train/accuracy", self.score(out.detach(), y), on_step=False, on_epoch=True, batch_size=x.shape[0]
        )
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        momentum = 0.9 if self.optimizer_name == "momentum" else 0.0
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=momentum)


#: the optimizers a task can train with
OPTIMIZERS = ("sgd", "momentum", "adam")


def _dense(in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=False)


class PermNet(SymmetricTask):
    """*Perm*: is a graph connected? Invariant under S_n relabelling the nodes (paper, D.1).

    ``A - 1/2`` (flattened ``n x n``) -> dense S_n-equivariant layer to ``channels`` edge-feature maps ->
    LeakyReLU -> invariant layer to ``pooled`` scalars -> LeakyReLU -> LayerNorm -> ``head`` -> LeakyReLU ->
    one logit (sigmoid and binary cross-entropy in the loss).

    Args:
        nodes: graph size ``n`` (the group is S_n).
        channels: edge-feature channels of the equivariant layer (paper: 32).
        pooled: outputs of the invariant layer (paper: 64).
        head: width of the hidden head layer (paper: 32).
        lr, optimizer: see :class:`SymmetricTask`.
    """

    def __init__(
        self,
        nodes: int = 10,
        channels: int = 32,
        pooled: int = 64,
        head: int = 32,
        lr: float = 1e-5,
        optimizer: str = "sgd",
    ):
        super().__init__(lr, optimizer)
        self.save_hyperparameters()
        self.group = f"S{nodes}"
        p = nodes * nodes
        self.equivariant = _dense(p, channels * p)
        self.invariant = _dense(channels * p, pooled)
        self.norm, self.head = self._head(pooled, head)
        self.reset_parameters()

    def _head(self, pooled: int, head: int) -> tuple[nn.Module, nn.Module]:
        """The norm after the invariant layer and the head after it."""
        head_layers = nn.Sequential(nn.Linear(pooled, head), nn.LeakyReLU(), nn.Linear(head, 1))
        return nn.LayerNorm(pooled, elementwise_affine=False), head_layers

    def forward(self, adjacency: Tensor) -> Tensor:
        x = F.leaky_relu(self.equivariant((adjacency - 0.5).flatten(1)))
        x = self.norm(F.leaky_relu(self.invariant(x)))
        return self.head(x).squeeze(-1)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(outputs, targets.float())

    def score(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return ((outputs > 0).float() == targets).float().mean()

    def symmetry_spec(self) -> SymmetrySpec:
        return (
            SymmetrySpec(self.group)
            .layer(self.equivariant, "pairs", "pairs")
            .layer(self.invariant, "pairs", "trivial")
            .free(self.norm, self.head)
        )

    def data_actions(self) -> list[Action | None]:
        return [GraphAction(self.group), None]


class TransNet(SymmetricTask):
    """*Trans*: digit classification invariant under cyclic shifts of a ``size x size`` torus (paper, D.2).

    ``x - 1/2`` (flattened) -> two dense translation-equivariant layers (``1 -> channels -> channels`` maps,
    LeakyReLU) -> invariant layer to ``pooled`` scalars -> Tanh -> LayerNorm -> linear head to ``classes``
    logits (cross-entropy on the logits; the paper's code applied softmax twice).

    Args:
        size: side of the images (the group is the torus ``T<size>x<size>``).
        channels: channels of the equivariant layers (paper: 32).
        pooled: outputs of the invariant layer (paper: 32).
        classes: number of classes.
        lr, optimizer: see :class:`SymmetricTask`.
    """

    def __init__(
        self,
        size: int = 8,
        channels: int = 32,
        pooled: int = 32,
        classes: int = 10,
        lr: float = 1e-5,
        optimizer: str = "sgd",
    ):
        super().__init__(lr, optimizer)
        self.save_hyperparameters()
        self.group = f"T{size}x{size}"
        p = size * size
        self.equivariant1 = _dense(p, channels * p)
        self.equivariant2 = _dense(channels * p, channels * p)
        self.invariant = _dense(channels * p, pooled)
        self.norm, self.head = self._head(pooled, classes)
        self.reset_parameters()

    def _head(self, pooled: int, classes: int) -> tuple[nn.Module, nn.Module]:
        """The norm after the invariant layer and the head after it."""
        return nn.LayerNorm(pooled, elementwise_affine=False), nn.Linear(pooled, classes)

    def forward(self, images: Tensor) -> Tensor:
        x = F.leaky_relu(self.equivariant1((images - 0.5).flatten(1)))
        x = F.leaky_relu(self.equivariant2(x))
        return self.head(self.norm(torch.tanh(self.invariant(x))))

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets)

    def score(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return (outputs.argmax(-1) == targets).float().mean()

    def symmetry_spec(self) -> SymmetrySpec:
        return (
            SymmetrySpec(self.group)
            .layer(self.equivariant1, "regular", "regular")
            .layer(self.equivariant2, "regular", "regular")
            .layer(self.invariant, "regular", "trivial")
            .free(self.norm, self.head)
        )

    def data_actions(self) -> list[Action | None]:
        return [ImageAction(self.group), None]


class RotNet(SymmetricTask):
    """*Rot*: segmentation of triangles and pentagons, equivariant under quarter turns of the image (D.3).

    ``x - 1/2`` (flattened) -> dense layers ``1 -> c_1 -> ... -> 2`` channels on the pixel grid, each
    followed by LeakyReLU, C4 rotating every channel's grid -> BatchNorm over the 2 output channels -> 2 mask
    logits per pixel (sigmoid and binary cross-entropy per mask, summed over the two masks, in the loss).

    Args:
        size: side of the images (must be square; C4 rotates the grid).
        channels: hidden channels (paper: ``(32, 32, 16)``).
        lr, optimizer: see :class:`SymmetricTask`.
    """

    def __init__(
        self,
        size: int = 14,
        channels: tuple[int, ...] = (32, 32, 16),
        lr: float = 1e-5,
        optimizer: str = "sgd",
    ):
        super().__init__(lr, optimizer)
        self.save_hyperparameters()
        self.group = "C4"
        self.size = size
        widths = [1, *channels, 2]
        p = size * size
        self.layers = nn.ModuleList(
            _dense(a * p, b * p) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.norm = nn.BatchNorm1d(2)
        self.reset_parameters()

    def forward(self, images: Tensor) -> Tensor:
        x = (images - 0.5).flatten(1)
        for layer in self.layers:
            x = F.leaky_relu(layer(x))
        return self.norm(x.reshape(x.shape[0], 2, -1)).reshape(x.shape[0], 2, self.size, self.size)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        per_mask = F.binary_cross_entropy_with_logits(outputs, targets, reduction="none").mean(dim=(0, 2, 3))
        return per_mask.sum()

    def score(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Pixel accuracy over both masks."""
        return ((outputs > 0).float() == targets).float().mean()

    def symmetry_spec(self) -> SymmetrySpec:
        grid = grid_representation(get_group(self.group), (self.size, self.size))
        return SymmetrySpec(self.group).layers(nn.Linear, fields=grid).free(self.norm)

    def data_actions(self) -> list[Action | None]:
        return [ImageAction(self.group), ImageAction(self.group)]

    def output_action(self) -> Action | None:
        return ImageAction(self.group)


# --------------------------------------------------------------------------------------------------
# the paper's v1 networks


def _gaussian_(tensor: Tensor, std: float) -> Tensor:
    """Fill with ``N(0, std^2)`` from torch's global generator (the runner seeds it per run)."""
    with torch.no_grad():
        return tensor.normal_(0.0, std)


def _invariant_init_(layer: nn.Linear, channels: int, points: int, std: float) -> None:
    """The paper's init of a ``rho^c -> trivial`` layer: one Gaussian per (output, input channel), the same
    for every point of the channel, so the layer starts in E (an orbit-constant map)."""
    with torch.no_grad():
        per_channel = torch.randn(layer.out_features, channels, 1) * std
        layer.weight.copy_(per_channel.expand(-1, -1, points).reshape(layer.out_features, channels * points))


class PaperPermNet(PermNet):
    """*Perm* with the paper's v1 network (``PermutationAdjNet(ns=[1, 32], n=10, ms=[64, 32])``).

    ``A - 1/2`` (flattened ``n x n``) -> dense S_n-equivariant layer to ``channels`` edge maps ->
    LeakyReLU -> invariant layer to ``pooled`` scalars -> LeakyReLU -> ``BatchNorm1d(pooled)`` (affine,
    batch statistics in training) -> linear ``pooled -> head`` -> LeakyReLU -> linear ``head -> 1`` ->
    sigmoid; no biases anywhere; loss: binary cross-entropy on the probability (``BCELoss``).

    Init (the paper's ``reset``, before the projection onto E that the runner applies): the equivariant layer
    ``N(0, 1 / (n^2 channels))``; the invariant layer one ``N(0, 1 / pooled)`` value per (output, channel),
    constant over the ``n^2`` edges; the head's matrices ``N(0, (n / fan_in)^2)``.

    Args:
        nodes: graph size ``n`` (the group is S_n).
        channels: edge-feature channels (paper: 32).
        pooled: outputs of the invariant layer (paper: 64).
        head: width of the hidden head layer (paper: 32).
        lr, optimizer: see :class:`SymmetricTask`.

    Example:
        >>> net = PaperPermNet(channels=4, pooled=8, head=4)
        >>> net(torch.zeros(3, 10, 10)).shape, type(net.norm).__name__, net.head[0].bias
        (torch.Size([3]), 'BatchNorm1d', None)
    """

    def _head(self, pooled: int, head: int) -> tuple[nn.Module, nn.Module]:
        return nn.BatchNorm1d(pooled), nn.Sequential(_dense(pooled, head), nn.LeakyReLU(), _dense(head, 1))

    def reset_parameters(self) -> None:
        h = self.hparams
        n, channels, pooled = h["nodes"], h["channels"], h["pooled"]
        _gaussian_(self.equivariant.weight, 1.0 / (n * math.sqrt(channels)))
        _invariant_init_(self.invariant, channels, n * n, 1.0 / math.sqrt(pooled))
        _gaussian_(self.head[0].weight, n / pooled)
        _gaussian_(self.head[2].weight, n / h["head"])

    def forward(self, adjacency: Tensor) -> Tensor:
        return torch.sigmoid(super().forward(adjacency))

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.binary_cross_entropy(outputs, targets.float())

    def score(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return ((outputs > 0.5).float() == targets).float().mean()


class PaperTransNet(TransNet):
    """*Trans* with the paper's v1 network (``TranslationNet(ns=[1, 32, 32], n=14, ms=[32])``).

    ``x - 1/2`` (flattened) -> two dense translation-equivariant layers ``1 -> channels -> channels`` with
    LeakyReLU -> invariant layer to ``pooled`` -> Tanh -> ``BatchNorm1d(pooled)`` -> linear ``pooled ->
    classes`` without bias -> softmax. Loss: ``cross_entropy`` of the softmax output, i.e. softmax applied
    twice, as the paper's ``CrossEntropyLoss`` on its network's probabilities.

    Init: equivariant layer ``k`` ``N(0, 1 / (size^2 c_in))``; invariant layer ``N(0, 1 / pooled)`` per
    (output, channel), constant over the pixels; head ``N(0, (size / pooled)^2)``.

    Args:
        size: side of the images (the group is the torus ``T<size>x<size>``; paper: 14).
        channels: channels of the equivariant layers (paper: 32).
        pooled: outputs of the invariant layer (paper: 32).
        classes: number of classes.
        lr, optimizer: see :class:`SymmetricTask`.

    Example:
        >>> probabilities = PaperTransNet(size=6, channels=2, pooled=4)(torch.rand(5, 1, 6, 6))
        >>> probabilities.shape, torch.allclose(probabilities.sum(-1), torch.ones(5))
        (torch.Size([5, 10]), True)
    """

    def _head(self, pooled: int, classes: int) -> tuple[nn.Module, nn.Module]:
        return nn.BatchNorm1d(pooled), _dense(pooled, classes)

    def reset_parameters(self) -> None:
        h = self.hparams
        size, channels, pooled = h["size"], h["channels"], h["pooled"]
        _gaussian_(self.equivariant1.weight, 1.0 / size)
        _gaussian_(self.equivariant2.weight, 1.0 / (size * math.sqrt(channels)))
        _invariant_init_(self.invariant, channels, size * size, 1.0 / math.sqrt(pooled))
        _gaussian_(self.head.weight, size / pooled)

    def forward(self, images: Tensor) -> Tensor:
        return torch.softmax(super().forward(images), dim=-1)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets)  # on probabilities: the paper's double softmax


class PaperRotNet(RotNet):
    """*Rot* with the paper's v1 network (``RotationNet(ns=[1, 32, 32, 16, 2], n=14)``).

    ``x - 1/2`` (flattened) -> dense C4-equivariant layers ``1 -> c_1 -> ... -> 2`` channels on the pixel
    grid, each followed by LeakyReLU (the last too) -> ``BatchNorm1d(2)`` over ``(B, 2, size^2)`` ->
    sigmoid: two mask probabilities per pixel. Loss: the sum over the two masks of the mean binary
    cross-entropy (``BCELoss``). Init: layer ``k`` ``N(0, 1 / (size^2 c_in))``.

    Args:
        size: side of the images (square; paper: 14).
        channels: hidden channels (paper: ``(32, 32, 16)``).
        lr, optimizer: see :class:`SymmetricTask`.

    Example:
        >>> PaperRotNet(size=6, channels=(2,))(torch.rand(3, 1, 6, 6)).shape
        torch.Size([3, 2, 6, 6])
    """

    def reset_parameters(self) -> None:
        size, channels = self.hparams["size"], self.hparams["channels"]
        for layer, c_in in zip(self.layers, [1, *channels], strict=True):
            _gaussian_(layer.weight, 1.0 / (size * math.sqrt(c_in)))

    def forward(self, images: Tensor) -> Tensor:
        return torch.sigmoid(super().forward(images))

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        per_mask = F.binary_cross_entropy(outputs, targets, reduction="none").mean(dim=(0, 2, 3))
        return per_mask.sum()

    def score(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Pixel accuracy over both masks."""
        return ((outputs > 0.5).float() == targets).float().mean()


class RowShiftAction(Action):
    """Cyclic shifts of the last axis of a batch ``(B, ..., n)`` by ``T<n>`` (the paper's *OneDTrans*: images
    ``(B, 1, H, n)`` shifted along x), through :class:`~lightning_equi.actions.ImageAction` on ``(B, -1, n)``.

    Example:
        >>> x = torch.arange(6.0).reshape(1, 1, 2, 3)
        >>> RowShiftAction(3)(torch.tensor([[1]]), x).tolist()
        [[[[2.0, 0.0, 1.0], [5.0, 3.0, 4.0]]]]
    """

    def __init__(self, n: int) -> None:
        self.inner = ImageAction(f"T{n}")
        self.group, self.n = self.inner.group, n

    def apply(self, g: Tensor, x: Tensor) -> Tensor:
        return self.inner.apply(g, x.reshape(x.shape[0], -1, self.n)).reshape(x.shape)


class PaperGroupsNet(PaperTransNet):
    """Appendix E.2: the Trans network and data with another group acting on the 14 x 14 images.

    ``group``: ``"T<n>x<n>"`` (*Trans*: translations of the torus), ``"T<n>"`` (*OneDTrans*: translations
    along x; every image row is a regular field), ``"C4"`` (*Rot*: quarter turns of the pixel grid). The
    paper's fourth group, *TransRot* (translations and quarter turns), is not a group of this package and is
    not offered. Args otherwise as for :class:`PaperTransNet`.

    Example:
        >>> net = PaperGroupsNet(group="T6", size=6, channels=2, pooled=3)
        >>> [e.projector.dim for e in net.symmetry_spec().bind(net).parameters]  # 6 x 12 and 12 x 12 row
        [432, 864, 36]

    (field pairs, a 6-dimensional circulant each; then 12 x 3 means.)
    """

    def __init__(
        self,
        group: str = "T14x14",
        size: int = 14,
        channels: int = 32,
        pooled: int = 32,
        classes: int = 10,
        lr: float = 1e-5,
        optimizer: str = "sgd",
    ):
        super().__init__(size, channels, pooled, classes, lr, optimizer)
        valid = (f"T{size}x{size}", f"T{size}", "C4")
        if group not in valid:
            raise ValueError(f"group must be one of {valid} for size {size}, got {group!r}")
        self.group = group

    def symmetry_spec(self) -> SymmetrySpec:
        group = get_group(self.group)
        fields = grid_representation(group, (self.hparams["size"],) * 2) if self.group == "C4" else "regular"
        return (
            SymmetrySpec(group)
            .layer(self.equivariant1, fields, fields)
            .layer(self.equivariant2, fields, fields)
            .layer(self.invariant, fields, "trivial")
            .free(self.norm, self.head)
        )

    def data_actions(self) -> list[Action | None]:
        if self.group == f"T{self.hparams['size']}":
            return [RowShiftAction(self.hparams["size"]), None]
        return [ImageAction(self.group), None]


#: the network variants: ``paper`` (the paper's v1 code) and ``project`` (this project's)
VARIANTS = ("paper", "project")

#: (variant, task) -> its LightningModule
NETWORKS: dict[tuple[str, str], type[SymmetricTask]] = {
    ("paper", "perm"): PaperPermNet,
    ("paper", "trans"): PaperTransNet,
    ("paper", "rot"): PaperRotNet,
    ("paper", "groups"): PaperGroupsNet,
    ("project", "perm"): PermNet,
    ("project", "trans"): TransNet,
    ("project", "rot"): RotNet,
}

#: task name -> its default (the paper's) LightningModule
TASKS: dict[str, type[SymmetricTask]] = {task: cls for (v, task), cls in NETWORKS.items() if v == "paper"}


def network_class(task: str, variant: str = "paper") -> type[SymmetricTask]:
    """The LightningModule of ``task`` in ``variant``.

    Raises:
        ValueError: for an unknown task or variant.

    Example:
        >>> network_class("rot").__name__, network_class("rot", "project").__name__
        ('PaperRotNet', 'RotNet')
    """
    if (variant, task) not in NETWORKS:
        raise ValueError(
            f"no network for task {task!r} in variant {variant!r}; "
            f"tasks: {sorted(TASKS)}, variants: {VARIANTS}"
        )
    return NETWORKS[(variant, task)]
