"""How a step method is called, decided once per run from its signature (Lightning's rules).

- ``training_step(self, batch, batch_idx)`` (any two or more positional parameters, or ``*args``): the loop
  passes the batch and its index; evaluation steps also get ``dataloader_idx`` with several dataloaders.
- ``training_step(self, batch)``: the batch only (and ``dataloader_idx`` where it applies).
- ``training_step(self, dataloader_iter)``: the "dataloader_iter" flavor. The step gets an iterator and pulls
  batches itself: ``batch, batch_idx, dataloader_idx = next(dataloader_iter)``. The batch is not moved to the
  device (the step's job, as in Lightning); a ``StopIteration`` escaping the step ends the epoch (or the
  evaluation of that dataloader); the ``on_*_batch_start`` hooks see the batch fetched last (None at first) and
  ``on_*_batch_end`` the last batch the step fetched.

The signature is inspected once when a loop starts; the common flavor calls the step directly, so nothing is
added per step.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

BATCH_IDX = "batch_idx"
BATCH = "batch"
DATALOADER_ITER = "dataloader_iter"


def step_flavor(fn: Any) -> str:
    """``"batch_idx"``, ``"batch"`` or ``"dataloader_iter"`` for the (bound) step method ``fn``."""
    # a decorated (or profiled) step: the signature of the function it wraps, less ``self`` once a bound method
    # was passed through on the way
    drop_self = False
    while True:
        if inspect.ismethod(fn):
            fn, drop_self = fn.__func__, True
            continue
        wrapped = getattr(fn, "__wrapped__", None)
        if wrapped is None:
            break
        fn = wrapped
    try:
        params = list(inspect.signature(fn, follow_wrapped=False).parameters.values())
    except (TypeError, ValueError):  # not introspectable (a builtin, a C callable): the full call
        return BATCH_IDX
    if drop_self:
        params = params[1:]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = {p.name for p in params}
    if "dataloader_iter" in names:
        return DATALOADER_ITER
    if "batch_idx" in names or any(p.kind == p.VAR_POSITIONAL for p in params) or len(positional) >= 2:
        return BATCH_IDX
    return BATCH


def adapt_step(step: Callable[..., Any], flavor: str) -> Callable[..., Any]:
    """``step`` called the loop's way, ``(batch, batch_idx, *dataloader_idx)``, whatever its flavor."""
    if flavor == BATCH_IDX:
        return step
    if flavor == BATCH:
        def without_batch_idx(batch: Any, batch_idx: int, *extra: Any) -> Any:
            return step(batch, *extra)

        return without_batch_idx

    def with_iterator(iterator: Any, batch_idx: int, *extra: Any) -> Any:
        return step(iterator)

    return with_iterator


_END = object()


class DataLoaderIter(Iterator[tuple[Any, int, int]]):
    """What a ``dataloader_iter`` step receives: ``next()`` gives ``(batch, batch_idx, dataloader_idx)``.

    ``pairs`` yields ``(batch, is_last)``; one pair is fetched ahead so :attr:`done` is known before the step
    runs (Lightning prefetches too). ``batch``/``batch_idx`` are the batch fetched last and its index in the
    epoch (-1 before the first).
    """

    def __init__(self, pairs: Iterator[tuple[Any, bool]], dataloader_idx: int = 0, start: int = 0) -> None:
        self._pairs = pairs
        self.dataloader_idx = dataloader_idx
        self.batch: Any = None
        self.batch_idx = start - 1
        self.fetched = 0
        self._next: Any = next(pairs, _END)

    @property
    def done(self) -> bool:
        """Whether every batch (of this epoch, within the limit) has been fetched."""
        return self._next is _END

    @property
    def next_is_last(self) -> bool:
        """Whether the batch the next ``next()`` hands out is the epoch's last (a step that pulls one batch is the
        epoch's last step: Lightning forces the optimizer step of an accumulation window there)."""
        return self._next is not _END and bool(self._next[1])

    def __next__(self) -> tuple[Any, int, int]:
        pair = self._next
        if pair is _END:
            raise StopIteration
        batch, is_last = pair
        self.batch = batch
        self.batch_idx += 1
        self.fetched += 1
        self._next = _END if is_last else next(self._pairs, _END)
        return batch, self.batch_idx, self.dataloader_idx

    def __iter__(self) -> DataLoaderIter:
        return self


def limited_pairs(loader: Any, limit: int | float) -> Iterator[tuple[Any, bool]]:
    """``(batch, is_last)`` of an evaluation loader under its batch limit (is_last only at the limit)."""
    for n, batch in enumerate(loader, 1):
        at_limit = limit != math.inf and n >= limit
        yield batch, at_limit
        if at_limit:
            return
