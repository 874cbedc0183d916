"""Tiny models and random datasets for tests, examples and bug reports (mirrors ``lightning.pytorch.demos``).

They behave like Lightning's classes of the same names (same shapes, same defaults, the same order of
random draws), so a test or a reproduction written against Lightning's demos gives the same numbers here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from fulmen.core.datamodule import LightningDataModule
from fulmen.core.module import LightningModule
from fulmen.utilities.apply_func import apply_to_collection

__all__ = [
    "BoringDataModule",
    "BoringDataModuleNoLen",
    "BoringModel",
    "DemoModel",
    "IterableBoringDataModule",
    "ManualOptimBoringModel",
    "Net",
    "RandomDataset",
    "RandomDictDataset",
    "RandomIterableDataset",
    "RandomIterableDatasetWithLen",
]


class RandomDataset(Dataset[Tensor]):
    """``length`` vectors of ``size`` standard-normal values, drawn once at construction."""

    def __init__(self, size: int, length: int) -> None:
        self.len = length
        self.data = torch.randn(length, size)

    def __getitem__(self, index: int) -> Tensor:
        return self.data[index]

    def __len__(self) -> int:
        return self.len


class RandomDictDataset(Dataset[dict[str, Tensor]]):
    """Like :class:`RandomDataset`, but each item is ``{"a": x, "b": x + 2}``."""

    def __init__(self, size: int, length: int) -> None:
        self.len = length
        self.data = torch.randn(length, size)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        sample = self.data[index]
        return {"a": sample, "b": sample + 2}

    def __len__(self) -> int:
        return self.len


class RandomIterableDataset(IterableDataset[Tensor]):
    """``count`` fresh standard-normal vectors per pass; no ``__len__``."""

    def __init__(self, size: int, count: int) -> None:
        self.count = count
        self.size = size

    def __iter__(self) -> Iterator[Tensor]:
        return (torch.randn(self.size) for _ in range(self.count))


class RandomIterableDatasetWithLen(RandomIterableDataset):
    """:class:`RandomIterableDataset` that also reports its length."""

    def __len__(self) -> int:
        return self.count


class BoringModel(LightningModule):
    """A ``Linear(32, 2)`` trained toward all-ones outputs with SGD (lr 0.1) and a ``StepLR(step_size=1)``.

    Subclass it and override what your test or bug report is about; every hook has a working default,
    and all four dataloaders serve 64 random 32-vectors.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(32, 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.layer(x)
        return out

    def loss(self, preds: Tensor, labels: Tensor | None = None) -> Tensor:
        target = torch.ones_like(preds) if labels is None else labels
        loss: Tensor = F.mse_loss(preds, target)
        return loss

    def step(self, batch: Any) -> Tensor:
        return self.loss(self(batch))

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return {"loss": self.step(batch)}

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        return {"x": self.step(batch)}

    def test_step(self, batch: Any, batch_idx: int) -> Any:
        return {"y": self.step(batch)}

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)]

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(RandomDataset(32, 64))

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(RandomDataset(32, 64))

    def test_dataloader(self) -> DataLoader[Any]:
        return DataLoader(RandomDataset(32, 64))

    def predict_dataloader(self) -> DataLoader[Any]:
        return DataLoader(RandomDataset(32, 64))


class ManualOptimBoringModel(BoringModel):
    """:class:`BoringModel` with manual optimization: ``zero_grad``, ``manual_backward``, ``step``."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        optimizer = self.optimizers()
        loss = self.step(batch)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return loss


class _StageDataModule(LightningDataModule):
    """One dataset per stage, made in ``setup`` (``random_train``, ``random_val``, ``random_test``,
    ``random_predict``) by the subclass's ``_dataset(split)``; each dataloader wraps its dataset."""

    def _dataset(self, split: str) -> Dataset[Tensor]:
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.random_train = self._dataset("train")
        if stage in ("fit", "validate"):
            self.random_val = self._dataset("val")
        if stage == "test":
            self.random_test = self._dataset("test")
        if stage == "predict":
            self.random_predict = self._dataset("predict")

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.random_train)

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.random_val)

    def test_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.random_test)

    def predict_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.random_predict)


class BoringDataModule(_StageDataModule):
    """256 random 32-vectors split into four disjoint blocks of 64: train, val, test, predict."""

    _BLOCKS: ClassVar[dict[str, int]] = {"train": 0, "val": 1, "test": 2, "predict": 3}

    def __init__(self) -> None:
        super().__init__()
        self.random_full = RandomDataset(32, 64 * 4)

    def _dataset(self, split: str) -> Subset[Tensor]:
        index = self._BLOCKS[split]
        return Subset(self.random_full, indices=range(64 * index, 64 * (index + 1)))


class BoringDataModuleNoLen(_StageDataModule):
    """Iterable random data without ``__len__``: 512 train, 128 val, 256 test, 64 predict samples."""

    _SIZES: ClassVar[dict[str, int]] = {"train": 512, "val": 128, "test": 256, "predict": 64}

    def _dataset(self, split: str) -> RandomIterableDataset:
        return RandomIterableDataset(32, self._SIZES[split])


class IterableBoringDataModule(LightningDataModule):
    """Two dataloaders per stage: a map-style and an iterable dataset of 4-vectors."""

    @staticmethod
    def _pair(length: int) -> list[Dataset[Tensor]]:
        return [RandomDataset(4, length), RandomIterableDataset(4, length)]

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train_datasets = self._pair(16)
        if stage in ("fit", "validate"):
            self.val_datasets = self._pair(32)
        if stage == "test":
            self.test_datasets = self._pair(64)
        if stage == "predict":
            self.predict_datasets = self._pair(128)

    @staticmethod
    def _loaders(datasets: list[Dataset[Tensor]]) -> Any:
        return apply_to_collection(datasets, Dataset, DataLoader)

    def train_dataloader(self) -> Any:
        return self._loaders(self.train_datasets)

    def val_dataloader(self) -> Any:
        return self._loaders(self.val_datasets)

    def test_dataloader(self) -> Any:
        return self._loaders(self.test_datasets)

    def predict_dataloader(self) -> Any:
        return self._loaders(self.predict_datasets)


class DemoModel(LightningModule):
    """``relu(Linear(32, out_dim))`` trained to minimise the sum of its outputs with Adam (no dataloaders)."""

    def __init__(self, out_dim: int = 10, learning_rate: float = 0.02) -> None:
        super().__init__()
        self.l1 = nn.Linear(32, out_dim)
        self.learning_rate = learning_rate

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.l1(x.view(x.size(0), -1)))

    def training_step(self, batch: Any, batch_nb: int) -> Any:
        return self(batch).sum()

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)


class Net(nn.Module):
    """The classic MNIST CNN (two convolutions, dropout, two linear layers, log-softmax over 10 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = self.dropout1(torch.flatten(F.max_pool2d(x, 2), 1))
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)
