"""The CLI and tuner examples run end to end as scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=170, env=env, check=False
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.timeout(180)
def test_cli_example_fit_with_the_yaml_config(tmp_path: Path) -> None:
    pytest.importorskip("jsonargparse")
    run(
        str(EXAMPLES / "cli_example.py"),
        "fit",
        "--config",
        str(EXAMPLES / "cli_config.yaml"),
        "--trainer.max_epochs=1",
        "--model.hidden=16",
        "--optimizer=AdamW",
        "--optimizer.lr=0.01",
    )
    saved = yaml.safe_load(Path("cli_logs/lightning_logs/version_0/config.yaml").read_text())
    assert saved["model"]["hidden"] == 16 and saved["optimizer"]["class_path"] == "torch.optim.AdamW"
    assert list(Path("cli_logs/lightning_logs/version_0/checkpoints").glob("*.ckpt"))


@pytest.mark.timeout(180)
def test_tuner_example() -> None:
    out = run(str(EXAMPLES / "tuner_example.py"), "--root", "tune").stdout
    assert "scale_batch_size: 300 (limit 300)" in out
    assert "lr_find: " in out and "LearningRateFinder callback: trained with lr=" in out
