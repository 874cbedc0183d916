"""Preemption: SIGTERM (spot instances, Kubernetes eviction) and SIGUSR1 (SLURM before its time limit).

The contract:
1. On the signal the handler only records it. The current training step finishes.
2. At the next batch boundary every rank writes (collectively) a full checkpoint,
   ``<checkpoint dir>/last.ckpt`` (the first ModelCheckpoint's dirpath, else
   ``<default_root_dir>/checkpoints``), atomically.
3. The process exits with :data:`EXIT_CODE_SIGTERM` (143) or :data:`EXIT_CODE_SIGUSR1` (138), the
   ``128 + signal`` convention, so schedulers treat it as "stopped by a signal" and restart it.
4. Running the same command again with ``ckpt_path="last"`` or ``FULMEN_AUTO_RESUME=1`` resumes exactly.

Under SLURM (the cluster environment is a :class:`SLURMEnvironment` with ``auto_requeue=True``) its
``requeue_signal`` (default SIGUSR1) is handled too, and after the checkpoint global rank 0 runs
``scontrol requeue <job id>`` before every rank exits with ``128 + signal``. The requeued job
(``SLURM_RESTART_COUNT`` >= 1) resumes from the newest ``last.ckpt`` by itself (``lifecycle._resolve_ckpt_path``).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Generator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from fulmen.plugins.environments import ClusterEnvironment, SLURMEnvironment, detect_cluster_environment

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

    def record(signum: int) -> None:
        if trainer._preempt_signal is None:  # the first signal decides (exit code, requeue)
            trainer._preempt_signal = signum

    def handler(signum: int, frame: Any) -> None:
        record(signum)
        if signum == signal.SIGTERM:
            trainer.received_sigterm = True

    register = getattr(trainer.strategy, "on_preemption_request", None)
    if register is not None:  # multi-process: a signal seen by another rank counts here too
        register(record)
    signals: list[signal.Signals] = list(_SIGNALS)
    slurm = requeue_environment(trainer)
    if slurm is not None and slurm.requeue_signal not in signals:
        signals.append(slurm.requeue_signal)
    for sig in signals:
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):  # pragma: no cover - exotic platforms
            continue
    try:
        yield
    finally:
        for num, prev in previous.items():
            signal.signal(num, prev)


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
    trainer.save_checkpoint(path)  # collective, ends with a barrier: every rank's part is on disk
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "dirpath", None) and os.path.dirname(path) == str(cb.dirpath):  # type: ignore[attr-defined]
            try:
                cb.last_model_path = path  # type: ignore[attr-defined]
            except AttributeError:  # pragma: no cover
                pass
    slurm = requeue_environment(trainer)
    if slurm is not None and signum == slurm.requeue_signal:
        if trainer.is_global_zero:
            slurm.requeue(checkpoint_path=path)  # logs a clear error on failure; the exit code stays the same
        # the other ranks exit after the requeue: with srun --kill-on-bad-exit an early exit would end rank 0
        trainer.strategy.barrier("SLURM requeue")
    raise Preempted(signum, path)


def cluster_environment(strategy: Any, plugins: Any) -> ClusterEnvironment:
    """The run's cluster environment: the strategy's, else one passed in ``plugins``, else the detected one."""
    env = getattr(strategy, "cluster_environment", None)
    if isinstance(env, ClusterEnvironment):
        return env
    for plugin in plugins if isinstance(plugins, (list, tuple)) else [plugins]:
        if isinstance(plugin, ClusterEnvironment):
            return plugin
    return detect_cluster_environment()


def slurm_environment(trainer: Trainer) -> SLURMEnvironment | None:
    """The run's cluster environment (the strategy's, else the Trainer's) when it is SLURM, else None."""
    env = getattr(trainer.strategy, "cluster_environment", None) or getattr(trainer, "_cluster_environment", None)
    return env if isinstance(env, SLURMEnvironment) else None


def requeue_environment(trainer: Trainer) -> SLURMEnvironment | None:
    """The SLURM environment that requeues this run on its signal, or None (not SLURM, or auto_requeue=False)."""
    env = slurm_environment(trainer)
    if env is not None and env.auto_requeue:
        return env
    return None
