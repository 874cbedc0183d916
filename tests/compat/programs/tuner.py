"""The Tuner: learning-rate range test and batch-size scaling, then a short fit with the results."""

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.tuner import Tuner
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Model(pl.LightningModule):
    def __init__(self, lr: float = 1e-3, batch_size: int = 4):
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        self.batch_size = batch_size
        g = torch.Generator().manual_seed(0)
        x = torch.randn(512, 6, generator=g)
        self.data = TensorDataset(x, x @ torch.randn(6, 1, generator=g))
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


if __name__ == "__main__":
    pl.seed_everything(0)
    model = Model()
    trainer = pl.Trainer(max_epochs=1, enable_progress_bar=False, logger=False, enable_checkpointing=False)
    tuner = Tuner(trainer)
    new_bs = tuner.scale_batch_size(model, mode="power", steps_per_trial=2, init_val=4, max_trials=3)
    print(f"metric batch_size {new_bs}")
    finder = tuner.lr_find(model, min_lr=1e-4, max_lr=1.0, num_training=30)
    print(f"metric lr_suggestion {finder.suggestion():.10e}")
    print(f"metric model_lr {model.lr:.10e}")
    losses = finder.results["loss"]
    print(f"metric lr_find_points {len(losses)}")
    print(f"metric lr_find_first_loss {losses[0]:.10e}")
    trainer.fit(model)
    print(f"metric train_loss {trainer.callback_metrics['train_loss'].item():.10e}")
