"""Train a small CNN on scikit-learn's handwritten digits with fulmen.

    make demo                      # or: .venv/bin/python examples/digits_demo.py

What it shows:

* a ``LightningDataModule`` that loads the data once (``prepare_data``) and makes a seeded
  train/val/test split (``setup``),
* ``L.seed_everything`` for a reproducible run,
* the model summary table (with input/output shapes, from ``example_input_array``),
* a live progress bar (rich when installed, tqdm otherwise),
* ``self.log`` of ``val_loss``/``val_acc`` (shown on the bar, written by the default logger),
* ``trainer.test`` on the held-out split.

The 8x8 digits (1797 images, 10 classes) ship with scikit-learn, so nothing is downloaded.
Runs in well under a minute on 2 CPU cores. Set ``FULMEN_DEMO_FAST=1`` for a shorter run
(fewer epochs; used by the test suite). The script exits non-zero if validation accuracy is
below 97%.

Logs go to ``lightning_logs/`` in the current directory (override with ``--root-dir``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Threads that wait for work sleep instead of spinning: on a busy machine spinning OpenMP threads made
# this run up to 10x slower. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import fulmen as L

ACCURACY_THRESHOLD = 0.97


class DigitsDataModule(L.LightningDataModule):
    """The 8x8 digits as 1x8x8 float images in [0, 1], split 70/15/15 with a fixed seed."""

    def __init__(self, batch_size: int = 64, split_seed: int = 1234) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_set = self.val_set = self.test_set = None

    def prepare_data(self) -> None:
        # Called once before setup: the place to download. load_digits reads a file bundled with sklearn.
        from sklearn.datasets import load_digits

        load_digits()

    def setup(self, stage: str) -> None:
        if self.train_set is not None:  # fit, then test: split once
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
        y = torch.tensor(digits.target, dtype=torch.long)
        full = TensorDataset(x, y)
        n_val = n_test = int(0.15 * len(full))
        n_train = len(full) - n_val - n_test
        generator = torch.Generator().manual_seed(self.hparams.split_seed)
        self.train_set, self.val_set, self.test_set = random_split(
            full, [n_train, n_val, n_test], generator=generator
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)


class DigitsCNN(L.LightningModule):
    def __init__(self, lr: float = 3e-3, weight_decay: float = 1e-4, channels: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters()
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c, kernel_size=3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, kernel_size=3, padding=1),
            nn.BatchNorm2d(2 * c),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(2 * c * 4 * 4, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )
        # Lets the model summary show input and output shapes.
        self.example_input_array = torch.zeros(1, 1, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)  # on_step=True by default in training_step
        return loss

    def _evaluate(self, batch, prefix: str) -> None:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        # on_epoch=True by default here: the values are averaged over the epoch, weighted by batch size.
        self.log(f"{prefix}_loss", loss, prog_bar=True)
        self.log(f"{prefix}_acc", acc, prog_bar=True)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _progress_bar() -> L.Callback:
    from fulmen.callbacks import RichProgressBar, TQDMProgressBar

    try:
        import rich  # noqa: F401
    except ImportError:
        return TQDMProgressBar()
    return RichProgressBar()


def main(argv: list[str] | None = None) -> int:
    fast = os.environ.get("FULMEN_DEMO_FAST", "") not in ("", "0")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5 if fast else 12)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--root-dir", default=None, help="where lightning_logs/ goes (default: cwd)")
    parser.add_argument("--no-progress-bar", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    L.seed_everything(args.seed)
    start = time.perf_counter()

    datamodule = DigitsDataModule()
    model = DigitsCNN()
    callbacks = [] if args.no_progress_bar else [_progress_bar()]
    trainer = L.Trainer(
        max_epochs=args.epochs,
        callbacks=callbacks,
        enable_progress_bar=not args.no_progress_bar,
        default_root_dir=args.root_dir,
        log_every_n_steps=10,
    )
    trainer.fit(model, datamodule=datamodule)
    val_acc = float(trainer.callback_metrics["val_acc"])
    val_loss = float(trainer.callback_metrics["val_loss"])

    (test_metrics,) = trainer.test(model, datamodule=datamodule)
    elapsed = time.perf_counter() - start

    print(f"logs: {trainer.log_dir}")
    print(f"test metrics: {', '.join(f'{k}={v:.4f}' for k, v in sorted(test_metrics.items()))}")
    print(
        f"val_acc={val_acc:.4f} val_loss={val_loss:.4f} test_acc={test_metrics['test_acc']:.4f} "
        f"epochs={args.epochs} time={elapsed:.1f}s"
    )
    if val_acc < ACCURACY_THRESHOLD:
        print(f"FAILED: validation accuracy {val_acc:.4f} < {ACCURACY_THRESHOLD}", file=sys.stderr)
        return 1
    print(f"OK: validation accuracy {val_acc:.4f} >= {ACCURACY_THRESHOLD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
