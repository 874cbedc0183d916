"""``Fabric``: devices, precision, strategy and checkpoints for a loop you write yourself (spec §1.14).

The Trainer is a client of this class: it uses the same strategy, precision plugin, launcher and
checkpoint IO. Multi-process runs: ``fabric.launch()`` starts the processes (or joins the ones torchrun,
srun, ... started), ``setup`` wraps the model (DDP, FSDP), ``setup_dataloaders`` gives each rank its share
of the data, and the collectives, ``save`` and ``load`` work on every rank.
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
    """Runs ``forward`` under the precision plugin's context; other attributes reach the wrapped module.

    ``_forward_module`` is what the strategy made of the module (a DDP or FSDP wrapper, or the module itself);
    ``module`` is the user's module. A LightningModule's ``*_step`` methods called on this object run through
    the wrapper's ``forward`` so that gradients synchronize (DDP) and parameters are gathered (FSDP).
    """

    def __init__(
        self, forward_module: nn.Module, fabric: Fabric, original_module: nn.Module | None = None
    ) -> None:
        super().__init__()
        self._forward_module = forward_module
        self._original_module = original_module if original_module is not None else forward_module
        object.__setattr__(self, "_fabric", fabric)
        object.__setattr__(self, "_count", getattr(fabric.strategy, "count_step", None))

    @property
    def module(self) -> nn.Module:
        return self._original_module

    @property
    def device(self) -> torch.device:
        """Where the module's parameters are (its first parameter's, else first buffer's, device); the Fabric's
        device for a module with neither."""
        for param in self._original_module.parameters():
            return param.device
        for buffer in self._original_module.buffers():
            return buffer.device
        return self._fabric.device  # type: ignore[no-any-return]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        precision = self._fabric.strategy.precision
        args, kwargs = precision.convert_input((args, kwargs))
        if self._count is not None and torch.is_grad_enabled():
            self._count()  # a training forward: the sync points' measure of progress (evaluation is not counted)
        with precision.forward_context():
            return self._forward_module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            original: Any = super().__getattr__("_original_module")
            attr = getattr(original, name)
            if callable(attr) and name.endswith("_step") and hasattr(original, "training_step"):
                precision = self._fabric.strategy.precision
                wrapper: Any = super().__getattr__("_forward_module")
                count = self._count if name == "training_step" else None
                if isinstance(wrapper, nn.DataParallel):
                    raise MisconfigurationException(
                        f"model.{name}(...) under strategy='dp': torch.nn.DataParallel splits only forward over "
                        f"the GPUs, and {name} would run on one of them with the whole batch. Fix: call the model "
                        "itself (its forward) in the loop, or use strategy='ddp'."
                    ) from None
                if wrapper is not original:
                    from fulmen.strategies.parallel import forward_redirection

                def redirected(*a: Any, **k: Any) -> Any:
                    if count is not None:
                        count()
                    with precision.forward_context():
                        if wrapper is original:
                            return attr(*a, **k)
                        return forward_redirection(wrapper, original, name, *a, **k)

                return redirected
            return attr

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self._original_module.state_dict(*args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self._original_module.load_state_dict(*args, **kwargs)


class _FabricOptimizer:
    """The optimizer ``fabric.setup`` returns: ``step`` goes through the strategy (precision plugin, GradScaler),
    ``state_dict``/``load_state_dict`` through the strategy (sharded states are gathered), the rest reaches the
    wrapped optimizer.

    ``_FabricOptimizer(opt, strategy)`` builds an instance of a subclass of *both* this class and
    ``type(opt)`` (``FabricSGD``, ``FabricAdamW``, made once per optimizer class), so that
    ``isinstance(wrapper, torch.optim.Optimizer)`` holds and LR schedulers, which check it, accept the wrapper.
    The optimizer's own ``__init__`` never runs for the wrapper: ``param_groups``, ``state`` and ``defaults``
    are properties that read and write the wrapped optimizer's objects, so a scheduler that sets
    ``param_groups[i]["lr"]`` changes the wrapped optimizer, and any other attribute is looked up on it.
    """

    def __new__(cls, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
        if cls is _FabricOptimizer:
            cls = _fabric_optimizer_class(type(optimizer))
        return object.__new__(cls)

    def __init__(self, optimizer: Any, strategy: Strategy, callbacks: list[Any] | None = None) -> None:
        # not the optimizer's __init__: the wrapper holds no state of its own
        self._optimizer = optimizer
        self._strategy = strategy
        self._callbacks = callbacks if callbacks is not None else []

    @property
    def optimizer(self) -> Optimizer:
        return self._optimizer  # type: ignore[no-any-return]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self._optimizer.param_groups  # type: ignore[no-any-return]

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self._optimizer.param_groups = value

    @property
    def state(self) -> Any:
        return self._optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self._optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:
        return self._optimizer.defaults  # type: ignore[no-any-return]

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self._optimizer.defaults = value

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        output = self._strategy.optimizer_step(self._optimizer, closure)
        for callback in self._callbacks:
            hook = getattr(callback, "on_after_optimizer_step", None)
            if callable(hook):
                hook(strategy=self._strategy, optimizer=self._optimizer)
        return output

    def zero_grad(self, *args: Any, **kwargs: Any) -> None:
        self._optimizer.zero_grad(*args, **kwargs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        return self._strategy.optimizer_state(self._optimizer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._strategy.load_optimizer_state(self._optimizer, state_dict)

    def __getattr__(self, name: str) -> Any:
        # only reached for names the wrapper lacks; "_optimizer" itself missing means a half-built object
        if name == "_optimizer":
            raise AttributeError(name)
        return getattr(self._optimizer, name)

    def __reduce__(self) -> Any:
        # the class is made at run time and can't be found by name: rebuild through the factory
        return _FabricOptimizer, (self._optimizer, self._strategy, self._callbacks)


_OPTIMIZER_CLASSES: dict[type, type] = {}


def _fabric_optimizer_class(optimizer_class: type) -> type:
    """``Fabric<Name>``: a subclass of :class:`_FabricOptimizer` and ``optimizer_class`` (made once per class)."""
    cls = _OPTIMIZER_CLASSES.get(optimizer_class)
    if cls is None:
        if issubclass(optimizer_class, _FabricOptimizer):
            raise ValueError(
                "An optimizer should be passed only once to fabric.setup: this one is already the wrapper "
                "fabric.setup returned. Fix: pass the original optimizer, or use the returned one as it is."
            )
        cls = type(
            f"Fabric{optimizer_class.__name__}",
            (_FabricOptimizer, optimizer_class),
            {"__module__": __name__, "__doc__": _FabricOptimizer.__doc__},
        )
        _OPTIMIZER_CLASSES[optimizer_class] = cls
    return cls


class _FabricDataLoader:
    """Iterates a loader and moves every batch to the device; each new iteration is a new epoch for a
    distributed sampler (``set_epoch``), so every epoch shuffles differently and identically on every rank."""

    def __init__(self, loader: Iterable[Any], device: torch.device | None, distributed: bool = False) -> None:
        self._loader = loader
        self._device = device
        self._distributed = distributed
        self._num_iter_calls = 0

    def __len__(self) -> int:
        return len(self._loader)  # type: ignore[arg-type]

    def __iter__(self) -> Generator[Any, None, None]:
        if self._distributed:
            from fulmen.utilities.distributed import set_sampler_epoch

            set_sampler_epoch(self._loader, self._num_iter_calls)
        self._num_iter_calls += 1
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
        accelerator = _from_cli("accelerator", accelerator, "auto")
        strategy = _from_cli("strategy", strategy, "auto")
        devices = _from_cli("devices", devices, "auto")
        num_nodes = int(_from_cli("num_nodes", num_nodes, 1))
        precision = _from_cli("precision", precision, None)
        self._strategy = build_strategy(accelerator, strategy, devices, num_nodes, precision, plugins)
        self._callbacks = (
            list(callbacks) if isinstance(callbacks, (list, tuple)) else ([callbacks] if callbacks else [])
        )
        self._loggers = (
            list(loggers) if isinstance(loggers, (list, tuple)) else ([loggers] if loggers else [])
        )
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
        """Start the processes and run ``function(fabric, *args, **kwargs)`` in each (if given).

        With ``strategy="ddp"`` the script is started again once per extra device and this call returns in
        every process; ``ddp_spawn``/``ddp_fork``/``ddp_notebook`` need ``function`` and return rank 0's
        result here. Under torchrun/SLURM/... this process joins the others.

        Raises:
            MisconfigurationException: ``function`` is missing for a launcher that runs it in new processes.
            RankFailedError: another rank raised (its rank and exception are named).
        """
        if function is not None and not callable(function):
            raise TypeError(f"fabric.launch(function) needs a callable, got {function!r}.")
        launcher = self._strategy.launcher
        if launcher is None:
            return _launched(self, function, args, kwargs)
        if function is None and hasattr(launcher, "in_worker") and not launcher.in_worker:
            raise MisconfigurationException(
                f"strategy={getattr(self._strategy, 'start_method', 'spawn')!r} starts new processes that run a "
                "function: call fabric.launch(train) with `def train(fabric): ...`. Fix: pass the function, or use "
                "strategy='ddp', which runs the whole script in every process."
            )
        return launcher.launch(_launched, self, function, args, kwargs)

    def _check_launched(self) -> None:
        if self._strategy.is_distributed and not self._launched:
            raise MisconfigurationException(
                "This Fabric runs several processes, but fabric.launch() was not called. Fix: call fabric.launch() "
                "(or fabric.launch(fn)) before setting up models and data."
            )

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Override in a subclass (legacy style); ``launch`` is preferred."""
        raise NotImplementedError("Subclass Fabric and override run(), or call fabric.launch(fn).")

    def _run_impl(self, *args: Any, **kwargs: Any) -> Any:
        return self.launch(lambda f, *a, **k: f.run(*a, **k), *args, **kwargs)

    def setup(
        self,
        module: nn.Module,
        *optimizers: Optimizer,
        scheduler: Any = None,
        move_to_device: bool = True,
        _reapply_compile: bool = True,
    ) -> Any:
        """Move ``module`` to the device, apply precision, and wrap optimizers. Returns them in the same order.

        Raises:
            ValueError: the module or an optimizer is one that ``setup`` already returned.
        """
        _refuse_set_up(module, optimizers, "setup")
        fabric_module = self._setup_module(module, move_to_device)
        if not optimizers:
            self.call("on_after_setup", fabric=self, module=fabric_module)
            return fabric_module
        joint = getattr(self._strategy, "setup_module_and_optimizers", None)
        if joint is not None:  # DeepSpeed: one engine for the module and its optimizer
            module = fabric_module._forward_module
            engine, opts_list = joint(module, list(optimizers))
            fabric_module = _FabricModule(engine, self, original_module=module)
            opts: Any = self._wrap_optimizers(opts_list)
        else:
            opts = self._setup_optimizers(optimizers)
        self.call("on_after_setup", fabric=self, module=fabric_module)
        out: list[Any] = [fabric_module, *opts]
        if scheduler is not None:
            out.append(scheduler)
        return tuple(out)

    def setup_module(
        self, module: nn.Module, move_to_device: bool = True, _reapply_compile: bool = True
    ) -> _FabricModule:
        """Set up a model without optimizers (e.g. FSDP: the optimizer is built from the sharded parameters).

        Raises:
            ValueError: ``module`` is one that ``setup``/``setup_module`` already returned.
        """
        _refuse_set_up(module, (), "setup_module")
        return self._setup_module(module, move_to_device)

    def _setup_module(self, module: nn.Module, move_to_device: bool) -> _FabricModule:
        self._check_launched()
        module = self._strategy.precision.convert_module(module)
        if move_to_device:
            self._strategy.module_to_device(module)
        wrapped = self._strategy.setup_module(module)
        if hasattr(module, "_fabric") and hasattr(module, "training_step"):
            # a LightningModule: it reaches the Fabric (self.fabric, optimizers()) and receives the callback calls
            module.fabric = self  # type: ignore[assignment]
            if not any(cb is module for cb in self._callbacks):
                self._callbacks.append(module)
        return _FabricModule(wrapped, self, original_module=module)

    def setup_optimizers(self, *optimizers: Optimizer) -> Any:
        """Wrap optimizers (of a model set up with ``setup_module``); one is returned as it is, several as a tuple.

        Raises:
            ValueError: an optimizer is one that ``setup``/``setup_optimizers`` already returned.
        """
        _refuse_set_up(None, optimizers, "setup_optimizers")
        wrapped = self._setup_optimizers(optimizers)
        return wrapped[0] if len(wrapped) == 1 else wrapped

    def _setup_optimizers(self, optimizers: Sequence[Optimizer]) -> tuple[Any, ...]:
        self._check_launched()
        check = getattr(self._strategy, "check_optimizers", None)
        if check is not None:
            check(optimizers)
        return self._wrap_optimizers(optimizers)

    def _wrap_optimizers(self, optimizers: Iterable[Any]) -> tuple[Any, ...]:
        wrapped = tuple(_FabricOptimizer(o, self._strategy, self._callbacks) for o in optimizers)
        self._fabric_optimizers.extend(wrapped)
        return wrapped

    def setup_dataloaders(
        self, *dataloaders: DataLoader[Any], use_distributed_sampler: bool = True, move_to_device: bool = True
    ) -> Any:
        """Wrap loaders: batches move to the device, and (multi-process) each rank iterates its share. After
        ``seed_everything(..., workers=True)`` (Fabric's default) workers get distinct, reproducible seeds.

        Raises:
            ValueError: a loader is one that ``setup_dataloaders`` already returned.
        """
        self._check_launched()
        from fulmen.utilities.seed import _auto_add_worker_init_fn

        distributed = self._strategy.is_distributed
        out = []
        for dl in dataloaders:
            if isinstance(dl, _FabricDataLoader):
                raise ValueError(
                    "A dataloader should be passed only once to the `setup_dataloaders` method: this one is what "
                    "setup_dataloaders returned. Fix: pass the original DataLoader, or use the returned one as it is."
                )
            if distributed and use_distributed_sampler:
                dl = self._strategy.process_dataloader(dl, "train")
            _auto_add_worker_init_fn(dl, self.global_rank)
            out.append(
                _FabricDataLoader(dl, self.device if move_to_device else None, distributed=distributed)
            )
        return out[0] if len(out) == 1 else out

    # ------------------------------------------------------------------ step helpers
    def backward(self, tensor: torch.Tensor, *args: Any, model: Any = None, **kwargs: Any) -> None:
        module = model._forward_module if isinstance(model, _FabricModule) else model
        self._strategy.backward(tensor, module, *args, **kwargs)

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
        if getattr(self._strategy.precision, "handles_gradient_clipping", False):
            raise MisconfigurationException(
                "With strategy='deepspeed' the engine clips gradients. Fix: set 'gradient_clipping' in the DeepSpeed "
                "config (DeepSpeedStrategy(config={..., 'gradient_clipping': 1.0})) instead of calling clip_gradients."
            )
        opt = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
        self._strategy.precision.unscale_gradients(opt)
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if max_norm is not None:
            return torch.nn.utils.clip_grad_norm_(
                params, max_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite
            )
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
        """Skip the gradient synchronization of ``module``'s backward (gradient accumulation). A no-op on one
        process; the gradients are synchronized by the first backward outside the context."""
        if not isinstance(module, _FabricModule):
            raise TypeError(
                f"fabric.no_backward_sync(module) needs the module returned by fabric.setup(), got {type(module).__name__}."
            )
        with self._strategy.no_backward_sync(module._forward_module, enabled):
            yield

    @contextmanager
    def init_module(self, empty_init: bool | None = None) -> Generator[None, None, None]:
        with self._strategy.module_init_context(empty_init):
            yield

    @contextmanager
    def init_tensor(self) -> Generator[None, None, None]:
        """Tensors created inside are on the device, in the precision's dtype."""
        with self._strategy.tensor_init_context():
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
    def save(
        self,
        path: str | Path,
        state: dict[str, Any],
        filter: dict[str, Callable[[str, Any], bool]] | None = None,
    ) -> None:
        """Save ``state`` (modules and optimizers become their state dicts) atomically on rank 0."""
        checkpoint = {}
        for key, obj in state.items():
            value = _unwrap_state(obj, self._strategy)
            if filter is not None and key in filter and isinstance(value, dict):
                value = {k: v for k, v in value.items() if filter[key](k, v)}
            checkpoint[key] = value
        self._strategy.save_checkpoint(checkpoint, path)
        self.barrier("Fabric.save")

    def load(
        self,
        path: str | Path,
        state: dict[str, Any] | None = None,
        strict: bool = True,
        *,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load a checkpoint; restore objects in ``state`` in place and return the remaining entries."""
        is_sharded = getattr(self._strategy, "is_sharded_checkpoint", None)
        if state is not None and is_sharded is not None and is_sharded(path):
            loaded: dict[str, Any] = self._strategy.load_sharded(path, state, strict)  # type: ignore[attr-defined]
            return loaded
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
                self._strategy.load_module_state_dict(target, value, strict=strict)
            elif isinstance(target, (Optimizer, _FabricOptimizer)):
                opt = target.optimizer if isinstance(target, _FabricOptimizer) else target
                self._strategy.load_optimizer_state(opt, value)
            elif hasattr(target, "load_state_dict"):
                target.load_state_dict(value)
            else:
                state[key] = value
        return checkpoint

    def load_raw(
        self, path: str | Path, obj: nn.Module | Optimizer, strict: bool = True, *, weights_only: bool | None = None
    ) -> None:
        """Load a plain state dict saved with ``torch.save(model.state_dict(), path)`` (not by ``fabric.save``)
        into a module or optimizer, set up or not.

        Args:
            path: the file.
            obj: a module or optimizer (what ``setup`` returned, or the original).
            strict: for a module, whether the keys must match exactly.
            weights_only: passed to ``torch.load``; ``None`` is the safe default (tensors and plain containers).

        Raises:
            TypeError: ``obj`` has no ``load_state_dict``.
        """
        target = obj.module if isinstance(obj, _FabricModule) else obj
        if not hasattr(target, "load_state_dict"):
            raise TypeError(
                f"fabric.load_raw(path, obj): obj is a {type(obj).__name__}, which has no load_state_dict. Fix: pass "
                "the module or optimizer to load into (for a dict of objects, use fabric.load(path, state))."
            )
        checkpoint = self._strategy.load_checkpoint(path, weights_only=weights_only)
        if isinstance(target, nn.Module):
            self._strategy.load_module_state_dict(target, checkpoint, strict=strict)
        elif isinstance(target, Optimizer):  # a Fabric optimizer too: its state goes through the strategy
            opt = target.optimizer if isinstance(target, _FabricOptimizer) else target
            self._strategy.load_optimizer_state(opt, checkpoint)
        else:
            target.load_state_dict(checkpoint)

    # ------------------------------------------------------------------ logging, callbacks, misc
    def call(self, hook_name: str, *args: Any, **kwargs: Any) -> None:
        """Call ``hook_name(*args, **kwargs)`` on every callback that has it (LightningModules set up with this
        Fabric included). A callback gets only the keyword arguments its method accepts (all of them if it takes
        ``**kwargs``), so callbacks with different signatures can share a hook."""
        for cb in self._callbacks:
            method = getattr(cb, hook_name, None)
            if method is None:
                continue
            if not callable(method):
                from fulmen.utilities.rank_zero import rank_zero_warn

                rank_zero_warn(f"Skipping the callback `{type(cb).__name__}.{hook_name}` because it is not callable.")
                continue
            method(*args, **_accepted_kwargs(method, kwargs))

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
        """``fulmen.seed_everything``, except that ``workers`` defaults to True (as in Lightning's Fabric): loaders
        from ``setup_dataloaders`` then seed each worker distinctly and reproducibly."""
        return _seed_everything(seed, workers=True if workers is None else bool(workers), verbose=verbose)


def _refuse_set_up(module: Any, optimizers: Sequence[Any], method: str) -> None:
    """Lightning's rule: what ``setup`` returned is not set up again (it would be wrapped twice).

    Raises:
        ValueError: naming the object and ``method``.
    """
    if isinstance(module, _FabricModule):
        raise ValueError(
            f"A model should be passed only once to the `{method}` method: this one is what fabric.setup returned. "
            "Fix: use the returned model as it is, or pass the original nn.Module."
        )
    if any(isinstance(opt, _FabricOptimizer) for opt in optimizers):
        raise ValueError(
            f"An optimizer should be passed only once to the `{method}` method: this one is what fabric.setup "
            "returned. Fix: use the returned optimizer as it is, or pass the original optimizer."
        )


def _accepted_kwargs(method: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``method`` accepts by name (all of them when it takes ``**kwargs`` or can't be read)."""
    if not kwargs:
        return kwargs
    import inspect

    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return kwargs
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs.items() if k in names}


def _unwrap_state(obj: Any, strategy: Strategy) -> Any:
    if isinstance(obj, _FabricModule):
        return strategy.module_state_dict(obj.module)
    if isinstance(obj, nn.Module):
        return strategy.module_state_dict(obj)
    if isinstance(obj, (Optimizer, _FabricOptimizer)):
        return strategy.optimizer_state(obj.optimizer if isinstance(obj, _FabricOptimizer) else obj)
    if hasattr(obj, "state_dict") and not isinstance(obj, dict):
        return obj.state_dict()
    return obj


def _launched(fabric: Fabric, function: Callable[..., Any] | None, args: Any, kwargs: Any) -> Any:
    """What runs in every process of a launch (module level: a spawned worker unpickles it by name)."""
    fabric._strategy.setup_environment()
    fabric._launched = True
    if function is None:
        return None
    try:
        return function(fabric, *args, **kwargs)
    except BaseException as exc:
        reported = fabric._strategy.on_exception(exc)
        if reported is not exc:
            raise reported from exc
        raise


_CLI_ENV = {
    "accelerator": "LT_ACCELERATOR",
    "strategy": "LT_STRATEGY",
    "devices": "LT_DEVICES",
    "num_nodes": "LT_NUM_NODES",
    "precision": "LT_PRECISION",
}


def _from_cli(name: str, current: Any, default: Any) -> Any:
    """A value set by ``fulmen fabric run --<name> ...`` (exported as ``LT_<NAME>``, Lightning's variables).

    Raises:
        MisconfigurationException: the code sets a different, non-default value.
    """
    import os

    value = os.environ.get(_CLI_ENV[name])
    if value is None:
        return current
    if current != default and str(current) != value:
        raise MisconfigurationException(
            f"Fabric({name}={current!r}) in the code conflicts with --{name.replace('_', '-')}={value} given to "
            f"`fulmen fabric run`. Fix: remove one of them."
        )
    if name == "devices" and value.lstrip("-").isdigit():
        return int(value)
    return value


def _is_sequence(x: Any) -> bool:  # pragma: no cover
    return isinstance(x, Sequence) and not isinstance(x, str)
