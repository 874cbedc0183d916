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


class _IndexRecordingBatchSampler:
    """Wraps a batch sampler and keeps the indices of every batch it yields, in order.

    The sampler runs in the main process even with workers (and ahead of the consumer when they prefetch), so the
    indices of batch ``i`` are ``seen[i]`` whatever the prefetching.
    """

    def __init__(self, batch_sampler: Any) -> None:
        self.batch_sampler = batch_sampler
        self.seen: list[list[Any]] = []

    def __iter__(self) -> Any:
        self.seen = []
        for indices in self.batch_sampler:
            self.seen.append(list(indices))
            yield indices

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __getattr__(self, name: str) -> Any:  # batch_size, drop_last, sampler, ... of the wrapped sampler
        if name == "batch_sampler":
            raise AttributeError(name)
        return getattr(self.batch_sampler, name)


def record_batch_indices(loader: Any) -> tuple[Any, _IndexRecordingBatchSampler | None]:
    """A copy of ``loader`` whose batch sampler records each batch's dataset indices (what
    ``BasePredictionWriter`` receives as ``batch_indices``), and the recorder; ``(loader, None)`` when the loader
    has no batch sampler (an ``IterableDataset``, ``batch_size=None``, not a ``DataLoader``) or its class cannot
    be re-created with one."""
    from torch.utils.data import DataLoader

    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader, None
    if loader.batch_sampler is None:
        return loader, None
    from fulmen.utilities.distributed import _loader_init_kwargs

    recorder = _IndexRecordingBatchSampler(loader.batch_sampler)
    kwargs = _loader_init_kwargs(loader)
    kwargs["batch_sampler"] = recorder
    try:
        return type(loader)(loader.dataset, **kwargs), recorder
    except (TypeError, ValueError):  # a DataLoader subclass with its own __init__: no indices, as before
        return loader, None
