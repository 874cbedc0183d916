"""Preemption: SIGTERM (spot instances, Kubernetes eviction) and SIGUSR1 (SLURM before its time limit).

The contract:
1. On the signal the handler only records it. The current training step finishes.
2. At the next batch boundary every rank writes (collectively) a full checkpoint,
   ``<checkpoint dir>/last.ckpt`` (the first ModelCheckpoint's dirpath, else
   ``<default_root_dir>/checkpoints``), atomically.
3. The process exits with :data:`EXIT_CODE_SIGTERM` (143) or :data:`EXIT_CODE_SIGUSR1` (138), the
   ``128 + signal`` convention, so schedulers treat it as "stopped by a signal" and restart it.
4. Running the same command again with ``ckpt_path="last"`` or ``FULMEN_AUTO_RESUME=1`` resumes exactly.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Generator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer

EXIT_CODE_SIGTERM = 128 + signal.SIGTERM
EXIT_CODE_SIGUSR1 = 128 + signal.SIGUSR1
_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is written; its ``code`` is the documented exit code."""

    collective = True  # every rank raises it at the same step: not a failure to propagate

    def __init__(self, signum: int, path: str) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.path = path


@contextmanager
def preemption_handlers(trainer: Trainer) -> Generator[None, None, None]:
    """Install the handlers for the duration of ``fit`` (main thread only; restored afterwards)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or os.environ.get("FULMEN_DISABLE_PREEMPTION") == "1"
    ):
        yield
        return
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        trainer._preempt_signal = signum
        trainer.received_sigterm = signum == signal.SIGTERM

    register = getattr(trainer.strategy, "on_preemption_request", None)
    if register is not None:  # multi-process: a signal seen by another rank counts here too
        register(lambda signum: setattr(trainer, "_preempt_signal", signum))
    for sig in _SIGNALS:
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):  # pragma: no cover - exotic platforms
            continue
    try:
        yield
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)


def preemption_checkpoint_path(trainer: Trainer) -> str:
    for cb in trainer.checkpoint_callbacks:
        dirpath = getattr(cb, "dirpath", None)
        if dirpath:
            return os.path.join(str(dirpath), "last.ckpt")
    return os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")


def handle_preemption(trainer: Trainer) -> None:
    """Called by the fit loop at a batch boundary once a signal was received: save, then exit."""
    signum = trainer._preempt_signal
    assert signum is not None
    agree = getattr(trainer.strategy, "agree_preemption", None)
    if agree is not None and not agree(signum, trainer.global_step):
        return  # multi-process: keep training until the step every rank agreed to save at
    path = preemption_checkpoint_path(trainer)
    trainer.save_checkpoint(path)
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "dirpath", None) and os.path.dirname(path) == str(cb.dirpath):
            try:
                cb.last_model_path = path  # type: ignore[attr-defined]
            except AttributeError:  # pragma: no cover
                pass
    raise Preempted(signum, path)
