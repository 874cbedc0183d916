"""Early stopping: stop training when a monitored metric stops improving.

The decision itself is the plain function :func:`evaluate_stopping_criteria` (no Trainer needed); the
:class:`EarlyStopping` callback reads the metric from ``trainer.callback_metrics``, calls it, keeps the
state that survives a resume (``wait_count``, ``best_score``, ...) and turns the verdict into a
collective ``trainer.should_stop`` (if any rank decides to stop, every rank stops).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from typing_extensions import override

from fulmen.callbacks.callback import Callback
from fulmen.utilities.exceptions import misconfig
from fulmen.utilities.rank_zero import rank_prefixed_message, rank_zero_warn

if TYPE_CHECKING:
    from fulmen.core.module import LightningModule
    from fulmen.trainer.trainer import Trainer

log = logging.getLogger(__name__)

_MONITOR_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "min": torch.lt,
    "max": torch.gt,
}
_ORDER = {"min": "<", "max": ">"}


class EarlyStoppingReason(str, Enum):
    """Why :class:`EarlyStopping` stopped (or did not stop) the run."""

    NOT_STOPPED = "not_stopped"
    STOPPING_THRESHOLD = "stopping_threshold"
    DIVERGENCE_THRESHOLD = "divergence_threshold"
    PATIENCE_EXHAUSTED = "patience_exhausted"
    NON_FINITE_METRIC = "non_finite_metric"


@dataclass(frozen=True)
class StoppingDecision:
    """The outcome of one early-stopping check.

    Attributes:
        should_stop: whether this check asks training to stop.
        reason: the stopping reason (``NOT_STOPPED`` when training continues).
        message: a human-readable explanation, or ``None`` when nothing noteworthy happened.
        best_score: the best score after this check.
        wait_count: checks without improvement after this check.
        improved: whether ``current`` became the new best score.
    """

    should_stop: bool
    reason: EarlyStoppingReason
    message: str | None
    best_score: torch.Tensor
    wait_count: int
    improved: bool


def _fmt(value: torch.Tensor | float) -> str:
    return f"{float(value):.3f}"


def evaluate_stopping_criteria(
    current: torch.Tensor,
    best_score: torch.Tensor,
    wait_count: int,
    *,
    monitor: str,
    mode: str = "min",
    patience: int = 3,
    min_delta: float = 0.0,
    check_finite: bool = True,
    stopping_threshold: float | None = None,
    divergence_threshold: float | None = None,
) -> StoppingDecision:
    """Decide whether training should stop, given a new value of the monitored metric.

    The checks run in Lightning's order: non-finite value, stopping threshold, divergence threshold,
    improvement (by more than ``min_delta``), then patience.

    Args:
        current: the new value of the monitored metric (a scalar tensor).
        best_score: the best value seen so far (``+inf`` for ``mode="min"`` before the first check).
        wait_count: the number of checks without improvement so far.
        monitor: the metric's name, used in the messages.
        mode: ``"min"`` if lower is better, ``"max"`` if higher is better.
        patience: checks without improvement after which training stops.
        min_delta: the smallest change that counts as an improvement (its sign is ignored).
        check_finite: stop when ``current`` is NaN or infinite.
        stopping_threshold: stop as soon as the metric is better than this value.
        divergence_threshold: stop as soon as the metric is worse than this value.

    Returns:
        The :class:`StoppingDecision`; the caller stores ``best_score`` and ``wait_count`` from it.

    Raises:
        MisconfigurationException: if ``mode`` is not ``"min"`` or ``"max"``.
    """
    if mode not in _MONITOR_OPS:
        raise misconfig(
            "evaluate_stopping_criteria(mode=...)", mode, "'min' or 'max'", "pass mode='min' or mode='max'"
        )
    op = _MONITOR_OPS[mode]
    current = current.detach().squeeze()
    best_score = best_score.to(current.device)
    # ``min_delta`` always means "better by at least this much": subtract it for min, add it for max.
    signed_delta = -abs(min_delta) if mode == "min" else abs(min_delta)

    if check_finite and not bool(torch.isfinite(current)):
        msg = (
            f"Monitored metric {monitor} = {float(current)} is not finite."
            f" Previous best value was {_fmt(best_score)}. Signaling Trainer to stop."
        )
        return StoppingDecision(
            True, EarlyStoppingReason.NON_FINITE_METRIC, msg, best_score, wait_count, False
        )
    if stopping_threshold is not None and bool(op(current, torch.tensor(stopping_threshold))):
        msg = (
            f"Stopping threshold reached: {monitor} = {float(current)} {_ORDER[mode]} {stopping_threshold}."
            " Signaling Trainer to stop."
        )
        return StoppingDecision(
            True, EarlyStoppingReason.STOPPING_THRESHOLD, msg, best_score, wait_count, False
        )
    if divergence_threshold is not None and bool(op(-current, torch.tensor(-divergence_threshold))):
        msg = (
            f"Divergence threshold reached: {monitor} = {float(current)} {_ORDER[mode]} "
            f"{divergence_threshold}."
            " Signaling Trainer to stop."
        )
        return StoppingDecision(
            True, EarlyStoppingReason.DIVERGENCE_THRESHOLD, msg, best_score, wait_count, False
        )
    if bool(op(current - signed_delta, best_score)):
        if bool(torch.isfinite(best_score)):
            msg = (
                f"Metric {monitor} improved by {float((best_score - current).abs()):.3f} >="
                f" min_delta = {abs(min_delta)}. New best score: {_fmt(current)}"
            )
        else:
            msg = f"Metric {monitor} improved. New best score: {_fmt(current)}"
        return StoppingDecision(False, EarlyStoppingReason.NOT_STOPPED, msg, current, 0, True)
    wait_count += 1
    if wait_count >= patience:
        msg = (
            f"Monitored metric {monitor} did not improve in the last {wait_count} records."
            f" Best score: {_fmt(best_score)}. Signaling Trainer to stop."
        )
        return StoppingDecision(
            True, EarlyStoppingReason.PATIENCE_EXHAUSTED, msg, best_score, wait_count, False
        )
    return StoppingDecision(False, EarlyStoppingReason.NOT_STOPPED, None, best_score, wait_count, False)


class EarlyStopping(Callback):
    r"""Stop training when a monitored metric has stopped improving.

    By default the check runs at the end of every training epoch if validation runs once per epoch
    at its end (``val_check_interval=1.0`` and ``check_val_every_n_epoch=1``), otherwise at the end
    of every validation run. Checks are skipped during the sanity check and outside ``fit``.

    Args:
        monitor: the key in ``trainer.callback_metrics`` to monitor.
        min_delta: the smallest change of the monitored value that counts as an improvement.
        patience: the number of checks with no improvement after which training stops. With the
            default ``check_val_every_n_epoch=1`` a check happens once per epoch.
        verbose: log every improvement and the stopping reason.
        mode: ``"min"`` stops when the value stops decreasing, ``"max"`` when it stops increasing.
        strict: raise if ``monitor`` is missing from the metrics; otherwise warn (if verbose) and skip.
        check_finite: stop when the monitored value becomes NaN or infinite.
        stopping_threshold: stop as soon as the monitored value is better than this threshold.
        divergence_threshold: stop as soon as the monitored value is worse than this threshold.
        check_on_train_epoch_end: run the check at the end of the training epoch (``True``) or
            after validation (``False``); ``None`` decides from the validation schedule.
        log_rank_zero_only: when verbose, log only on global rank 0.

    Raises:
        MisconfigurationException: for an invalid ``mode``, a negative ``patience`` or a non-numeric
            threshold.

    Example::

        trainer = Trainer(callbacks=[EarlyStopping(monitor="val_loss", patience=3)])
    """

    mode_dict: ClassVar[dict[str, Any]] = {"min": torch.lt, "max": torch.gt}
    order_dict = _ORDER

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise misconfig(
                "EarlyStopping(monitor=...)",
                monitor,
                "the non-empty name of a logged metric",
                "pass the key you log with self.log, e.g. EarlyStopping(monitor='val_loss')",
            )
        if mode not in self.mode_dict:
            raise misconfig(
                "EarlyStopping(mode=...)",
                mode,
                "'min' or 'max'",
                "use mode='min' for losses and mode='max' for accuracies",
            )
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise misconfig("EarlyStopping(patience=...)", patience, "an int >= 0", "pass e.g. patience=3")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or math.isnan(min_delta):
            raise misconfig("EarlyStopping(min_delta=...)", min_delta, "a number", "pass e.g. min_delta=0.0")
        for name, value in (
            ("stopping_threshold", stopping_threshold),
            ("divergence_threshold", divergence_threshold),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise misconfig(
                    f"EarlyStopping({name}=...)", value, "a number or None", f"pass {name}=None or a float"
                )
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.verbose = verbose
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.log_rank_zero_only = log_rank_zero_only
        self._check_on_train_epoch_end = check_on_train_epoch_end
        # Stored signed like Lightning (negative for "min"), so that
        # ``monitor_op(current - min_delta, best)`` reads right.
        self.min_delta = float(min_delta) * (1 if mode == "max" else -1)
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = torch.tensor(math.inf if mode == "min" else -math.inf)
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message: str | None = None

    @property
    def monitor_op(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``torch.lt`` for ``mode="min"``, ``torch.gt`` for ``mode="max"``."""
        return self.mode_dict[self.mode]

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._check_on_train_epoch_end is None:
            # Validation once per epoch at its end: checking at train-epoch end sees the val metrics too.
            self._check_on_train_epoch_end = (
                trainer.val_check_interval == 1.0 and trainer.check_val_every_n_epoch == 1
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score,
            "patience": self.patience,
            "stopping_reason": self.stopping_reason.value,
            "stopping_reason_message": self.stopping_reason_message,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = int(state_dict["wait_count"])
        self.stopped_epoch = int(state_dict["stopped_epoch"])
        best = state_dict["best_score"]
        self.best_score = best if isinstance(best, torch.Tensor) else torch.tensor(float(best))
        self.patience = int(state_dict["patience"])
        self.stopping_reason = EarlyStoppingReason(
            state_dict.get("stopping_reason", EarlyStoppingReason.NOT_STOPPED)
        )
        self.stopping_reason_message = state_dict.get("stopping_reason_message")

    def _should_skip_check(self, trainer: Trainer) -> bool:
        return trainer.state.fn != "fit" or trainer.sanity_checking

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._check_on_train_epoch_end or self._should_skip_check(trainer):
            return
        self._run_early_stopping_check(trainer)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._check_on_train_epoch_end or self._should_skip_check(trainer):
            return
        self._run_early_stopping_check(trainer)

    def _validate_condition_metric(self, logs: dict[str, Any]) -> bool:
        if logs.get(self.monitor) is not None:
            return True
        available = "`, `".join(logs.keys())
        msg = (
            f"Early stopping conditioned on metric `{self.monitor}` which is not available."
            f" Pass in or modify your `EarlyStopping` callback to use any of the following: `{available}`"
        )
        if self.strict:
            # RuntimeError (not MisconfigurationException) as in Lightning: user code may catch it.
            raise RuntimeError(msg)
        if self.verbose:
            rank_zero_warn(msg, category=RuntimeWarning)
        return False

    def _run_early_stopping_check(self, trainer: Trainer) -> None:
        logs = trainer.callback_metrics
        if trainer.fast_dev_run or not self._validate_condition_metric(logs):
            return
        current = logs[self.monitor]
        if not isinstance(current, torch.Tensor):
            current = torch.tensor(float(current))
        decision = evaluate_stopping_criteria(
            current,
            self.best_score,
            self.wait_count,
            monitor=self.monitor,
            mode=self.mode,
            patience=self.patience,
            min_delta=self.min_delta,
            check_finite=self.check_finite,
            stopping_threshold=self.stopping_threshold,
            divergence_threshold=self.divergence_threshold,
        )
        self.best_score = decision.best_score.detach().clone()
        self.wait_count = decision.wait_count
        # Any rank that wants to stop stops every rank (metrics may differ when not synced).
        should_stop = bool(trainer.strategy.reduce_boolean_decision(decision.should_stop, all=False))
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            if decision.should_stop:
                self.stopping_reason = decision.reason
                self.stopping_reason_message = decision.message
        if decision.message and self.verbose:
            self._log_info(trainer, decision.message, self.log_rank_zero_only)

    @staticmethod
    def _log_info(trainer: Trainer | None, message: str, log_rank_zero_only: bool) -> None:
        rank = None
        if trainer is not None and trainer.world_size > 1:
            rank = trainer.global_rank
        message = rank_prefixed_message(message, rank)
        if rank is None or not log_rank_zero_only or rank == 0:
            log.info(message)


__all__ = ["EarlyStopping", "EarlyStoppingReason", "StoppingDecision", "evaluate_stopping_criteria"]
