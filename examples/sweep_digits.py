"""A hyperparameter sweep from Python: an Optuna-style objective run by ``fulmen.sweep.run``.

A small CNN on scikit-learn's digits (2 conv layers + a linear layer). The search space: the learning rate
(log scale), the channels, the dropout and the batch size; TPE sampling and median pruning through
``fulmen.sweep.PruningCallback``; ``--parallel`` trials at once, each in its own warm worker process on its
own cores.

    pip install "fulmen[sweep,demo]"
    python examples/sweep_digits.py --trials 20 --parallel 2 --epochs 10
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
import fulmen.sweep
from fulmen.sweep import PruningCallback

EPOCHS = 10


def digits() -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 8x8 digits, scaled to [0, 1]: 1437 training and 360 validation images."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=g)
    train, val = order[:1437], order[1437:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


class DigitsCNN(L.LightningModule):
    def __init__(self, lr: float, channels: int, dropout: float):
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * 16, 10),
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def objective(trial) -> float:
    """Optuna-style: suggest, train, return the last validation loss (pruned trials raise TrialPruned)."""
    lr = trial.suggest_float("lr", 1e-4, 3e-1, log=True)
    channels = trial.suggest_categorical("channels", [8, 16, 32])
    dropout = trial.suggest_float("dropout", 0.0, 0.5)
    batch_size = trial.suggest_categorical("batch_size", [32, 64, 128])
    L.seed_everything(trial.number)
    train, val = digits()
    trainer = L.Trainer(
        max_epochs=EPOCHS, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[PruningCallback(trial, monitor="val_loss")],
    )
    trainer.fit(DigitsCNN(lr, channels, dropout), DataLoader(train, batch_size=batch_size, shuffle=True),
                DataLoader(val, batch_size=256))
    return float(trainer.callback_metrics["val_loss"])


def main() -> None:
    global EPOCHS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=None, help="where the SQLite study goes (default: a temporary folder)")
    args = p.parse_args()
    EPOCHS = args.epochs  # set before the workers fork: they inherit it
    study = fulmen.sweep.run(objective, trials=args.trials, parallel=args.parallel, seed=args.seed,
                             sampler="tpe", pruner="median", dir=args.dir)
    states = [t.state.name for t in study.trials]
    print(f"{states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned")
    best = study.best_trial
    print(f"best: trial {best.number} val_loss={best.value:.4f} {best.params}")


if __name__ == "__main__":
    main()
