"""Reliability: SIGKILL a process while it saves checkpoints; the file on disk must always be whole.

A child process saves a ~64 MB checkpoint to one path over and over, with increasing ``step``
values, and reports each completed save. The test kills it with SIGKILL at random moments, many
times, and after each kill checks that the file at the path loads, passes its checksums, and holds
a step that was completely written: the last reported one, or the next one if the kill came after
the rename but before the report. Every element of the payload records the step, so a file mixing
two saves would be caught too.
"""

from __future__ import annotations

import itertools
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from fulmen.checkpoint import TorchCheckpointIO, verify_checkpoint

NUMEL = 16_000_000  # float32: 64 MB of tensor data per checkpoint
KILLS = 12
WORKER = Path(__file__).with_name("_kill_save_worker.py")
TIMEOUT = 60.0

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork() and SIGKILL (POSIX)")


class _Worker:
    def __init__(self, path: Path, log: Path) -> None:
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2] / "src")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(path), str(NUMEL)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("<eof>")

    def expect(self, prefix: str) -> list[str]:
        try:
            line = self.lines.get(timeout=TIMEOUT)
        except queue.Empty:
            pytest.fail(f"worker sent nothing for {TIMEOUT}s while the test waited for {prefix!r}")
        assert line.startswith(prefix), f"expected {prefix!r} from the worker, got {line!r}"
        return line.split()[1:]

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        self._pump_thread.join(TIMEOUT)  # reads to EOF, which the exit guarantees
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._log.close()


def test_sigkill_during_save_never_leaves_a_partial_checkpoint(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    path = tmp_path / "last.ckpt"
    worker = _Worker(path, tmp_path / "worker-stderr.log")
    io = TorchCheckpointIO()
    next_step = 0
    last_verified = -1
    kills_mid_write = 0
    previous_leftovers: list[str] = []
    try:
        worker.expect("ready")
        for round_index in range(KILLS):
            context = f"(seed {seed}, kill {round_index + 1} of {KILLS})"
            worker.send(f"go {next_step}")
            (pid,) = worker.expect("pid")
            # Let it complete a few saves, timing them, then kill at a random point within one save.
            times = []
            last_saved = -1
            for _ in range(rng.randint(2, 3)):
                last_saved = int(worker.expect("saved")[0])
                times.append(time.monotonic())
                # the new writer's first completed save removed the temp file the killed one left (its pid
                # is dead), and nothing else
                still_there = [name for name in previous_leftovers if (tmp_path / name).exists()]
                assert not still_there, f"stale temp files of a dead writer were kept: {still_there} {context}"
            period = max(min(b - a for a, b in itertools.pairwise(times)), 0.005)
            time.sleep(rng.uniform(0.0, period))
            os.kill(int(pid), signal.SIGKILL)
            worker.send(f"reap {pid}")
            while True:  # saves reported before the child died
                line = worker.lines.get(timeout=TIMEOUT)
                if line.startswith("reaped"):
                    break
                assert line.startswith("saved"), f"unexpected worker output {line!r} {context}"
                last_saved = int(line.split()[1])

            leftovers = [name for name in os.listdir(tmp_path) if name.startswith(".last.ckpt.")]
            kills_mid_write += bool(leftovers)
            verify_checkpoint(path)  # complete zip, every record's CRC-32 matches
            checkpoint = io.load_checkpoint(path)
            step = checkpoint["step"]
            assert step in (last_saved, last_saved + 1), (
                f"file holds step {step}, last save {last_saved} {context}"
            )
            assert step > last_verified, f"step went back from {last_verified} to {step} {context}"
            payload = checkpoint["payload"]
            assert payload.numel() == NUMEL, context
            assert bool((payload == float(step)).all()), f"payload mixes saves {context}"
            last_verified = step
            next_step = max(step, last_saved) + 1
            # an orphaned temp file of the killed write (64 MB each) names its writer's host and pid
            for name in leftovers:
                assert f".{pid}." in name, f"temp file {name!r} does not name its writer {pid} {context}"
            previous_leftovers = leftovers
        # Guards against a vacuous pass: some kills must have landed while a write was in progress.
        assert kills_mid_write >= 1, f"no kill hit a write in progress (seed {seed}); the test did not test"
    finally:
        if worker.proc.poll() is None:
            worker.send("quit")
        worker.close()
    # the last kill's temp file, if any, is removed by the next save into the directory (this process's)
    io.save_checkpoint({"step": next_step, "payload": torch.zeros(1)}, path)
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt", "worker-stderr.log"]
