"""The examples run end to end as scripts (subprocesses, as a user would run them)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(
    script: str, *args: str, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=full_env,
        cwd=os.getcwd(),
    )
    assert proc.returncode == 0, (
        f"{script} exited with {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    )
    return proc


@pytest.mark.timeout(180)
def test_gan_manual_optimization_example() -> None:
    # one thread: these tiny MLPs run fastest that way, and the test stays quick on a busy machine
    proc = _run("gan_manual_optimization.py", "--threads", "1", "--no-progress-bar", timeout=170)
    out = proc.stdout
    match = re.search(r"OK: the generator covers (\d)/8 modes", out)
    assert match, out[-2000:]
    assert int(match.group(1)) >= 6
    # 2 optimizer steps per batch in manual optimization: 20 epochs x 128 batches x 2
    assert "optimizer steps (global_step): 5120" in out
    assert "modes_covered" in out and "radius_mean" in out
    assert "Traceback" not in proc.stderr


@pytest.mark.timeout(180)
def test_digits_demo_fast() -> None:
    proc = _run("digits_demo.py", "--threads", "1", timeout=170, env={"FULMEN_DEMO_FAST": "1"})
    out = proc.stdout
    # the model summary table with input/output shapes (from example_input_array)
    assert "In sizes" in out and "Out sizes" in out and "[1, 1, 8, 8]" in out
    match = re.search(r"val_acc=(\d\.\d+) .* test_acc=(\d\.\d+) epochs=(\d+)", out)
    assert match, out[-2000:]
    val_acc, test_acc, epochs = float(match.group(1)), float(match.group(2)), int(match.group(3))
    assert epochs == 5
    assert val_acc >= 0.97
    assert test_acc >= 0.9
    assert "OK: validation accuracy" in out
    assert re.search(r"test metrics: test_acc=\d\.\d+, test_loss=\d\.\d+", out)
    # the default logger (TensorBoard when installed, as in Lightning; else CSV) wrote the run's metrics
    # under the working directory
    expected = {"val_acc", "val_loss", "train_loss", "test_acc"}
    events = list(Path("lightning_logs").glob("version_*/events.out.tfevents.*"))
    if events:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(events[0].parent))
        acc.Reload()
        assert expected <= set(acc.Tags()["scalars"]), acc.Tags()["scalars"]
    else:
        metrics = list(Path("lightning_logs").glob("version_*/metrics.csv"))
        assert metrics, "no lightning_logs/version_*/metrics.csv or TensorBoard event file written"
        header = metrics[0].read_text().splitlines()[0].split(",")
        assert expected <= set(header), header


def test_torchmetrics_example() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "torchmetrics_example.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "callback_metrics:" in out.stdout and "val_f1" in out.stdout
