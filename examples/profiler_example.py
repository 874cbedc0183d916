"""Profile a training run: per-hook timings, cProfile statistics and a torch.profiler trace.

    .venv/bin/python examples/profiler_example.py                  # reports under ./profiler_example_logs
    .venv/bin/python examples/profiler_example.py --root /tmp/prof

What it shows:

* ``Trainer(profiler="simple")`` - mean/total time of every hook, step, backward and optimizer step;
* ``AdvancedProfiler`` - cProfile statistics per action (which functions took the time);
* ``PyTorchProfiler`` - a ``*.pt.trace.json`` trace: open it at https://ui.perfetto.dev (or
  ``chrome://tracing``, or TensorBoard's profiler plugin) to see each hook as a span above its operators;
* a slow user hook (``on_train_batch_end`` sleeping 2 ms) standing out in every report.

The default (``profiler=None``) does nothing and adds no work to the step loop.
Runs in a few seconds on a CPU.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import Callback
from fulmen.profilers import AdvancedProfiler, PyTorchProfiler, SimpleProfiler


class ConvNet(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class SlowCallback(Callback):
    """Something expensive in a hook, for the profiler to find."""

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        time.sleep(0.002)


def loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(512, 1, 16, 16, generator=g), torch.randint(0, 10, (512,), generator=g))
    return DataLoader(data, batch_size=32, shuffle=True), DataLoader(data, batch_size=64)


def run(profiler: Any, root: str) -> None:
    trainer = L.Trainer(
        default_root_dir=root,
        max_epochs=1,
        profiler=profiler,
        callbacks=[SlowCallback()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(ConvNet(), *loaders())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="profiler_example_logs")
    args = parser.parse_args()
    L.seed_everything(0)

    run(SimpleProfiler(dirpath=args.root, filename="simple"), args.root)
    with open(os.path.join(args.root, "fit-simple.txt")) as f:
        report = f.read()
    print(report)
    slow = next(line for line in report.splitlines() if "SlowCallback.on_train_batch_end" in line)
    print("the slow hook:", " ".join(slow.split()))

    run(AdvancedProfiler(dirpath=args.root, filename="advanced", line_count_restriction=8), args.root)
    print(f"cProfile report: {os.path.join(args.root, 'fit-advanced.txt')}")

    profiler = PyTorchProfiler(dirpath=args.root, filename="torch", row_limit=15)
    run(profiler, args.root)
    print(f"torch.profiler trace (open in https://ui.perfetto.dev): {profiler.trace_path}")


if __name__ == "__main__":
    main()
