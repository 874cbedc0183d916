"""An unmodified 2-process CPU DDP script (argparse): every rank records what it ran with."""
import argparse
import json
import os

import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L

p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--record", required=True)
args = p.parse_args()


class M(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, i):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, i):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=args.lr)


L.seed_everything(0)
x = torch.randn(32, 4)
dl = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=4, enable_progress_bar=False,
                    enable_model_summary=False, logger=False)
trainer.fit(M(), dl, dl)
with open(os.path.join(args.record, f"rank{trainer.global_rank}-{os.getpid()}.json"), "w") as f:
    json.dump({"rank": trainer.global_rank, "lr": args.lr, "epochs": trainer.current_epoch}, f)
