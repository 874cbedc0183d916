"""Shared helpers for the sweep tests: run `fulmen sweep` as a user does, read its folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("optuna", reason="the sweep tests need the fulmen[sweep] extra (optuna)")

SCRIPTS = Path(__file__).parent / "scripts"
ARGPARSE = str(SCRIPTS / "tiny_argparse.py")
LIGHTNING_CLI = str(SCRIPTS / "tiny_lightning_cli.py")


def sweep(*args: str, cwd: str | os.PathLike[str] | None = None, timeout: float = 170,
          check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("FULMEN_SWEEP_TRIAL", None)
    proc = subprocess.run([sys.executable, "-m", "fulmen", "sweep", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"fulmen sweep {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc
