"""Batch inspection helpers used by logging and the data connector."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.utils.data import IterableDataset

from fulmen.utilities.parsing import AttributeDict

__all__ = [
    "AttributeDict",
    "extract_batch_size",
    "has_iterable_dataset",
    "has_len",
    "sized_len",
    "suggested_max_num_workers",
]


def _extract_batch_size(batch: Any) -> Iterable[int]:
    if isinstance(batch, torch.Tensor):
        yield 1 if batch.ndim == 0 else batch.size(0)
    elif isinstance(batch, (Iterable, Mapping)) and not isinstance(batch, (str, bytes)):
        items = batch.values() if isinstance(batch, Mapping) else batch
        for sample in items:
            yield from _extract_batch_size(sample)
    else:
        yield 1


def extract_batch_size(batch: Any) -> int:
    """The size of the first dimension of the first tensor found in ``batch``.

    Raises:
        RuntimeError: when no tensor is found; pass ``batch_size=`` to ``self.log`` instead.
    """
    if isinstance(batch, torch.Tensor):  # fast path
        return 1 if batch.ndim == 0 else batch.size(0)
    for size in _extract_batch_size(batch):
        return size
    raise RuntimeError(
        "self.log could not infer the batch size from the batch (no tensor found). "
        "Fix: pass it explicitly, e.g. self.log(..., batch_size=len(batch))."
    )


def has_len(obj: Any) -> bool:
    """Whether ``len(obj)`` works and is finite (IterableDatasets raise TypeError)."""
    try:
        n = len(obj)
    except (TypeError, NotImplementedError):
        return False
    return n is not None


def sized_len(obj: Any) -> int | None:
    """``len(obj)``, or None when ``obj`` has no (finite) length."""
    try:
        return len(obj)
    except (TypeError, NotImplementedError):
        return None


def has_iterable_dataset(dataloader: Any) -> bool:
    """Whether ``dataloader.dataset`` is a ``torch.utils.data.IterableDataset``."""
    return isinstance(getattr(dataloader, "dataset", None), IterableDataset)


def suggested_max_num_workers(local_world_size: int) -> int:
    """An upper bound for ``DataLoader(num_workers=...)``: the CPUs this process may use, shared by the
    ``local_world_size`` processes on this machine, less one for each main process (at least 1).

    Raises:
        ValueError: ``local_world_size`` is below 1.
    """
    if isinstance(local_world_size, bool) or not isinstance(local_world_size, int) or local_world_size < 1:
        raise ValueError(
            f"`local_world_size` should be >= 1, got {local_world_size!r}. Fix: pass the number of devices per machine."
        )
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // local_world_size - 1)
