"""Experiment loggers (mirrors ``lightning.pytorch.loggers``).

Which class owns what:

* :class:`Logger` (``logger.py``): the interface the Trainer calls (``log_hyperparams``,
  ``log_metrics``, ``log_graph``, ``after_save_checkpoint``, ``save``, ``finalize``), plus
  :func:`rank_zero_experiment` and :class:`DummyLogger`;
* :class:`CSVLogger` (``csv_logs.py``): ``metrics.csv`` and ``hparams.yaml``, no dependencies;
* :class:`TensorBoardLogger` (``tensorboard.py``): event files, extra ``tensorboard``;
* :class:`MLFlowLogger` (``mlflow.py``): an MLflow run, extra ``mlflow``;
* :class:`WandbLogger` (``wandb.py``): a W&B run, online or offline, extra ``wandb``;
* ``utilities.py``: hyperparameter sanitizing, checkpoint scanning and optional imports.

Importing this package imports none of tensorboard, mlflow or wandb: each logger imports its
tool when it is constructed, and a missing one raises ``ModuleNotFoundError`` naming the extra.
"""

from fulmen.loggers._unsupported import CometLogger, LitLogger, NeptuneLogger
from fulmen.loggers.csv_logs import CSVLogger
from fulmen.loggers.logger import DummyExperiment, DummyLogger, Logger, merge_dicts, rank_zero_experiment
from fulmen.loggers.mlflow import MLFlowLogger
from fulmen.loggers.tensorboard import TensorBoardLogger
from fulmen.loggers.wandb import WandbLogger

__all__ = [
    "CSVLogger",
    "CometLogger",
    "DummyExperiment",
    "DummyLogger",
    "LitLogger",
    "Logger",
    "MLFlowLogger",
    "NeptuneLogger",
    "TensorBoardLogger",
    "WandbLogger",
    "merge_dicts",
    "rank_zero_experiment",
]
