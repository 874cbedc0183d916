"""Strategies: how the model, optimizers and data are placed across processes and devices.

Each strategy registers its names in ``STRATEGY_REGISTRY``. This module has the single-device
strategy; distributed strategies register themselves from their own modules.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from fulmen.accelerators import Accelerator
from fulmen.plugins.precision import Precision
from fulmen.utilities.apply_func import move_data_to_device
from fulmen.utilities.exceptions import NotSupportedYetError
from fulmen.utilities.registry import Registry


class Strategy:
    """Base strategy: one process. Collectives are identities."""

    strategy_name = "base"

    def __init__(self, accelerator: Accelerator | None = None, checkpoint_io: Any = None, precision: Precision | None = None) -> None:
        self.accelerator = accelerator
        self._checkpoint_io = checkpoint_io
        self.precision = precision or Precision()

    @property
    def root_device(self) -> torch.device:
        raise NotImplementedError

    @property
    def checkpoint_io(self) -> Any:
        if self._checkpoint_io is None:
            from fulmen.checkpoint import TorchCheckpointIO

            self._checkpoint_io = TorchCheckpointIO()
        return self._checkpoint_io

    @checkpoint_io.setter
    def checkpoint_io(self, io: Any) -> None:
        self._checkpoint_io = io

    # ranks
    world_size = 1
    global_rank = 0
    local_rank = 0
    node_rank = 0

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    def setup_environment(self) -> None:
        if self.accelerator is not None:
            self.accelerator.setup_device(self.root_device)

    def setup_module(self, module: nn.Module) -> nn.Module:
        return module

    def module_to_device(self, module: nn.Module) -> None:
        module.to(self.root_device)

    def batch_to_device(self, batch: Any, device: torch.device | None = None) -> Any:
        return move_data_to_device(batch, device or self.root_device)

    def backward(self, tensor: torch.Tensor, module: nn.Module | None, *args: Any, **kwargs: Any) -> None:
        self.precision.backward(tensor, module, *args, **kwargs)

    @contextmanager
    def module_init_context(self, empty_init: bool | None = None) -> Generator[None, None, None]:
        with self.root_device, self.precision.module_init_context():
            yield

    # collectives (identities on one process)
    def barrier(self, name: str | None = None) -> None: ...

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def all_gather(self, tensor: Any, group: Any = None, sync_grads: bool = False) -> Any:
        return tensor

    def reduce(self, tensor: Any, group: Any = None, reduce_op: str | None = "mean") -> Any:
        return tensor

    def all_reduce(self, tensor: Any, group: Any = None, reduce_op: str | None = "mean") -> Any:
        return self.reduce(tensor, group, reduce_op)

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision

    @property
    def metric_reduce(self) -> Any:
        """A ``(tensor, reduce_fx) -> tensor`` function for logging's sync_dist, or None on one process."""
        return None

    # checkpoints
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        if self.is_global_zero:
            self.checkpoint_io.save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def load_checkpoint(self, path: Any, weights_only: bool | None = None, map_location: Any = None) -> dict[str, Any]:
        return self.checkpoint_io.load_checkpoint(path, map_location=map_location or "cpu", weights_only=weights_only)

    def remove_checkpoint(self, filepath: Any) -> None:
        if self.is_global_zero:
            self.checkpoint_io.remove_checkpoint(filepath)

    def teardown(self) -> None:
        if self._checkpoint_io is not None:
            self._checkpoint_io.teardown()
        if self.accelerator is not None:
            self.accelerator.teardown()


class SingleDeviceStrategy(Strategy):
    strategy_name = "single_device"

    def __init__(self, device: torch.device | str = "cpu", accelerator: Accelerator | None = None, checkpoint_io: Any = None, precision: Precision | None = None) -> None:
        super().__init__(accelerator, checkpoint_io, precision)
        self._root_device = torch.device(device)

    @property
    def root_device(self) -> torch.device:
        return self._root_device


STRATEGY_REGISTRY: Registry[Strategy] = Registry("strategy")
STRATEGY_REGISTRY.register("single_device", SingleDeviceStrategy)

# Names Lightning accepts that are not built yet: a clear error instead of silently running something else.
_NOT_YET = [
    "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "fsdp", "fsdp_cpu_offload", "deepspeed", "deepspeed_stage_1",
    "deepspeed_stage_2", "deepspeed_stage_2_offload", "deepspeed_stage_3", "deepspeed_stage_3_offload",
    "deepspeed_stage_3_offload_nvme", "xla", "xla_debug", "single_xla", "single_tpu", "dp",
] + [f"{b}_find_unused_parameters_{v}" for b in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook") for v in ("true", "false")]


def _not_yet(name: str) -> Any:
    def factory(**_: Any) -> Strategy:
        raise NotSupportedYetError(
            f"strategy={name!r} is not supported yet (fulmen runs one device per process for now). "
            "Fix: use strategy='auto' or 'single_device' with devices=1."
        )

    return factory


for _name in _NOT_YET:
    STRATEGY_REGISTRY.register(_name, _not_yet(_name))

__all__ = ["STRATEGY_REGISTRY", "SingleDeviceStrategy", "Strategy"]
