"""Find a learning rate and the largest batch size that fits, then train with them.

    .venv/bin/python examples/tuner_example.py                  # writes tuner_example_logs/lr_find.png
    .venv/bin/python examples/tuner_example.py --root /tmp/tune

What it shows:

* ``Tuner(trainer).lr_find(model)``: the learning-rate range test; ``.suggestion()``, ``.results`` and
  ``.plot(suggest=True, path=...)`` (a PNG, when matplotlib is installed); the suggestion is written to
  ``model.lr`` and ``model.hparams.lr``;
* ``Tuner(trainer).scale_batch_size(model, mode="binsearch")``: the largest batch size that fits
  (here an artificial memory limit of 300 samples per batch stands in for the GPU's memory);
* both restore the model and the Trainer, so the same ``trainer.fit(model)`` follows;
* the ``LearningRateFinder`` callback doing the same inside a normal ``fit``.

Runs in a few seconds on a CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import LearningRateFinder
from fulmen.tuner import Tuner

MEMORY_LIMIT = 300  # samples per batch; a bigger batch "runs out of memory"


class Regression(L.LightningModule):
    """A small MLP fitting a noisy linear function; ``lr`` and ``batch_size`` are what the tuner sets."""

    def __init__(self, lr: float = 1e-4, batch_size: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        self.batch_size = batch_size
        self.net = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2048, 8, generator=g)
        w = torch.linspace(-2.0, 2.0, 8).unsqueeze(1)
        self.dataset = TensorDataset(x, x @ w + 0.1 * torch.randn(2048, 1, generator=g))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if x.shape[0] > MEMORY_LIMIT:
            raise RuntimeError("CUDA out of memory. (simulated by the example)")
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="tuner_example_logs")
    args = parser.parse_args()
    L.seed_everything(0)

    model = Regression()
    trainer = L.Trainer(
        default_root_dir=args.root,
        max_epochs=3,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
    )
    tuner = Tuner(trainer)

    finder = tuner.lr_find(model, min_lr=1e-5, max_lr=1.0, num_training=100)
    assert finder is not None
    print(
        f"lr_find: {len(finder.results['lr'])} steps, suggestion {finder.suggestion():.2e} -> model.lr = {model.lr:.2e}"
    )
    if importlib.util.find_spec("matplotlib") is not None:
        os.makedirs(args.root, exist_ok=True)
        path = os.path.join(args.root, "lr_find.png")
        finder.plot(suggest=True, path=path)
        print(f"lr_find plot: {path}")

    size = tuner.scale_batch_size(model, mode="binsearch", steps_per_trial=2, margin=0.0)
    print(f"scale_batch_size: {size} (limit {MEMORY_LIMIT}) -> model.batch_size = {model.batch_size}")
    assert size == MEMORY_LIMIT

    assert trainer.global_step == 0  # the tuning runs left no trace
    trainer.fit(model)
    print(
        f"fit with lr={model.lr:.2e}, batch_size={model.batch_size}: train_loss "
        f"{trainer.callback_metrics['train_loss_epoch']:.4f} after {trainer.global_step} steps"
    )

    # the same search as a callback, at the start of a normal fit
    model = Regression()
    trainer = L.Trainer(
        default_root_dir=args.root,
        max_epochs=2,
        enable_progress_bar=False,
        logger=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[LearningRateFinder(min_lr=1e-5, max_lr=1.0, num_training_steps=60)],
    )
    trainer.fit(model)
    print(f"LearningRateFinder callback: trained with lr={trainer.optimizers[0].param_groups[0]['lr']:.2e}")


if __name__ == "__main__":
    main()
