"""Remote checkpoint folders: an S3-compatible server (moto's server mode on 127.0.0.1, started by a fixture)
reached through s3fs. A job whose ModelCheckpoint folder is ``s3://...`` is preempted, rerun by
``fulmen launch --target local`` and resumes from the newest complete checkpoint in the bucket (weights equal to an
uninterrupted run); an upload killed midway leaves that checkpoint intact and findable."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Generator
from pathlib import Path

import pytest
import torch

TRAIN = Path(__file__).with_name("_train.py")
STEPS = 10


@pytest.fixture(scope="module")
def s3_env() -> Generator[dict[str, str], None, None]:
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is in fulmen[dev]")
    s3fs = pytest.importorskip("s3fs", reason="s3fs is in fulmen[dev]")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        s3fs.S3FileSystem(skip_instance_cache=True).mkdir("ckpts")
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def _launch(
    run_dir: Path, s3_env: dict[str, str], ckpt_url: str | None, sleep: str = "0", extra: tuple[str, ...] = ()
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(s3_env, OMP_NUM_THREADS="1")
    if ckpt_url:
        env["LAUNCH_TEST_CKPT_DIR"] = ckpt_url
    argv = [
        sys.executable,
        "-m",
        "fulmen",
        "launch",
        "--target",
        "local",
        "--accelerator",
        "cpu",
        "--dir",
        str(run_dir),
        *extra,
        str(TRAIN),
        str(run_dir / "out.pt"),
        "1",
        str(STEPS),
        sleep,
    ]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _signal_at(proc: subprocess.Popen[str], progress: Path, steps: int) -> None:
    deadline = time.monotonic() + 120
    while not (progress.exists() and len(progress.read_text().split()) >= steps):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGUSR1)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def reference(s3_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    run_dir = tmp_path_factory.mktemp("s3_ref")
    proc = _launch(run_dir, s3_env, None)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, out + err
    return _weights(run_dir / "out.pt")


def test_preempted_job_resumes_from_the_newest_checkpoint_in_the_bucket(
    s3_env: dict[str, str], reference: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    import s3fs

    run_dir = tmp_path / "run"
    proc = _launch(run_dir, s3_env, "s3://ckpts/run1", sleep="0.3")
    _signal_at(proc, run_dir / "out.pt.progress", 3)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, out + err + (run_dir / "job.log").read_text()
    assert json.loads((run_dir / "launch.json").read_text())["restarts"] == 1
    steps = [int(s) for s in (run_dir / "out.pt.progress").read_text().split()]
    assert steps == list(range(1, STEPS + 1)), steps  # the rerun went on from the bucket's checkpoint
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert fs.exists("ckpts/run1/last.ckpt")
    got = _weights(run_dir / "out.pt")
    assert all(torch.equal(reference[k], got[k]) for k in reference)


def test_an_upload_killed_midway_leaves_the_newest_complete_checkpoint(
    s3_env: dict[str, str], reference: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    import s3fs

    run_dir = tmp_path / "run"
    # preempted with no restart left: the bucket holds the preemption checkpoint
    proc = _launch(run_dir, s3_env, "s3://ckpts/run2", sleep="0.3", extra=("--max-restarts", "0"))
    _signal_at(proc, run_dir / "out.pt.progress", 3)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 138, out + err
    assert json.loads((run_dir / "launch.json").read_text())["status"] == "PREEMPTED"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    before = fs.cat_file("ckpts/run2/last.ckpt")
    saved_step = torch.load(__import__("io").BytesIO(before), weights_only=True)["global_step"]

    # a writer killed while uploading a newer last.ckpt (multipart: parts sent, never completed)
    killer = textwrap.dedent(
        """
        import os, s3fs
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        f = fs.open("ckpts/run2/last.ckpt", "wb", block_size=5 * 2**20)
        f.write(b"\\0" * (12 * 2**20))
        f.flush()
        os.kill(os.getpid(), 9)
        """
    )
    r = subprocess.run([sys.executable, "-c", killer], env={**os.environ, **s3_env}, capture_output=True, timeout=120)
    assert r.returncode == -9, r.stderr
    assert fs.cat_file("ckpts/run2/last.ckpt") == before  # the object is still the complete checkpoint

    # launched again (resume asked for): the job goes on from the newest complete checkpoint
    proc = _launch(run_dir, s3_env, "s3://ckpts/run2", extra=("--env", "FULMEN_AUTO_RESUME=1"))
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, out + err + (run_dir / "job.log").read_text()
    steps = [int(s) for s in (run_dir / "out.pt.progress").read_text().split()]
    assert steps == list(range(1, STEPS + 1)) and saved_step == steps.index(saved_step) + 1, (steps, saved_step)
    got = _weights(run_dir / "out.pt")
    assert all(torch.equal(reference[k], got[k]) for k in reference)


def _dry_run(script: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fulmen",
            "launch",
            "--target",
            "slurm",
            "--dry-run",
            "--dir",
            str(script.parent / "run"),
            *extra,
            str(script),
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_an_unreachable_bucket_is_refused_before_anything_is_written(s3_env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text('from fulmen.callbacks import ModelCheckpoint\nck = ModelCheckpoint(dirpath="s3://nosuch/run")\n')
    r = _dry_run(script, s3_env)
    assert r.returncode == 2 and "cannot reach the checkpoint bucket of 's3://nosuch/run'" in r.stderr, r.stderr
    assert "--no-check-buckets" in r.stderr and not (tmp_path / "run").exists()
    down = {**s3_env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}  # nothing listens there
    r = _dry_run(script, down)
    assert r.returncode == 2 and "s3://nosuch/run" in r.stderr, r.stderr
    assert _dry_run(script, s3_env, "--no-check-buckets").returncode == 0
    script.write_text('from fulmen.callbacks import ModelCheckpoint\nck = ModelCheckpoint(dirpath="s3://ckpts/ok")\n')
    r = _dry_run(script, s3_env)
    assert r.returncode == 0, r.stderr
