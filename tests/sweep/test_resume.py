"""Kill the sweep anywhere, run the same command again: nothing lost, no trial run twice from scratch, and the
final table equals an uninterrupted sweep's (same seed)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from tests.sweep.conftest import ARGPARSE, sweep

pytest.importorskip("optuna", reason="the sweep tests need the fulmen[sweep] extra (optuna)")

ARGS = [ARGPARSE, "--lr", "loguniform(0.01, 0.2)", "--hidden", "choice(2, 3)", "--epochs", "3", "--sleep", "0.15"]
OPTS = ["--trials", "3", "--seed", "11", "--name", "k"]


def _start(folder):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "fulmen", "sweep", "--dir", str(folder), *OPTS, *ARGS],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _table(folder):
    rows = json.loads(sweep("status", str(folder), "--format", "json").stdout)
    return [(r["trial"], r["state"], r["params"], r["value"]) for r in rows]


def _running_trial_pid(folder):
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        info = os.path.join(folder, name, "process.json")
        if name.startswith("trial_") and os.path.exists(info):
            with open(info) as f:
                pid = json.load(f)["pid"]
            try:
                os.kill(pid, 0)
                return pid
            except OSError:
                continue
    return None


def test_kill_at_random_points_and_resume_gives_the_uninterrupted_table(tmp_path):
    reference = _start(tmp_path / "ref")  # runs beside the killed one (one core each)
    rng = random.Random(1234)
    folder = tmp_path / "killed"
    kinds = ["driver-sigkill", "trial-sigkill", "driver-sigterm", "driver-sigkill"]
    kills, transcript = 0, []
    proc = _start(folder)
    for kind in kinds:
        deadline = time.time() + 60  # a random point inside a running trial (start-up, training, checkpointing)
        while _running_trial_pid(folder) is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(rng.uniform(0.2, 4.0))
        if proc.poll() is not None:
            break
        if kind == "trial-sigkill":
            pid = _running_trial_pid(folder)
            if pid is None:
                continue
            os.kill(pid, signal.SIGKILL)
            kills += 1
            continue
        proc.send_signal(signal.SIGKILL if kind == "driver-sigkill" else signal.SIGTERM)
        transcript.append(proc.communicate(timeout=60)[0])
        kills += 1
        proc = _start(folder)  # the same command again
    transcript.append(proc.communicate(timeout=120)[0])
    assert proc.returncode == 0, "\n".join(transcript)
    assert kills >= 3
    out = reference.communicate(timeout=120)[0]
    assert reference.returncode == 0, out
    assert _table(folder) == _table(tmp_path / "ref")
    text = "\n".join(transcript)
    # no trial started twice from scratch: every start after the first is a resume
    for n in range(3):
        assert text.count(f"trial {n} started") == 1, text
    assert "resumed" in text or "interrupted" in text
