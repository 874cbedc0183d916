"""Trainer status enums (defined in :mod:`fulmen.core.states`; this is Lightning's import path)."""

from fulmen.core.states import RunningStage, TrainerFn, TrainerState, TrainerStatus, _TunerExitException  # noqa: F401 - imported from here

__all__ = ["RunningStage", "TrainerFn", "TrainerState", "TrainerStatus"]
