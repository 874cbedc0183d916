"""A small MLP autoencoder on synthetic data, written as a Lightning 2.x user writes it."""

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class LitAutoEncoder(pl.LightningModule):
    def __init__(self, in_dim: int = 16, latent_dim: int = 4, lr: float = 1e-2):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(nn.Linear(in_dim, 8), nn.ReLU(), nn.Linear(8, latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, 8), nn.ReLU(), nn.Linear(8, in_dim))

    def forward(self, x):
        return self.decoder(self.encoder(x))

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = F.mse_loss(self(x), x)
        self.log("train_loss", loss, prog_bar=True)
        print(f"step {self.global_step} loss {loss.item():.10e}")
        return loss

    def validation_step(self, batch, batch_idx):
        (x,) = batch
        self.log("val_loss", F.mse_loss(self(x), x))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def make_loader(n: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(4, 16, generator=g)
    x = torch.randn(n, 4, generator=g) @ basis
    return DataLoader(TensorDataset(x), batch_size=16, shuffle=False)


if __name__ == "__main__":
    pl.seed_everything(0)
    model = LitAutoEncoder()
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", devices=1, enable_progress_bar=False, logger=False)
    trainer.fit(model, make_loader(96, 1), make_loader(32, 2))
    print(f"metric val_loss {trainer.callback_metrics['val_loss'].item():.10e}")
    print(f"metric global_step {trainer.global_step}")
    print(f"metric current_epoch {trainer.current_epoch}")
