"""Every logger exported by ``fulmen.loggers``, found by introspection, put through the same checks.

The checks follow what the Trainer does with a logger (docs/dev/contracts.md): log the
hyperparameters and graph, log metrics at steps, report saved checkpoints, save, finalize; then
again for a following ``trainer.test``. A new logger class fails ``test_every_logger_is_covered``
until it gets a factory here.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import fulmen.loggers
from fulmen.loggers import (
    CSVLogger,
    DummyExperiment,
    DummyLogger,
    Logger,
    MLFlowLogger,
    TensorBoardLogger,
    WandbLogger,
)

from .conftest import CheckpointCallbackRecord


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 1)
        self.example_input_array = torch.zeros(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _csv(request: pytest.FixtureRequest, root: Path) -> Logger:
    return CSVLogger(root / "csv")


def _tensorboard(request: pytest.FixtureRequest, root: Path) -> Logger:
    pytest.importorskip("tensorboard")
    return TensorBoardLogger(root / "tb", log_graph=True)


def _mlflow(request: pytest.FixtureRequest, root: Path) -> Logger:
    uri = request.getfixturevalue("mlflow_sqlite_uri")
    return MLFlowLogger(
        experiment_name=f"conformance-{root.name}",
        tracking_uri=uri,
        artifact_location=(root / "mlflow-artifacts").as_uri(),
        log_model="all",
    )


def _wandb(request: pytest.FixtureRequest, root: Path) -> Logger:
    request.getfixturevalue("wandb_env")
    return WandbLogger(save_dir=root / "wandb", offline=True, log_model="all")


def _dummy(request: pytest.FixtureRequest, root: Path) -> Logger:
    return DummyLogger()


FACTORIES: dict[type[Logger], Callable[[pytest.FixtureRequest, Path], Logger]] = {
    CSVLogger: _csv,
    TensorBoardLogger: _tensorboard,
    MLFlowLogger: _mlflow,
    WandbLogger: _wandb,
    DummyLogger: _dummy,
}


def exported_logger_classes() -> set[type[Logger]]:
    found = set()
    for name in fulmen.loggers.__all__:
        obj = getattr(fulmen.loggers, name)
        if isinstance(obj, type) and issubclass(obj, Logger) and obj is not Logger:
            found.add(obj)
    return found


def test_every_logger_is_covered() -> None:
    assert exported_logger_classes() == set(FACTORIES)


def files_under(root: Path) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files} | {
        os.path.relpath(d, root) for d, _, _ in os.walk(root)
    }


def _finish(logger: Logger) -> None:
    if isinstance(logger, WandbLogger) and logger._experiment is not None:
        logger.experiment.finish()


@pytest.mark.parametrize("logger_cls", sorted(FACTORIES, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_trainer_contract(
    logger_cls: type[Logger],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    checkpoint_callback: CheckpointCallbackRecord,
) -> None:
    logger = FACTORIES[logger_cls](request, tmp_path)
    try:
        assert isinstance(logger, Logger)
        # fit
        logger.log_hyperparams({"lr": 0.1, "net": {"width": 4}, "activation": "relu"})
        logger.log_graph(TinyModel())
        logger.save()
        for step in range(3):
            logger.log_metrics({"train_loss": torch.tensor(1.0 - step / 10), "epoch": 0}, step)
        checkpoint_callback.save("epoch=0-step=3.ckpt", score=0.7)
        logger.after_save_checkpoint(checkpoint_callback)
        logger.save()
        logger.finalize("success")
        # a following trainer.test reuses the logger
        logger.log_metrics({"test_loss": 0.5}, 3)
        logger.finalize("success")

        assert isinstance(logger.name, (str, type(None)))
        version = logger.version
        assert isinstance(version, (int, str, type(None)))
        assert logger.version == version  # stable
        for attr in ("save_dir", "log_dir", "root_dir"):
            assert isinstance(getattr(logger, attr), (str, type(None))), attr
        if logger.log_dir is not None:
            assert os.path.isdir(logger.log_dir)
            assert os.listdir(logger.log_dir)
        assert isinstance(logger.group_separator, str)
        pickle.loads(pickle.dumps(logger))  # loggers travel to spawned processes
    finally:
        _finish(logger)


@pytest.mark.parametrize("logger_cls", sorted(FACTORIES, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_nonzero_rank_writes_nothing(
    logger_cls: type[Logger],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    checkpoint_callback: CheckpointCallbackRecord,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fulmen.utilities.rank_zero import rank_zero_only

    logger = FACTORIES[logger_cls](request, tmp_path)
    checkpoint_callback.save("epoch=0.ckpt", score=0.5)
    before = files_under(tmp_path)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert isinstance(logger.experiment, DummyExperiment)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_graph(TinyModel())
    logger.log_metrics({"loss": 1.0}, 0)
    logger.after_save_checkpoint(checkpoint_callback)
    logger.save()
    logger.finalize("success")
    assert files_under(tmp_path) == before


def _bad_metric_is_rejected_before_writing(logger: Logger) -> Any:
    return logger.log_metrics({"loss": torch.zeros(3)}, 0)


@pytest.mark.parametrize("logger_cls", [CSVLogger, TensorBoardLogger, MLFlowLogger], ids=lambda c: c.__name__)
def test_non_scalar_metric_is_a_clear_error(
    logger_cls: type[Logger], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from fulmen.utilities.exceptions import MisconfigurationException

    logger = FACTORIES[logger_cls](request, tmp_path)
    with pytest.raises(
        MisconfigurationException, match=r"metric '.*loss': got 'Tensor of shape \(3,\)'; expected a number"
    ):
        _bad_metric_is_rejected_before_writing(logger)
