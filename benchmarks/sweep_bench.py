"""Sweep benchmarks (docs/sweeps.md#benchmark).

1. overhead: N trials of a fixed-length script through `fulmen sweep --parallel P` vs the same trials started
   by hand as separate processes, P at a time (ratio of wall times; goal <= 1.03).
2. digits: the CNN of examples/sweep_digits.py, 20 trials, TPE + median pruning, 2 at a time:
   `fulmen.sweep.run(parallel=2)` (warm forked workers) vs Optuna's `study.optimize(n_jobs=2)` (threads) with
   the same objective, and `fulmen sweep --parallel 2` (the CLI: one process per trial) beside them.
   optuna-integration's Lightning callback needs the `lightning` package; where it is not installed the
   Optuna baseline uses fulmen's PruningCallback in the same objective (the threads are what is measured).

    python benchmarks/sweep_bench.py [--seeds 0 1 2] [--trials 20] [--epochs 10] [--skip-cli]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "examples"))

FIXED_SCRIPT = '''
import argparse, time
import torch
import fulmen as L
from torch.utils.data import DataLoader, TensorDataset
p = argparse.ArgumentParser(); p.add_argument("--lr", type=float); p.add_argument("--seconds", type=float)
a = p.parse_args()
class M(L.LightningModule):
    def __init__(self):
        super().__init__(); self.l = torch.nn.Linear(2, 1)
    def training_step(self, b, i):
        time.sleep(a.seconds / 20)
        return self.l(b[0]).pow(2).mean()
    def validation_step(self, b, i):
        self.log("val_loss", self.l(b[0]).pow(2).mean())
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=a.lr)
dl = DataLoader(TensorDataset(torch.randn(20, 2)), batch_size=1)
L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
          enable_checkpointing=False, limit_val_batches=1).fit(M(), dl, dl)
'''

DIGITS_SCRIPT = '''
import argparse, sys
sys.path.insert(0, {examples!r})
import fulmen as L
from torch.utils.data import DataLoader
import sweep_digits as sd
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float); p.add_argument("--channels", type=int)
p.add_argument("--dropout", type=float); p.add_argument("--batch_size", type=int); p.add_argument("--epochs", type=int)
a = p.parse_args()
L.seed_everything(0)
train, val = sd.digits()
L.Trainer(max_epochs=a.epochs, logger=False, enable_progress_bar=False, enable_model_summary=False).fit(
    sd.DigitsCNN(a.lr, a.channels, a.dropout), DataLoader(train, batch_size=a.batch_size, shuffle=True),
    DataLoader(val, batch_size=256))
'''


def overhead(trials: int, parallel: int, seconds: float) -> dict[str, float]:
    tmp = tempfile.mkdtemp(prefix="fulmen-sweep-bench-")
    script = os.path.join(tmp, "fixed.py")
    with open(script, "w") as f:
        f.write(FIXED_SCRIPT)
    lrs = [0.01 * (i + 1) for i in range(trials)]
    start = time.perf_counter()
    running: list[subprocess.Popen[bytes]] = []
    for lr in lrs:  # by hand: P at a time
        while len(running) >= parallel:
            running = [p for p in running if p.poll() is None]
            time.sleep(0.02)
        running.append(subprocess.Popen([sys.executable, script, "--lr", str(lr), "--seconds", str(seconds)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for p in running:
        p.wait()
    by_hand = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fulmen", "sweep", "--quiet", "--dir", os.path.join(tmp, "s"),
                    "--parallel", str(parallel), "--pruner", "none", script, "--lr",
                    "[" + ", ".join(map(str, lrs)) + "]", "--seconds", str(seconds)], check=True)
    swept = time.perf_counter() - start
    return {"by_hand_s": by_hand, "fulmen_sweep_s": swept, "ratio": swept / by_hand}


def _optuna_threads(trials: int, seed: int) -> float:
    import optuna
    import sweep_digits as sd

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    start = time.perf_counter()
    study.optimize(sd.objective, n_trials=trials, n_jobs=2)
    return time.perf_counter() - start


def _fulmen_api(trials: int, seed: int) -> tuple[float, list[tuple[dict, float | None]]]:
    import sweep_digits as sd

    import fulmen.sweep

    start = time.perf_counter()
    study = fulmen.sweep.run(sd.objective, trials=trials, parallel=2, seed=seed, sampler="tpe", pruner="median",
                             dir=tempfile.mkdtemp(prefix="fulmen-sweep-bench-"))
    return time.perf_counter() - start, [(t.params, t.value) for t in study.trials]


def _fulmen_cli(trials: int, seed: int, epochs: int) -> float:
    tmp = tempfile.mkdtemp(prefix="fulmen-sweep-bench-")
    script = os.path.join(tmp, "digits_script.py")
    with open(script, "w") as f:
        f.write(DIGITS_SCRIPT.format(examples=os.path.join(ROOT, "examples")))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fulmen", "sweep", "--quiet", "--dir", os.path.join(tmp, "s"), "--trials",
                    str(trials), "--parallel", "2", "--seed", str(seed), "--sampler", "tpe", "--pruner", "median",
                    script, "--lr", "loguniform(1e-4, 3e-1)", "--channels", "choice(8, 16, 32)", "--dropout",
                    "uniform(0, 0.5)", "--batch_size", "choice(32, 64, 128)", "--epochs", str(epochs)], check=True)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--overhead-trials", type=int, default=4)
    p.add_argument("--overhead-seconds", type=float, default=10.0)
    p.add_argument("--skip-cli", action="store_true")
    p.add_argument("--skip-overhead", action="store_true")
    args = p.parse_args()
    import sweep_digits as sd

    sd.EPOCHS = args.epochs
    out: dict[str, object] = {"load_average_at_start": os.getloadavg(), "cores": len(os.sched_getaffinity(0))}
    if not args.skip_overhead:
        out["overhead"] = overhead(args.overhead_trials, 2, args.overhead_seconds)
        print(json.dumps(out["overhead"]), flush=True)
    rows = []
    for seed in args.seeds:
        api, trials_a = _fulmen_api(args.trials, seed)
        _, trials_b = _fulmen_api(args.trials, seed) if seed == args.seeds[0] else (0.0, trials_a)
        threads = _optuna_threads(args.trials, seed)
        row = {"seed": seed, "fulmen_api_s": api, "optuna_threads_s": threads, "ratio": api / threads,
               "same_params_on_rerun": [t[0] for t in trials_a] == [t[0] for t in trials_b]}
        if not args.skip_cli:
            row["fulmen_cli_s"] = _fulmen_cli(args.trials, seed, args.epochs)
        rows.append(row)
        print(json.dumps(row), flush=True)
    out["digits"] = rows
    out["digits_median_ratio"] = statistics.median(r["ratio"] for r in rows)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
