"""``LightningModule``: a system of models with its training, evaluation and optimisation logic."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Generator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from fulmen.core.hooks import CheckpointHooks, DataHooks, ModelHooks
from fulmen.core.hparams import HyperparametersMixin
from fulmen.core.logging_rules import LOG_RULES
from fulmen.core.optimizer import LightningOptimizer
from fulmen.core.results import _is_torchmetric, normalize_reduce_fx
from fulmen.utilities.exceptions import (
    MisconfigurationAttributeError,
    MisconfigurationException,
    MisconfigurationValueError,
)
from fulmen.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer

_NO_TRAINER = (
    "{cls} is not attached to a Trainer. Fix: call this from a hook while trainer.fit/validate/test/predict runs."
)


class _DeviceDtypeModuleMixin(nn.Module):
    """Tracks ``self.device`` and ``self.dtype`` through ``to``/``cuda``/``cpu``/``half``/..."""

    def __init__(self) -> None:
        super().__init__()
        self._dtype: torch.dtype = torch.get_default_dtype()
        self._device = torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @dtype.setter
    def dtype(self, new_dtype: torch.dtype) -> None:
        raise RuntimeError("Cannot set the dtype explicitly. Fix: use module.to(new_dtype).")

    @property
    def device(self) -> torch.device:
        device = self._device
        if device.type == "cuda" and device.index is None:
            return torch.device(f"cuda:{torch.cuda.current_device()}")
        return device

    def _update_properties(self, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        def apply(module: nn.Module) -> None:
            if not isinstance(module, _DeviceDtypeModuleMixin):
                return
            if device is not None:
                object.__setattr__(module, "_device", device)
            if dtype is not None:
                object.__setattr__(module, "_dtype", dtype)

        self.apply(apply)

    def to(self, *args: Any, **kwargs: Any) -> Any:
        device, dtype = torch._C._nn._parse_to(*args, **kwargs)[:2]
        self._update_properties(device=device, dtype=dtype if dtype is not None and dtype.is_floating_point else None)
        return super().to(*args, **kwargs)

    def cuda(self, device: torch.device | int | None = None) -> Any:
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device())
        elif isinstance(device, int):
            device = torch.device("cuda", index=device)
        self._update_properties(device=device)
        return super().cuda(device=device)

    def cpu(self) -> Any:
        self._update_properties(device=torch.device("cpu"))
        return super().cpu()

    def type(self, dst_type: Any) -> Any:
        self._update_properties(dtype=dst_type)
        return super().type(dst_type=dst_type)

    def float(self) -> Any:
        self._update_properties(dtype=torch.float)
        return super().float()

    def double(self) -> Any:
        self._update_properties(dtype=torch.double)
        return super().double()

    def half(self) -> Any:
        self._update_properties(dtype=torch.half)
        return super().half()

    def bfloat16(self) -> Any:
        self._update_properties(dtype=torch.bfloat16)
        return super().bfloat16()


class LightningModule(_DeviceDtypeModuleMixin, HyperparametersMixin, ModelHooks, DataHooks, CheckpointHooks, nn.Module):
    """Base class of the user's system. Override ``training_step`` and ``configure_optimizers`` at least."""

    CHECKPOINT_HYPER_PARAMS_KEY = "hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "hparams_type"
    # properties TorchScript must not compile (they read the Trainer or Python-only state); see to_torchscript
    __jit_unused_properties__: ClassVar[list[str]] = [  # TorchScript reads this exact class attribute
        "dtype", "device", "trainer", "fabric", "example_input_array", "current_epoch", "global_step", "global_rank",
        "local_rank", "on_gpu", "automatic_optimization", "strict_loading", "logger", "loggers", "device_mesh",
        "hparams", "hparams_initial",
    ]
    # True while torch.jit.script inspects the module: it reads every attribute, and `trainer` must not raise then
    _jit_is_scripting = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trainer: Trainer | None = None
        self._fabric: Any = None
        self._automatic_optimization = True
        self._strict_loading: bool | None = None
        self._example_input_array: Any = None
        self._toggled_requires_grad: dict[nn.Parameter, bool] = {}

    # ------------------------------------------------------------------ properties
    @property
    def trainer(self) -> Trainer:
        if self._trainer is None and self._fabric is None and not self._jit_is_scripting:
            raise RuntimeError(_NO_TRAINER.format(cls=type(self).__name__))
        return self._trainer  # type: ignore[return-value]

    @trainer.setter
    def trainer(self, trainer: Trainer | None) -> None:
        for m in self.modules():
            if isinstance(m, LightningModule):
                object.__setattr__(m, "_trainer", trainer)

    @property
    def fabric(self) -> Any:
        return self._fabric

    @fabric.setter
    def fabric(self, fabric: Any) -> None:
        object.__setattr__(self, "_fabric", fabric)

    @property
    def example_input_array(self) -> Any:
        return self._example_input_array

    @example_input_array.setter
    def example_input_array(self, example: Any) -> None:
        self._example_input_array = example

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_step(self) -> int:
        return self._trainer.global_step if self._trainer is not None else 0

    @property
    def global_rank(self) -> int:
        return self._trainer.global_rank if self._trainer is not None else 0

    @property
    def local_rank(self) -> int:
        return self._trainer.local_rank if self._trainer is not None else 0

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def automatic_optimization(self) -> bool:
        return self._automatic_optimization

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self._automatic_optimization = value

    @property
    def strict_loading(self) -> bool:
        return True if self._strict_loading is None else self._strict_loading

    @strict_loading.setter
    def strict_loading(self, strict: bool) -> None:
        self._strict_loading = strict

    @property
    def logger(self) -> Any:
        return self._trainer.logger if self._trainer is not None else None

    @property
    def loggers(self) -> list[Any]:
        return self._trainer.loggers if self._trainer is not None else []

    @property
    def device_mesh(self) -> Any:
        return getattr(self, "_device_mesh", None)

    # ------------------------------------------------------------------ steps and config
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return super().forward(*args, **kwargs)

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        raise MisconfigurationException(
            f"{type(self).__name__}.training_step is not implemented. Fix: define "
            "`def training_step(self, batch, batch_idx)` returning the loss (a scalar tensor), a dict with 'loss', "
            "or None to skip the batch."
        )

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        """Optional: compute and ``self.log`` validation metrics for one batch."""

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        """Optional: compute and ``self.log`` test metrics for one batch."""

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        """Default: ``self(batch)``."""
        batch = args[0] if args else kwargs.get("batch")
        return self(batch)

    def configure_optimizers(self) -> Any:
        raise MisconfigurationException(
            f"{type(self).__name__}.configure_optimizers is not implemented. Fix: define it and return e.g. "
            "`torch.optim.Adam(self.parameters(), lr=1e-3)`."
        )

    def configure_callbacks(self) -> Any:
        """Return callbacks to add to the Trainer's (they replace user callbacks of the same type)."""
        return []

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip gradients before the optimizer step (default: the Trainer's gradient_clip_val)."""
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        loss.backward(*args, **kwargs)

    # ------------------------------------------------------------------ logging
    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable[..., Any] = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any | None = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        metric_attribute: str | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """Log a scalar (number, 0-d/1-element tensor or torchmetrics Metric) for callbacks, the bar and loggers.

        Raises:
            MisconfigurationException: when called from a hook where logging is not allowed, with a value
                that is not a scalar, or with an unsupported ``reduce_fx`` / ``on_step`` combination.
        """
        trainer = self._trainer
        if trainer is None:
            if self._fabric is not None:
                self._fabric.log(name, value)
                return
            rank_zero_warn(
                f"self.log({name!r}, ...) was called but the module is not attached to a Trainer; nothing is logged."
            )
            return
        if trainer.barebones:
            return
        fx = trainer._current_fx
        rule = LOG_RULES.get(fx) if fx is not None else None
        if fx is None or rule is None:
            raise MisconfigurationException(
                f"self.log({name!r}, ...) was called from {fx!r}, where logging is not allowed. Log from training_step, "
                "validation_step, test_step, the batch/epoch hooks or on_train/validation/test_start. Fix: move the "
                "call into one of those hooks."
            )
        default_step, default_epoch, forced = rule
        if forced and (on_step is True or on_epoch is False):
            raise MisconfigurationException(
                f"self.log({name!r}, on_step={on_step}, on_epoch={on_epoch}) in {fx!r}: this hook only supports "
                "on_step=False, on_epoch=True. Fix: drop the on_step/on_epoch arguments."
            )
        on_step = default_step if on_step is None else on_step
        on_epoch = default_epoch if on_epoch is None else on_epoch
        if not on_step and not on_epoch:
            raise MisconfigurationException(
                f"self.log({name!r}, on_step=False, on_epoch=False) logs nothing. Fix: set on_step or on_epoch to True."
            )
        if not isinstance(name, str) or not name:
            raise MisconfigurationException(f"self.log name must be a non-empty str; got {name!r}. Fix: self.log('loss', v).")
        value = self._to_loggable(name, value, enable_graph)
        if isinstance(batch_size, bool) or (batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1)):
            raise MisconfigurationException(
                f"self.log({name!r}, ..., batch_size={batch_size!r}): expected a positive int. Fix: pass len(batch)."
            )
        results = trainer._results
        if results is None:  # pragma: no cover - a hook outside any stage
            return
        results.log(
            fx,
            name,
            value,
            prog_bar=prog_bar,
            logger=True if logger is None else logger,
            on_step=on_step,
            on_epoch=on_epoch,
            reduce_fx=normalize_reduce_fx(reduce_fx, name),
            enable_graph=enable_graph,
            sync_dist=sync_dist,
            sync_dist_group=sync_dist_group,
            add_dataloader_idx=add_dataloader_idx,
            batch_size=batch_size,
            rank_zero_only=rank_zero_only,
            multiple_dataloaders=trainer._multiple_eval_loaders,
        )

    def _to_loggable(self, name: str, value: Any, enable_graph: bool) -> Any:
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise MisconfigurationValueError(
                    f"self.log({name!r}, value): value has shape {tuple(value.shape)}; expected a scalar "
                    "(one element). Fix: reduce it first, e.g. value.mean(), or log elements separately."
                )
            if value.ndim:
                value = value.reshape(())
            if not enable_graph:
                value = value.detach()
            if not value.is_floating_point():
                value = value.to(torch.get_default_dtype())
            return value
        if isinstance(value, bool) or (isinstance(value, numbers.Number) and not isinstance(value, complex)):
            # numbers.Number declares no __float__; every real Number (int, float, Fraction, numpy scalars) has one
            return torch.tensor(float(value), device=self.device, dtype=torch.get_default_dtype())  # type: ignore[arg-type]
        if _is_torchmetric(value):
            return value
        if isinstance(value, Mapping):
            raise MisconfigurationValueError(
                f"self.log({name!r}, <dict>): nested dicts cannot be logged. Fix: use self.log_dict({{...}})."
            )
        raise MisconfigurationValueError(
            f"self.log({name!r}, {value!r}): got {type(value).__name__}; expected a number, a one-element tensor or "
            "a torchmetrics Metric. Fix: log a numeric value (strings go to the logger's experiment directly)."
        )

    def log_dict(
        self,
        dictionary: Any,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: str | Callable[..., Any] = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any | None = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """``self.log`` for every key of a mapping or a torchmetrics ``MetricCollection``."""
        if not isinstance(dictionary, Mapping) and not hasattr(dictionary, "items"):
            raise MisconfigurationAttributeError(
                f"self.log_dict({dictionary!r}): expected a Mapping or MetricCollection. Fix: pass a dict."
            )
        for k, v in dictionary.items():
            self.log(
                k,
                v,
                prog_bar=prog_bar,
                logger=logger,
                on_step=on_step,
                on_epoch=on_epoch,
                reduce_fx=reduce_fx,
                enable_graph=enable_graph,
                sync_dist=sync_dist,
                sync_dist_group=sync_dist_group,
                add_dataloader_idx=add_dataloader_idx,
                batch_size=batch_size,
                rank_zero_only=rank_zero_only,
            )

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank 0 only."""
        if self._trainer is None or self._trainer.is_global_zero:
            print(*args, **kwargs)

    # ------------------------------------------------------------------ optimisation
    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        """The optimizer(s) from ``configure_optimizers``; a single one is returned unwrapped from its list."""
        opts: list[Any]
        if self._fabric is not None and self._trainer is None:
            opts = list(getattr(self._fabric, "_fabric_optimizers", []))
        else:
            opts = list(self.trainer._lightning_optimizers if use_pl_optimizer else self.trainer.optimizers)
        if len(opts) == 1:
            return opts[0]
        return opts

    def lr_schedulers(self) -> Any:
        configs = self.trainer.lr_scheduler_configs
        if not configs:
            return None
        scheds = [c.scheduler for c in configs]
        return scheds[0] if len(scheds) == 1 else scheds

    def manual_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Backward in manual optimization, through the precision plugin (and hooks)."""
        trainer = self._trainer
        if trainer is None:
            if self._fabric is not None:
                self._fabric.backward(loss, *args, **kwargs)
                return
            raise RuntimeError(_NO_TRAINER.format(cls=type(self).__name__))
        if self.automatic_optimization:
            raise MisconfigurationException(
                "manual_backward was called with automatic_optimization=True. Fix: set "
                "self.automatic_optimization = False in __init__, or return the loss from training_step instead."
            )
        trainer._manual_backward(loss, *args, **kwargs)

    def toggle_optimizer(self, optimizer: Any) -> None:
        """Only the parameters of ``optimizer`` require grad until :meth:`untoggle_optimizer`."""
        opt = optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
        own = {id(p) for g in opt.param_groups for p in g["params"]}
        all_opts = self.trainer.optimizers if self._trainer is not None else []
        state: dict[nn.Parameter, bool] = {}
        for other in all_opts:
            for g in other.param_groups:
                for p in g["params"]:
                    if id(p) in own:
                        continue
                    state.setdefault(p, p.requires_grad)
                    p.requires_grad = False
        for g in opt.param_groups:
            for p in g["params"]:
                if p in state:
                    continue
        self._toggled_requires_grad = state

    def untoggle_optimizer(self, optimizer: Any) -> None:
        for p, req in self._toggled_requires_grad.items():
            p.requires_grad = req
        self._toggled_requires_grad = {}

    @contextmanager
    def toggled_optimizer(self, optimizer: Any) -> Generator[None, None, None]:
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    def clip_gradients(
        self,
        optimizer: Any,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip the gradients of ``optimizer``'s parameters by norm (default) or value."""
        if gradient_clip_val is None or gradient_clip_val == 0:
            return
        algo = gradient_clip_algorithm or "norm"
        if algo not in ("norm", "value"):
            raise MisconfigurationException(
                f"clip_gradients(gradient_clip_algorithm={algo!r}); expected 'norm' or 'value'. Fix: use one of them."
            )
        opt = optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
        if self._trainer is not None:
            if getattr(self._trainer.fabric.precision, "handles_gradient_clipping", False):
                return  # DeepSpeed: gradient_clip_val is the engine config's gradient_clipping
            self._trainer.fabric.precision.unscale_gradients(opt)
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if algo == "norm":
            torch.nn.utils.clip_grad_norm_(params, float(gradient_clip_val), foreach=True)
        else:
            torch.nn.utils.clip_grad_value_(params, float(gradient_clip_val), foreach=True)

    # ------------------------------------------------------------------ distributed
    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        if self._trainer is None:
            return data
        return self._trainer.strategy.all_gather(data, group=group, sync_grads=sync_grads)

    # ------------------------------------------------------------------ utilities
    def freeze(self) -> LightningModule:
        for p in self.parameters():
            p.requires_grad = False
        self.eval()
        return self

    def unfreeze(self) -> LightningModule:
        for p in self.parameters():
            p.requires_grad = True
        self.train()
        return self

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path | Any,
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Build the module from a checkpoint's saved hyperparameters (``kwargs`` override them) and weights.

        Loading is safe by default (``weights_only=True``); pass ``weights_only=False`` only for a trusted file.
        """
        from fulmen.core.saving import load_from_checkpoint

        return load_from_checkpoint(cls, checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs)

    def to_torchscript(
        self, file_path: str | Path | None = None, method: str = "script", example_inputs: Any = None, **kwargs: Any
    ) -> Any:
        from fulmen.core.export import to_torchscript

        return to_torchscript(self, file_path, method, example_inputs, **kwargs)

    def to_onnx(self, file_path: str | Path | None = None, input_sample: Any = None, **kwargs: Any) -> Any:
        from fulmen.core.export import to_onnx

        return to_onnx(self, file_path, input_sample, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_trainer"] = None
        return state


def _warn_deprecated(msg: str) -> None:  # pragma: no cover
    warnings.warn(msg, DeprecationWarning, stacklevel=3)
