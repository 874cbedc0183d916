"""SLURM automatic requeue: a real training process under SLURM's variables gets the requeue signal mid-epoch,
writes last.ckpt, global rank 0 runs ``scontrol requeue <job id>`` (a fake ``scontrol`` on PATH records its
arguments), every rank exits with 128 + signal; the requeued job (SLURM_RESTART_COUNT=1) resumes by itself and
ends with the weights of an uninterrupted run."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.plugins.environments import SLURMEnvironment
from fulmen.utilities.exceptions import MisconfigurationException

SCRIPT = Path(__file__).with_name("_slurm_script.py")
_SLURM_KEYS = [k for k in os.environ if k.startswith("SLURM_")] + [
    "FULMEN_AUTO_RESUME", "FULMEN_DISABLE_PREEMPTION", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
    "MASTER_PORT", "NODE_RANK", "PYTEST_CURRENT_TEST",
]


def _fake_scontrol(tmp_path: Path, exit_code: int = 0) -> Path:
    """A directory holding an ``scontrol`` that appends its arguments to ``scontrol.log`` (and exits with
    ``exit_code``, printing an error when it is not 0)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / "scontrol"
    exe.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{tmp_path / "scontrol.log"}"\n'
        + (f'echo "slurm_requeue error: Job is not requeueable" >&2\nexit {exit_code}\n' if exit_code else "")
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


def _scontrol_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "scontrol.log"
    return log.read_text().splitlines() if log.exists() else []


def _env(bin_dir: Path | None, rank: int = 0, ntasks: int = 1, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SLURM_KEYS}
    path = env.get("PATH", "")
    env["PATH"] = f"{bin_dir}{os.pathsep}{path}" if bin_dir is not None else path
    env.update(
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
        SLURM_NTASKS=str(ntasks),
        SLURM_NTASKS_PER_NODE=str(ntasks),
        SLURM_NNODES="1",
        SLURM_NODEID="0",
        SLURM_PROCID=str(rank),
        SLURM_LOCALID=str(rank),
        SLURM_NODELIST="localhost",
        SLURM_JOB_NAME="train",
        SLURM_JOB_ID="4242",
    )
    env.update(extra)
    return env


def _start(root: Path, out: Path, mode: str, env: dict[str, str], devices: int = 1) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(SCRIPT), str(root), str(out), mode, str(devices)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _signal_after(proc: subprocess.Popen[str], steps: int, sig: int) -> None:
    """Send ``sig`` once the process has reported ``steps`` finished training steps."""
    seen = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("step "):
            seen += 1
            if seen == steps:
                proc.send_signal(sig)
                return
    raise AssertionError(f"the process ended after {seen} steps: {proc.stderr.read()[-3000:] if proc.stderr else ''}")


def _run_and_signal(root: Path, out: Path, mode: str, env: dict[str, str], sig: int,
                    steps: int = 2) -> tuple[int, str]:
    proc = _start(root, out, mode, env)
    _signal_after(proc, steps, sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _run(root: Path, out: Path, mode: str, env: dict[str, str]) -> str:
    r = subprocess.run([sys.executable, str(SCRIPT), str(root), str(out), mode, "1"], env=env, capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr


def _assert_same_weights(ref: Path, got: Path) -> None:
    a, b = torch.load(ref, weights_only=True), torch.load(got, weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _last(root: Path) -> Path:
    return root / "checkpoints" / "last.ckpt"


def test_requeue_on_sigusr1_then_the_requeued_job_resumes_to_identical_weights(tmp_path: Path) -> None:
    ref = tmp_path / "ref.pt"
    _run(tmp_path / "ref", ref, "detect", {k: v for k, v in _env(None).items() if not k.startswith("SLURM_")})
    bin_dir = _fake_scontrol(tmp_path)
    root, out = tmp_path / "run", tmp_path / "out.pt"

    code, err = _run_and_signal(root, out, "detect", _env(bin_dir), signal.SIGUSR1)
    assert code == 128 + signal.SIGUSR1 == 138, err[-3000:]
    ckpt = torch.load(_last(root), weights_only=True)
    assert ckpt["global_step"] >= 2 and ckpt["fulmen"]["run_state"]["batch_in_epoch"] > 0  # mid-epoch
    assert _scontrol_calls(tmp_path) == ["requeue 4242"]
    assert "Requeued SLURM job 4242" in err
    assert not out.exists()

    # SLURM starts the same command again, with SLURM_RESTART_COUNT=1 and no ckpt_path
    err = _run(root, out, "detect", _env(bin_dir, SLURM_RESTART_COUNT="1"))
    assert f"SLURM requeued this job (SLURM_RESTART_COUNT=1): resuming from {_last(root)}" in err
    assert err.count("SLURM requeued this job") == 1
    _assert_same_weights(ref, out)
    assert _scontrol_calls(tmp_path) == ["requeue 4242"]  # finishing does not requeue


def test_array_job_is_requeued_by_its_array_id(tmp_path: Path) -> None:
    bin_dir = _fake_scontrol(tmp_path)
    env = _env(bin_dir, SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID="3", SLURM_JOB_ID="80")
    code, err = _run_and_signal(tmp_path / "r", tmp_path / "o.pt", "detect", env, signal.SIGUSR1)
    assert code == 138, err[-3000:]
    assert _scontrol_calls(tmp_path) == ["requeue 77_3"]


@pytest.mark.parametrize("broken", ["missing", "failing"])
def test_scontrol_missing_or_failing_still_saves_and_exits_138(tmp_path: Path, broken: str) -> None:
    bin_dir = _fake_scontrol(tmp_path, exit_code=1) if broken == "failing" else None
    env = _env(bin_dir)
    if broken == "missing":  # a machine with SLURM's client installed (the launch tests install it): hide it
        env["PATH"] = os.pathsep.join(
            d for d in env["PATH"].split(os.pathsep) if not (Path(d) / "scontrol").exists()
        )
    code, err = _run_and_signal(tmp_path / "r", tmp_path / "o.pt", "detect", env, signal.SIGUSR1)
    assert code == 138, err[-3000:]
    assert _last(tmp_path / "r").exists()
    assert "ERROR fulmen: Could not requeue the SLURM job: " in err
    if broken == "missing":
        assert "the `scontrol` command is not on PATH" in err
    else:
        assert _scontrol_calls(tmp_path) == ["requeue 4242"]
        assert "`scontrol requeue 4242` failed with exit code 1: slurm_requeue error: Job is not requeueable" in err
    assert f"The checkpoint {_last(tmp_path / 'r')} is written, so no work is lost" in err
    assert "Traceback" not in err


def test_auto_requeue_false_saves_and_exits_without_scontrol(tmp_path: Path) -> None:
    bin_dir = _fake_scontrol(tmp_path)
    code, err = _run_and_signal(tmp_path / "r", tmp_path / "o.pt", "off", _env(bin_dir), signal.SIGUSR1)
    assert code == 138, err[-3000:]
    assert _last(tmp_path / "r").exists()
    assert _scontrol_calls(tmp_path) == []


def test_custom_requeue_signal(tmp_path: Path) -> None:
    bin_dir = _fake_scontrol(tmp_path)
    # SIGHUP would end the process without a handler: it is caught, saved, requeued, and the code is 128 + 1
    code, err = _run_and_signal(tmp_path / "r", tmp_path / "o.pt", "SIGHUP", _env(bin_dir), signal.SIGHUP)
    assert code == 128 + signal.SIGHUP, err[-3000:]
    assert _last(tmp_path / "r").exists()
    assert _scontrol_calls(tmp_path) == ["requeue 4242"]
    # SIGUSR1 is not the requeue signal now: the default preemption (save, exit 138), no requeue
    code, err = _run_and_signal(tmp_path / "r2", tmp_path / "o.pt", "SIGHUP", _env(bin_dir), signal.SIGUSR1)
    assert code == 138, err[-3000:]
    assert _last(tmp_path / "r2").exists()
    assert _scontrol_calls(tmp_path) == ["requeue 4242"]


def test_two_tasks_only_rank_0_requeues_once_and_the_job_resumes(tmp_path: Path) -> None:
    """Two processes started like ``srun --ntasks=2``; the signal reaches rank 1 only: both ranks save at the
    agreed step, rank 0 (told by rank 1) runs scontrol once, both exit 138; the requeued job resumes exactly."""
    from fulmen.utilities.distributed import find_free_network_port

    bin_dir = _fake_scontrol(tmp_path)

    def launch(root: Path, out: Path, **extra: str) -> list[subprocess.Popen[str]]:
        port = str(find_free_network_port())
        return [
            _start(root, out, "detect", _env(bin_dir, rank=r, ntasks=2, MASTER_PORT=port, **extra), devices=2)
            for r in (0, 1)
        ]

    def finish(procs: list[subprocess.Popen[str]]) -> tuple[list[int], str]:
        errs = [p.communicate(timeout=180)[1] for p in procs]
        return [p.returncode for p in procs], errs[0][-3000:] + "\n----\n" + errs[1][-3000:]

    ref = tmp_path / "ref.pt"
    codes, err = finish(launch(tmp_path / "ref", ref, SLURM_JOB_ID="1"))
    assert codes == [0, 0], err
    ref_calls = _scontrol_calls(tmp_path)
    assert ref_calls == []

    root, out = tmp_path / "run", tmp_path / "out.pt"
    procs = launch(root, out, SLURM_JOB_ID="4243")
    _signal_after(procs[1], 3, signal.SIGUSR1)
    codes, err = finish(procs)
    assert codes == [138, 138], err
    assert _last(root).exists()
    assert _scontrol_calls(tmp_path) == ["requeue 4243"]

    codes, err = finish(launch(root, out, SLURM_JOB_ID="4243", SLURM_RESTART_COUNT="1"))
    assert codes == [0, 0], err
    assert "resuming from" in err
    _assert_same_weights(ref, out)
    assert _scontrol_calls(tmp_path) == ["requeue 4243"]


# ---------------------------------------------------------------- in-process: resume rules, bad arguments


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.start_step: int | None = None

    def on_train_start(self) -> None:
        self.start_step = self.trainer.global_step

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(16, 3)), batch_size=4)


def _trainer(root: Path, max_steps: int) -> L.Trainer:
    return L.Trainer(max_steps=max_steps, default_root_dir=root, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)


@pytest.fixture
def slurm_job(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in _SLURM_KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in {"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
                       "SLURM_JOB_ID": "9", "SLURM_JOB_NAME": "train"}.items():
        monkeypatch.setenv(key, value)
    return monkeypatch


def _saved_run(root: Path) -> Path:
    trainer = _trainer(root, 3)
    trainer.fit(_Tiny(), _loader())
    path = root / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_requeued_job_resumes_and_explicit_ckpt_path_wins(tmp_path: Path, slurm_job: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    last = _saved_run(tmp_path)
    other = tmp_path / "other.ckpt"
    t = _trainer(tmp_path / "elsewhere", 1)
    t.fit(_Tiny(), _loader())
    t.save_checkpoint(other)

    model = _Tiny()
    _trainer(tmp_path, 5).fit(model, _loader())  # a fresh submission (no restart count) starts from scratch
    assert model.start_step == 0

    slurm_job.setenv("SLURM_RESTART_COUNT", "2")
    model = _Tiny()
    with caplog.at_level(logging.INFO, logger="fulmen"):
        trainer = _trainer(tmp_path, 5)
        trainer.fit(model, _loader())
    assert model.start_step == 3 and trainer.global_step == 5
    assert trainer.ckpt_path == str(last)
    expected = (
        f"SLURM requeued this job (SLURM_RESTART_COUNT=2): resuming from {last}. Pass ckpt_path to choose another "
        "checkpoint, or set FULMEN_AUTO_RESUME=0 to start from scratch."
    )
    assert [r.getMessage() for r in caplog.records if "SLURM requeued" in r.getMessage()] == [expected]

    model = _Tiny()
    trainer = _trainer(tmp_path, 5)
    trainer.fit(model, _loader(), ckpt_path=str(other))  # explicit wins
    assert model.start_step == 1 and trainer.ckpt_path == str(other)

    slurm_job.setenv("FULMEN_AUTO_RESUME", "0")  # the off switch
    model = _Tiny()
    _trainer(tmp_path, 5).fit(model, _loader())
    assert model.start_step == 0


def test_requeued_job_without_checkpoint_starts_from_scratch_quietly(
    tmp_path: Path, slurm_job: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder
) -> None:
    slurm_job.setenv("SLURM_RESTART_COUNT", "1")
    model = _Tiny()
    _trainer(tmp_path, 2).fit(model, _loader())
    assert model.start_step == 0
    assert not [w for w in recwarn if "last checkpoint" in str(w.message)]


def test_restart_count_outside_slurm_does_not_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in _SLURM_KEYS:
        monkeypatch.delenv(key, raising=False)
    _saved_run(tmp_path)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # a stray variable, but no SLURM job: nothing changes
    model = _Tiny()
    _trainer(tmp_path, 5).fit(model, _loader())
    assert model.start_step == 0


@pytest.mark.parametrize("bad", [signal.SIGKILL, "SIGNOPE", 12345, 1.5, True])
def test_bad_requeue_signal_is_explained(bad: object) -> None:
    with pytest.raises(MisconfigurationException, match=r"requeue_signal=.*expected a signal a process can catch"):
        SLURMEnvironment(requeue_signal=bad)  # type: ignore[arg-type]


def test_requeue_signal_by_number_or_name() -> None:
    assert SLURMEnvironment(requeue_signal=int(signal.SIGHUP)).requeue_signal is signal.SIGHUP
    assert SLURMEnvironment(requeue_signal="SIGUSR2").requeue_signal is signal.SIGUSR2  # type: ignore[arg-type]


def test_bad_auto_requeue_is_explained() -> None:
    with pytest.raises(MisconfigurationException, match=r"auto_requeue='yes'.*True or False"):
        SLURMEnvironment(auto_requeue="yes")  # type: ignore[arg-type]


def test_requeue_outside_a_job_explains(slurm_job: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    slurm_job.delenv("SLURM_JOB_ID")
    with caplog.at_level(logging.ERROR, logger="fulmen"):
        assert SLURMEnvironment().requeue(checkpoint_path="/x/last.ckpt") is False
    (message,) = [r.getMessage() for r in caplog.records]
    assert "SLURM_JOB_ID is not set" in message and "/x/last.ckpt is written" in message
    assert "auto_requeue=False" in message
