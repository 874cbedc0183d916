"""What the numbers were measured on, and small measuring helpers shared by the harness and its children."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def proc_status_mb(field: str) -> float:
    """``VmHWM`` (peak resident set of *this* process; unlike ``ru_maxrss`` a child does not inherit its
    parent's) or ``VmRSS`` from /proc/self/status, in MB (10^6 bytes)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_line() -> str:
    import torch

    cores = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cores
    try:
        load = "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = ""
    from contestants import lightning_version

    lv = lightning_version()
    parts = [
        f"CPU: {cpu_model()}, {cores} cores ({usable} usable)",
        f"torch {torch.__version__}",
        f"Python {platform.python_version()}",
        f"Lightning (pytorch-lightning) {lv}" if lv else "Lightning not installed",
        f"fulmen {git_revision()}",
        f"{platform.system()} {platform.release()}",
    ]
    if load:
        parts.append(load + " at start")
    return "; ".join(parts)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def python() -> str:
    return sys.executable
