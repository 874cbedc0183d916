"""A LightningCLI program: every argument of the model, the datamodule and the Trainer on the command line.

    .venv/bin/python examples/cli_example.py fit --config examples/cli_config.yaml
    .venv/bin/python examples/cli_example.py fit --config examples/cli_config.yaml --model.hidden 64 \\
        --trainer.max_epochs 5 --optimizer AdamW --optimizer.lr 0.003 --lr_scheduler StepLR --lr_scheduler.step_size 2
    .venv/bin/python examples/cli_example.py fit --config examples/cli_config.yaml --print_config
    .venv/bin/python examples/cli_example.py test --config cli_logs/lightning_logs/version_0/config.yaml \\
        --ckpt_path cli_logs/lightning_logs/version_0/checkpoints/<file>.ckpt
    .venv/bin/python examples/cli_example.py --help              # and `fit --help`

What it shows:

* ``LightningCLI(Model, DataModule)`` builds ``fit`` / ``validate`` / ``test`` / ``predict`` from the classes'
  signatures (type hints and defaults become argument types and defaults);
* a YAML ``--config`` with dotted overrides after it (``--model.hidden 64``);
* ``--optimizer`` / ``--lr_scheduler`` from the command line, replacing ``configure_optimizers``;
* callbacks from the config (``trainer.callbacks`` with ``class_path``);
* ``config.yaml`` saved next to the logs, which reruns the exact experiment;
* the same program without a script: ``fulmen fit --allow cli_example --model cli_example.Classifier ...``
  (run from ``examples/``).

Runs in a few seconds on a CPU (a synthetic two-moons-like dataset, no downloads).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import fulmen as L
from fulmen.cli import LightningCLI


class Classifier(L.LightningModule):
    """An MLP for 2-D points in two classes.

    Args:
        hidden: Width of the hidden layers.
        lr: Learning rate of the default optimizer (used when no ``--optimizer`` is given).
        dropout: Dropout probability.
    """

    def __init__(self, hidden: int = 32, lr: float = 0.05, dropout: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Linear(2, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _shared(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log(f"{stage}_loss", loss, prog_bar=stage != "train")
        self.log(f"{stage}_acc", (logits.argmax(1) == y).float().mean(), prog_bar=stage != "train")
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._shared(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch[0]).argmax(1)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class Moons(L.LightningDataModule):
    """Two interleaved half circles with noise.

    Args:
        n: Number of points.
        noise: Standard deviation of the noise.
        batch_size: Batch size of every loader.
        seed: Seed of the data generator.
    """

    def __init__(self, n: int = 1000, noise: float = 0.15, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size

    def setup(self, stage: str) -> None:
        g = torch.Generator().manual_seed(self.hparams.seed)
        n = self.hparams.n
        t = torch.rand(n, generator=g) * torch.pi
        upper = torch.rand(n, generator=g) < 0.5
        x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
        y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
        points = torch.stack([x, y], 1) + self.hparams.noise * torch.randn(n, 2, generator=g)
        dataset = TensorDataset(points, upper.long())
        self.train_set, self.val_set, self.test_set = random_split(dataset, [0.7, 0.15, 0.15], generator=g)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size)


def main() -> None:
    LightningCLI(Classifier, Moons, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
