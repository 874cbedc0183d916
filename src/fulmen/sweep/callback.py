"""``PruningCallback``: report the monitored value to an Optuna trial and prune, correctly on any number of ranks.

Optuna's own Lightning callback reports and decides on every rank separately; under DDP each rank can
decide differently and the ranks hang or diverge. Here global rank 0 alone talks to the study (report,
``should_prune``); its decision is broadcast and every rank obeys it at the same point.
"""

from __future__ import annotations

import os
from typing import Any

from typing_extensions import override

from fulmen.callbacks import Callback
from fulmen.sweep.context import PROGRESS_FILE, RESULT_FILE, TrialContext, write_json
from fulmen.utilities.exceptions import MisconfigurationException


class PruningCallback(Callback):
    """Report ``monitor`` at every validation end (or train epoch end without validation) and prune.

    Args:
        trial: an ``optuna.trial.Trial`` (the objective's argument). Needed on global rank 0 only; other
            ranks may pass ``None``. Inside a ``fulmen sweep`` trial it is found from the trial context.
        monitor: the logged metric to report.
        mode: ``"min"`` or ``"max"`` (only used for the trial's best value).
        context: the trial context (set by ``fulmen sweep``; users leave it ``None``).

    When the pruner says so, the Optuna-style callback raises ``optuna.TrialPruned`` on every rank (the
    objective's caller marks the trial pruned); inside a ``fulmen sweep`` trial the Trainer stops
    gracefully instead and the trial folder records it.

    Raises:
        MisconfigurationException: ``monitor`` was never logged (the message lists what was logged), or a bad
            ``mode``.
    """

    def __init__(self, trial: Any = None, monitor: str = "val_loss", mode: str = "min",
                 context: TrialContext | None = None) -> None:
        if mode not in ("min", "max"):
            raise MisconfigurationException(f"PruningCallback(mode={mode!r}); expected 'min' or 'max'.")
        if not isinstance(monitor, str) or not monitor:
            raise MisconfigurationException(f"PruningCallback(monitor={monitor!r}); expected a metric name.")
        self.trial = trial
        self.monitor = monitor
        self.mode = mode
        self.context = context
        self.step = 0  # the report index: Optuna's "step" (restored on resume)
        self.values: list[float] = []
        self.pruned = False
        self._reported_epoch = -1

    @property
    @override
    def state_key(self) -> str:
        return f"PruningCallback[{self.monitor}]"

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "values": list(self.values)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.step = int(state_dict.get("step", 0))
        self.values = [float(v) for v in state_dict.get("values", [])]

    @property
    def best(self) -> float | None:
        if not self.values:
            return None
        return min(self.values) if self.mode == "min" else max(self.values)

    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.context is not None and self.trial is None and trainer.is_global_zero and stage == "fit":
            from fulmen.sweep.engine import make_pruner, make_storage, optuna

            op = optuna()
            ctx = self.context
            study = op.load_study(study_name=ctx.study, storage=make_storage(ctx.storage),
                                  pruner=make_pruner(ctx.pruner))
            self.trial = op.trial.Trial(study, ctx.trial_id)

    @override
    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        self._reported_epoch = trainer.current_epoch
        self._report(trainer)

    @override
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._reported_epoch != trainer.current_epoch:  # no validation this epoch: the training metric
            self._reported_epoch = trainer.current_epoch
            self._report(trainer)

    def _report(self, trainer: Any) -> None:
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            logged = ", ".join(sorted(metrics)) or "nothing"
            message = (
                f"The sweep's metric {self.monitor!r} was never logged. The script logged: {logged}. Fix: pass "
                f"--metric with one of those, or log it: self.log({self.monitor!r}, value) in validation_step."
            )
            self._write_result(trainer, {"state": "error", "error": message, "logged": sorted(metrics)})
            raise MisconfigurationException(message)
        value = float(metrics[self.monitor])
        step = self.step
        self.step += 1
        self.values.append(value)
        prune = False
        if trainer.is_global_zero and self.trial is not None:
            self.trial.report(value, step)
            prune = bool(self.trial.should_prune())
            if self.context is not None:
                write_json(os.path.join(self.context.dir, PROGRESS_FILE), {
                    "epoch": trainer.current_epoch, "step": step, "value": value, "best": self.best,
                    "global_step": trainer.global_step,
                })
        # the decision is rank 0's; every rank obeys it at this same point
        prune = bool(trainer.strategy.broadcast(prune, 0))
        if not prune:
            return
        self.pruned = True
        if self.context is None:
            from fulmen.sweep.engine import optuna

            raise optuna().TrialPruned(f"pruned at step {step} ({self.monitor}={value:g})")
        trainer.should_stop = True

    @override
    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.context is None or not trainer.is_global_zero:
            return
        if not self.values:
            logged = ", ".join(sorted(trainer.callback_metrics)) or "nothing"
            message = (
                f"The sweep's metric {self.monitor!r} was never reported: the run ended before any validation or "
                f"epoch end with it. The script logged: {logged}."
            )
            self._write_result(trainer, {"state": "error", "error": message, "logged": sorted(trainer.callback_metrics)})
            raise MisconfigurationException(message)
        value = self.values[-1] if self.context.objective == "last" else self.best
        best_ckpt = ""
        for cb in trainer.checkpoint_callbacks:
            if getattr(cb, "dirpath", None) and os.path.abspath(str(cb.dirpath)) == os.path.abspath(
                self.context.checkpoint_dir
            ):
                best_ckpt = str(getattr(cb, "best_model_path", "") or "")
        self._write_result(trainer, {
            "state": "pruned" if self.pruned else "complete", "value": value, "last": self.values[-1],
            "best": self.best, "steps": self.step, "epochs": trainer.current_epoch,
            "best_checkpoint": best_ckpt,
        })

    def _write_result(self, trainer: Any, data: dict[str, Any]) -> None:
        if self.context is not None and trainer.is_global_zero:
            write_json(os.path.join(self.context.dir, RESULT_FILE), data)


def trial_callbacks(trainer: Any, callbacks: list[Any]) -> list[Any]:
    """The callbacks a trial's Trainer gets (``FULMEN_CALLBACKS`` factory): report/prune, and checkpoints.

    The checkpoint callback writes ``<trial>/checkpoints/last.ckpt`` (always) and ``best.ckpt`` (by the
    metric), so an interrupted trial resumes and the best model of every trial is kept. Nothing is added
    outside a trial, nor twice when a script builds several Trainers.
    """
    ctx = TrialContext.from_env()
    if ctx is None:
        return []
    out: list[Any] = []
    if not any(isinstance(c, PruningCallback) for c in callbacks):
        out.append(PruningCallback(monitor=ctx.metric, mode=ctx.mode, context=ctx))
    if trainer.config.enable_checkpointing and not trainer.config.fast_dev_run:
        from fulmen.callbacks import ModelCheckpoint

        out.append(
            ModelCheckpoint(
                dirpath=ctx.checkpoint_dir, filename="best", monitor=ctx.metric, mode=ctx.mode, save_top_k=1,
                save_last=True, enable_version_counter=False,
            )
        )
    return out
