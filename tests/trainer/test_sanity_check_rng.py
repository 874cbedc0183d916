"""The sanity check leaves the RNG as it found it, and dataloaders are requested in Lightning's order.

Both matter for running Lightning programs unchanged: data made in ``*_dataloader`` hooks (random
datasets, random splits) must be the same draws as under Lightning, or per-step losses differ.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

import fulmen as L
from fulmen.demos import BoringModel, RandomDataset


class _Recording(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.first_batches: list[torch.Tensor] = []

    def train_dataloader(self) -> DataLoader:
        self.calls.append("train_dataloader")
        return DataLoader(RandomDataset(32, 8), batch_size=4)

    def val_dataloader(self) -> DataLoader:
        self.calls.append("val_dataloader")
        return DataLoader(RandomDataset(32, 8), batch_size=4)

    def training_step(self, batch, batch_idx):
        self.first_batches.append(batch.clone())
        return super().training_step(batch, batch_idx)


def _fit(num_sanity_val_steps: int) -> _Recording:
    L.seed_everything(7, verbose=False)
    model = _Recording()
    trainer = L.Trainer(
        max_steps=2,
        num_sanity_val_steps=num_sanity_val_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model)
    return model


def test_sanity_check_does_not_change_the_training_data() -> None:
    with_check, without_check = _fit(2), _fit(0)
    assert len(with_check.first_batches) == 2
    for a, b in zip(with_check.first_batches, without_check.first_batches):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dataloader_request_order_matches_lightning() -> None:
    assert _fit(2).calls[:2] == ["val_dataloader", "train_dataloader"]  # val inside the sanity check
    assert _fit(0).calls[:2] == ["train_dataloader", "val_dataloader"]  # val before on_train_start
