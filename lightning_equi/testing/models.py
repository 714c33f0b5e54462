"""Tiny models with a ``symmetry_spec()`` method (and one without), with deterministic training data."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_equi.groups import get_group
from lightning_equi.subspace import SymmetrySpec

__all__ = ["BoringEquiModel", "IrrepsEquiModel", "PlainCNNModel"]

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")


class _TinyModule(LightningModule):
    """Shared optimizer and data plumbing (deterministic data drawn from ``seed``)."""

    def __init__(
        self,
        optimizer: str = "sgd",
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        n_samples: int = 32,
        batch_size: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        self.save_hyperparameters()

    def make_data(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        x, y = self.make_data(torch.Generator().manual_seed(self.hparams.seed))
        return DataLoader(TensorDataset(x, y), batch_size=self.hparams.batch_size, shuffle=False)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "sgd":
            return torch.optim.SGD(
                self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
            )
        if hp.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.optimizer == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        return torch.optim.RMSprop(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)


class BoringEquiModel(_TinyModule):
    """A C4-invariant regression CNN built from plain torch layers, with its symmetry spec.

    ``Conv2d(1, c) -> BatchNorm2d -> ReLU -> Conv2d(c, c) -> ReLU -> global mean -> Linear(c, 1)``;
    under C4 the image is a scalar field, the hidden channels are ``c / 4`` regular fields and the
    output is invariant. In E the network is exactly C4-invariant (``rot90`` of the input leaves
    the output unchanged up to float rounding). Targets are random numbers (invariant by declaration).

    Args:
        channels: hidden channels (a multiple of 4).
        size: the images' side.
        optimizer, lr, momentum, weight_decay: the optimizer (``"sgd"``, ``"adam"``, ``"adamw"``,
            ``"rmsprop"``) and its settings.
        n_samples, batch_size, seed: the training data.

    Example:
        >>> from lightning_equi.subspace import resolve_spec
        >>> model = BoringEquiModel()
        >>> resolve_spec(model).dim < resolve_spec(model).numel
        True
    """

    def __init__(self, channels: int = 8, size: int = 6, **kwargs) -> None:
        super().__init__(**kwargs)
        self.size = size
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, 1),
        )

    def symmetry_spec(self) -> SymmetrySpec:
        return (
            SymmetrySpec("C4")
            .layers(nn.Conv2d, fields="regular")
            .layer("net.0", in_fields="trivial", out_fields="regular")
            .layer("net.7", in_fields="regular", out_fields="trivial")
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def make_data(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        n, s = self.hparams.n_samples, self.size
        return torch.randn(n, 1, s, s, generator=generator), torch.randn(n, 1, generator=generator)


class PlainCNNModel(BoringEquiModel):
    """:class:`BoringEquiModel`'s network and data without a ``symmetry_spec()``: the zero-line case,
    whose spec ``build_callbacks("equi", group="C4", inputs="image")`` (or ``--mode equi --group C4``)
    infers (:func:`~lightning_equi.subspace.infer_spec`).

    Example:
        >>> from lightning_equi.subspace import resolve_spec
        >>> model = PlainCNNModel()
        >>> resolve_spec(model, group="C4", inputs="image").dim == resolve_spec(BoringEquiModel()).dim
        True
    """

    symmetry_spec = None  # type: ignore[assignment]


class IrrepsEquiModel(_TinyModule):
    """An equivariant MLP on planar points ``R^2 -> R^h -> R^2`` whose layers are not permutations.

    * ``group="SO2"`` (default): the hidden features are ``fields`` copies of the standard
      (frequency-1) representation, the nonlinearity scales each 2-d field by a function of its norm,
      and the equivariant weights are ``2 x 2`` blocks ``a I + b J`` (biases vanish).
    * a cyclic group such as ``"C3"``: the hidden features are ``fields`` regular fields with a ReLU,
      and the weights between the standard and the regular representation have entries
      ``cos(2 pi k / N)``, which an elementwise optimizer such as Adam does not preserve.

    Inputs and targets are ``(B, 1, 2)`` point clouds with ``y = x (1 + |x|^2)``.

    Example:
        >>> from lightning_equi.subspace import resolve_spec
        >>> resolve_spec(IrrepsEquiModel()).entries[0].projector.kind
        'basis'
    """

    def __init__(
        self, group: str = "SO2", fields: int = 4, optimizer: str = "adam", lr: float = 0.01, **kwargs
    ) -> None:
        super().__init__(optimizer=optimizer, lr=lr, **kwargs)
        self.group, self.fields = group, fields
        self.width = 2 if group.upper() == "SO2" else get_group(group).order
        self.fc1 = nn.Linear(2, self.width * fields)
        self.fc2 = nn.Linear(self.width * fields, 2)

    def symmetry_spec(self) -> SymmetrySpec:
        hidden = "standard" if self.width == 2 else "regular"
        return (
            SymmetrySpec(self.group)
            .layer("fc1", in_fields="standard", out_fields=hidden)
            .layer("fc2", in_fields=hidden, out_fields="standard")
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        if self.width == 2:
            h = h.unflatten(-1, (self.fields, 2))
            h = (h * torch.sigmoid(h.norm(dim=-1, keepdim=True) - 0.5)).flatten(-2)
        else:
            h = torch.relu(h)
        return self.fc2(h)

    def make_data(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        x = torch.randn(self.hparams.n_samples, 1, 2, generator=generator)
        return x, x * (1 + x.square().sum(-1, keepdim=True))
