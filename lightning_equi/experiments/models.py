"""The paper's three networks (appendix D) as LightningModules that declare their symmetry.

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

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_equi.actions import Action, GraphAction, ImageAction
from lightning_equi.groups import get_group, grid_representation
from lightning_equi.subspace import SymmetrySpec

__all__ = ["SymmetricTask", "PermNet", "TransNet", "RotNet", "TASKS"]


class SymmetricTask(L.LightningModule):
    """Shared training logic: SGD, the loss and the score logged per epoch.

    Args:
        lr: the SGD learning rate (no momentum, no weight decay).
    """

    group: str

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = float(lr)

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
        return torch.optim.SGD(self.parameters(), lr=self.lr)


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
        lr: SGD learning rate.
    """

    def __init__(
        self, nodes: int = 10, channels: int = 32, pooled: int = 64, head: int = 32, lr: float = 1e-5
    ):
        super().__init__(lr)
        self.save_hyperparameters()
        self.group = f"S{nodes}"
        p = nodes * nodes
        self.equivariant = _dense(p, channels * p)
        self.invariant = _dense(channels * p, pooled)
        self.norm = nn.LayerNorm(pooled, elementwise_affine=False)
        self.head = nn.Sequential(nn.Linear(pooled, head), nn.LeakyReLU(), nn.Linear(head, 1))

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
            .free(self.head)
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
        lr: SGD learning rate.
    """

    def __init__(
        self, size: int = 8, channels: int = 32, pooled: int = 32, classes: int = 10, lr: float = 1e-5
    ):
        super().__init__(lr)
        self.save_hyperparameters()
        self.group = f"T{size}x{size}"
        p = size * size
        self.equivariant1 = _dense(p, channels * p)
        self.equivariant2 = _dense(channels * p, channels * p)
        self.invariant = _dense(channels * p, pooled)
        self.norm = nn.LayerNorm(pooled, elementwise_affine=False)
        self.head = nn.Linear(pooled, classes)

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
            .free(self.head)
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
        lr: SGD learning rate.
    """

    def __init__(self, size: int = 14, channels: tuple[int, ...] = (32, 32, 16), lr: float = 1e-5):
        super().__init__(lr)
        self.save_hyperparameters()
        self.group = "C4"
        self.size = size
        widths = [1, *channels, 2]
        p = size * size
        self.layers = nn.ModuleList(
            _dense(a * p, b * p) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.norm = nn.BatchNorm1d(2)

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


#: task name -> its LightningModule
TASKS: dict[str, type[SymmetricTask]] = {"perm": PermNet, "trans": TransNet, "rot": RotNet}
