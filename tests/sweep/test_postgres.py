"""One sweep over two workers through a real PostgreSQL server: a worker SIGKILLed mid-trial loses no trial, its
trial is failed as stale and retried (resuming in its folder), none is run twice; the password is never printed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tests.sweep.conftest import ARGPARSE, PG_PASSWORD, sweep

from fulmen.sweep.engine import make_storage

optuna = pytest.importorskip("optuna", reason="the sweep tests need the fulmen[sweep] extra (optuna)")


def _popen(*args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "fulmen", "sweep", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def _running_trial(folder):
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.startswith("trial_") and os.path.exists(os.path.join(folder, name, "progress.json")):
            result = os.path.join(folder, name, "result.json")
            if not os.path.exists(result):
                return name
    return None


def test_two_workers_one_killed_mid_trial(tmp_path, postgres_url):
    d = tmp_path / "s"
    a = _popen("--storage", postgres_url, "--name", "pg", "--dir", str(d), "--trials", "3", "--seed", "2",
               "--heartbeat", "1", "--pruner", "none", ARGPARSE, "--lr", "uniform(0.01, 0.1)", "--epochs", "4",
               "--sleep", "0.25")
    deadline = time.time() + 90
    while not (d / "sweep.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    b = _popen("worker", "pg", "--storage", postgres_url, "--worker", "b", "--heartbeat", "1")
    while _running_trial(d) is None and time.time() < deadline and a.poll() is None:  # A's trial has reported
        time.sleep(0.2)
    victim = _running_trial(d)
    a.send_signal(signal.SIGKILL)
    out_a = a.communicate(timeout=30)[0]
    out_b = b.communicate(timeout=150)[0]
    assert b.returncode == 0, out_b
    study = optuna.load_study(study_name="pg", storage=make_storage(postgres_url))
    states = [t.state.name for t in study.trials]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    # every asked parameter set completed exactly once: the dead worker's trial failed as stale and its retry
    # (same parameters, same folder) completed; no other failure, nothing left running
    assert len(complete) == 3 and len(failed) == 1, f"{states}\n{out_a}\n{out_b}"
    assert len({t.params["lr"] for t in complete}) == 3
    (retry,) = [t for t in complete if t.system_attrs.get("failed_trial") is not None]
    assert retry.system_attrs["failed_trial"] == failed[0].number and retry.params == failed[0].params
    assert retry.user_attrs["folder"] == failed[0].user_attrs["folder"] == victim
    assert f"trial {retry.number} resumed" in out_b
    evidence = f"{sorted(os.listdir(d / victim / 'checkpoints'))}\n{(d / victim / 'stderr.log').read_text()[-3000:]}\n{out_b}"
    assert f"trial {retry.number} [lr=" in out_b
    first = out_b.split(f"trial {retry.number} [lr=", 1)[1].split("\n", 1)[0]
    assert " epoch 0 " not in first, evidence  # it continued from the dead worker's checkpoint
    result = json.loads((d / victim / "result.json").read_text())
    assert result["steps"] == 4 and result["epochs"] == 4
    assert PG_PASSWORD not in out_a + out_b + (d / "sweep.json").read_text()
    assert "***" in out_a
    status = sweep("status", str(d), "--storage", postgres_url, "--format", "json").stdout
    assert PG_PASSWORD not in status and len(json.loads(status)) == 4
    proc = sweep("status", str(d), check=False)  # the folder records the URL without its password
    assert proc.returncode == 2 and "needs its password" in proc.stderr and PG_PASSWORD not in proc.stderr
