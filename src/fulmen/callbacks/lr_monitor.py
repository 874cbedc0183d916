"""Log the learning rate (and optionally momentum and weight decay) of every optimizer.

Key naming follows Lightning so dashboards keep working:

- ``lr-<OptimizerClass>`` per optimizer, or the scheduler config's ``name`` when given;
- ``-1``, ``-2``... appended for further optimizers of the same class;
- ``/pg1``, ``/pg2``... (or the param group's ``"name"``) when an optimizer has several param groups;
- ``-momentum`` / ``-weight_decay`` suffixes for the extra statistics;
- ``log_key_prefix`` (e.g. ``"optim/"``) prepended to every key.

:func:`optimizer_stat_names` computes the names (no Trainer needed); the callback reads
``param_group["lr"]`` (host floats: no device sync) and writes to the loggers with
``step=trainer.run_state.batches_that_stepped``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.optim import Optimizer
from typing_extensions import override

from fulmen.callbacks.callback import Callback
from fulmen.utilities.exceptions import MisconfigurationException, misconfig
from fulmen.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from fulmen.core.module import LightningModule
    from fulmen.trainer.trainer import Trainer


def _unwrap(optimizer: Any) -> Optimizer:
    # LightningOptimizer and similar wrappers keep the torch optimizer in ``.optimizer``.
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, Optimizer) else optimizer


def _duplicate_param_group_names(param_groups: Sequence[dict[str, Any]]) -> set[str]:
    names = [pg.get("name", f"pg{i}") for i, pg in enumerate(param_groups, start=1)]
    return {n for n in names if names.count(n) > 1}


def _param_group_names(base: str, param_groups: Sequence[dict[str, Any]]) -> list[str]:
    if len(param_groups) == 1:
        pg_name = param_groups[0].get("name")
        return [f"{base}/{pg_name}" if pg_name else base]
    return [f"{base}/{pg.get('name', f'pg{i}')}" for i, pg in enumerate(param_groups, start=1)]


def optimizer_stat_names(
    scheduler_configs: Sequence[Any], optimizers: Sequence[Any], prefix: str = ""
) -> list[tuple[Optimizer, str | None, list[str]]]:
    """Name every param group of every optimizer, Lightning-style.

    Optimizers driven by a scheduler come first (in scheduler order), then the remaining
    optimizers. Each entry is ``(optimizer, scheduler_interval_or_None, names_per_param_group)``.

    Args:
        scheduler_configs: objects with ``scheduler`` (having ``.optimizer``), ``name`` and ``interval``.
        optimizers: the trainer's optimizers (wrappers with ``.optimizer`` are unwrapped).
        prefix: prepended to every name.

    Returns:
        The list of entries described above.

    Raises:
        MisconfigurationException: if an optimizer has two param groups with the same ``name``.
    """
    entries: list[tuple[Optimizer, str | None, list[str]]] = []
    seen: list[Optimizer] = []
    type_counts: dict[type, int] = defaultdict(int)

    def add(opt: Optimizer, name: str, count_type: bool, interval: str | None) -> None:
        seen.append(opt)
        if count_type:
            type_counts[type(opt)] += 1
        duplicates = _duplicate_param_group_names(opt.param_groups)
        if duplicates:
            raise MisconfigurationException(
                "LearningRateMonitor: a single optimizer cannot have several param groups with the same "
                "`name`; "
                f"{name} has duplicated param group names {sorted(duplicates)}. Fix: give each param group a "
                "unique 'name'."
            )
        count = type_counts.get(type(opt), 0)
        if count_type and count > 1:
            name = f"{name}-{count - 1}"
        entries.append((opt, interval, _param_group_names(prefix + name, opt.param_groups)))

    for config in scheduler_configs:
        opt = _unwrap(config.scheduler.optimizer)
        named = config.name is not None
        add(opt, config.name if named else f"lr-{type(opt).__name__}", not named, config.interval)
    for raw in optimizers:
        opt = _unwrap(raw)
        if any(opt is s for s in seen):
            continue
        add(opt, f"lr-{type(opt).__name__}", True, None)
    return entries


class LearningRateMonitor(Callback):
    r"""Log the learning rate of each optimizer's param groups during training.

    Args:
        logging_interval: ``"step"`` or ``"epoch"`` logs every optimizer at that interval; ``None``
            logs each scheduled optimizer at its scheduler's ``interval`` (optimizers without a
            scheduler at every step).
        log_momentum: also log the momentum (or Adam's ``beta1``) as ``<name>-momentum``.
        log_weight_decay: also log the weight decay as ``<name>-weight_decay``.
        log_key_prefix: a string prepended to every key, e.g. ``"optim/"``.

    Raises:
        MisconfigurationException: for an invalid ``logging_interval`` or ``log_key_prefix``, or (at
            train start) when the trainer has no logger.

    Example::

        trainer = Trainer(callbacks=[LearningRateMonitor(logging_interval="step")])
    """

    def __init__(
        self,
        logging_interval: str | None = None,
        log_momentum: bool = False,
        log_weight_decay: bool = False,
        log_key_prefix: str | None = None,
    ) -> None:
        super().__init__()
        if logging_interval not in (None, "step", "epoch"):
            raise misconfig(
                "LearningRateMonitor(logging_interval=...)",
                logging_interval,
                "'step', 'epoch' or None",
                "pass 'step' or 'epoch', or None to follow each scheduler's interval",
            )
        if log_key_prefix is not None and not isinstance(log_key_prefix, str):
            raise misconfig(
                "LearningRateMonitor(log_key_prefix=...)",
                log_key_prefix,
                "a string or None",
                "pass e.g. 'optim/'",
            )
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.log_key_prefix = log_key_prefix or ""
        self.lrs: dict[str, list[float]] = {}
        self.last_momentum_values: dict[str, float | None] = {}
        self.last_weight_decay_values: dict[str, float | None] = {}

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.loggers:
            raise MisconfigurationException(
                "Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger. "
                "Fix: pass a logger, e.g. Trainer(logger=CSVLogger('logs')), or remove the callback."
            )
        if self.log_momentum:
            optimizers = [_unwrap(c.scheduler.optimizer) for c in trainer.lr_scheduler_configs] or [
                _unwrap(o) for o in trainer.optimizers
            ]
            if any("momentum" not in o.defaults and "betas" not in o.defaults for o in optimizers):
                rank_zero_warn(
                    "You have set log_momentum=True, but some optimizers do not have momentum. "
                    "This will log a value 0 for the momentum.",
                    category=RuntimeWarning,
                )
        names = [n for _, _, group in self._entries(trainer) for n in group]
        self.lrs = {name: [] for name in names}
        self.last_momentum_values = {f"{name}-momentum": None for name in names}
        self.last_weight_decay_values = {f"{name}-weight_decay": None for name in names}

    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.logging_interval == "epoch" or not self._should_log_now(trainer):
            return
        stats = self._extract_stats(trainer, "step" if self.logging_interval is None else "any")
        self._log(trainer, stats)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.logging_interval == "step":
            return
        stats = self._extract_stats(trainer, "epoch" if self.logging_interval is None else "any")
        self._log(trainer, stats)

    def _should_log_now(self, trainer: Trainer) -> bool:
        # Same cadence as the trainer's own step logging (``log_every_n_steps``).
        every = trainer.log_every_n_steps
        if every <= 0:
            return False  # step logging disabled
        return (trainer.run_state.batches_that_stepped + 1) % every == 0 or bool(trainer.should_stop)

    def _entries(self, trainer: Trainer) -> list[tuple[Optimizer, str | None, list[str]]]:
        return optimizer_stat_names(trainer.lr_scheduler_configs, trainer.optimizers, self.log_key_prefix)

    def _extract_stats(self, trainer: Trainer, interval: str) -> dict[str, float]:
        stats: dict[str, float] = {}
        entries = self._entries(trainer)
        self._remap_keys([n for _, _, names in entries for n in names])
        for opt, sched_interval, names in entries:
            # Optimizers without a scheduler are logged at every interval (Lightning's behaviour).
            if sched_interval is not None and interval not in (sched_interval, "any"):
                continue
            stats.update(self._optimizer_stats(opt, names))
        return stats

    def _remap_keys(self, names: list[str], token: str = "/pg1") -> None:
        # A param group added during training (e.g. by BackboneFinetuning) turns "lr-Adam" into
        # "lr-Adam/pg1": carry the history over so ``self.lrs`` stays one series per group.
        for new in names:
            old = new.replace(token, "")
            if token in new and old in self.lrs and new not in self.lrs:
                self.lrs[new] = self.lrs.pop(old)
            elif new not in self.lrs:
                self.lrs[new] = []

    def _optimizer_stats(self, optimizer: Optimizer, names: list[str]) -> dict[str, float]:
        stats: dict[str, float] = {}
        use_betas = "betas" in optimizer.defaults
        for pg, name in zip(optimizer.param_groups, names, strict=True):
            lr = float(pg["lr"])
            self.lrs.setdefault(name, []).append(lr)
            stats[name] = lr
            if self.log_momentum:
                momentum = float(pg["betas"][0] if use_betas else pg.get("momentum", 0))
                self.last_momentum_values[f"{name}-momentum"] = momentum
                stats[f"{name}-momentum"] = momentum
            if self.log_weight_decay:
                wd = float(pg.get("weight_decay", 0))
                self.last_weight_decay_values[f"{name}-weight_decay"] = wd
                stats[f"{name}-weight_decay"] = wd
        return stats

    @staticmethod
    def _log(trainer: Trainer, stats: dict[str, float]) -> None:
        if not stats:
            return
        # as in Lightning, the values are also monitorable (e.g. ModelCheckpoint(monitor="lr-Adam"))
        device = trainer.strategy.root_device
        trainer.callback_metrics.update({name: torch.tensor(value, device=device) for name, value in stats.items()})
        step = trainer.run_state.batches_that_stepped
        for logger in trainer.loggers:
            logger.log_metrics(stats, step=step)


__all__ = ["LearningRateMonitor", "optimizer_stat_names"]
