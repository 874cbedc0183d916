"""Train a tiny regression model and log it to every fulmen logger at once, then read the logs back.

    .venv/bin/python examples/loggers_example.py                 # logs under ./loggers_example_logs
    .venv/bin/python examples/loggers_example.py --root /tmp/x   # somewhere else

What it shows:

* ``Trainer(logger=[...])`` with several loggers: ``CSVLogger`` always, ``TensorBoardLogger``,
  ``MLFlowLogger`` and ``WandbLogger`` (offline, no account or network needed) when their
  packages are installed (``pip install 'fulmen[tensorboard,mlflow,wandb]'``);
* ``save_hyperparameters()`` values arriving in each tool, and ``example_input_array`` giving
  TensorBoard the model graph (``log_graph=True``);
* ``ModelCheckpoint`` files logged as MLflow artifacts and W&B model artifacts (``log_model="all"``);
* reading what was written with each tool's own reader.

Runs in a few seconds on a CPU.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.model_checkpoint import ModelCheckpoint
from fulmen.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger


class LinearRegression(L.LightningModule):
    """Fits y = 3x - 1 (plus noise) with one linear layer."""

    def __init__(self, lr: float = 0.1, optimizer: str = "sgd") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(1, 1)
        self.example_input_array = torch.zeros(4, 1)

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


def make_data(n: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=generator) * 2 - 1
    y = 3 * x - 1 + 0.05 * torch.randn(n, 1, generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=16)


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def build_loggers(root: str) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(root, name="csv")]
    if installed("tensorboard"):
        loggers.append(TensorBoardLogger(root, name="tensorboard", log_graph=True))
    if installed("mlflow"):
        # With no tracking_uri the run is stored in save_dir (a SQLite database on recent MLflow).
        loggers.append(
            MLFlowLogger(
                experiment_name="loggers_example", save_dir=os.path.join(root, "mlruns"), log_model="all"
            )
        )
    if installed("wandb"):
        loggers.append(WandbLogger(project="loggers_example", save_dir=root, offline=True, log_model="all"))
    return loggers


def read_back(loggers: list[Logger]) -> None:
    """Print a little of what each logger wrote, read with the tool's own reader."""
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            with open(os.path.join(logger.log_dir, "metrics.csv"), newline="") as f:
                rows = list(csv.DictReader(f))
            last_val = [r for r in rows if r.get("val_loss")][-1]
            print(
                f"CSV          {logger.log_dir}: {len(rows)} rows, last val_loss={float(last_val['val_loss']):.4f}"
            )
        elif isinstance(logger, TensorBoardLogger):
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

            events = EventAccumulator(logger.log_dir)
            events.Reload()
            val = events.Scalars("val_loss")
            print(
                f"TensorBoard  {logger.log_dir}: val_loss at steps {[e.step for e in val]}, graph logged: {events.Graph() is not None}"
            )
        elif isinstance(logger, MLFlowLogger):
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=logger.tracking_uri)
            run = client.get_run(logger.run_id)
            artifacts = [a.path for a in client.list_artifacts(logger.run_id)]
            print(
                f"MLflow       {logger.tracking_uri}: params={run.data.params}, status={run.info.status}, artifacts={artifacts}"
            )
        elif isinstance(logger, WandbLogger):
            run = logger.experiment
            print(
                f"W&B          {os.path.dirname(run.dir)}: offline run {run.id}; upload later with `wandb sync`"
            )
            run.finish()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="loggers_example_logs", help="where all logs go")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    if installed("wandb"):
        os.environ.setdefault("WANDB_SILENT", "true")
        # W&B stages offline artifacts in its data folder (default ~/.local/share/wandb); keep them with the logs
        os.environ.setdefault("WANDB_DATA_DIR", os.path.join(os.path.abspath(args.root), "wandb-data"))

    L.seed_everything(0)
    loggers = build_loggers(args.root)
    checkpoint = ModelCheckpoint(
        dirpath=os.path.join(args.root, "checkpoints"), monitor="val_loss", save_top_k=2
    )
    trainer = L.Trainer(
        max_epochs=args.epochs,
        logger=loggers,
        callbacks=[checkpoint],
        log_every_n_steps=2,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(LinearRegression(), make_data(128, seed=1), make_data(64, seed=2))
    read_back(loggers)


if __name__ == "__main__":
    main()
