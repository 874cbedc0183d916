"""Demo models and datasets (mirrors ``lightning.pytorch.demos``).

``BoringModel``/``BoringDataModule`` and the random datasets are for tests and bug reports; ``Transformer``
and ``SimpleLSTM`` are small language models. :class:`WikiText2` reads a local file; :class:`MNIST` reads
Lightning's processed MNIST files and downloads them only when they are missing and ``download=True``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BoringDataModule": "boring_classes",
    "BoringDataModuleNoLen": "boring_classes",
    "BoringModel": "boring_classes",
    "DemoModel": "boring_classes",
    "IterableBoringDataModule": "boring_classes",
    "ManualOptimBoringModel": "boring_classes",
    "Net": "boring_classes",
    "RandomDataset": "boring_classes",
    "RandomDictDataset": "boring_classes",
    "RandomIterableDataset": "boring_classes",
    "RandomIterableDatasetWithLen": "boring_classes",
    "MNIST": "mnist_datamodule",
    "LightningLSTM": "lstm",
    "SequenceSampler": "lstm",
    "SimpleLSTM": "lstm",
    "LightningTransformer": "transformer",
    "PositionalEncoding": "transformer",
    "Transformer": "transformer",
    "WikiText2": "transformer",
}

__all__ = [
    "MNIST",
    "BoringDataModule",
    "BoringDataModuleNoLen",
    "BoringModel",
    "DemoModel",
    "IterableBoringDataModule",
    "LightningLSTM",
    "LightningTransformer",
    "ManualOptimBoringModel",
    "Net",
    "PositionalEncoding",
    "RandomDataset",
    "RandomDictDataset",
    "RandomIterableDataset",
    "RandomIterableDatasetWithLen",
    "SequenceSampler",
    "SimpleLSTM",
    "Transformer",
    "WikiText2",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fulmen.demos' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fulmen.demos.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
