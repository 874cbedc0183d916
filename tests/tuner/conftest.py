"""Shared models for the tuner tests."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L


def regression_data(n: int = 512, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    w = torch.arange(1.0, 9.0).unsqueeze(1)
    return TensorDataset(x, x @ w + 0.01 * torch.randn(n, 1, generator=g))


class Regression(L.LightningModule):
    """Linear regression; ``oom_above`` simulates running out of memory for larger batches."""

    def __init__(
        self, lr: float = 0.01, batch_size: int = 16, oom_above: int | None = None, n: int = 512
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        self.batch_size = batch_size
        self.oom_above = oom_above
        self.layer = torch.nn.Linear(8, 1)
        self.data = regression_data(n)
        self.seen_batch_sizes: list[int] = []

    def _check(self, x: torch.Tensor) -> None:
        self.seen_batch_sizes.append(x.shape[0])
        if self.oom_above is not None and x.shape[0] > self.oom_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self._check(x)
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self._check(x)
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self._check(batch[0])
        return self.layer(batch[0])

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size)


def make_trainer(tmp_path: Any, **kw: Any) -> L.Trainer:
    defaults: dict[str, Any] = {
        "default_root_dir": tmp_path,
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 2,
    }
    defaults.update(kw)
    return L.Trainer(**defaults)
