"""Models and datamodules for the CLI tests (imported by the test modules)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.cli import LRSchedulerCallable, OptimizerCallable


def dataset(n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True))


class Model(L.LightningModule):
    """A small regression model with typed init arguments."""

    def __init__(self, hidden: int = 8, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", torch.nn.functional.mse_loss(self(x), y))

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class BiggerModel(Model):
    """A subclass, for subclass mode."""

    def __init__(self, hidden: int = 16, lr: float = 0.1, depth: int = 2) -> None:
        super().__init__(hidden=hidden, lr=lr)
        self.depth = depth


class NoOptimizerModel(Model):
    """Relies on --optimizer."""

    def configure_optimizers(self) -> Any:  # pragma: no cover - replaced by the CLI
        raise AssertionError("the CLI should have replaced configure_optimizers")


class ActivationModel(Model):
    """Takes a callable: configs name it by import path."""

    def __init__(
        self, activation: Callable[[torch.Tensor], torch.Tensor] = torch.tanh, hidden: int = 8
    ) -> None:
        super().__init__(hidden=hidden)
        self.activation = activation


class LinkedOptimizerModel(Model):
    """Builds its optimizer from a linked spec (add_optimizer_args(link_to=...))."""

    def __init__(self, optimizer_init: dict | None = None, hidden: int = 8) -> None:
        super().__init__(hidden=hidden)
        self.optimizer_init = optimizer_init

    def configure_optimizers(self) -> Any:
        from fulmen.cli import instantiate_class

        return instantiate_class(self.parameters(), self.optimizer_init)


class Data(L.LightningDataModule):
    def __init__(self, batch_size: int = 8, n: int = 32) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.n = n

    def setup(self, stage: str) -> None:
        self.data = dataset(self.n)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size)


QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


class TagCallback(L.Callback):
    """A user callback, for configs."""

    def __init__(self, tag: str = "x") -> None:
        self.tag = tag


class InjectedOptimizerModel(Model):
    """Lightning's dependency-injection pattern: the optimizer and scheduler are callables from the config."""

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        hidden: int = 8,
    ) -> None:
        super().__init__(hidden=hidden)
        self.optimizer = optimizer
        self.scheduler = scheduler

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler(optimizer)}
