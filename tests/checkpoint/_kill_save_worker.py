"""Helper process for test_kill_during_save.py (not a test module).

It imports torch once, then, for each ``go <first_step>`` line on stdin, forks a child that saves
checkpoints to the same path forever with increasing steps, printing ``saved <step>`` after each
save returns. The test SIGKILLs the child at a random moment and sends ``reap <pid>``. Forking from
this already-initialised process makes each kill round cost milliseconds instead of a fresh
interpreter and torch import. Only ``os.write`` is used for output so nothing sits in a buffer that
a fork would duplicate.
"""

from __future__ import annotations

import os
import sys

import torch

from fulmen.checkpoint import TorchCheckpointIO


def _save_forever(path: str, first_step: int, numel: int) -> None:
    io = TorchCheckpointIO()
    payload = torch.empty(numel, dtype=torch.float32)
    step = first_step
    while True:
        payload.fill_(float(step))  # every element records the step: a mixed file is detectable
        io.save_checkpoint({"step": step, "payload": payload}, path)
        os.write(1, f"saved {step}\n".encode())
        step += 1


def main() -> None:
    path, numel = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(1)
    os.write(1, b"ready\n")
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        command, *args = line.split()
        if command == "go":
            pid = os.fork()
            if pid == 0:
                try:
                    _save_forever(path, int(args[0]), numel)
                finally:
                    os._exit(1)
            os.write(1, f"pid {pid}\n".encode())
        elif command == "reap":
            pid = int(args[0])
            _, status = os.waitpid(pid, 0)
            os.write(1, f"reaped {pid} {status}\n".encode())
        elif command == "quit":
            return


if __name__ == "__main__":
    main()
