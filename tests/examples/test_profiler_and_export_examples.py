"""The profiler and export examples run end to end as scripts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=170, env=env, check=False
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.timeout(180)
def test_profiler_example() -> None:
    out = run(str(EXAMPLES / "profiler_example.py"), "--root", "prof").stdout
    assert "the slow hook: | [Callback]SlowCallback.on_train_batch_end" in out
    assert Path("prof/fit-advanced.txt").read_text().count("Profile stats for:") > 5
    trace = json.loads(Path("prof/fit-torch.pt.trace.json").read_text())
    assert any(e.get("name") == "run_training_batch" for e in trace["traceEvents"])


@pytest.mark.timeout(180)
def test_export_example() -> None:
    out = run(str(EXAMPLES / "export_example.py"), "--out", "exp").stdout
    diffs = [float(d) for d in re.findall(r"max \|diff\| = ([0-9.e+-]+)", out)]
    expected = 2 + ("ONNX        skipped" not in out) + ("safetensors skipped" not in out)
    assert len(diffs) == expected and max(diffs) < 1e-4, out
