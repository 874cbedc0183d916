"""Accelerators: which device type the run uses. Each registers its names in ``ACCELERATOR_REGISTRY``."""

from __future__ import annotations

import os
from typing import Any

import torch

from fulmen.utilities.exceptions import MisconfigurationException, MisconfigurationTypeError
from fulmen.utilities.registry import Registry


class Accelerator:
    name = "base"

    def setup_device(self, device: torch.device) -> None:
        """Prepare the device before the model moves there."""

    def teardown(self) -> None: ...

    @staticmethod
    def is_available() -> bool:
        raise NotImplementedError

    @staticmethod
    def auto_device_count() -> int:
        raise NotImplementedError

    @staticmethod
    def parse_devices(devices: Any) -> list[int]:
        raise NotImplementedError

    @staticmethod
    def get_device(index: int) -> torch.device:
        raise NotImplementedError


class CPUAccelerator(Accelerator):
    name = "cpu"

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def auto_device_count() -> int:
        return 1

    @staticmethod
    def parse_devices(devices: Any) -> list[int]:
        n = _parse_count(devices, "cpu", available=os.cpu_count() or 1, allow_list=False)
        return list(range(n))

    @staticmethod
    def get_device(index: int) -> torch.device:
        return torch.device("cpu")


class CUDAAccelerator(Accelerator):
    name = "cuda"

    def setup_device(self, device: torch.device) -> None:
        torch.cuda.set_device(device)

    @staticmethod
    def is_available() -> bool:
        return torch.cuda.is_available()

    @staticmethod
    def auto_device_count() -> int:
        return torch.cuda.device_count()

    @staticmethod
    def parse_devices(devices: Any) -> list[int]:
        return _parse_gpu_ids(devices, torch.cuda.device_count(), "cuda")

    @staticmethod
    def get_device(index: int) -> torch.device:
        return torch.device("cuda", index)


class MPSAccelerator(Accelerator):
    name = "mps"

    @staticmethod
    def is_available() -> bool:
        return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())

    @staticmethod
    def auto_device_count() -> int:
        return 1

    @staticmethod
    def parse_devices(devices: Any) -> list[int]:
        return _parse_gpu_ids(devices, 1 if MPSAccelerator.is_available() else 0, "mps")

    @staticmethod
    def get_device(index: int) -> torch.device:
        return torch.device("mps", index)


def _parse_count(devices: Any, name: str, available: int, allow_list: bool) -> int:
    if devices == "auto" or devices == -1 or devices == "-1":
        return 1 if name == "cpu" and devices == "auto" else available
    if isinstance(devices, str):
        devices = devices.strip()
        if devices.isdigit():
            devices = int(devices)
        elif "," in devices:
            raise MisconfigurationException(
                f"devices={devices!r} selects device indices, which the {name} accelerator does not have. "
                "Fix: pass the number of processes, e.g. devices=2."
            )
    if isinstance(devices, (list, tuple)):
        if allow_list:
            return len(devices)
        return len(devices)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise MisconfigurationTypeError(
            f"devices={devices!r} is not valid; expected a positive int, a list of indices, a comma-separated "
            "string, 'auto' or -1. Fix: e.g. devices=1."
        )
    return devices


def _parse_gpu_ids(devices: Any, available: int, name: str) -> list[int]:
    if devices == "auto" or devices == -1 or devices == "-1":
        ids = list(range(available))
    elif isinstance(devices, str):
        s = devices.strip()
        if "," in s:
            ids = [int(x) for x in s.split(",") if x.strip()]
        elif s.isdigit():
            ids = list(range(int(s)))
        else:
            raise MisconfigurationException(f"devices={devices!r} is not valid. Fix: e.g. devices=1 or devices='0,1'.")
    elif isinstance(devices, (list, tuple)):
        ids = [int(i) for i in devices]
    elif isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        ids = list(range(devices))
    else:
        raise MisconfigurationTypeError(
            f"devices={devices!r} is not valid; expected a positive int, a list, a comma-separated string, 'auto' "
            "or -1. Fix: e.g. devices=1."
        )
    missing = [i for i in ids if i >= available or i < 0]
    if not ids or missing:
        raise MisconfigurationException(
            f"devices={devices!r} requests {name} device(s) {missing or ids}, but {available} {name} device(s) are "
            f"available. Fix: request at most {available}, or use accelerator='cpu'."
        )
    return ids


class _AcceleratorRegistry(Registry[Accelerator]):
    """The accelerator names (``lightning.fabric.accelerators.ACCELERATOR_REGISTRY``)."""

    def available_accelerators(self) -> list[str]:
        return self.names()


ACCELERATOR_REGISTRY: _AcceleratorRegistry = _AcceleratorRegistry("accelerator")
ACCELERATOR_REGISTRY.register("cpu", CPUAccelerator, "CPU Accelerator - optimized for large-scale machine learning.")
ACCELERATOR_REGISTRY.register("cuda", CUDAAccelerator, "CUDA Accelerator - optimized for NVIDIA GPUs.")
ACCELERATOR_REGISTRY.register("gpu", CUDAAccelerator, "CUDA Accelerator (Lightning's 'gpu' name for 'cuda').")
ACCELERATOR_REGISTRY.register("mps", MPSAccelerator, "Metal Performance Shaders Accelerator - Apple silicon GPUs.")
AcceleratorRegistry = ACCELERATOR_REGISTRY  # ``lightning.pytorch.accelerators.AcceleratorRegistry``


def num_cuda_devices() -> int:
    """The number of CUDA devices this process can see (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def is_cuda_available() -> bool:
    """Whether CUDA can be used here (a driver and at least one visible device)."""
    return num_cuda_devices() > 0


def find_usable_cuda_devices(num_devices: int = -1) -> list[int]:
    """Indices of visible CUDA devices where a tensor can be allocated, at most ``num_devices`` (-1: all).

    Raises:
        ValueError: ``num_devices`` is 0 or below -1.
        RuntimeError: fewer usable devices than requested.
    """
    if num_devices == 0:
        return []
    if num_devices < -1:
        raise ValueError(f"find_usable_cuda_devices(num_devices={num_devices}); expected -1 (all) or a positive int.")
    usable: list[int] = []
    for index in range(num_cuda_devices()):
        if 0 < num_devices <= len(usable):
            break
        try:
            torch.empty(1, device=torch.device("cuda", index))
        except RuntimeError:
            continue  # busy (exclusive mode) or broken
        usable.append(index)
    if num_devices > len(usable):
        raise RuntimeError(
            f"find_usable_cuda_devices({num_devices}) found only {len(usable)} usable CUDA device(s) "
            f"{usable}. Fix: request fewer devices, or free the busy ones."
        )
    return usable


class XLAAccelerator(Accelerator):
    """Lightning's TPU/XLA accelerator name. fulmen does not run on XLA: ``is_available()`` is False everywhere
    and building it raises ``NotSupportedYetError``."""

    name = "xla"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from fulmen.utilities.exceptions import NotSupportedYetError

        raise NotSupportedYetError("XLAAccelerator (TPU) is not supported by fulmen. Fix: use 'cpu', 'cuda' or 'mps'.")

    @staticmethod
    def is_available() -> bool:
        return False

    @staticmethod
    def auto_device_count() -> int:
        return 0


TPUAccelerator = XLAAccelerator  # Lightning 2.x's deprecated name for it


def select_accelerator(accelerator: Any) -> Accelerator:
    """Resolve ``accelerator`` (a name, "auto" or an instance) to an available accelerator."""
    if isinstance(accelerator, Accelerator):
        return accelerator
    if accelerator in ("tpu", "hpu", "xla"):
        from fulmen.utilities.exceptions import NotSupportedYetError

        raise NotSupportedYetError(f"accelerator={accelerator!r} is not supported yet. Fix: use 'cpu', 'cuda' or 'mps'.")
    if accelerator == "auto":
        for name in ("cuda", "mps"):
            acc = ACCELERATOR_REGISTRY.get(name)
            if acc.is_available():
                return acc
        return CPUAccelerator()
    acc = ACCELERATOR_REGISTRY.get(accelerator)
    if not acc.is_available():
        raise MisconfigurationException(
            f"accelerator={accelerator!r} was requested but is not available on this machine. Fix: use "
            "accelerator='cpu' or 'auto'."
        )
    return acc


__all__ = [
    "ACCELERATOR_REGISTRY",
    "Accelerator",
    "AcceleratorRegistry",
    "CPUAccelerator",
    "CUDAAccelerator",
    "MPSAccelerator",
    "TPUAccelerator",
    "XLAAccelerator",
    "find_usable_cuda_devices",
    "is_cuda_available",
    "num_cuda_devices",
]
