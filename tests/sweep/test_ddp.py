"""A trial that is a 2-process CPU DDP job: both ranks get the same parameters, rank 0 alone reports and decides
pruning, every rank obeys it at the same point (no hang), pruned and not pruned."""

from __future__ import annotations

import json

import pytest
from tests.sweep.conftest import SCRIPTS, sweep

optuna = pytest.importorskip("optuna", reason="the sweep tests need the fulmen[sweep] extra (optuna)")

DDP = str(SCRIPTS / "tiny_ddp.py")


def _records(folder):
    """The ranks' records of the last run (read and removed)."""
    out = []
    for p in folder.iterdir():
        out.append(json.loads(p.read_text()))
        p.unlink()
    return sorted(out, key=lambda r: r["rank"])


def test_ddp_trial_not_pruned_then_pruned(tmp_path):
    rec = tmp_path / "rec"
    rec.mkdir()
    d = tmp_path / "s"
    common = ["--dir", str(d), "--name", "ddp", "--seed", "0", DDP, "--lr", "loguniform(0.001, 0.01)", "--record",
              str(rec)]
    sweep("--trials", "1", *common, timeout=170)
    ranks = _records(rec)
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["lr"] == ranks[1]["lr"]  # the same parameters
    assert [r["epochs"] for r in ranks] == [4, 4]
    study = optuna.load_study(study_name="ddp", storage=f"sqlite:///{d}/study.db")
    (t,) = study.trials
    assert t.state.name == "COMPLETE" and sorted(t.intermediate_values) == [0, 1, 2, 3]  # rank 0 reported once each

    # two earlier trials that did far better at every step: the median pruner stops the next one at step 1
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 0.005}, distributions={"lr": optuna.distributions.FloatDistribution(0.001, 0.01, log=True)},
            value=0.0, intermediate_values={i: 0.0 for i in range(4)},
        ))
    sweep("--trials", "4", *common, timeout=170)
    study = optuna.load_study(study_name="ddp", storage=f"sqlite:///{d}/study.db")
    last = study.trials[-1]
    assert last.state.name == "PRUNED" and sorted(last.intermediate_values) == [0, 1]
    ranks = _records(rec)
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["lr"] == ranks[1]["lr"]
    assert [r["epochs"] for r in ranks] == [2, 2]  # both ranks stopped after the pruned epoch, together
