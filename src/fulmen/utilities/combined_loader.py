"""``CombinedLoader``: iterate several loaders together (train) or one after another (evaluation).

The iterables may be nested in dicts, lists and tuples (``{"a": dl, "b": [dl2, dl3]}``): as in Lightning they are
flattened with torch's pytree (``flattened``, in that order, is what ``dataloader_idx`` counts) and every combined
batch has the same nested structure.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from torch.utils._pytree import tree_flatten, tree_unflatten

from fulmen.utilities.data import has_len
from fulmen.utilities.exceptions import MisconfigurationException

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
            raise MisconfigurationException(f"CombinedLoader(mode={mode!r}); expected one of {_MODES}.")
        self.iterables = iterables
        self.mode = mode

    @property
    def flattened(self) -> list[Any]:
        """The iterables as a flat list (nested dicts/lists/tuples flattened in order)."""
        return flatten_iterables(self.iterables)[0]

    @flattened.setter
    def flattened(self, flattened: list[Any]) -> None:
        """Replace the iterables, keeping the nested structure (e.g. after wrapping each loader)."""
        spec = flatten_iterables(self.iterables)[1]
        self.iterables = tree_unflatten(list(flattened), spec)

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

    def __iter__(self) -> Iterator[Any]:
        """``(batch, batch_idx, dataloader_idx)`` per step, as Lightning's CombinedLoader yields."""
        if self.mode == "sequential":
            for dl_idx, it in enumerate(self.flattened):
                for batch_idx, batch in enumerate(it):
                    yield batch, batch_idx, dl_idx
            return
        for batch_idx, batch in enumerate(self._iter_batches()):
            yield batch, batch_idx, 0

    def _iter_batches(self) -> Iterator[Any]:
        """The combined batches alone (what the fit loop hands to ``training_step``); not for ``sequential``."""
        flat, spec = flatten_iterables(self.iterables)
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
            yield tree_unflatten(values, spec)
            count += 1
