"""Train, checkpoint, and resume from the checkpoint in a new Trainer (``fit(ckpt_path=...)``).

``--phase first`` trains 2 epochs and saves ``last.ckpt`` into ``--dir``; ``--phase second`` resumes it
to 4 epochs; ``--phase both`` (default) does both in one process. The test runs the two phases under
different frameworks too (Lightning writes, fulmen resumes, and the reverse).
"""

import argparse
import os

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Model(pl.LightningModule):
    def __init__(self, width: int = 16, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True)
        print(f"step {self.global_step} loss {loss.item():.10e}")
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        return [opt], [torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.8)]


def loaders():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 3, generator=g)
    y = torch.sin(x.sum(1, keepdim=True))
    return DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16), DataLoader(TensorDataset(x[64:], y[64:]))


def trainer(max_epochs, directory):
    ckpt = ModelCheckpoint(dirpath=directory, save_last=True, save_top_k=0)
    return pl.Trainer(max_epochs=max_epochs, callbacks=[ckpt], enable_progress_bar=False, logger=False)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", choices=["first", "second", "both"], default="both")
    parser.add_argument("--dir", default="ckpts")
    args = parser.parse_args()
    pl.seed_everything(0)
    train, val = loaders()
    if args.phase in ("first", "both"):
        first = trainer(2, args.dir)
        first.fit(Model(), train, val)
        print(f"metric first_global_step {first.global_step}")
    if args.phase in ("second", "both"):
        last = os.path.join(args.dir, "last.ckpt")
        second = trainer(4, args.dir)
        model = Model()
        second.fit(model, train, val, ckpt_path=last)
        print(f"metric global_step {second.global_step}")
        print(f"metric current_epoch {second.current_epoch}")
        print(f"metric lr {second.optimizers[0].param_groups[0]['lr']:.10e}")
        print(f"metric val_loss {second.callback_metrics['val_loss'].item():.10e}")
        print(f"metric weight_sum {sum(p.sum() for p in model.parameters()).item():.10e}")
        reloaded = Model.load_from_checkpoint(last)
        print(f"metric reloaded_width {reloaded.hparams.width}")
