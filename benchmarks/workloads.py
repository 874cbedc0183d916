"""The benchmark workloads: a model, an optimizer and the exact batches every contestant sees.

Nothing here imports fulmen or Lightning, so a child process that measures the hand-written loop
(import time, peak memory) carries no framework in it.

Every contestant gets a *fresh* data iterable built from the same seed, and a model built under
``torch.manual_seed(0)``; a run's final weights can therefore be compared bit for bit with the
hand-written loop's (the harness does, as a check that every contestant did the same work).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class Batches:
    """A sized iterable over pre-built ``(x, y)`` batches (not a list: Lightning and fulmen read a list
    of loaders as several dataloaders)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._batches = batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)


@dataclass
class Workload:
    key: str
    title: str
    make_net: Callable[[], nn.Module]
    make_data: Callable[[], Any]  # a fresh iterable of (x, y) batches, the same batches on every call
    epochs: int
    steps: int  # optimizer steps per run (all epochs)
    lr: float = 1e-3
    threads: int = 1
    # validation after every epoch: a fresh iterable of (x, y) batches (None: no validation)
    make_val_data: Callable[[], Any] | None = None
    val_batches: int = 0  # validation batches per epoch

    def make_optimizer(self, params: Any) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.lr)

    @staticmethod
    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y)


def _seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return build()

    return make


def _random_batches(n: int, batch: int, features: int, classes: int) -> Callable[[], Batches]:
    gen = torch.Generator().manual_seed(1234)
    batches = [
        (torch.randn(batch, features, generator=gen), torch.randint(0, classes, (batch,), generator=gen))
        for _ in range(n)
    ]
    return lambda: Batches(batches)


def tiny_mlp(quick: bool) -> Workload:
    steps = 500 if quick else 2000
    return Workload(
        key="tiny",
        title=f"Tiny MLP 32->64->10, batch 32, {steps} steps",
        make_net=_seeded(lambda: nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))),
        make_data=_random_batches(steps, 32, 32, 10),
        epochs=1,
        steps=steps,
    )


def _digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, _, y_train, _ = train_test_split(digits.images, digits.target, test_size=0.2, random_state=0)
    x = torch.tensor(x_train, dtype=torch.float32).unsqueeze(1) / 16.0  # (1437, 1, 8, 8)
    return x, torch.tensor(y_train, dtype=torch.long)


def digits_cnn(quick: bool) -> Workload:
    from torch.utils.data import DataLoader, TensorDataset

    x, y = _digits_tensors()
    dataset = TensorDataset(x, y)
    epochs = 2 if quick else 6
    batch = 32

    def data() -> DataLoader:
        # shuffled, with the loader's own seeded generator: every contestant sees the same order
        return DataLoader(dataset, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))

    per_epoch = -(-len(dataset) // batch)
    return Workload(
        key="digits",
        title=f"Digits CNN (sklearn load_digits, {len(dataset)} train samples), batch {batch}, {epochs} epochs",
        make_net=_seeded(
            lambda: nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
            )
        ),
        make_data=data,
        epochs=epochs,
        steps=per_epoch * epochs,
    )


def wide_mlp(quick: bool) -> Workload:
    steps = 15 if quick else 40
    return Workload(
        key="heavy",
        title=f"Compute-heavy MLP 256->1024->1024->10, batch 128, {steps} steps",
        make_net=_seeded(
            lambda: nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
        ),
        make_data=_random_batches(steps, 128, 256, 10),
        epochs=1,
        steps=steps,
    )


class BatchFetchDataset:
    """A map-style dataset over tensors that fetches a whole batch at once (``__getitems__``, which
    ``DataLoader`` calls with the batch's indices instead of one ``__getitem__`` per sample)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.tensor(indices)
        return self.x[idx], self.y[idx]


def _whole_batch(batch: Any) -> Any:
    """collate_fn for :class:`BatchFetchDataset`: ``__getitems__`` already returns the batch."""
    return batch


def tiny_mlp_val(quick: bool) -> Workload:
    """The shape of an independent measurement (issue 12): tiny MLP, batch 32, 10 epochs x 200 batches, 20
    validation batches after each epoch, plain DataLoaders (the training one shuffled by its own seeded
    generator) over a dataset that implements ``__getitems__``."""
    from torch.utils.data import DataLoader

    epochs, per_epoch, val_batches, batch = (3 if quick else 10), 200, 20, 32
    gen = torch.Generator().manual_seed(1234)
    train = BatchFetchDataset(torch.randn(per_epoch * batch, 32, generator=gen),
                              torch.randint(0, 10, (per_epoch * batch,), generator=gen))
    val = BatchFetchDataset(torch.randn(val_batches * batch, 32, generator=gen),
                            torch.randint(0, 10, (val_batches * batch,), generator=gen))

    def data() -> DataLoader:
        return DataLoader(train, batch_size=batch, shuffle=True, collate_fn=_whole_batch,
                          generator=torch.Generator().manual_seed(0))

    def val_data() -> DataLoader:
        return DataLoader(val, batch_size=batch, collate_fn=_whole_batch)

    return Workload(
        key="tinyval",
        title=f"Tiny MLP 32->64->10 with validation, batch {batch}, {epochs} epochs x {per_epoch} batches "
        f"+ {val_batches} validation batches per epoch",
        make_net=_seeded(lambda: nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))),
        make_data=data,
        epochs=epochs,
        steps=epochs * per_epoch,
        make_val_data=val_data,
        val_batches=val_batches,
    )


WORKLOADS: dict[str, Callable[[bool], Workload]] = {
    "tiny": tiny_mlp, "digits": digits_cnn, "heavy": wide_mlp, "tinyval": tiny_mlp_val,
}
