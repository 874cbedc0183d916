"""Batch inspection helpers used by logging and the data connector."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch


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
