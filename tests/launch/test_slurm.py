"""``fulmen launch --target slurm`` on a real single-node SLURM cluster (conftest.slurm_cluster): a 2-process CPU
DDP job runs to the end; a job signalled mid-run (``scancel --batch --signal=USR1``: the Trainer saves, rank 0 runs
``scontrol requeue``) is requeued, resumes by itself and ends with weights bitwise equal to the uninterrupted run;
a crashing script is reported failed with its log and is not requeued."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

SlurmCluster = Any  # conftest.SlurmCluster (the fixture)

TRAIN = Path(__file__).with_name("_train.py")
STEPS = "12"


def _launch(
    cluster: SlurmCluster,
    run_dir: Path,
    *args: str,
    wait: bool = True,
    devices: int = 2,
    sleep: str = "0",
) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable,
        "-m",
        "fulmen",
        "launch",
        "--target",
        "slurm",
        "--accelerator",
        "cpu",
        "--devices",
        str(devices),
        "--dir",
        str(run_dir),
        "--env",
        "OMP_NUM_THREADS=1",
        "--env",
        "PYTHONUNBUFFERED=1",
    ]
    argv += ["--wait"] if wait else []
    argv += [str(TRAIN), str(run_dir / "out.pt"), str(devices), STEPS, sleep, *args]
    return subprocess.run(argv, env=cluster.env, capture_output=True, text=True, timeout=300, check=False)


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "launch.json").read_text())


def _job(cluster: SlurmCluster, job_id: str) -> dict[str, str]:
    out = cluster.run("scontrol", "show", "job", "-o", job_id).stdout
    return dict(part.split("=", 1) for part in out.split() if "=" in part)


@pytest.fixture(scope="module")
def reference(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted 2-process run (also the first test's subject)."""
    run_dir = tmp_path_factory.mktemp("slurm_ref")
    r = _launch(slurm_cluster, run_dir)
    assert r.returncode == 0, r.stdout + r.stderr + slurm_cluster.logs()
    return run_dir


def test_two_process_ddp_job_runs_to_the_end(slurm_cluster: SlurmCluster, reference: Path) -> None:
    record = _record(reference)
    assert record["target"] == "slurm" and record["status"] == "COMPLETED" and record["job_id"]
    job = _job(slurm_cluster, record["job_id"])
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "0" and job["NumTasks"] == "2"
    assert (reference / "out.pt").exists()
    assert (reference / "checkpoints").is_dir()  # FULMEN_DEFAULT_ROOT_DIR: the run folder
    log = (reference / f"slurm-{record['job_id']}.out").read_text()
    assert "restart 0" in log and "tasks exited with 0" in log
    runs = subprocess.run(
        [sys.executable, "-m", "fulmen", "runs", "--root", str(reference)],
        env=slurm_cluster.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert record["job_id"] in runs and "COMPLETED" in runs
    logs = subprocess.run(
        [sys.executable, "-m", "fulmen", "logs", record["job_id"], "--root", str(reference)],
        env=slurm_cluster.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert logs == log  # found by its SLURM job id


def test_signalled_job_is_requeued_and_resumes_to_bitwise_equal_weights(
    slurm_cluster: SlurmCluster, reference: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    r = _launch(slurm_cluster, run_dir, wait=False, sleep="0.3")
    assert r.returncode == 0, r.stderr
    job_id = _record(run_dir)["job_id"]
    progress = run_dir / "out.pt.progress"
    deadline = time.monotonic() + 180
    while not (progress.exists() and len(progress.read_text().split()) >= 4):
        assert time.monotonic() < deadline, (run_dir / f"slurm-{job_id}.out").read_text(errors="replace")
        assert _job(slurm_cluster, job_id).get("JobState") in ("PENDING", "RUNNING", "CONFIGURING")
        time.sleep(0.2)
    # SIGUSR1 to the batch shell (what --signal=B:USR1@90 sends before the time limit); it passes it to the tasks
    sig = slurm_cluster.run("scancel", "--batch", "--signal=USR1", job_id)
    assert sig.returncode == 0, sig.stderr
    seen_states = set()
    while True:
        job = _job(slurm_cluster, job_id)
        seen_states.add(job.get("JobState"))
        if job.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            break
        assert time.monotonic() < deadline + 120, job
        time.sleep(0.5)
    log = (run_dir / f"slurm-{job_id}.out").read_text(errors="replace")
    assert job["JobState"] == "COMPLETED", log
    assert job["Restarts"] == "1", log  # requeued once by rank 0's `scontrol requeue`, not again
    assert "restart 0" in log and "restart 1" in log  # --open-mode=append kept the first run's log
    steps = [int(s) for s in progress.read_text().split()]
    # each step ran once: the rerun went on from the preemption checkpoint (from scratch would repeat 1, 2, ...)
    assert steps == list(range(1, int(STEPS) + 1)), steps
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert 0 < ckpt["global_step"] < int(STEPS)
    ref = torch.load(reference / "out.pt", weights_only=True)
    got = torch.load(run_dir / "out.pt", weights_only=True)
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key


def test_crashing_script_is_reported_failed_with_its_log_and_not_requeued(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    run_dir = tmp_path / "crash"
    r = _launch(slurm_cluster, run_dir, "crash", devices=1)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED" in r.stdout
    assert "the script crashed on purpose" in r.stderr  # the log's tail
    record = _record(run_dir)
    assert record["status"] == "FAILED"
    assert _job(slurm_cluster, record["job_id"])["Restarts"] == "0"
