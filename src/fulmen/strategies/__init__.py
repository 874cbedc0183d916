"""Strategies: how the model, optimizers and data are placed across processes and devices.

Who owns what: a strategy owns the process group, the model wrapper (DDP, FSDP), the collectives, the
launcher that starts the processes, and where checkpoints are written. It never calls hooks. The
Trainer and Fabric call only the methods of :class:`Strategy` below, so a loop is the same code on one
CPU and on 64 GPUs.

Each strategy registers its names in ``STRATEGY_REGISTRY``. This module has the single-device
strategy; distributed strategies live in their own modules, imported when one of their names is used.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from fulmen.accelerators import Accelerator
from fulmen.plugins.precision import Precision
from fulmen.utilities.apply_func import move_data_to_device
from fulmen.utilities.exceptions import NotSupportedYetError
from fulmen.utilities.registry import Registry


class _SkipNNInit(torch.overrides.TorchFunctionMode):
    """``torch.nn.init.*`` calls return their tensor untouched: a model built inside keeps uninitialized memory
    (fast when its weights are loaded right after)."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return kwargs["tensor"] if "tensor" in kwargs else args[0]
        return func(*args, **kwargs)


def _one_precision(owner: str, precision: Precision | None, precision_plugin: Precision | None) -> Precision | None:
    """``precision=`` (Fabric's keyword) or ``precision_plugin=`` (the Trainer's): the one given.

    Raises:
        MisconfigurationException: both were given, or one is not a precision plugin.
    """
    from fulmen.utilities.exceptions import MisconfigurationException

    if precision is not None and precision_plugin is not None and precision is not precision_plugin:
        raise MisconfigurationException(
            f"{owner}(precision=..., precision_plugin=...): both were given ({precision!r} and {precision_plugin!r}). "
            "They are the same setting (Fabric's and the Trainer's name for it). Fix: pass only one."
        )
    plugin = precision if precision is not None else precision_plugin
    if plugin is not None and not isinstance(plugin, Precision):
        raise MisconfigurationException(
            f"{owner}(precision={plugin!r}): expected a precision plugin (e.g. MixedPrecision('bf16-mixed', 'cuda')). "
            "Fix: pass a fulmen.plugins.precision object, or give the precision name to Fabric/Trainer(precision=...)."
        )
    return plugin


def _empty_init(enabled: bool | None) -> Any:
    return _SkipNNInit() if enabled else nullcontext()


class Strategy:
    """Base strategy: one process. Collectives are identities."""

    strategy_name = "base"
    launcher: Any = None  # starts the processes; None: this process is the whole run
    is_distributed = False

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        checkpoint_io: Any = None,
        precision: Precision | None = None,
        *,
        precision_plugin: Precision | None = None,
    ) -> None:
        self.accelerator = accelerator
        self._checkpoint_io = checkpoint_io
        self.precision = _one_precision(type(self).__name__, precision, precision_plugin) or Precision()
        self.layer_sync: Any = (
            None  # e.g. TorchSyncBatchNorm(), applied in setup_module by multi-process strategies
        )

    @property
    def root_device(self) -> torch.device:
        raise NotImplementedError

    @property
    def precision_plugin(self) -> Precision:
        """The precision plugin (Lightning's Trainer-side name for :attr:`precision`)."""
        return self.precision

    @precision_plugin.setter
    def precision_plugin(self, plugin: Precision) -> None:
        self.precision = plugin

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
        """Wrap ``module`` for the strategy (DDP, FSDP); returns what the step should call."""
        return module

    def step_function(self, module: nn.Module, name: str) -> Any:
        """The callable the loop uses for ``module.<name>`` (e.g. ``training_step``).

        Multi-process strategies route it through the wrapper's ``forward`` so gradients synchronize;
        here it is the bound method itself (no overhead).
        """
        return getattr(module, name)

    def no_backward_sync(self, module: Any, enabled: bool = True) -> Any:
        """Context in which backward does not synchronize gradients (gradient accumulation)."""
        return nullcontext()

    def process_dataloader(self, loader: Any, mode: str = "train") -> Any:
        """The loader this rank iterates (multi-process strategies give each rank its share)."""
        return loader

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int] | None:
        return None

    @property
    def supports_inference_mode(self) -> bool:
        """Whether evaluation may run under ``torch.inference_mode`` (else ``no_grad``)."""
        return True

    def sync_point(self, name: str) -> None:
        """Every rank reaches the point ``name`` before any continues (no-op on one process)."""

    @property
    def epoch_end_agreement(self) -> Any:
        """Multi-process strategies: how a stop/skip asked for on one rank ends every rank's epoch at the same
        batch. None on one process (the loop acts on the spot)."""
        return None

    @property
    def val_check_agreement(self) -> Any:
        """Multi-process strategies: how a time-based ``val_check_interval`` that elapsed on one rank's clock makes
        every rank validate after the same batch. None on one process (the loop reads its own clock)."""
        return None

    def on_exception(self, exception: BaseException) -> BaseException:
        """Called by the Trainer/Fabric when the run raises; returns the exception to raise (a peer's failure
        is reported as :class:`~fulmen.utilities.exceptions.RankFailedError`)."""
        return exception

    def module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        """The module's full state dict (gathered, for sharded strategies) as saved in a checkpoint."""
        return module.state_dict()

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        state: dict[str, Any] = optimizer.state_dict()
        return state

    def load_module_state_dict(
        self, module: nn.Module, state_dict: dict[str, Any], strict: bool = True
    ) -> Any:
        return module.load_state_dict(state_dict, strict=strict)

    def load_optimizer_state(self, optimizer: Any, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def module_to_device(self, module: nn.Module) -> None:
        module.to(self.root_device)

    def batch_to_device(self, batch: Any, device: torch.device | None = None) -> Any:
        return move_data_to_device(batch, device or self.root_device)

    def backward(self, tensor: torch.Tensor, module: nn.Module | None, *args: Any, **kwargs: Any) -> None:
        self.precision.backward(tensor, module, *args, **kwargs)

    def optimizer_step(
        self, optimizer: Any, closure: Any = None, model: Any = None, **kwargs: Any
    ) -> Any:
        """Step ``optimizer`` through the precision plugin (GradScaler, DeepSpeed engine); what Fabric's optimizer
        wrapper calls. ``model`` is accepted for Lightning's signature and not used."""
        return self.precision.optimizer_step(optimizer, closure, **kwargs)

    @contextmanager
    def module_init_context(self, empty_init: bool | None = None) -> Generator[None, None, None]:
        """Where a model is created: on the root device, in the precision's dtype; with ``empty_init=True`` the
        ``torch.nn.init`` calls are skipped (the weights are loaded afterwards)."""
        with self.root_device, _empty_init(empty_init), self.precision.module_init_context():
            yield

    @contextmanager
    def tensor_init_context(self, empty_init: bool | None = None) -> Generator[None, None, None]:
        """Where tensors are created: on the root device, in the precision's dtype (``torch.empty(...)`` inside
        gives a tensor of the run's device and dtype). ``empty_init=True`` also skips ``torch.nn.init``
        calls; sharded strategies create the tensors on the meta device instead."""
        with self.root_device, _empty_init(empty_init), self.precision.tensor_init_context():
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

    def _all_gather_object(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` (a small picklable object), in rank order; None when the ranks can no longer talk
        (a rank failed). Collective; the Trainer uses it once per checkpoint save, never per step."""
        return [obj]

    @property
    def metric_reduce(self) -> Any:
        """A ``(tensor, reduce_fx) -> tensor`` function for logging's sync_dist, or None on one process."""
        return None

    # checkpoints
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        if self.is_global_zero:
            self.checkpoint_io.save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def load_checkpoint(
        self, path: Any, weights_only: bool | None = None, map_location: Any = None
    ) -> dict[str, Any]:
        checkpoint: dict[str, Any] = self.checkpoint_io.load_checkpoint(
            path, map_location=map_location or "cpu", weights_only=weights_only
        )
        return checkpoint

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

    def __init__(
        self,
        device: torch.device | str = "cpu",
        accelerator: Accelerator | None = None,
        checkpoint_io: Any = None,
        precision: Precision | None = None,
        *,
        precision_plugin: Precision | None = None,
    ) -> None:
        super().__init__(accelerator, checkpoint_io, precision, precision_plugin=precision_plugin)
        self._root_device = torch.device(device)

    @property
    def root_device(self) -> torch.device:
        return self._root_device


class _StrategyRegistry(Registry[Strategy]):
    """The strategy names; each strategy module registers its own when imported (``providers``)."""

    def available_strategies(self) -> list[str]:
        return self.names()


# ddp, deepspeed and fsdp register their names at the bottom of their modules, imported on the first lookup
# that needs them (fsdp last: it is the heaviest import).
STRATEGY_REGISTRY: _StrategyRegistry = _StrategyRegistry(
    "strategy",
    providers=(
        "fulmen.strategies.ddp",
        "fulmen.strategies.dp",
        "fulmen.strategies.deepspeed",
        "fulmen.strategies.fsdp",
    ),
)
STRATEGY_REGISTRY.register("single_device", SingleDeviceStrategy, "a single device (CPU, one GPU)")
StrategyRegistry = STRATEGY_REGISTRY  # ``lightning.pytorch.strategies.StrategyRegistry``

# Names Lightning accepts that are not built: a clear error instead of silently running something else.
_NOT_YET = ["xla", "xla_debug", "single_xla", "single_tpu", "xla_fsdp"]


def _not_yet(name: str) -> Any:
    def factory(**_: Any) -> Strategy:
        raise NotSupportedYetError(
            f"strategy={name!r} is not supported (fulmen has no XLA/TPU strategy). "
            "Fix: use 'ddp' for several devices, or 'auto'."
        )

    return factory


for _name in _NOT_YET:
    STRATEGY_REGISTRY.register(_name, _not_yet(_name))


def __getattr__(name: str) -> Any:
    lazy = {
        "DDPStrategy": "fulmen.strategies.ddp",
        "DataParallelStrategy": "fulmen.strategies.dp",
        "ParallelStrategy": "fulmen.strategies.parallel",
        "FSDPStrategy": "fulmen.strategies.fsdp",
        "ModelParallelStrategy": "fulmen.strategies.fsdp",
        "DeepSpeedStrategy": "fulmen.strategies.deepspeed",
    }
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(f"module 'fulmen.strategies' has no attribute {name!r}")


__all__ = [
    "STRATEGY_REGISTRY",
    "DDPStrategy",
    "DataParallelStrategy",
    "DeepSpeedStrategy",
    "FSDPStrategy",
    "ModelParallelStrategy",
    "ParallelStrategy",
    "SingleDeviceStrategy",
    "Strategy",
    "StrategyRegistry",
]
