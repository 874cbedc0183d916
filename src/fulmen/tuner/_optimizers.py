"""Rebuild the Trainer's optimizers from ``configure_optimizers`` (after a tuner changed the model's LR)."""

from __future__ import annotations

from typing import Any


def reconfigure_optimizers(trainer: Any, model: Any) -> None:
    """Call ``configure_optimizers`` again and install the result, as the fit's setup does.

    Only valid between ``on_fit_start`` and the first training step (the fit sets up its optimization
    right after ``on_fit_start``).
    """
    from fulmen.core.optimizer import LightningOptimizer, init_optimizers

    prev = trainer._current_fx
    trainer._current_fx = "configure_optimizers"
    try:
        optimizers, schedulers = init_optimizers(model)
    finally:
        trainer._current_fx = prev
    trainer.optimizers = optimizers
    trainer._lightning_optimizers = [LightningOptimizer(o) for o in optimizers]
    trainer.lr_scheduler_configs = schedulers
