"""Trainer arguments from ``PL_TRAINER_*`` environment variables (set by a cluster launcher or a shell
script around the program: here ``PL_TRAINER_MAX_EPOCHS=3``, ``PL_TRAINER_LIMIT_TRAIN_BATCHES=4`` and
``PL_TRAINER_LOG_EVERY_N_STEPS=2``); the program itself passes only what it always wants."""

import os

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class TinyMLP(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.l1_loss(self.net(x), y)
        self.log("loss", loss)
        print(f"step {self.global_step} loss {loss.item():.10e}")
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    seed_everything(9)
    x = torch.randn(64, 4)
    loader = DataLoader(TensorDataset(x, x.mean(1, keepdim=True)), batch_size=8)
    trainer = Trainer(logger=CSVLogger("logs", name="env"), enable_checkpointing=False, enable_progress_bar=False)
    print(f"metric env {os.environ.get('PL_TRAINER_MAX_EPOCHS')}")
    print(f"metric max_epochs {trainer.max_epochs}")
    print(f"metric limit_train_batches {trainer.limit_train_batches}")
    print(f"metric log_every_n_steps {trainer.log_every_n_steps}")
    trainer.fit(TinyMLP(), loader)
    print(f"metric global_step {trainer.global_step}")
    with open(os.path.join(trainer.logger.log_dir, "metrics.csv")) as f:
        print(f"metric logged_rows {len(f.read().strip().splitlines()) - 1}")
