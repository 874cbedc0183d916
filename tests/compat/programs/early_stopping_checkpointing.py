"""EarlyStopping on a validation metric and top-k ModelCheckpoint with a formatted filename."""

import os

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Overfitter(pl.LightningModule):
    """Memorises a small noisy training set; the validation loss turns up after a few epochs."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        print(f"step {self.global_step} loss {loss.item():.10e}")
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=2e-2)


def data(n: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x[:, :1] + 0.8 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


if __name__ == "__main__":
    pl.seed_everything(1)
    checkpoint = ModelCheckpoint(
        dirpath="checkpoints", monitor="val_loss", mode="min", save_top_k=2, filename="{epoch}-{val_loss:.4f}"
    )
    early_stopping = EarlyStopping(monitor="val_loss", mode="min", patience=2, min_delta=1e-3)
    trainer = pl.Trainer(
        max_epochs=30,
        callbacks=[checkpoint, early_stopping],
        enable_progress_bar=False,
        logger=False,
        enable_model_summary=False,
    )
    trainer.fit(Overfitter(), data(32, 0), data(64, 1))
    print(f"metric stopped_epoch {early_stopping.stopped_epoch}")
    print(f"metric current_epoch {trainer.current_epoch}")
    print(f"metric global_step {trainer.global_step}")
    print(f"metric best_model_score {checkpoint.best_model_score.item():.10e}")
    print(f"metric best_model {os.path.basename(checkpoint.best_model_path)}")
    print(f"metric top_k {sorted(os.path.basename(p) for p in checkpoint.best_k_models)}")
    print(f"metric files {sorted(os.listdir('checkpoints'))}")
    best = Overfitter.load_from_checkpoint(checkpoint.best_model_path)
    print(f"metric best_weight_sum {sum(p.sum() for p in best.parameters()).item():.10e}")
