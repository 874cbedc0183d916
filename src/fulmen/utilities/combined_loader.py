"""``CombinedLoader``: iterate several loaders together (train) or one after another (evaluation).

The iterables may be nested in dicts, lists and tuples (``{"a": dl, "b": [dl2, dl3]}``): as in Lightning they are
flattened with torch's pytree (``flattened``, in that order, is what ``dataloader_idx`` counts) and every combined
batch has the same nested structure.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from typing import Any

from torch.utils._pytree import tree_flatten, tree_unflatten

from fulmen.utilities.data import has_len
from fulmen.utilities.exceptions import MisconfigurationValueError

_MODES = ("max_size_cycle", "min_size", "max_size", "sequential")


def _is_leaf(obj: Any) -> bool:
    # a container of plain values (``[1, 2, 3]``, ``("a", "b")``) is one iterable, not several: Lightning's rule
    if isinstance(obj, Mapping):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    else:
        return False  # torch's pytree decides (dataloaders, tensors, ... are leaves)
    return all(isinstance(c, (int, float, str)) for c in children)


def flatten_iterables(iterables: Any) -> tuple[list[Any], Any]:
    """The iterables nested in dicts/lists/tuples as a flat list, in order, and the spec to rebuild the structure
    (``torch.utils._pytree.tree_unflatten``)."""
    if _is_leaf(iterables):
        return [iterables], tree_flatten(0)[1]
    leaves, spec = tree_flatten(iterables, is_leaf=_is_leaf)
    return list(leaves), spec


class CombinedLoader:
    """Combine a (nested) dict/list/tuple of iterables.

    Modes: ``max_size_cycle`` (until the longest ends, shorter ones restart), ``min_size`` (until the
    shortest ends), ``max_size`` (until the longest ends, exhausted ones give None) and ``sequential``
    (one after another). As in Lightning, iterating yields ``(batch, batch_idx, dataloader_idx)`` in every
    mode; ``dataloader_idx`` is 0 except in ``sequential`` mode.
    """

    def __init__(self, iterables: Any, mode: str = "min_size") -> None:
        if mode not in _MODES:
            raise MisconfigurationValueError(f"CombinedLoader(mode={mode!r}); expected one of {_MODES}.")
        self.iterables = iterables
        self.mode = mode
        self._limits: list[int | float] | None = None

    @property
    def sampler(self) -> Any:
        """Each iterable's ``sampler`` (None where it has none), in the iterables' structure."""
        flat, spec = flatten_iterables(self.iterables)
        return tree_unflatten([getattr(x, "sampler", None) for x in flat], spec)

    @property
    def batch_sampler(self) -> Any:
        """Each iterable's ``batch_sampler`` (None where it has none), in the iterables' structure."""
        flat, spec = flatten_iterables(self.iterables)
        return tree_unflatten([getattr(x, "batch_sampler", None) for x in flat], spec)

    @property
    def limits(self) -> list[int | float] | None:
        """The most batches taken from each iterable (None: all)."""
        return self._limits

    @limits.setter
    def limits(self, limits: int | float | list[int | float] | None) -> None:
        n = len(self.flattened)
        if isinstance(limits, (int, float)):
            limits = [limits] * n
        elif limits is not None and len(limits) != n:
            raise MisconfigurationValueError(
                f"CombinedLoader.limits: got {len(limits)} limits for {n} iterables. Fix: pass one limit per "
                "iterable (or one number for all)."
            )
        self._limits = None if limits is None else list(limits)

    def reset(self) -> None:
        """Nothing to reset: every ``iter()`` starts fresh iterators (Lightning keeps one and shuts it down here)."""

    def _limited(self, flat: list[Any]) -> list[Any]:
        if self._limits is None:
            return flat
        return [x if limit == math.inf else _Limited(x, int(limit)) for x, limit in zip(flat, self._limits)]

    @property
    def flattened(self) -> list[Any]:
        """The iterables as a flat list (nested dicts/lists/tuples flattened in order)."""
        return flatten_iterables(self.iterables)[0]

    @flattened.setter
    def flattened(self, flattened: list[Any]) -> None:
        """Replace the iterables, keeping the nested structure (e.g. after wrapping each loader)."""
        current, spec = flatten_iterables(self.iterables)
        if len(flattened) != len(current):
            raise MisconfigurationValueError(
                f"CombinedLoader.flattened: got {len(flattened)} iterables to replace {len(current)}. Fix: set as "
                "many as there are."
            )
        self.iterables = tree_unflatten(list(flattened), spec)

    def _lengths(self, limited: bool = True) -> list[float]:
        flat = self._limited(self.flattened) if limited else self.flattened
        return [len(x) if has_len(x) else math.inf for x in flat]

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

    def __iter__(self) -> Iterator[Any]:
        """``(batch, batch_idx, dataloader_idx)`` per step, as Lightning's CombinedLoader yields."""
        if self.mode == "sequential":
            for dl_idx, it in enumerate(self._limited(self.flattened)):
                for batch_idx, batch in enumerate(it):
                    yield batch, batch_idx, dl_idx
            return
        for batch_idx, batch in enumerate(self._iter_batches()):
            yield batch, batch_idx, 0

    def _iter_batches(self) -> Iterator[Any]:
        """The combined batches alone (what the fit loop hands to ``training_step``); not for ``sequential``."""
        # as in Lightning, limits cap len() in every mode but the batches only in sequential mode (the Trainer
        # applies its limit_*_batches itself)
        flat, spec = flatten_iterables(self.iterables)
        iters = [iter(x) for x in flat]
        lengths = self._lengths(limited=False)
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
            yield tree_unflatten(values, spec)
            count += 1


class _Limited:
    """The first ``limit`` items of an iterable (with a length where the iterable has one)."""

    def __init__(self, iterable: Any, limit: int) -> None:
        self.iterable = iterable
        self.limit = limit

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.iterable), self.limit)

    def __len__(self) -> int:
        return min(len(self.iterable), self.limit) if has_len(self.iterable) else self.limit
