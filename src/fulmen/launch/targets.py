"""Thin submitters per tool: submit a written spec, read a job's status, cancel it, find its log.

Nothing here schedules anything: ``sbatch``/``scontrol``/``scancel``, ``kubectl``, ``sky`` do, and the local
target runs the job as a child process (:func:`run_local`) with the preemption contract of a scheduler.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from fulmen.launch.config import PREEMPTED_EXIT_CODES, LaunchConfig, LaunchError
from fulmen.launch.record import update_record
from fulmen.launch.specs import job_env

TOOLS = {"slurm": "sbatch", "kubernetes": "kubectl", "skypilot": "sky", "local": None}
FINAL = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "SUCCEEDED",
    "STOPPED",
    "PREEMPTED",
)


def tool_for(target: str) -> str | None:
    return TOOLS[target]


def tool_available(target: str) -> bool:
    tool = tool_for(target)
    return tool is None or shutil.which(tool) is not None


def submit(config: LaunchConfig, command: list[str]) -> str:
    """Run the submit command; returns the scheduler's job id.

    Raises:
        LaunchError: the tool failed (its output is in the message).
    """
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise LaunchError(f"could not submit with {command[0]!r}: {err}") from err
    if done.returncode != 0:
        raise LaunchError(
            f"{' '.join(command)} failed with exit code {done.returncode}:\n{done.stdout}{done.stderr}".rstrip()
        )
    out = done.stdout.strip()
    if config.target == "slurm":
        return out.split(";")[0].strip()
    return config.name


def slurm_job(job_id: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (``JobState``, ``Restarts``, ``ExitCode``, ...); empty when unknown."""
    done = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {}
    fields: dict[str, str] = {}
    for part in done.stdout.split():
        key, sep, value = part.partition("=")
        if sep:
            fields[key] = value
    return fields


def status(record: dict[str, Any]) -> str:
    """The live status of a launch: the scheduler's word for it, else the record's."""
    target, job_id = record.get("target"), record.get("job_id")
    try:
        if target == "slurm" and job_id and shutil.which("scontrol"):
            state = slurm_job(str(job_id)).get("JobState")
            if state:
                return state
            done = subprocess.run(
                ["sacct", "-n", "-X", "-P", "-o", "State", "-j", str(job_id)],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout.split()[0]
        elif target == "kubernetes" and shutil.which("kubectl"):
            done = subprocess.run(
                ["kubectl", "get", "job", str(job_id), "-o", "jsonpath={.status.conditions[-1:].type}"],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout.strip().upper()
        elif target == "skypilot" and shutil.which("sky"):
            done = subprocess.run(["sky", "jobs", "queue"], capture_output=True, text=True, check=False, timeout=60)
            for line in done.stdout.splitlines():
                if f" {job_id} " in f" {line} ":
                    return line.split()[-1]
        elif target == "local":
            pid = record.get("supervisor_pid")
            if record.get("status") == "RUNNING" and pid and not _alive(int(pid)):
                return "LOST"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return str(record.get("status", "UNKNOWN"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(run_dir: str, record: dict[str, Any]) -> list[str]:
    """Cancel the launch; returns the command it ran (or a description for the local target)."""
    target, job_id = record.get("target"), str(record.get("job_id"))
    if target == "local":
        open(os.path.join(run_dir, "STOP"), "w").close()
        pid = record.get("child_pid")
        if pid and _alive(int(pid)):
            os.kill(int(pid), signal.SIGTERM)  # the Trainer saves last.ckpt and exits 143; the supervisor stops
        return ["kill", "-TERM", str(pid)]
    command = {
        "slurm": ["scancel", job_id],
        "kubernetes": ["kubectl", "delete", "-f", os.path.join(run_dir, "job.yaml")],
        "skypilot": ["sky", "jobs", "cancel", "--yes", "--name", job_id],
    }[str(target)]
    if shutil.which(command[0]) is None:
        raise LaunchError(f"{command[0]!r} is not installed here; run `{' '.join(command)}` where it is.")
    subprocess.run(command, check=True)
    return command


def log_path(run_dir: str, record: dict[str, Any]) -> str | None:
    if record.get("target") == "slurm":
        return os.path.join(run_dir, f"slurm-{record.get('job_id')}.out")
    if record.get("target") == "local":
        return os.path.join(run_dir, "job.log")
    return None


def wait_slurm(run_dir: str, job_id: str, timeout: float | None = None, poll: float = 1.0) -> str:
    """Wait for a SLURM job to end (a requeued job is still running); returns its final state."""
    deadline = None if timeout is None else time.monotonic() + timeout
    state = "UNKNOWN"
    while deadline is None or time.monotonic() < deadline:
        job = slurm_job(job_id)
        state = job.get("JobState", state)
        if state in FINAL:
            update_record(run_dir, status=state, exit_code=job.get("ExitCode"), restarts=job.get("Restarts"))
            return state
        time.sleep(poll)
    return state


def run_local(config: LaunchConfig, run_dir: str) -> int:
    """Run the job here with a scheduler's preemption contract; returns the job's final exit code.

    The job is a child process in its own session. SIGTERM/SIGUSR1 sent to this supervisor are passed on to it
    (as a scheduler would); the Trainer saves ``last.ckpt`` and exits 138/143, and the supervisor reruns the
    same command with ``FULMEN_AUTO_RESUME=1``, so it resumes from the newest complete checkpoint, up to
    ``config.max_restarts`` times. ``fulmen stop`` (a ``STOP`` file and SIGTERM) ends it without a rerun.
    """
    log = os.path.join(run_dir, "job.log")
    child: list[subprocess.Popen[bytes]] = []
    with contextlib.suppress(FileNotFoundError):  # a stop asked of an earlier launch into this folder
        os.unlink(os.path.join(run_dir, "STOP"))

    def forward(signum: int, frame: Any) -> None:
        if child and child[0].poll() is None:
            child[0].send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1)}
    restarts, rc = 0, 1
    try:
        while True:
            env = {
                **os.environ,
                **job_env(config, auto_resume=restarts > 0),
                "FULMEN_LAUNCH_RESTART_COUNT": str(restarts),
            }
            with open(log, "ab") as out:
                out.write(f"fulmen launch: local run, restart {restarts}\n".encode())
                out.flush()
                proc = subprocess.Popen(
                    config.script_command(),
                    cwd=run_dir,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            child[:] = [proc]
            update_record(run_dir, status="RUNNING", child_pid=proc.pid, restarts=restarts)
            rc = proc.wait()
            if os.path.exists(os.path.join(run_dir, "STOP")):
                update_record(run_dir, status="STOPPED", exit_code=rc, restarts=restarts)
                return rc
            if rc in PREEMPTED_EXIT_CODES and restarts < config.max_restarts:
                restarts += 1
                continue
            # out of restarts after a preemption: PREEMPTED (a later launch with FULMEN_AUTO_RESUME=1 resumes)
            state = "COMPLETED" if rc == 0 else "PREEMPTED" if rc in PREEMPTED_EXIT_CODES else "FAILED"
            update_record(run_dir, status=state, exit_code=rc, restarts=restarts)
            return rc
    finally:
        for s, prev in previous.items():
            signal.signal(s, prev)


def tail(path: str | None, lines: int = 40) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def follow(path: str, record_status: Any, poll: float = 0.5) -> None:  # pragma: no cover - interactive
    """Print the log and keep printing what is appended until the run ends (``fulmen logs -f``)."""
    pos = 0
    while True:
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                f.seek(pos)
                chunk = f.read()
                pos = f.tell()
            if chunk:
                sys.stdout.write(chunk)
                sys.stdout.flush()
        if record_status() in FINAL:
            return
        time.sleep(poll)
