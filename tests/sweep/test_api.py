"""fulmen.sweep.run with Optuna-style objectives: warm workers on disjoint cores, exact trial counts, the same
seed gives the same trials (parallel=1 bitwise), and PruningCallback prunes through Optuna's pruner."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
import fulmen.sweep
from fulmen.sweep import PruningCallback

optuna = pytest.importorskip("optuna", reason="the sweep tests need the fulmen[sweep] extra (optuna)")


class Tiny(L.LightningModule):
    def __init__(self, lr: float, hidden: int):
        super().__init__()
        self.lr = lr
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))

    def training_step(self, batch, i):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, i):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def objective(trial):
    lr = trial.suggest_float("lr", 1e-3, 0.3, log=True)
    hidden = trial.suggest_categorical("hidden", [2, 4])
    L.seed_everything(0)
    x = torch.randn(32, 4)
    dl = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    trainer = L.Trainer(max_epochs=3, enable_progress_bar=False, enable_model_summary=False, logger=False,
                        enable_checkpointing=False, callbacks=[PruningCallback(trial, monitor="val_loss")])
    trainer.fit(Tiny(lr, hidden), dl, dl)
    trial.set_user_attr("cores", sorted(os.sched_getaffinity(0)))
    trial.set_user_attr("threads", torch.get_num_threads())
    trial.set_user_attr("pid", os.getpid())
    return float(trainer.callback_metrics["val_loss"])


def test_parallel_one_same_seed_same_trials_bitwise():
    a = fulmen.sweep.run(objective, trials=3, seed=5, pruner="none")
    b = fulmen.sweep.run(objective, trials=3, seed=5, pruner="none")
    assert [(t.params, t.value) for t in a.trials] == [(t.params, t.value) for t in b.trials]
    assert len({t.params["lr"] for t in a.trials}) == 3


def test_parallel_workers_are_warm_processes_on_disjoint_cores(tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores")
    study = fulmen.sweep.run(objective, trials=4, parallel=2, seed=1, dir=str(tmp_path), pruner="none")
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)
    by_pid = {}
    for t in study.trials:
        by_pid.setdefault(t.user_attrs["pid"], set()).update(t.user_attrs["cores"])
    assert len(by_pid) == 2 and os.getpid() not in by_pid  # two long-lived workers ran the four trials
    cores = list(by_pid.values())
    assert not cores[0] & cores[1]
    assert {t.user_attrs["threads"] for t in study.trials} == {len(os.sched_getaffinity(0)) // 2}
    assert (tmp_path / "study.db").is_file()


def test_pruning_callback_prunes_through_optunas_pruner():
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    for _ in range(2):  # two earlier trials that did far better at every step
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 0.01, "hidden": 2},
            distributions={"lr": optuna.distributions.FloatDistribution(1e-3, 0.3, log=True),
                           "hidden": optuna.distributions.CategoricalDistribution([2, 4])},
            value=0.0, intermediate_values={0: 0.0, 1: 0.0, 2: 0.0},
        ))
    study.optimize(objective, n_trials=1)
    t = study.trials[-1]
    assert t.state.name == "PRUNED" and sorted(t.intermediate_values) == [0, 1]  # stopped at the first allowed step


def test_bad_arguments():
    with pytest.raises(ValueError, match="direction='up'"):
        fulmen.sweep.run(objective, direction="up")
    with pytest.raises(ValueError, match="trials=0"):
        fulmen.sweep.run(objective, trials=0)
    with pytest.raises(ValueError, match="--sampler 'bayes' is not known"):
        fulmen.sweep.run(objective, trials=1, sampler="bayes")
    with pytest.raises(Exception, match="mode='avg'"):
        PruningCallback(None, mode="avg")


def test_digits_example_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("sklearn")
    example = Path(__file__).parents[2] / "examples" / "sweep_digits.py"
    proc = subprocess.run([sys.executable, str(example), "--trials", "3", "--parallel", "2", "--epochs", "1",
                           "--dir", str(tmp_path)], capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best: trial" in proc.stdout and (tmp_path / "study.db").is_file()
