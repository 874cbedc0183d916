"""A callback that reads the trainer's loop progress counters, as schedulers, loggers and resumable
samplers in public projects do (``trainer.fit_loop.epoch_loop.batch_progress...``).

Fits 2 epochs, writes a checkpoint, then resumes it for a third epoch and prints the counters at
several points of both runs.
"""

import os

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def counters(trainer):
    fit_loop = trainer.fit_loop
    epoch_loop = fit_loop.epoch_loop
    bp = epoch_loop.batch_progress
    opt = epoch_loop.automatic_optimization.optim_progress.optimizer
    return (
        f"{bp.current.ready} {bp.current.completed} {bp.total.ready} {bp.total.completed} "
        f"{fit_loop.epoch_progress.current.completed} {fit_loop.epoch_progress.total.ready} "
        f"{opt.step.total.completed} {epoch_loop._batches_that_stepped} {epoch_loop.global_step} "
        f"{epoch_loop.val_loop.batch_progress.total.completed} {fit_loop.total_batch_idx} {fit_loop.batch_idx}"
    )


class ProgressReader(Callback):
    def __init__(self, tag):
        self.tag = tag

    def on_train_start(self, trainer, pl_module):
        print(f"metric {self.tag}_train_start {counters(trainer)}")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 1:
            print(f"metric {self.tag}_batch_start_e{trainer.current_epoch} {counters(trainer)}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        print(f"metric {self.tag}_batch_end_e{trainer.current_epoch}_b{batch_idx} {counters(trainer)}")

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            print(f"metric {self.tag}_val_end_e{trainer.current_epoch} {counters(trainer)}")

    def on_train_epoch_end(self, trainer, pl_module):
        print(f"metric {self.tag}_epoch_end_e{trainer.current_epoch} {counters(trainer)}")


class Net(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        print(f"step {self.global_step} loss {loss.item():.10e}")
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loaders():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g)
    y = x.sum(1, keepdim=True)
    return DataLoader(TensorDataset(x, y), batch_size=8), DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8)


def trainer(tag, max_epochs):
    return Trainer(
        max_epochs=max_epochs,
        accumulate_grad_batches=2,
        val_check_interval=3,
        num_sanity_val_steps=1,
        callbacks=[ProgressReader(tag)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


if __name__ == "__main__":
    seed_everything(0)
    model = Net()
    first = trainer("first", 2)
    first.fit(model, *loaders())
    print(f"metric first_after_fit {counters(first)}")
    print(f"metric max_epochs {first.fit_loop.max_epochs} {first.fit_loop.min_epochs}")
    first.save_checkpoint("progress.ckpt")

    second = trainer("second", 3)
    second.fit(Net(), *loaders(), ckpt_path="progress.ckpt")
    print(f"metric second_after_fit {counters(second)}")
    os.remove("progress.ckpt")
