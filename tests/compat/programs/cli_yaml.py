"""LightningCLI: model and datamodule arguments from a YAML config, overridden on the command line.

Run: ``python cli_yaml.py fit --config cli_yaml.yaml [--trainer.max_steps=N]``
"""

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class RegressionData(LightningDataModule):
    def __init__(self, n: int = 64, batch_size: int = 8, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str):
        g = torch.Generator().manual_seed(self.hparams.seed)
        x = torch.randn(self.hparams.n, 3, generator=g)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1
        self.train_set = TensorDataset(x, y)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size)


class Regressor(LightningModule):
    def __init__(self, hidden: int = 8, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        print(f"step {self.global_step} loss {loss.item():.10e}")
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


if __name__ == "__main__":
    cli = LightningCLI(Regressor, RegressionData)
    print(f"metric hidden {cli.model.hparams.hidden}")
    print(f"metric lr {cli.model.hparams.lr}")
    print(f"metric global_step {cli.trainer.global_step}")
    print(
        f"metric callbacks {sorted(type(c).__name__ for c in cli.trainer.callbacks if type(c).__name__ in ('EarlyStopping', 'GradientAccumulationScheduler'))}"
    )
    print(f"metric train_loss {cli.trainer.callback_metrics['train_loss'].item():.10e}")
