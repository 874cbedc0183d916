"""The loggers driven by a real ``fulmen.Trainer``: what a short fit leaves in each tool."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger


class Regression(L.LightningModule):
    def __init__(self, lr: float = 0.1, width: int = 1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(2, width)
        self.example_input_array = torch.zeros(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def loader(seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 2, generator=g)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=8)


def test_fit_writes_to_csv_tensorboard_and_mlflow(tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    pytest.importorskip("tensorboard")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    csv_logger = CSVLogger(tmp_path, name="csv")
    tb_logger = TensorBoardLogger(tmp_path, name="tb", log_graph=True)
    mlflow_logger = MLFlowLogger(
        experiment_name="with-trainer",
        tracking_uri=mlflow_sqlite_uri,
        artifact_location=(tmp_path / "mlflow-artifacts").as_uri(),
        log_model="all",
    )
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        logger=[csv_logger, tb_logger, mlflow_logger],
        log_every_n_steps=2,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Regression(lr=0.05), loader(0), loader(1))

    # the first logger decides the Trainer's log_dir, where checkpoints go by default
    assert trainer.log_dir == csv_logger.log_dir
    checkpoints = os.listdir(os.path.join(csv_logger.log_dir, "checkpoints"))
    assert checkpoints == ["epoch=1-step=8.ckpt"]

    with open(os.path.join(csv_logger.log_dir, "metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"epoch", "step", "train_loss", "val_loss"} <= set(rows[0])
    # which step epoch-end values are logged at is the Trainer's business; every logger gets the same one
    val_steps = [int(r["step"]) for r in rows if r["val_loss"]]
    assert len(val_steps) == 2
    assert [r["epoch"] for r in rows if r["val_loss"]] == ["0", "1"]
    hparams = yaml.safe_load(Path(csv_logger.log_dir, "hparams.yaml").read_text())
    assert hparams == {"lr": 0.05, "width": 1}

    events = EventAccumulator(tb_logger.log_dir)
    events.Reload()
    assert [e.step for e in events.Scalars("val_loss")] == val_steps
    assert any(node.op == "aten::linear" for node in events.Graph().node)
    assert yaml.safe_load(Path(tb_logger.log_dir, "hparams.yaml").read_text()) == {"lr": 0.05, "width": 1}

    client = MlflowClient(tracking_uri=mlflow_sqlite_uri)
    run = client.get_run(mlflow_logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.05", "width": "1"}
    assert [m.step for m in client.get_metric_history(mlflow_logger.run_id, "val_loss")] == val_steps
    assert [a.path for a in client.list_artifacts(mlflow_logger.run_id)] == [
        "epoch=0-step=4",
        "epoch=1-step=8",
    ]
