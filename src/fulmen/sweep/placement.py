"""Placement: each of the P parallel trials gets its own devices, so trials never fight over one.

On GPUs a slot is a disjoint set of ``CUDA_VISIBLE_DEVICES`` (K slots may share a GPU with
``trials_per_device=K``); on CPUs it is a disjoint set of cores (the process's affinity, and
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` so torch starts that many threads).
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    """Where one trial runs: its cores (CPU) or its GPUs."""

    index: int
    cores: tuple[int, ...] = ()
    gpus: tuple[str, ...] = ()

    def env(self) -> dict[str, str]:
        if self.gpus:
            return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, self.gpus))}
        n = str(max(1, len(self.cores)))
        return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "CUDA_VISIBLE_DEVICES": ""}

    def describe(self) -> str:
        if self.gpus:
            return f"GPU {','.join(map(str, self.gpus))}"
        return f"cores {','.join(map(str, self.cores))}" if self.cores else "all cores"

    def apply(self) -> None:
        """Pin the calling process to this slot's cores (in a child before exec, or in a forked worker)."""
        if self.cores and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(self.cores))

    def preexec(self) -> Callable[[], None]:
        """What the child runs between fork and exec: its cores, and SIGTERM when the driver dies.

        libc is loaded here, in the parent: the child (forked from a process with a heartbeat thread) only
        makes two system calls, no dlopen and no allocation that could wait on a lock another thread held.
        """
        slot = self
        prctl = _prctl()

        def run() -> None:
            slot.apply()
            if prctl is not None:  # PR_SET_PDEATHSIG: a trial checkpoints and exits even if the driver is SIGKILLed
                prctl(1, int(signal.SIGTERM))

        return run


def _prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return None


def visible_gpus() -> list[int]:
    """The GPUs this process may use (``CUDA_VISIBLE_DEVICES`` order), without initialising CUDA."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return list(range(len([d for d in env.split(",") if d.strip()])))
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - no CUDA: CPU placement
        return []


def _gpu_ids() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    return [str(i) for i in visible_gpus()]


def plan(parallel: int, devices_per_trial: int = 1, trials_per_device: int = 1, accelerator: str = "auto") -> list[Slot]:
    """``parallel`` disjoint slots.

    Raises:
        ValueError: more parallel trials than devices (GPUs x trials_per_device, or cores), or bad numbers.
    """
    for name, value in (("--parallel", parallel), ("--devices-per-trial", devices_per_trial),
                        ("--trials-per-device", trials_per_device)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} {value!r}: expected a positive integer.")
    gpus = _gpu_ids() if accelerator in ("auto", "gpu", "cuda") else []
    if accelerator in ("gpu", "cuda") and not gpus:
        raise ValueError("--accelerator gpu but no GPU is visible. Fix: --accelerator cpu.")
    if gpus:
        seats = [g for g in gpus for _ in range(trials_per_device)]
        need = parallel * devices_per_trial
        if need > len(seats):
            raise ValueError(
                f"--parallel {parallel} x --devices-per-trial {devices_per_trial} needs {need} GPU seats, but "
                f"{len(gpus)} GPU(s) x --trials-per-device {trials_per_device} give {len(seats)}. Fix: lower "
                "--parallel, or raise --trials-per-device to share GPUs."
            )
        # seat order puts the K sharing trials of a GPU apart: slot i takes GPUs i*D .. i*D+D-1 cycling
        order = [gpus[i % len(gpus)] for i in range(len(seats))]
        return [Slot(i, gpus=tuple(order[i * devices_per_trial:(i + 1) * devices_per_trial])) for i in range(parallel)]
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    per = len(cores) // parallel
    if per < 1:
        raise ValueError(
            f"--parallel {parallel} trials need at least one core each, but this process may use {len(cores)} "
            f"core(s). Fix: --parallel {len(cores)} or fewer."
        )
    return [Slot(i, cores=tuple(cores[i * per:(i + 1) * per])) for i in range(parallel)]
