"""Tiny training script for the launch tests (unmodified by the launcher: no ckpt_path, no root dir).

Usage: _train.py OUT DEVICES STEPS SLEEP [crash]
``LAUNCH_TEST_CKPT_DIR`` (e.g. an ``s3://`` URL): the ModelCheckpoint folder (so the preemption checkpoint too).
Rank 0 appends the finished step to ``OUT.progress`` (the tests signal once it reaches a step) and saves the final
weights to OUT. ``crash`` raises in the third step.
"""

import os
import sys
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import ModelCheckpoint


class Net(L.LightningModule):
    def __init__(self, out: str, sleep: float, crash: bool) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(5, 1)
        self.out, self.sleep, self.crash = out, sleep, crash

    def training_step(self, batch, batch_idx):
        if self.crash and self.global_step == 2:
            raise RuntimeError("the script crashed on purpose")
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        time.sleep(self.sleep)
        if self.global_rank == 0:
            with open(self.out + ".progress", "a") as f:
                f.write(f"{self.global_step}\n")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def main(out: str, devices: int, steps: int, sleep: float, crash: bool) -> None:
    torch.set_num_threads(1)
    L.seed_everything(3, verbose=False)
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(64, 5, generator=g), torch.randn(64, 1, generator=g))
    model = Net(out, sleep, crash)
    ckpt_dir = os.environ.get("LAUNCH_TEST_CKPT_DIR")
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir)] if ckpt_dir else None,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
    )
    trainer.fit(model, DataLoader(ds, batch_size=4, shuffle=True))
    if trainer.is_global_zero:
        torch.save(model.state_dict(), out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), len(sys.argv) > 5)
