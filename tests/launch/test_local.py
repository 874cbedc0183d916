"""``fulmen launch --target local`` (the job as processes here, rerun after a preemption like a scheduler would) and
the CLI's bad-input, dry-run and record behaviour."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

TRAIN = Path(__file__).with_name("_train.py")
STEPS = 12


def _cli(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "fulmen", *argv], capture_output=True, text=True, timeout=240, env=env, check=False, **kw
    )  # type: ignore[call-overload]


def _local(run_dir: Path, sleep: str = "0") -> list[str]:
    return [
        "launch",
        "--target",
        "local",
        "--accelerator",
        "cpu",
        "--dir",
        str(run_dir),
        str(TRAIN),
        str(run_dir / "out.pt"),
        "1",
        str(STEPS),
        sleep,
    ]


def test_local_job_preempted_is_rerun_and_resumes_to_equal_weights(tmp_path: Path) -> None:
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    r = _cli(*_local(ref_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fulmen", *_local(run_dir, sleep="0.3")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    progress = run_dir / "out.pt.progress"
    deadline = time.monotonic() + 120
    while not (progress.exists() and len(progress.read_text().split()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGUSR1)  # what a scheduler sends: the supervisor passes it to the job
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, out + err
    record = json.loads((run_dir / "launch.json").read_text())
    assert record["status"] == "COMPLETED" and record["restarts"] == 1 and record["target"] == "local"
    log = (run_dir / "job.log").read_text()
    assert "restart 0" in log and "restart 1" in log
    assert [int(s) for s in progress.read_text().split()] == list(range(1, STEPS + 1))  # resumed, not redone
    ref = torch.load(ref_dir / "out.pt", weights_only=True)
    got = torch.load(run_dir / "out.pt", weights_only=True)
    assert all(torch.equal(ref[k], got[k]) for k in ref)

    runs = _cli("runs", "--root", str(tmp_path))
    assert "ref" in runs.stdout and "run" in runs.stdout and runs.stdout.count("COMPLETED") == 2
    logs = _cli("logs", "run", "--root", str(tmp_path))
    assert logs.returncode == 0 and "restart 1" in logs.stdout


def test_local_crash_is_failed_with_its_log(tmp_path: Path) -> None:
    r = _cli(
        "launch",
        "--target",
        "local",
        "--accelerator",
        "cpu",
        "--dir",
        str(tmp_path / "c"),
        str(TRAIN),
        str(tmp_path / "c" / "out.pt"),
        "1",
        "5",
        "0",
        "crash",
    )
    assert r.returncode == 1
    assert "FAILED" in r.stdout and "the script crashed on purpose" in r.stderr
    assert json.loads((tmp_path / "c" / "launch.json").read_text())["restarts"] == 0


def test_bad_input_is_a_clear_error_and_nothing_is_submitted(tmp_path: Path) -> None:
    r = _cli("launch", "--target", "lsf", "--dir", str(tmp_path / "x"), str(TRAIN))
    assert r.returncode == 2 and "unknown launch target 'lsf'" in r.stderr and "slurm|kubernetes" in r.stderr
    r = _cli("launch", "--target", "slurm", "--dir", str(tmp_path / "x"), str(tmp_path / "missing.py"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert not (tmp_path / "x").exists()
    r = _cli("logs", "nope", "--root", str(tmp_path))
    assert r.returncode == 2 and "no launch 'nope'" in r.stderr


def test_dry_run_and_missing_tool_print_the_spec_and_the_submit_command(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("import fulmen as L\ntrainer = L.Trainer(devices=4, num_nodes=2)\n")
    r = _cli(
        "launch",
        "--target",
        "slurm",
        "--nodes",
        "2",
        "--devices",
        "8",
        "--time",
        "1:00:00",
        "--dry-run",
        "--dir",
        str(tmp_path / "s"),
        str(script),
        "--lr",
        "0.1",
    )
    assert r.returncode == 0, r.stderr
    assert "#SBATCH --signal=B:USR1@90" in r.stdout and f"sbatch --parsable {tmp_path / 's' / 'job.sbatch'}" in r.stdout
    assert "--devices 8 contradicts the script's Trainer(devices=4)" in r.stderr
    record = json.loads((tmp_path / "s" / "launch.json").read_text())
    assert record["status"] == "WRITTEN" and record["job_id"] is None and record["command"][-2:] == ["--lr", "0.1"]
    assert (tmp_path / "s" / "job.sbatch").read_text() in r.stdout
    if shutil.which("kubectl") is None:  # the tool is missing: the spec and the command, nothing submitted
        r = _cli(
            "launch",
            "--target",
            "kubernetes",
            "--devices",
            "4",
            "--nodes",
            "2",
            "--dir",
            str(tmp_path / "k"),
            str(script),
        )
        assert r.returncode == 0 and "'kubectl' is not installed here" in r.stdout
        assert "kind: Job" in r.stdout and f"kubectl apply -f {tmp_path / 'k' / 'job.yaml'}" in r.stdout


def test_stop_saves_and_ends_a_local_job_without_a_rerun(tmp_path: Path) -> None:
    run_dir = tmp_path / "job"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fulmen", *_local(run_dir, sleep="0.3")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    progress = run_dir / "out.pt.progress"
    deadline = time.monotonic() + 120
    while not (progress.exists() and len(progress.read_text().split()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    r = _cli("stop", "job", "--root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out + err  # the Trainer's SIGTERM exit: checkpoint written, not rerun
    record = json.loads((run_dir / "launch.json").read_text())
    assert record["status"] == "STOPPED" and record["restarts"] == 0
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and not (run_dir / "out.pt").exists()
    assert "STOPPED" in _cli("runs", "--root", str(tmp_path)).stdout
