"""Storage behind ``self.log``: values stay on the device and are reduced lazily.

Per logged call the cost is a few tensor ops on the device (no ``.item()``, no sync). Host numbers
are produced only when a consumer asks: the progress bar at its refresh rate, a logger every
``log_every_n_steps``, or a callback reading ``trainer.callback_metrics`` (which returns tensors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fulmen.utilities.data import extract_batch_size
from fulmen.utilities.exceptions import MisconfigurationException

_REDUCE_FX = {"mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min"}
# the callables Lightning accepts as reduce_fx: torch's reductions and Python's built-in max/min/sum
_REDUCE_CALLABLES = (
    ("mean", torch.mean),
    ("sum", torch.sum),
    ("max", torch.max),
    ("min", torch.min),
    ("max", max),
    ("min", min),
    ("sum", sum),
)


def _is_torchmetric(value: Any) -> bool:
    if isinstance(value, torch.Tensor):  # what is logged almost always: no MRO walk
        return False
    cls = type(value)
    return any(base.__module__.startswith("torchmetrics") and base.__name__ == "Metric" for base in cls.__mro__)


@dataclass
class _Meta:
    fx: str
    name: str
    prog_bar: bool
    logger: bool
    on_step: bool
    on_epoch: bool
    reduce_fx: str
    enable_graph: bool
    sync_dist: bool
    sync_dist_group: Any
    dataloader_idx: int | None
    rank_zero_only: bool

    def __post_init__(self) -> None:
        # the names the readers use, built once (not fields: they stay out of state_dict); as in Lightning, the
        # _step/_epoch fork goes before a dataloader suffix: "loss_step/dataloader_idx_1"
        base, suffix = self.name, ""
        if self.dataloader_idx is not None:
            dl_suffix = f"/dataloader_idx_{self.dataloader_idx}"
            if base.endswith(dl_suffix):
                base, suffix = base[: -len(dl_suffix)], dl_suffix
        self.step_key = f"{base}_step{suffix}" if self.forked else self.name
        self.epoch_key = f"{base}_epoch{suffix}" if self.forked else self.name

    @property
    def forked(self) -> bool:
        return self.on_step and self.on_epoch


class _Metric:
    """One logged key: its last step value and its epoch accumulator."""

    __slots__ = ("acc", "count", "has_step", "last", "meta", "metric_obj", "weight")

    def __init__(self, meta: _Meta) -> None:
        self.meta = meta
        self.last: torch.Tensor | None = None
        self.acc: torch.Tensor | None = None
        self.weight: float = 0.0
        self.count = 0
        self.metric_obj: Any = None
        self.has_step = False

    def update(self, value: torch.Tensor, batch_size: int) -> None:
        self.last = value
        self.has_step = True
        self.count += 1
        if not self.meta.on_epoch:
            return
        fx = self.meta.reduce_fx
        if fx == "mean":
            v = value.to(torch.float64 if value.dtype == torch.float64 else torch.float32) * batch_size
            self.acc = v if self.acc is None else self.acc + v
            self.weight += batch_size
        elif fx == "sum":
            self.acc = value if self.acc is None else self.acc + value
        elif fx == "max":
            self.acc = value if self.acc is None else torch.maximum(self.acc, value)
        else:
            self.acc = value if self.acc is None else torch.minimum(self.acc, value)

    def epoch_value(self, reduce: Callable[[torch.Tensor, str], torch.Tensor] | None) -> torch.Tensor | None:
        if self.metric_obj is not None:
            computed: torch.Tensor = self.metric_obj.compute()  # a torchmetrics Metric (untyped here)
            return computed
        if self.acc is None:
            return None
        value = self.acc
        if reduce is not None and self.meta.sync_dist:
            if self.meta.reduce_fx == "mean":
                total = reduce(torch.stack([value.float(), torch.tensor(self.weight, device=value.device)]), "sum")
                return total[0] / total[1]
            value = reduce(value, self.meta.reduce_fx)
            return value
        if self.meta.reduce_fx == "mean":
            return value / self.weight
        return value

    def step_value(self, reduce: Callable[[torch.Tensor, str], torch.Tensor] | None) -> torch.Tensor | None:
        if self.metric_obj is not None:
            return getattr(self.metric_obj, "_forward_cache", None)
        return self.last  # a sync_dist value was reduced when it was logged


class ResultCollection:
    """All metrics logged during one stage run (a training epoch, a validation run, ...)."""

    def __init__(self, training: bool) -> None:
        self.training = training
        self.metrics: dict[str, _Metric] = {}
        self.batch: Any = None
        self._batch_size: int | None = None
        self.dataloader_idx: int | None = None
        self.device: torch.device | None = None
        # Set by the strategy when world_size > 1; ``None`` means no cross-process reduction.
        self.reduce: Callable[[torch.Tensor, str], torch.Tensor] | None = None

    def set_batch(self, batch: Any, dataloader_idx: int | None = None) -> None:
        self.batch = batch
        self._batch_size = None
        self.dataloader_idx = dataloader_idx

    def _current_batch_size(self) -> int:
        if self._batch_size is None:
            self._batch_size = extract_batch_size(self.batch) if self.batch is not None else 1
        return self._batch_size

    def log(
        self,
        fx: str,
        name: str,
        value: Any,
        *,
        prog_bar: bool,
        logger: bool,
        on_step: bool,
        on_epoch: bool,
        reduce_fx: str,
        enable_graph: bool,
        sync_dist: bool,
        sync_dist_group: Any,
        add_dataloader_idx: bool,
        batch_size: int | None,
        rank_zero_only: bool,
        multiple_dataloaders: bool,
    ) -> None:
        # the loader a value belongs to (it decides which per-dataloader result holds it) and the name suffix
        dl_idx = self.dataloader_idx if multiple_dataloaders else None
        suffix_idx = dl_idx if add_dataloader_idx else None
        key_name = f"{name}/dataloader_idx_{suffix_idx}" if suffix_idx is not None else name
        key = f"{fx}.{key_name}"
        metric = self.metrics.get(key)
        if metric is None:
            # As in Lightning, one name logged from two hooks (training_step and on_train_epoch_end) is two entries:
            # readers walk them in logging order, so the hook that logged it first is overridden by the later one
            meta = _Meta(
                fx=fx,
                name=key_name,
                prog_bar=prog_bar,
                logger=logger,
                on_step=on_step,
                on_epoch=on_epoch,
                reduce_fx=reduce_fx,
                enable_graph=enable_graph,
                sync_dist=sync_dist,
                sync_dist_group=sync_dist_group,
                dataloader_idx=dl_idx,
                rank_zero_only=rank_zero_only,
            )
            metric = _Metric(meta)
            self.metrics[key] = metric
        elif metric.meta.dataloader_idx != dl_idx:
            raise MisconfigurationException(
                f"self.log({name!r}, ..., add_dataloader_idx=False) in {fx!r} was called for dataloader {dl_idx} "
                f"after dataloader {metric.meta.dataloader_idx}, so their values would be mixed. Fix: log a "
                f"distinct name per dataloader (e.g. f'{name}_{{dataloader_idx}}') or keep add_dataloader_idx=True."
            )
        elif metric.meta.on_step != on_step or metric.meta.on_epoch != on_epoch or metric.meta.reduce_fx != reduce_fx:
            raise MisconfigurationException(
                f"self.log({name!r}, ...) in {fx!r} was called with different on_step/on_epoch/reduce_fx arguments "
                f"than before (had on_step={metric.meta.on_step}, on_epoch={metric.meta.on_epoch}, "
                f"reduce_fx={metric.meta.reduce_fx!r}). Fix: use the same arguments every time for one name."
            )
        if _is_torchmetric(value):
            metric.metric_obj = value
            metric.has_step = True
            return
        if batch_size is None and on_epoch and reduce_fx == "mean":
            batch_size = self._current_batch_size()
        metric.update(value, batch_size or 1)
        if self.reduce is not None and sync_dist and on_step:
            # reduced now, on every rank at the same point: a lazy reduce at read time would run only on the
            # ranks that read it (the progress bar reads on rank 0 only) and mismatch the collectives
            metric.last = self.reduce(value, metric.meta.reduce_fx)

    # ---- checkpointing (exact mid-epoch resume) ----
    def state_dict(self) -> dict[str, Any]:
        """The accumulated values as tensors and builtins (torchmetrics objects are not included)."""
        out: dict[str, Any] = {}
        for key, m in self.metrics.items():
            if m.metric_obj is not None:
                continue
            meta = {f: getattr(m.meta, f) for f in m.meta.__dataclass_fields__ if f != "sync_dist_group"}
            out[key] = {"meta": meta, "last": m.last, "acc": m.acc, "weight": m.weight, "count": m.count}
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, entry in state.items():
            m = _Metric(_Meta(sync_dist_group=None, **entry["meta"]))
            m.last, m.acc, m.weight, m.count = (
                entry["last"],
                entry["acc"],
                float(entry["weight"]),
                int(entry["count"]),
            )
            m.has_step = m.last is not None
            self.metrics[key] = m

    # ---- reading ----
    def step_metrics(
        self, dataloader_idx: int | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(callback, logger, progress bar) step values, with Lightning's ``_step`` naming.

        With ``dataloader_idx``, only the values logged for that evaluation dataloader. As in Lightning, only a
        training collection gives step values to ``callback_metrics``: a validation/test run's callback values
        are its epoch-level ones alone (no ``*_step`` keys, no ``on_step``-only names)."""
        cb: dict[str, torch.Tensor] = {}
        to_callbacks = self.training
        lg: dict[str, torch.Tensor] = {}
        pb: dict[str, torch.Tensor] = {}
        for m in self.metrics.values():
            meta = m.meta
            if not meta.on_step:
                continue
            if dataloader_idx is not None and meta.dataloader_idx != dataloader_idx:
                continue
            value = m.step_value(self.reduce)
            if value is None:
                continue
            forked = meta.step_key
            if to_callbacks and not meta.rank_zero_only:
                cb[forked] = value
                cb[meta.name] = value
            if meta.logger:
                lg[forked] = value
            if meta.prog_bar:
                pb[forked] = value
        return cb, lg, pb

    def progress_bar_step_metrics(self) -> dict[str, torch.Tensor]:
        """The progress-bar part of :meth:`step_metrics` alone (what the bar reads at each refresh)."""
        pb: dict[str, torch.Tensor] = {}
        for m in self.metrics.values():
            meta = m.meta
            if meta.on_step and meta.prog_bar:
                value = m.step_value(self.reduce)
                if value is not None:
                    pb[meta.step_key] = value
        return pb

    def epoch_metrics(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        cb: dict[str, torch.Tensor] = {}
        lg: dict[str, torch.Tensor] = {}
        pb: dict[str, torch.Tensor] = {}
        for m in self.metrics.values():
            meta = m.meta
            if not meta.on_epoch:
                continue
            value = m.epoch_value(self.reduce)
            if value is None:
                continue
            forked = meta.epoch_key
            if not meta.rank_zero_only:
                cb[forked] = value
                cb[meta.name] = value
            if meta.logger:
                lg[forked] = value
            if meta.prog_bar:
                pb[forked] = value
        return cb, lg, pb

    def reset_step(self) -> None:
        for m in self.metrics.values():
            m.has_step = False

    def reset(self) -> None:
        for m in self.metrics.values():
            if m.metric_obj is not None:
                m.metric_obj.reset()
        self.metrics.clear()
        self.batch = None
        self._batch_size = None


def normalize_reduce_fx(reduce_fx: Any, name: str) -> str:
    if reduce_fx.__class__ is str and reduce_fx in _REDUCE_FX:  # "mean", the default, without lower()
        return _REDUCE_FX[reduce_fx]
    if callable(reduce_fx):
        for key, fn in _REDUCE_CALLABLES:
            if reduce_fx is fn:
                return key
    if isinstance(reduce_fx, str) and reduce_fx.lower() in _REDUCE_FX:
        return _REDUCE_FX[reduce_fx.lower()]
    raise MisconfigurationException(
        f"self.log({name!r}, ..., reduce_fx={reduce_fx!r}): only 'mean' (or 'avg'), 'sum', 'min' and 'max' are "
        "supported. Fix: pass one of these, or compute the custom reduction yourself and log its result."
    )
