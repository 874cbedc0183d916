"""``DataParallelStrategy`` (``strategy="dp"``): several GPUs driven by one process with ``torch.nn.DataParallel``.

Each forward scatters the batch over the GPUs, runs a replica of the model on each and gathers the outputs on
the first GPU, where the loss and the optimizer step run; there is one process, so collectives are identities
and every loader yields whole batches. It is Fabric's strategy (Lightning 2.x's Trainer has no ``"dp"``): call
the model (its ``forward``) inside the loop. ``DistributedDataParallel`` (``strategy="ddp"``) is faster and is
what PyTorch recommends; ``"dp"`` is here so that programs written for it run.

On a machine without CUDA GPUs the name ``"dp"`` becomes ``"ddp"`` with a warning, as in Lightning; an explicit
``DataParallelStrategy()`` there is refused, since it could not spread anything over CPUs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import DataParallel

from fulmen.accelerators import Accelerator
from fulmen.plugins.precision import Precision
from fulmen.strategies import Strategy
from fulmen.utilities.apply_func import apply_to_collection
from fulmen.utilities.exceptions import MisconfigurationException


class DataParallelStrategy(Strategy):
    """Replicate the model over ``parallel_devices`` (CUDA GPUs) in this process; each replica gets a slice of
    every batch.

    Args:
        accelerator: the accelerator (CUDA); filled in by Fabric.
        parallel_devices: the GPUs; filled in from ``Fabric(devices=...)``.
        checkpoint_io: how checkpoints are written.
        precision / precision_plugin: the precision plugin (Fabric's and the Trainer's keyword).

    Raises:
        MisconfigurationException: a device is not a CUDA GPU (checked when the devices are known).
    """

    strategy_name = "dp"

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        checkpoint_io: Any = None,
        precision: Precision | None = None,
        *,
        precision_plugin: Precision | None = None,
    ) -> None:
        super().__init__(accelerator, checkpoint_io, precision, precision_plugin=precision_plugin)
        self._parallel_devices: list[torch.device] | None = None
        self.parallel_devices = parallel_devices

    @property
    def parallel_devices(self) -> list[torch.device] | None:
        return self._parallel_devices

    @parallel_devices.setter
    def parallel_devices(self, devices: list[torch.device] | None) -> None:
        if devices is not None:
            devices = [torch.device(d) for d in devices]
            if not devices or any(d.type != "cuda" for d in devices):
                raise MisconfigurationException(
                    f"DataParallelStrategy got devices {[str(d) for d in devices]}; it replicates the model over CUDA "
                    "GPUs in one process, and there are none here. Fix: use strategy='ddp' (one process per device, "
                    "CPUs included) or 'auto'."
                )
        self._parallel_devices = devices

    @property
    def root_device(self) -> torch.device:
        if not self._parallel_devices:
            raise MisconfigurationException(
                "DataParallelStrategy has no devices yet. Fix: pass it to Fabric(strategy=DataParallelStrategy(), "
                "accelerator='cuda', devices=N), which fills them in."
            )
        return self._parallel_devices[0]

    def setup_module(self, module: nn.Module) -> nn.Module:
        if isinstance(module, DataParallel):
            return module
        return DataParallel(module, device_ids=self._parallel_devices)

    def batch_to_device(self, batch: Any, device: torch.device | None = None) -> Any:
        # DataParallel scatters each batch over the GPUs itself
        return batch

    def step_function(self, module: nn.Module, name: str) -> Any:
        raise MisconfigurationException(
            "DataParallelStrategy (strategy='dp') is Fabric's: the Trainer runs *_step methods, which "
            "torch.nn.DataParallel cannot split over GPUs (Lightning 2.x's Trainer has no 'dp' either). "
            "Fix: Trainer(strategy='ddp')."
        )

    def module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        return super().module_state_dict(module.module if isinstance(module, DataParallel) else module)

    def load_module_state_dict(self, module: nn.Module, state_dict: dict[str, Any], strict: bool = True) -> Any:
        target = module.module if isinstance(module, DataParallel) else module
        return super().load_module_state_dict(target, state_dict, strict=strict)

    def all_reduce(self, tensor: Any, group: Any = None, reduce_op: str | None = "mean") -> Any:
        # one process holds everything; a tensor gathered from the replicas (e.g. a per-GPU loss) is averaged
        def mean(t: torch.Tensor) -> torch.Tensor:
            return t.float().mean().to(t.dtype)

        return apply_to_collection(tensor, torch.Tensor, mean)


def _register_names() -> None:
    from fulmen.strategies import STRATEGY_REGISTRY

    STRATEGY_REGISTRY.register(
        "dp", DataParallelStrategy, "DataParallel: several GPUs in one process (Fabric)", override=True
    )


_register_names()

__all__ = ["DataParallelStrategy"]
