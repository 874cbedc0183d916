"""Track the time spent in training, validation and testing, and stop training after a duration.

:func:`parse_duration` turns the accepted duration forms into seconds (no Trainer needed). The
:class:`Timer` callback records start/end times per stage with ``time.monotonic`` (no host-device
sync) and, when a duration is set, asks the trainer to stop once it has elapsed. The elapsed
training time is saved in checkpoints, so a resumed run continues the same budget.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from fulmen.callbacks.callback import Callback
from fulmen.utilities.exceptions import MisconfigurationException, misconfig
from fulmen.utilities.rank_zero import rank_zero_info

if TYPE_CHECKING:
    from fulmen.core.module import LightningModule
    from fulmen.trainer.trainer import Trainer

log = logging.getLogger(__name__)

# The ``RunningStage`` values (fulmen.trainer.states); strings here because callbacks sit below the trainer.
_STAGES = ("train", "sanity_check", "validate", "test", "predict")
_INTERVALS = ("step", "epoch")
_DURATION_RE = re.compile(r"(\d+):(\d\d):(\d\d):(\d\d)")


def parse_duration(
    duration: str | timedelta | dict[str, int] | None, what: str = "Timer(duration=...)"
) -> float | None:
    """Convert a duration to seconds.

    Args:
        duration: ``"DD:HH:MM:SS"`` (days may have more than two digits), a :class:`~datetime.timedelta`,
            a dict of :class:`~datetime.timedelta` keyword arguments (``{"hours": 1}``) or ``None``.
        what: how to name the argument in an error message.

    Returns:
        The number of seconds, or ``None`` for ``None``.

    Raises:
        MisconfigurationException: for a malformed string, a bad dict or an unsupported type.
    """
    if duration is None:
        return None
    if isinstance(duration, str):
        match = _DURATION_RE.fullmatch(duration.strip())
        if not match:
            raise misconfig(what, duration, "a string 'DD:HH:MM:SS'", "pass e.g. '00:12:00:00' for 12 hours")
        days, hours, minutes, seconds = (int(g) for g in match.groups())
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()
    if isinstance(duration, dict):
        try:
            return timedelta(**duration).total_seconds()
        except TypeError as err:
            raise misconfig(
                what,
                duration,
                "a dict of datetime.timedelta arguments (days, hours, minutes, seconds, ...)",
                "pass e.g. {'hours': 1, 'minutes': 30}",
            ) from err
    if isinstance(duration, timedelta):
        return duration.total_seconds()
    raise misconfig(
        what, duration, "a 'DD:HH:MM:SS' string, a timedelta, a dict or None", "pass e.g. '00:01:00:00'"
    )


def _stage_value(stage: Any) -> str:
    value = getattr(stage, "value", stage)
    if value not in _STAGES:
        raise misconfig(
            "Timer stage", stage, f"one of {list(_STAGES)}", "pass e.g. 'train' or RunningStage.TRAINING"
        )
    return str(value)


class Timer(Callback):
    """Measure the time spent per stage and stop training when ``duration`` has elapsed.

    Args:
        duration: the training time budget: ``"DD:HH:MM:SS"``, a :class:`~datetime.timedelta`, a dict of
            timedelta arguments, or ``None`` to only measure time.
        interval: check the budget after every training ``"step"`` or every training ``"epoch"``.
        verbose: log when the time limit is reached.

    Raises:
        MisconfigurationException: for a malformed ``duration`` or an unknown ``interval``.

    Example::

        timer = Timer(duration="00:12:00:00")  # stop after 12 hours
        trainer = Trainer(callbacks=[timer])
        trainer.fit(model)
        timer.time_elapsed("train"); timer.time_elapsed("validate")
    """

    def __init__(
        self,
        duration: str | timedelta | dict[str, int] | None = None,
        interval: str = "step",
        verbose: bool = True,
    ) -> None:
        super().__init__()
        interval_value = getattr(interval, "value", interval)
        if interval_value not in _INTERVALS:
            # Lightning's wording first (programs match on it), then fulmen's fix
            raise MisconfigurationException(
                f"Unsupported parameter value `Timer(interval={interval})`. Possible choices are: epoch, step. "
                "Fix: pass interval='step' or 'epoch'."
            )
        self._duration = parse_duration(duration)
        self._interval = str(interval_value)
        self._verbose = verbose
        self._start_time: dict[str, float | None] = dict.fromkeys(_STAGES)
        self._end_time: dict[str, float | None] = dict.fromkeys(_STAGES)
        self._offset = 0.0

    @property
    def duration(self) -> float | None:
        """The time budget in seconds (``None``: unlimited)."""
        return self._duration

    def start_time(self, stage: str = "train") -> float | None:
        """The ``time.monotonic()`` value when ``stage`` started, or ``None`` if it has not started."""
        return self._start_time[_stage_value(stage)]

    def end_time(self, stage: str = "train") -> float | None:
        """The ``time.monotonic()`` value when ``stage`` ended, or ``None`` if it has not ended."""
        return self._end_time[_stage_value(stage)]

    def time_elapsed(self, stage: str = "train") -> float:
        """Seconds spent in ``stage`` (training time includes the time restored from a checkpoint)."""
        key = _stage_value(stage)
        start, end = self._start_time[key], self._end_time[key]
        offset = self._offset if key == "train" else 0.0
        if start is None:
            return offset
        if end is None:
            return time.monotonic() - start + offset
        return end - start + offset

    def time_remaining(self, stage: str = "train") -> float | None:
        """Seconds left in the budget (negative when exceeded), or ``None`` without a duration."""
        if self._duration is None:
            return None
        return self._duration - self.time_elapsed(stage)

    # ---- stage boundaries ----------------------------------------------------------------------

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start_time["train"] = time.monotonic()
        self._end_time["train"] = None

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end_time["train"] = time.monotonic()

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start_time["validate"] = time.monotonic()
        self._end_time["validate"] = None

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end_time["validate"] = time.monotonic()

    @override
    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start_time["test"] = time.monotonic()
        self._end_time["test"] = None

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end_time["test"] = time.monotonic()

    # ---- budget checks -------------------------------------------------------------------------

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A restored budget may already be spent: check before the first step.
        if self._duration is not None:
            self._check_time_remaining(trainer)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._interval != "step" or self._duration is None:
            return
        self._check_time_remaining(trainer)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._interval != "epoch" or self._duration is None:
            return
        self._check_time_remaining(trainer)

    def _check_time_remaining(self, trainer: Trainer) -> None:
        assert self._duration is not None
        should_stop = self.time_elapsed() >= self._duration
        # Clocks differ per rank: rank 0 decides for everyone, so every rank stops at the same step.
        should_stop = bool(trainer.strategy.broadcast(should_stop))
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop and self._verbose:
            elapsed = timedelta(seconds=int(self.time_elapsed("train")))
            rank_zero_info(f"Time limit reached. Elapsed time is {elapsed}. Signaling Trainer to stop.")

    # ---- state ---------------------------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"time_elapsed": {stage: self.time_elapsed(stage) for stage in _STAGES}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        elapsed = state_dict.get("time_elapsed", {})
        self._offset = float(elapsed.get("train", 0.0))


__all__ = ["Timer", "parse_duration"]
