"""Helper process for test_async_fork_training.py (not a test module).

Saves ``step 1`` synchronously, then starts an asynchronous fork-snapshot save of ``step 2`` to the same path
and changes the payload in place right after the call (to 3.0, which must never reach the file). The writer
process writes half of the file, touches ``<control>/midway`` and waits for ``<control>/gate`` before writing
the rest, so the test can SIGKILL this process (and the writer) at a known point in the middle of the write.
Prints ``writer <pid>`` and then waits to be killed.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fulmen.checkpoint import AsyncCheckpointIO, TorchCheckpointIO
from fulmen.utilities import cloud_io

NUMEL = 4_000_000  # 16 MB of float32


class _HalfwayGatedIO(TorchCheckpointIO):
    def __init__(self, control: Path) -> None:
        super().__init__()
        self.control = control

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()

        def write(f: Any) -> None:
            f.write(data[: len(data) // 2])
            f.flush()
            (self.control / "midway").touch()
            deadline = time.monotonic() + 60
            while not (self.control / "gate").exists() and time.monotonic() < deadline:
                time.sleep(0.005)
            f.write(data[len(data) // 2 :])

        fs, fs_path = cloud_io._resolve(path)
        cloud_io._atomic_write(fs, fs_path, write)


def main() -> None:
    path, control = sys.argv[1], Path(sys.argv[2])
    payload = torch.full((NUMEL,), 1.0)
    TorchCheckpointIO().save_checkpoint({"step": 1, "payload": payload}, path)
    plugin = AsyncCheckpointIO(_HalfwayGatedIO(control), snapshot="fork")
    payload.fill_(2.0)
    plugin.save_checkpoint({"step": 2, "payload": payload}, path)
    payload.fill_(3.0)  # after the call: must not reach the file
    os.write(1, f"writer {plugin._writer_pid}\n".encode())
    time.sleep(600)  # the test kills this process


if __name__ == "__main__":
    main()
