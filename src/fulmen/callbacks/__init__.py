"""Built-in callbacks (mirrors ``lightning.pytorch.callbacks``). Names resolve lazily."""

from __future__ import annotations

import importlib
from typing import Any

from fulmen.callbacks.callback import Callback, Checkpoint

_LAZY = {
    "BackboneFinetuning": "finetuning",
    "BaseFinetuning": "finetuning",
    "BasePredictionWriter": "prediction_writer",
    "BatchSizeFinder": "batch_size_finder",
    "EarlyStopping": "early_stopping",
    "GradientAccumulationScheduler": "gradient_accumulation_scheduler",
    "LambdaCallback": "lambda_function",
    "LearningRateFinder": "lr_finder",
    "LearningRateMonitor": "lr_monitor",
    "ModelCheckpoint": "model_checkpoint",
    "ModelSummary": "model_summary",
    "RichModelSummary": "model_summary",
    "OnExceptionCheckpoint": "on_exception_checkpoint",
    "ProgressBar": "progress",
    "RichProgressBar": "progress",
    "TQDMProgressBar": "progress",
    "StochasticWeightAveraging": "stochastic_weight_avg",
    "WeightAveraging": "weight_averaging",
    "EMAWeightAveraging": "weight_averaging",
    "Timer": "timer",
    "ThroughputMonitor": "throughput_monitor",
}

__all__ = ["Callback", "Checkpoint", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(
            f"fulmen.callbacks has no {name!r}. If it is a Lightning callback, it is not supported yet."
        )
    value = getattr(importlib.import_module(f"fulmen.callbacks.{module}"), name)
    globals()[name] = value
    return value
