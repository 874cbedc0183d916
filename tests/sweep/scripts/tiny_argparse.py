"""A plain argparse + fulmen script, as a user writes one: no sweep code in it."""
import argparse
import json
import os

import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L

p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--hidden", type=int, default=4)
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--crash-above", type=float, default=-1.0)
p.add_argument("--log-name", default="val_loss")
p.add_argument("--record", default="")
p.add_argument("--sleep", type=float, default=0.0)
args = p.parse_args()
if args.record:
    with open(os.path.join(args.record, f"{os.getpid()}.json"), "w") as f:
        json.dump({"cores": sorted(os.sched_getaffinity(0)), "threads": torch.get_num_threads(), "lr": args.lr}, f)
if args.crash_above > 0 and args.lr > args.crash_above:
    raise RuntimeError(f"crash requested: lr={args.lr} > {args.crash_above}")


class M(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, args.hidden), torch.nn.Tanh(), torch.nn.Linear(args.hidden, 1))

    def training_step(self, batch, i):
        if args.sleep:
            import time

            time.sleep(args.sleep)
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, i):
        x, y = batch
        self.log(args.log_name, torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=args.lr)


L.seed_everything(0)
x = torch.randn(32, 4)
y = x.sum(1, keepdim=True)
dl = DataLoader(TensorDataset(x, y), batch_size=8)
trainer = L.Trainer(max_epochs=args.epochs, enable_progress_bar=False, enable_model_summary=False, logger=False)
trainer.fit(M(), dl, dl)
