"""#12 item 3: a target shaped like a transformed input but without an action is not left misaligned
silently: HaarAugmentation warns once, naming ``targets=``."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_equi.callbacks import HaarAugmentation


def _segmentation(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose only channel is their mask: aligned pairs can be recognised after augmentation."""
    mask = torch.randint(3, (n, 8, 8), generator=torch.Generator().manual_seed(0))
    return mask[:, None].float(), mask


def _messages(caught) -> list[str]:
    return [str(w.message) for w in caught if "HaarAugmentation: batch entry" in str(w.message)]


def test_an_unacted_mask_warns_once_naming_targets():
    aug = HaarAugmentation("D4", inputs="image", seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            image, mask = aug.transform(_segmentation())
    (message,) = _messages(caught)
    assert "batch entry 1 (shape (8, 8, 8))" in message
    assert "targets='image'" in message and "targets={1: None}" in message
    assert not torch.equal(image[:, 0].long(), mask)  # misaligned, which is what the warning is about


@pytest.mark.parametrize("targets", ["image", {1: "image"}])
def test_a_declared_mask_turns_with_its_image(targets):
    aug = HaarAugmentation("D4", inputs="image", targets=targets, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image, mask = aug.transform(_segmentation())
    assert _messages(caught) == []
    assert torch.equal(image[:, 0].long(), mask)  # every pair still aligned


@pytest.mark.parametrize(
    "batch",
    [
        (torch.rand(8, 1, 8, 8), torch.arange(8)),  # class labels
        (torch.rand(8, 1, 8, 8), torch.rand(8, 8, 4)),  # another shape
        (torch.rand(8, 1, 8, 8), torch.rand(4, 8, 8)),  # another batch size
    ],
)
def test_no_warning_for_entries_that_do_not_look_transformed(batch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HaarAugmentation("C4", inputs="image", seed=0).transform(batch)


def test_an_entry_declared_invariant_does_not_warn():
    aug = HaarAugmentation("C4", inputs={"image": "image", "mask": None}, seed=0)
    image, mask = _segmentation()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = aug.transform({"image": image, "mask": mask, "weights": torch.rand(8)})
    assert out["mask"] is mask


class _Segmenter(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Conv2d(1, 3, 3, padding=1)

    def training_step(self, batch, batch_idx):
        image, mask = batch
        return nn.functional.cross_entropy(self.net(image), mask)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(*_segmentation(16)), batch_size=4)


def test_the_warning_reaches_a_user_of_the_trainer(tmp_path):
    trainer = L.Trainer(
        callbacks=[HaarAugmentation("D4", inputs="image", seed=0)],
        max_steps=3,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(_Segmenter())
    assert len(_messages(caught)) == 1


def test_the_readme_example_of_an_equivariant_target_runs():
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text[text.index("### Equivariant targets: a mask that turns with its image") :]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a declared mask: no warning
        exec(compile(block, "README.md", "exec"), scope)  # noqa: S102
    assert [type(cb).__name__ for cb in scope["callbacks"]] == ["EquivarianceMonitor", "HaarAugmentation"]
    assert scope["callbacks"][1].targets == "image"
