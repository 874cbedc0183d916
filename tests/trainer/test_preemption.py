"""Preemption: SIGTERM at random steps, restart with FULMEN_AUTO_RESUME=1, final weights equal an
uninterrupted run. Also SIGUSR1 and the documented exit codes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import torch

from fulmen.trainer.preemption import EXIT_CODE_SIGTERM, EXIT_CODE_SIGUSR1

SCRIPT = Path(__file__).with_name("_preempt_script.py")


def _env(auto_resume: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["FULMEN_AUTO_RESUME"] = "1" if auto_resume else "0"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run_and_signal(root: Path, out: Path, kill_after_steps: int, sig: int) -> int:
    """Start the script, send ``sig`` after it reports ``kill_after_steps`` more steps; return the exit code."""
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(root), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(True))
    seen = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("step "):
            seen += 1
            if seen == kill_after_steps:
                proc.send_signal(sig)
                break
    proc.stdout.read()
    code = proc.wait(timeout=120)
    if code not in (0, 128 + sig):
        raise AssertionError(f"unexpected exit {code}: {proc.stderr.read()[-2000:]}")
    return code


def test_sigterm_at_random_steps_resumes_to_identical_weights(tmp_path) -> None:
    ref_out = tmp_path / "ref.pt"
    subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "ref"), str(ref_out)], check=True, env=_env(False),
                   capture_output=True, timeout=120)
    root, out = tmp_path / "run", tmp_path / "out.pt"
    rng = random.Random(1234)
    kills = 0
    while kills < 10:
        code = _run_and_signal(root, out, rng.randint(1, 3), signal.SIGTERM)
        if code == 0:
            break
        assert code == EXIT_CODE_SIGTERM
        assert (root / "checkpoints" / "last.ckpt").exists()
        kills += 1
    assert kills == 10
    subprocess.run([sys.executable, str(SCRIPT), str(root), str(out)], check=True, env=_env(True),
                   capture_output=True, timeout=120)
    ref, got = torch.load(ref_out), torch.load(out)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


def test_sigusr1_exit_code_and_checkpoint(tmp_path) -> None:
    code = _run_and_signal(tmp_path / "r", tmp_path / "o.pt", 2, signal.SIGUSR1)
    assert code == EXIT_CODE_SIGUSR1 == 138
    ckpt = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] >= 2 and ckpt["fulmen"]["run_state"]["batch_in_epoch"] > 0
