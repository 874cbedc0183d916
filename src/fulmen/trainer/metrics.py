"""The Trainer's view of logged metrics: ``callback_metrics``, ``logged_metrics``, ``progress_bar_metrics``.

Epoch results are kept in plain dicts of device tensors; the live training epoch's step values are
merged in only when someone reads a property, so nothing runs per step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from fulmen.core.results import ResultCollection

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer


def _to_float(value: Any) -> float:
    return value.item() if isinstance(value, torch.Tensor) else float(value)


class MetricsStore:
    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.callback: dict[str, torch.Tensor] = {}
        self.logged: dict[str, Any] = {}
        self.pbar: dict[str, torch.Tensor] = {}
        self.live: ResultCollection | None = None
        # added to batches_that_stepped for the logger step (see ``logging_step_offset``)
        self._step_offset = 0
        # True while on_train_epoch_end runs: callback_metrics then include the epoch's reduced values
        self.epoch_end_reached = False
        # the validation/test run whose on_*_epoch_end hooks are running (its values are final by then)
        self.eval_epoch_end: ResultCollection | None = None

    @contextmanager
    def logging_step_offset(self, offset: int) -> Iterator[None]:
        """Log with ``step = batches_that_stepped + offset`` inside the block.

        The fit loop counts a batch as stepped before it runs in-epoch validation and the epoch end; as in
        Lightning, those values are logged at the step of the batch that just ran (offset -1).
        """
        prev = self._step_offset
        self._step_offset = offset
        try:
            yield
        finally:
            self._step_offset = prev

    def reset(self) -> None:
        self.callback.clear()
        self.logged.clear()
        self.pbar.clear()
        self.live = None

    def reset_after_sanity(self) -> None:
        # the sanity check's values must not reach callbacks or the bar (Lightning resets them too)
        self.callback.clear()
        self.pbar.clear()

    def new_train_epoch(self, results: ResultCollection) -> None:
        self.live = results

    # ---- reading (the Trainer's properties)
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        # One persistent dict, as in Lightning: callbacks that add to it (LearningRateMonitor, user code doing
        # ``trainer.callback_metrics.update(...)``) are seen by later readers, e.g. a monitoring callback.
        out = self.callback
        if self.live is not None:
            out.update(self.live.step_metrics()[0])
            if self.epoch_end_reached:  # inside on_train_epoch_end: the epoch values are final
                out.update(self.live.epoch_metrics()[0])
        if self.eval_epoch_end is not None:  # inside on_validation/test_epoch_end: this run's values, as in Lightning
            out.update(self.eval_epoch_end.step_metrics()[0])
            out.update(self.eval_epoch_end.epoch_metrics()[0])
        return out

    def progress_bar_values(self) -> dict[str, Any]:
        """What ``progress_bar_metrics`` shows, before conversion (device tensors stay on the device)."""
        merged = dict(self.pbar)
        if self.live is not None:
            merged.update(self.live.progress_bar_step_metrics())
        return merged

    def progress_bar_metrics(self) -> dict[str, float]:
        return {k: _to_float(v) for k, v in self.progress_bar_values().items()}

    def logged_metrics(self) -> dict[str, Any]:
        return dict(self.logged)

    # ---- writing
    def log_train_step(self, results: ResultCollection) -> None:
        """Send this step's values to the loggers (called every ``log_every_n_steps``)."""
        metrics = results.step_metrics()[1]
        if metrics:
            self._to_loggers(metrics)

    def log_eval_step(self, results: ResultCollection, dataloader_idx: int | None, step: int) -> None:
        """Send an evaluation batch's ``on_step`` values to the loggers, as Lightning does after each
        validation/test batch: the values of this dataloader (a forked name as ``name_step``), at ``step``
        (the evaluation loop's own batch counter), without an ``epoch`` key. Converted to Python numbers here,
        once per evaluation batch, and only when there are loggers and something was logged on_step."""
        if not self.trainer.loggers:
            return
        metrics = results.step_metrics(dataloader_idx)[1]
        if metrics:
            self._to_loggers(metrics, step=step)

    def epoch_end(self, results: ResultCollection, log: bool, keep: bool = False) -> None:
        """Fold a finished stage's values into the stored dicts and (optionally) send them to loggers.

        ``keep=True`` (an epoch cut short by max_steps/should_stop) leaves the accumulators in place, so a
        resumed run continues the same epoch means.
        """
        step_cb, _, step_pb = results.step_metrics()
        cb, lg, pb = results.epoch_metrics()
        self.callback.update(step_cb)
        self.callback.update(cb)
        self.pbar.update(step_pb)
        self.pbar.update(pb)
        if results is self.live:
            self.live = None
        if log and lg:
            self._to_loggers(lg)
        if not keep:
            results.reset()

    def _to_loggers(self, metrics: dict[str, Any], step: int | None = None) -> None:
        trainer = self.trainer
        if not trainer.loggers:
            return  # nothing to write: no host sync, and logged_metrics stays empty (as in Lightning)
        scalars = {k: _to_float(v) for k, v in metrics.items()}
        self.logged.update(scalars)
        if step is None and "step" in scalars:
            # as in Lightning, a logged "step" value is the logger step (truncated to an int): it is taken out of
            # the metrics and no "epoch" key is added (it stays in logged_metrics). Evaluation batches pass their
            # own step, so there a logged "step" is an ordinary metric.
            step = int(scalars.pop("step"))
        elif step is None:
            scalars.setdefault("epoch", trainer.current_epoch)  # for the loggers only, not logged_metrics
            step = max(0, trainer.run_state.batches_that_stepped + self._step_offset)
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
