"""``CombinedLoader``: iterate several loaders together (train) or one after another (evaluation)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from fulmen.utilities.data import has_len
from fulmen.utilities.exceptions import MisconfigurationException

_MODES = ("max_size_cycle", "min_size", "max_size", "sequential")


class CombinedLoader:
    """Combine a list/dict of iterables.

    Modes: ``max_size_cycle`` (until the longest ends, shorter ones restart), ``min_size`` (until the
    shortest ends), ``max_size`` (until the longest ends, exhausted ones give None) and ``sequential``
    (one after another; yields ``(batch, batch_idx, dataloader_idx)``).
    """

    def __init__(self, iterables: Any, mode: str = "max_size_cycle") -> None:
        if mode not in _MODES:
            raise MisconfigurationException(f"CombinedLoader(mode={mode!r}); expected one of {_MODES}.")
        self.iterables = iterables
        self.mode = mode

    @property
    def flattened(self) -> list[Any]:
        it = self.iterables
        if isinstance(it, Mapping):
            return list(it.values())
        if isinstance(it, (list, tuple)):
            return list(it)
        return [it]

    def _lengths(self) -> list[float]:
        return [len(x) if has_len(x) else math.inf for x in self.flattened]

    def __len__(self) -> int:
        lengths = self._lengths()
        if self.mode == "min_size":
            n = min(lengths)
        elif self.mode == "sequential":
            n = sum(lengths)
        else:
            n = max(lengths)
        if n == math.inf:
            raise TypeError("CombinedLoader has no length: an iterable has no length")
        return int(n)

    def _pack(self, values: list[Any]) -> Any:
        if isinstance(self.iterables, Mapping):
            return dict(zip(self.iterables.keys(), values))
        return values

    def __iter__(self) -> Iterator[Any]:
        flat = self.flattened
        if self.mode == "sequential":
            for dl_idx, it in enumerate(flat):
                for batch_idx, batch in enumerate(it):
                    yield batch, batch_idx, dl_idx
            return
        iters = [iter(x) for x in flat]
        lengths = self._lengths()
        if self.mode == "min_size":
            total = min(lengths)
        else:
            total = max(lengths)
        done = [False] * len(iters)
        count = 0
        while total == math.inf or count < total:
            values = []
            for i, it in enumerate(iters):
                try:
                    values.append(next(it))
                except StopIteration:
                    if self.mode == "min_size" or (self.mode == "max_size_cycle" and all(done[j] or j == i for j in range(len(iters))) and total == math.inf):
                        return
                    done[i] = True
                    if self.mode == "max_size":
                        values.append(None)
                        continue
                    iters[i] = iter(flat[i])
                    values.append(next(iters[i]))
            yield self._pack(values)
            count += 1
