"""AsyncCheckpointIO's fork snapshot in real runs: Trainer fit + exact resume, DDP, and SIGKILL mid-write.

The writer is a forked child process; these tests check what the other tests cannot see from one call:
no writer process is left behind (reaped, no zombies), a run resumes exactly from the checkpoints written
by the children, DDP ranks save through it, and killing the training process (alone, or with its writer)
in the middle of a write never leaves a damaged checkpoint at the target path.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import ModelCheckpoint
from fulmen.checkpoint import AsyncCheckpointIO, TorchCheckpointIO, verify_checkpoint
from fulmen.checkpoint import io as checkpoint_io_module

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

_WAIT = 60.0  # generous bound for events that must happen; never reached when the code is right
WORKER = Path(__file__).with_name("_async_kill_worker.py")


def _data(n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g))


class Regressor(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=0.01)


def _trainer(root: Path, max_epochs: int, devices: int = 1, **kw: Any) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_fork" if devices > 1 else "auto",
        max_epochs=max_epochs,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )


def _assert_same_params(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), f"{name} differs"


class _ForkLog:
    """Records the writers AsyncCheckpointIO forks (in a file, so forked DDP ranks can record too)."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = path
        original = checkpoint_io_module.AsyncCheckpointIO._fork_writer

        def logged(
            plugin: AsyncCheckpointIO, wrapped: Any, checkpoint: Any, target: Any, options: Any
        ) -> Any:
            pid, fd = original(plugin, wrapped, checkpoint, target, options)
            with self.path.open("a") as f:
                f.write(f"{os.getpid()} {pid} {os.fspath(target)}\n")
            return pid, fd

        monkeypatch.setattr(checkpoint_io_module.AsyncCheckpointIO, "_fork_writer", logged)

    def entries(self) -> list[tuple[int, int, str]]:
        if not self.path.exists():
            return []
        return [
            (int(a), int(b), c)
            for a, b, c in (line.split(" ", 2) for line in self.path.read_text().splitlines())
        ]


def _zombie_children() -> list[int]:
    zombies = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            zombies.append(int(entry))
    return zombies


def test_fit_with_top_k_and_last_then_resume_is_exact_and_leaves_no_writer_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forks = _ForkLog(tmp_path / "forks.txt", monkeypatch)
    ds = _data()
    reference = Regressor()
    _trainer(tmp_path / "ref", 6).fit(reference, DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8))

    ckpt_dir = tmp_path / "ckpt"
    callback = ModelCheckpoint(dirpath=ckpt_dir, monitor="val_loss", save_top_k=2, save_last=True)
    first = Regressor()
    trainer = _trainer(tmp_path / "run", 3, callbacks=[callback], plugins=[AsyncCheckpointIO()])
    trainer.fit(first, DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8))

    written = forks.entries()
    assert len(written) >= 4  # every save (3 epochs: top-k + last) went through a forked writer
    assert {parent for parent, _, _ in written} == {os.getpid()}
    for _, writer, _ in written:  # every writer was reaped: no zombie, no process left
        with pytest.raises(ChildProcessError):
            os.waitpid(writer, os.WNOHANG)
    assert not set(_zombie_children()) & {writer for _, writer, _ in written}
    files = sorted(p.name for p in ckpt_dir.iterdir())
    assert len(files) == 3 and "last.ckpt" in files, files  # top 2 + last; the removed one is gone
    for name in files:
        verify_checkpoint(ckpt_dir / name)
    assert TorchCheckpointIO().load_checkpoint(ckpt_dir / "last.ckpt")["epoch"] == 2

    resumed = Regressor()
    again = _trainer(tmp_path / "run", 6, plugins=[AsyncCheckpointIO()])
    again.fit(
        resumed, DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8), ckpt_path=ckpt_dir / "last.ckpt"
    )
    assert again.global_step == 24
    _assert_same_params(reference, resumed)


def test_ddp_two_processes_save_through_forked_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch.distributed")
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    forks = _ForkLog(tmp_path / "forks.txt", monkeypatch)
    ds = _data()
    reference = Regressor()
    _trainer(tmp_path / "ref", 4).fit(reference, DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8))

    ckpt_dir = tmp_path / "ckpt"
    callback = ModelCheckpoint(dirpath=ckpt_dir, monitor="val_loss", save_top_k=2, save_last=True)
    first = Regressor()
    trainer = _trainer(
        tmp_path / "run", 2, devices=2, callbacks=[callback], plugins=[AsyncCheckpointIO(snapshot="fork")]
    )
    trainer.fit(first, DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=4))

    written = forks.entries()
    assert written, "no forked writer was used"
    assert len({parent for parent, _, _ in written}) == 1  # rank 0 writes the (unsharded) DDP checkpoints
    assert os.getpid() not in {parent for parent, _, _ in written}  # from inside the rank process
    assert {os.path.basename(target) for _, _, target in written} >= {"last.ckpt"}
    files = sorted(p.name for p in ckpt_dir.iterdir())
    assert len(files) == 3 and "last.ckpt" in files, files
    for name in files:
        verify_checkpoint(ckpt_dir / name)

    resumed = Regressor()  # DDP on 2 x 4 == one process on 8: resuming on one process continues exactly
    again = _trainer(tmp_path / "run", 4)
    again.fit(
        resumed, DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8), ckpt_path=ckpt_dir / "last.ckpt"
    )
    assert again.global_step == 16
    for (name, p), q in zip(reference.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, msg=lambda m, n=name: f"{n}: {m}")


def _wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + _WAIT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (gone, or a zombie waiting for an init that does not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc to follow the orphaned writer")
@pytest.mark.parametrize("kill_writer", [False, True], ids=["parent_only", "parent_and_writer"])
def test_sigkill_of_the_training_process_mid_write_never_leaves_a_damaged_file(
    tmp_path: Path, kill_writer: bool
) -> None:
    path = tmp_path / "ckpt" / "last.ckpt"
    control = tmp_path / "control"
    control.mkdir()
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(path), str(control)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("writer "), line
        writer = int(line.split()[1])
        _wait_for((control / "midway").exists, "the writer to be half-way through the file")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=_WAIT)
        if kill_writer:
            os.kill(writer, signal.SIGKILL)
        (control / "gate").touch()
        _wait_for(lambda: _gone(writer), "the writer process to end")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    verify_checkpoint(path)  # whole and undamaged either way
    loaded = TorchCheckpointIO().load_checkpoint(path)
    expected = 1 if kill_writer else 2  # an orphaned writer still completes the write it started
    assert loaded["step"] == expected
    assert torch.equal(loaded["payload"], torch.full((loaded["payload"].numel(),), float(expected)))
