"""``Fabric``: devices, precision, strategy and checkpoints for a loop you write yourself (spec §1.14).

The Trainer is a client of this class: it uses the same strategy, precision plugin and checkpoint IO.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from fulmen.fabric.connector import build_strategy
from fulmen.strategies import Strategy
from fulmen.utilities.apply_func import move_data_to_device
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.seed import seed_everything as _seed_everything


class _FabricModule(nn.Module):
    """Runs ``forward`` under the precision plugin's context; other attributes reach the wrapped module."""

    def __init__(self, module: nn.Module, fabric: Fabric) -> None:
        super().__init__()
        self._forward_module = module
        self._original_module = module
        object.__setattr__(self, "_fabric", fabric)

    @property
    def module(self) -> nn.Module:
        return self._original_module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        precision = self._fabric.strategy.precision
        args, kwargs = precision.convert_input((args, kwargs))
        with precision.forward_context():
            return self._forward_module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = super().__getattr__("_original_module")
            attr = getattr(original, name)
            if callable(attr) and name.endswith("_step") and hasattr(original, "training_step"):
                precision = self._fabric.strategy.precision

                def redirected(*a: Any, **k: Any) -> Any:
                    with precision.forward_context():
                        return attr(*a, **k)

                return redirected
            return attr

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self._original_module.state_dict(*args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self._original_module.load_state_dict(*args, **kwargs)


class _FabricOptimizer:
    """Optimizer whose ``step`` goes through the precision plugin (e.g. the GradScaler)."""

    def __init__(self, optimizer: Optimizer, strategy: Strategy) -> None:
        self._optimizer = optimizer
        self._strategy = strategy

    @property
    def optimizer(self) -> Optimizer:
        return self._optimizer

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        return self._strategy.precision.optimizer_step(self._optimizer, closure)

    def state_dict(self) -> dict[str, Any]:
        return self._optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._optimizer.load_state_dict(state)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._optimizer, name)


class _FabricDataLoader:
    """Iterates a loader and moves every batch to the device."""

    def __init__(self, loader: Iterable[Any], device: torch.device | None) -> None:
        self._loader = loader
        self._device = device

    def __len__(self) -> int:
        return len(self._loader)  # type: ignore[arg-type]

    def __iter__(self) -> Generator[Any, None, None]:
        for batch in self._loader:
            yield move_data_to_device(batch, self._device) if self._device is not None else batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class Fabric:
    """The hardware layer: ``Fabric(accelerator=..., devices=..., precision=...)``."""

    def __init__(
        self,
        *,
        accelerator: Any = "auto",
        strategy: Any = "auto",
        devices: Any = "auto",
        num_nodes: int = 1,
        precision: Any = None,
        plugins: Any = None,
        callbacks: Any = None,
        loggers: Any = None,
    ) -> None:
        self._strategy = build_strategy(accelerator, strategy, devices, num_nodes, precision, plugins)
        self._callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else ([callbacks] if callbacks else [])
        self._loggers = list(loggers) if isinstance(loggers, (list, tuple)) else ([loggers] if loggers else [])
        self._launched = False
        self._fabric_optimizers: list[_FabricOptimizer] = []

    # ------------------------------------------------------------------ properties
    @property
    def strategy(self) -> Strategy:
        return self._strategy

    @property
    def accelerator(self) -> Any:
        return self._strategy.accelerator

    @property
    def precision(self) -> Any:
        return self._strategy.precision

    @property
    def device(self) -> torch.device:
        return self._strategy.root_device

    @property
    def global_rank(self) -> int:
        return self._strategy.global_rank

    @property
    def local_rank(self) -> int:
        return self._strategy.local_rank

    @property
    def node_rank(self) -> int:
        return self._strategy.node_rank

    @property
    def world_size(self) -> int:
        return self._strategy.world_size

    @property
    def is_global_zero(self) -> bool:
        return self._strategy.is_global_zero

    @property
    def loggers(self) -> list[Any]:
        return self._loggers

    @property
    def logger(self) -> Any:
        return self._loggers[0] if self._loggers else None

    # ------------------------------------------------------------------ launching and setup
    def launch(self, function: Callable[..., Any] | None = None, *args: Any, **kwargs: Any) -> Any:
        """Start the processes (one here) and run ``function(fabric, *args)`` if given."""
        self._strategy.setup_environment()
        self._launched = True
        if function is not None:
            return function(self, *args, **kwargs)
        return None

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Override in a subclass (legacy style); ``launch`` is preferred."""
        raise NotImplementedError("Subclass Fabric and override run(), or call fabric.launch(fn).")

    def _run_impl(self, *args: Any, **kwargs: Any) -> Any:
        return self.launch(lambda f, *a, **k: f.run(*a, **k), *args, **kwargs)

    def setup(self, module: nn.Module, *optimizers: Optimizer, scheduler: Any = None, move_to_device: bool = True) -> Any:
        """Move ``module`` to the device, apply precision, and wrap optimizers. Returns them in the same order."""
        fabric_module = self.setup_module(module, move_to_device=move_to_device)
        if not optimizers:
            return fabric_module
        opts = self.setup_optimizers(*optimizers)
        out: list[Any] = [fabric_module, *(opts if isinstance(opts, tuple) else (opts,))]
        if scheduler is not None:
            out.append(scheduler)
        return tuple(out)

    def setup_module(self, module: nn.Module, move_to_device: bool = True, _reapply_compile: bool = True) -> _FabricModule:
        if isinstance(module, _FabricModule):
            raise MisconfigurationException("This module was already set up. Fix: call fabric.setup() once per module.")
        module = self._strategy.precision.convert_module(module)
        if move_to_device:
            self._strategy.module_to_device(module)
        module = self._strategy.setup_module(module)
        if hasattr(module, "_fabric") and hasattr(module, "training_step"):
            module.fabric = self  # type: ignore[union-attr]
        return _FabricModule(module, self)

    def setup_optimizers(self, *optimizers: Optimizer) -> Any:
        wrapped = tuple(_FabricOptimizer(o, self._strategy) for o in optimizers)
        self._fabric_optimizers.extend(wrapped)
        return wrapped[0] if len(wrapped) == 1 else wrapped

    def setup_dataloaders(self, *dataloaders: DataLoader, use_distributed_sampler: bool = True, move_to_device: bool = True) -> Any:
        out = [_FabricDataLoader(dl, self.device if move_to_device else None) for dl in dataloaders]
        return out[0] if len(out) == 1 else out

    # ------------------------------------------------------------------ step helpers
    def backward(self, tensor: torch.Tensor, *args: Any, model: Any = None, **kwargs: Any) -> None:
        self._strategy.backward(tensor, model, *args, **kwargs)

    def clip_gradients(
        self,
        module: nn.Module,
        optimizer: Any,
        clip_val: float | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor | None:
        if (clip_val is None) == (max_norm is None):
            raise MisconfigurationException(
                f"clip_gradients(clip_val={clip_val}, max_norm={max_norm}): set exactly one. Fix: e.g. max_norm=1.0."
            )
        opt = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
        self._strategy.precision.unscale_gradients(opt)
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if max_norm is not None:
            return torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite)
        torch.nn.utils.clip_grad_value_(params, clip_val)  # type: ignore[arg-type]
        return None

    def autocast(self) -> Any:
        return self._strategy.precision.forward_context()

    def to_device(self, obj: Any) -> Any:
        if isinstance(obj, nn.Module):
            self._strategy.module_to_device(obj)
            return obj
        return move_data_to_device(obj, self.device)

    @contextmanager
    def no_backward_sync(self, module: Any, enabled: bool = True) -> Generator[None, None, None]:
        yield

    @contextmanager
    def init_module(self, empty_init: bool | None = None) -> Generator[None, None, None]:
        with self._strategy.module_init_context(empty_init):
            yield

    @contextmanager
    def init_tensor(self) -> Generator[None, None, None]:
        with self._strategy.module_init_context():
            yield

    def sharded_model(self) -> Any:
        return nullcontext()

    # ------------------------------------------------------------------ collectives
    def barrier(self, name: str | None = None) -> None:
        self._strategy.barrier(name)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return self._strategy.broadcast(obj, src)

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        return self._strategy.all_gather(data, group, sync_grads)

    def all_reduce(self, data: Any, group: Any = None, reduce_op: str = "mean") -> Any:
        return self._strategy.all_reduce(data, group, reduce_op)

    @contextmanager
    def rank_zero_first(self, local: bool = False) -> Generator[None, None, None]:
        rank = self.local_rank if local else self.global_rank
        if rank > 0:
            self.barrier("rank_zero_first")
        yield
        if rank == 0:
            self.barrier("rank_zero_first")

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path, state: dict[str, Any], filter: dict[str, Callable[[str, Any], bool]] | None = None) -> None:
        """Save ``state`` (modules and optimizers become their state dicts) atomically on rank 0."""
        checkpoint = {}
        for key, obj in state.items():
            value = _unwrap_state(obj)
            if filter is not None and key in filter and isinstance(value, dict):
                value = {k: v for k, v in value.items() if filter[key](k, v)}
            checkpoint[key] = value
        self._strategy.save_checkpoint(checkpoint, path)
        self.barrier("Fabric.save")

    def load(
        self, path: str | Path, state: dict[str, Any] | None = None, strict: bool = True, *, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load a checkpoint; restore objects in ``state`` in place and return the remaining entries."""
        checkpoint = self._strategy.load_checkpoint(path, weights_only=weights_only)
        if state is None:
            return checkpoint
        for key, obj in list(state.items()):
            if key not in checkpoint:
                if strict:
                    raise KeyError(
                        f"Fabric.load: {key!r} is not in the checkpoint {str(path)!r} (it has {sorted(checkpoint)}). "
                        "Fix: pass strict=False or remove it from `state`."
                    )
                continue
            value = checkpoint.pop(key)
            target = obj.module if isinstance(obj, _FabricModule) else obj
            if isinstance(target, nn.Module):
                target.load_state_dict(value, strict=strict)
            elif hasattr(target, "load_state_dict"):
                target.load_state_dict(value)
            else:
                state[key] = value
        return checkpoint

    def load_raw(self, path: str | Path, obj: Any, strict: bool = True) -> None:
        checkpoint = self._strategy.load_checkpoint(path)
        target = obj.module if isinstance(obj, _FabricModule) else obj
        if isinstance(target, nn.Module):
            target.load_state_dict(checkpoint, strict=strict)
        else:
            target.load_state_dict(checkpoint)

    # ------------------------------------------------------------------ logging, callbacks, misc
    def call(self, hook_name: str, *args: Any, **kwargs: Any) -> None:
        for cb in self._callbacks:
            method = getattr(cb, hook_name, None)
            if callable(method):
                method(*args, **kwargs)

    def log(self, name: str, value: Any, step: int | None = None) -> None:
        self.log_dict({name: value}, step=step)

    def log_dict(self, metrics: dict[str, Any], step: int | None = None) -> None:
        from fulmen.utilities.apply_func import convert_tensors_to_scalars

        metrics = convert_tensors_to_scalars(dict(metrics))
        for logger in self._loggers:
            logger.log_metrics(metrics=metrics, step=step)

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.local_rank == 0:
            print(*args, **kwargs)

    @staticmethod
    def seed_everything(seed: int | None = None, workers: bool | None = None, verbose: bool = True) -> int:
        return _seed_everything(seed, workers=bool(workers), verbose=verbose)


def _unwrap_state(obj: Any) -> Any:
    if isinstance(obj, _FabricModule):
        return obj.module.state_dict()
    if isinstance(obj, (nn.Module, Optimizer, _FabricOptimizer)) or hasattr(obj, "state_dict") and not isinstance(obj, dict):
        return obj.state_dict()
    return obj


def _is_sequence(x: Any) -> bool:  # pragma: no cover
    return isinstance(x, Sequence) and not isinstance(x, str)
