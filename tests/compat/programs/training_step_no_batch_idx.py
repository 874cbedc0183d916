"""A LightningModule whose training_step takes only the batch (``def training_step(self, batch)``), with
validation_step and test_step written the same way, as many tutorials write them."""

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split


class LitRegression(pl.LightningModule):
    def __init__(self, lr=0.05):
        super().__init__()
        self.save_hyperparameters()
        self.model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))

    def training_step(self, batch):
        x, y = batch
        loss = F.mse_loss(self.model(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        print(f"step {self.global_step} loss {loss.item():.10e}")
        return loss

    def validation_step(self, batch):
        x, y = batch
        self.log("val/loss", F.mse_loss(self.model(x), y))

    def test_step(self, batch):
        x, y = batch
        self.log("test/loss", F.mse_loss(self.model(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


if __name__ == "__main__":
    pl.seed_everything(42)
    x = torch.randn(60, 5)
    y = x @ torch.arange(1.0, 6.0).unsqueeze(1) / 10
    train_set, val_set = random_split(TensorDataset(x, y), [48, 12], generator=torch.Generator().manual_seed(0))
    model = LitRegression()
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, DataLoader(train_set, batch_size=12), DataLoader(val_set, batch_size=12))
    print(f"metric train_loss_epoch {trainer.callback_metrics['train/loss_epoch'].item():.10e}")
    print(f"metric val_loss {trainer.callback_metrics['val/loss'].item():.10e}")
    (result,) = trainer.test(model, DataLoader(val_set, batch_size=6), verbose=False)
    print(f"metric test_loss {result['test/loss']:.10e}")
    print(f"metric global_step {trainer.global_step}")
