"""SLURM: ``srun`` starts one task per process and tells each its rank; the job can be requeued on a signal."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from typing import Any

from fulmen.plugins.environments.base import ClusterEnvironment, _env_int
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.rank_zero import log


class SLURMEnvironment(ClusterEnvironment):
    """Ranks from ``SLURM_PROCID``/``SLURM_LOCALID``/``SLURM_NODEID``; the rendezvous host is the first node of
    ``SLURM_NODELIST`` and the port is derived from the job id (override both with ``MASTER_ADDR``/``MASTER_PORT``).

    Args:
        auto_requeue: on ``requeue_signal`` during ``fit``, every rank writes the preemption checkpoint
            (``last.ckpt``), global rank 0 runs ``scontrol requeue <job id>``, and every rank exits with
            ``128 + signal``. Ask SLURM for the signal before the time limit with ``#SBATCH --signal=SIGUSR1@90``.
            ``False``: no requeue (``SIGUSR1``/``SIGTERM`` still save and exit, see ``trainer/preemption.py``).
        requeue_signal: the signal SLURM sends before the time limit (default ``SIGUSR1``).
    """

    def __init__(self, auto_requeue: bool = True, requeue_signal: signal.Signals | None = None) -> None:
        if not isinstance(auto_requeue, bool):
            raise MisconfigurationException(
                f"SLURMEnvironment(auto_requeue={auto_requeue!r}); expected True or False. Fix: "
                "auto_requeue=True (save and requeue on the signal) or auto_requeue=False (save and exit only)."
            )
        self.auto_requeue = auto_requeue
        self.requeue_signal = _check_signal(requeue_signal if requeue_signal is not None else signal.SIGUSR1)

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        addr = os.environ.get("MASTER_ADDR")
        if addr is None:
            addr = resolve_root_node_address(
                os.environ.get("SLURM_NODELIST", os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1"))
            )
            os.environ["MASTER_ADDR"] = addr
        return addr

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in os.environ:
            return _env_int("MASTER_PORT")
        job_id = os.environ.get("SLURM_JOB_ID")
        # every task of the job derives the same port; different jobs on a node rarely collide
        port = 15000 + int(job_id[-4:]) if job_id and job_id[-4:].isdigit() else 12910
        os.environ["MASTER_PORT"] = str(port)
        return port

    @staticmethod
    def detect() -> bool:
        return "SLURM_NTASKS" in os.environ and not _is_interactive()

    @staticmethod
    def job_id() -> str | None:
        """The job id (``<array job id>_<task id>`` for array jobs)."""
        array_id = os.environ.get("SLURM_ARRAY_JOB_ID")
        if array_id is not None:
            return f"{array_id}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
        return os.environ.get("SLURM_JOB_ID")

    def world_size(self) -> int:
        return _env_int("SLURM_NTASKS")

    def set_world_size(self, size: int) -> None: ...

    def global_rank(self) -> int:
        return _env_int("SLURM_PROCID")

    def set_global_rank(self, rank: int) -> None: ...

    def local_rank(self) -> int:
        return _env_int("SLURM_LOCALID")

    def node_rank(self) -> int:
        return _env_int("SLURM_NODEID")

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE")
        if (
            per_node is not None
            and per_node.split("(")[0].isdigit()
            and int(per_node.split("(")[0]) != num_devices
        ):
            raise MisconfigurationException(
                f"SLURM runs --ntasks-per-node={per_node} tasks per node but devices={num_devices}. Fix: set "
                f"#SBATCH --ntasks-per-node={num_devices} (one task per device), or devices={per_node}."
            )
        nnodes = os.environ.get("SLURM_NNODES")
        if nnodes is not None and nnodes.isdigit() and int(nnodes) != num_nodes:
            raise MisconfigurationException(
                f"The SLURM job has {nnodes} node(s) but num_nodes={num_nodes}. Fix: set #SBATCH --nodes={num_nodes} "
                f"or num_nodes={nnodes}."
            )

    # ---- requeue
    def requeue_command(self) -> list[str]:
        job_id = self.job_id()
        if job_id is None:
            raise MisconfigurationException(
                "SLURM_JOB_ID is not set: this process is not a SLURM job, it cannot requeue."
            )
        return ["scontrol", "requeue", job_id]

    def requeue(self, checkpoint_path: str | None = None) -> bool:
        """Ask SLURM to requeue this job (``scontrol requeue <job id>``). Returns whether it succeeded.

        A failure (not a SLURM job, ``scontrol`` missing, failing or hanging) is logged as an error that says how
        to requeue by hand; ``checkpoint_path`` (the checkpoint the next run resumes from) is named in it.
        """
        job_id = self.job_id()
        kept = (
            f"The checkpoint {checkpoint_path} is written, so no work is lost. "
            if checkpoint_path is not None
            else ""
        )
        by_hand = f"scontrol requeue {job_id}" if job_id is not None else "sbatch <your script>"
        if job_id is None:
            problem = "SLURM_JOB_ID is not set (this process is not part of a SLURM job)"
        elif shutil.which("scontrol") is None:
            problem = "the `scontrol` command is not on PATH"
        else:
            try:
                result = subprocess.run(
                    self.requeue_command(), capture_output=True, text=True, check=False, timeout=_SCONTROL_TIMEOUT_S
                )
            except subprocess.TimeoutExpired:
                problem = f"`{by_hand}` did not answer within {_SCONTROL_TIMEOUT_S}s"
            except OSError as err:
                problem = f"`{by_hand}` could not be started ({err})"
            else:
                if result.returncode == 0:
                    log.info(f"Requeued SLURM job {job_id} (`{by_hand}`).")
                    return True
                detail = (result.stderr or result.stdout).strip()
                problem = f"`{by_hand}` failed with exit code {result.returncode}" + (f": {detail}" if detail else "")
        log.error(
            f"Could not requeue the SLURM job: {problem}. {kept}Fix: requeue it by hand (`{by_hand}`) or resubmit "
            "the batch script; the requeued job resumes from the last checkpoint. To requeue from your batch script "
            "instead, pass plugins=[SLURMEnvironment(auto_requeue=False)] and run `scontrol requeue` on exit code "
            f"{128 + int(self.requeue_signal)}."
        )
        return False

    def register_requeue_handler(self, on_signal: Callable[[int, Any], None]) -> Callable[[], None]:
        """Install ``on_signal`` for :attr:`requeue_signal`; returns a function restoring the previous handler.

        The handler only records the signal; the run acts on it between steps (signal handlers must not save
        checkpoints or run collectives themselves).
        """
        previous = signal.getsignal(self.requeue_signal)
        signal.signal(self.requeue_signal, on_signal)

        def restore() -> None:
            signal.signal(self.requeue_signal, previous)

        return restore

    def __repr__(self) -> str:
        return f"SLURMEnvironment(auto_requeue={self.auto_requeue}, requeue_signal={self.requeue_signal!r})"


_SCONTROL_TIMEOUT_S = 60
_UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}


def _check_signal(sig: Any) -> signal.Signals:
    """``sig`` as a :class:`signal.Signals` that a handler can be installed for, else a clear error."""
    value: signal.Signals | None = None
    if isinstance(sig, (int, str)) and not isinstance(sig, bool):
        try:
            value = signal.Signals[sig] if isinstance(sig, str) else signal.Signals(sig)
        except (KeyError, ValueError):
            value = None
    if value is None or value in _UNCATCHABLE:
        raise MisconfigurationException(
            f"SLURMEnvironment(requeue_signal={sig!r}); expected a signal a process can catch (a signal.Signals such "
            "as signal.SIGUSR1, the default, or signal.SIGHUP), not SIGKILL/SIGSTOP. Fix: pass the signal named in "
            "`#SBATCH --signal=<SIG>@<seconds>`, e.g. requeue_signal=signal.SIGUSR1."
        )
    return value


def _is_interactive() -> bool:
    # `srun --pty bash` / `salloc`: the user is in a shell, and fulmen launches the processes itself
    return os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive")


def resolve_root_node_address(nodelist: str) -> str:
    """The first host of a SLURM node list: ``"gpu[03-05,9],cpu1"`` -> ``"gpu03"``."""
    first = re.split(r",(?![^\[]*\])", nodelist.strip())[0]
    match = re.match(r"^(?P<prefix>[^\[]*)\[(?P<ranges>[^\]]+)\](?P<suffix>.*)$", first)
    if match is None:
        return first
    start = match.group("ranges").split(",")[0].split("-")[0]
    return f"{match.group('prefix')}{start}{match.group('suffix')}"
