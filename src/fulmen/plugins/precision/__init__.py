"""Precision plugins: how forward, backward and the optimizer step handle dtypes and loss scaling.

Plugins never call hooks. ``optimizer_step`` receives the loop's ``closure`` (forward + backward)
and ``after_closure`` (the loop's pre-step hooks and clipping) and runs them in the right order
around unscaling.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from fulmen.utilities.exceptions import MisconfigurationException, MisconfigurationValueError
from fulmen.utilities.registry import Registry

_ALIASES = {
    64: "64-true", "64": "64-true", 32: "32-true", "32": "32-true", 16: "16-mixed", "16": "16-mixed",
    "bf16": "bf16-mixed",
}


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Generator[None, None, None]:
    """``torch``'s default dtype is ``dtype`` inside (tensors and parameters created there get it)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(default)


def _cast_floating(data: Any, dtype: torch.dtype) -> Any:
    """The floating-point tensors in ``data`` (any collection) cast to ``dtype``; other tensors as they are."""
    from fulmen.utilities.apply_func import apply_to_collection

    return apply_to_collection(data, torch.Tensor, lambda t: t.to(dtype) if t.is_floating_point() else t)


class Precision:
    """Full precision (``32-true``): no autocast, no scaling."""

    precision: str = "32-true"

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module

    def forward_context(self) -> Any:
        return nullcontext()

    def backward(self, tensor: torch.Tensor, model: nn.Module | None, *args: Any, **kwargs: Any) -> None:
        tensor.backward(*args, **kwargs)

    def pre_backward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        """Bring gradients to their true scale (no-op without a GradScaler)."""

    def optimizer_step(
        self, optimizer: Optimizer, closure: Callable[[], Any] | None, after_closure: Callable[[], None] | None = None, **kw: Any
    ) -> Any:
        if closure is None:
            if after_closure is not None:
                after_closure()
            return optimizer.step(**kw)
        if after_closure is None:
            return optimizer.step(closure=closure, **kw)

        def wrapped() -> Any:
            out = closure()
            after_closure()
            return out

        return optimizer.step(closure=wrapped, **kw)

    @contextmanager
    def module_init_context(self) -> Generator[None, None, None]:
        yield

    def tensor_init_context(self) -> Any:
        """Where tensors are created (``Strategy.tensor_init_context``): the same dtype rule as for a module."""
        return self.module_init_context()

    def convert_input(self, data: Any) -> Any:
        return data

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...

    def teardown(self) -> None: ...


class MixedPrecision(Precision):
    """``16-mixed`` / ``bf16-mixed``: ``torch.autocast``, plus a GradScaler for fp16 (state checkpointed)."""

    def __init__(self, precision: str, device: str, scaler: Any = None) -> None:
        if precision not in ("16-mixed", "bf16-mixed"):
            raise MisconfigurationException(f"MixedPrecision(precision={precision!r}); expected '16-mixed' or 'bf16-mixed'.")
        self.precision = precision
        self.device = device
        if precision == "16-mixed" and scaler is None:
            scaler = torch.amp.GradScaler(device)  # Lightning's default: a scaler for the autocast device
        if precision == "bf16-mixed" and scaler is not None:
            raise MisconfigurationException("bf16-mixed does not use a GradScaler. Fix: drop the scaler argument.")
        self.scaler = scaler
        self._dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
        self._unscaled: set[int] = set()

    def autocast_context_manager(self) -> torch.autocast:
        """The ``torch.autocast`` context the forward runs in (this plugin's device and dtype)."""
        return torch.autocast(self.device, dtype=self._dtype)

    def forward_context(self) -> Any:
        return self.autocast_context_manager()

    def backward(self, tensor: torch.Tensor, model: nn.Module | None, *args: Any, **kwargs: Any) -> None:
        if self.scaler is not None:
            tensor = self.scaler.scale(tensor)
        tensor.backward(*args, **kwargs)

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        if self.scaler is not None and id(optimizer) not in self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def optimizer_step(
        self, optimizer: Optimizer, closure: Callable[[], Any] | None, after_closure: Callable[[], None] | None = None, **kw: Any
    ) -> Any:
        if self.scaler is None:
            return super().optimizer_step(optimizer, closure, after_closure, **kw)
        if isinstance(optimizer, torch.optim.LBFGS):
            raise MisconfigurationException("16-mixed with LBFGS is not supported. Fix: use precision='bf16-mixed' or '32'.")
        out = closure() if closure is not None else None
        self.unscale_gradients(optimizer)
        if after_closure is not None:
            after_closure()
        skip = closure is not None and out is None
        self._unscaled.discard(id(optimizer))
        if skip:
            return out
        step_out = self.scaler.step(optimizer, **kw)
        self.scaler.update()
        return step_out if closure is None else out

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.scaler is not None and state_dict:
            self.scaler.load_state_dict(state_dict)


class HalfPrecision(Precision):
    """``16-true`` / ``bf16-true``: parameters and inputs in half precision."""

    def __init__(self, precision: str = "16-true") -> None:
        self.precision = precision
        self._dtype = torch.bfloat16 if precision == "bf16-true" else torch.float16

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module.to(dtype=self._dtype)

    @contextmanager
    def module_init_context(self) -> Generator[None, None, None]:
        with _default_dtype(self._dtype):
            yield

    def forward_context(self) -> Any:
        return self.module_init_context()

    def convert_input(self, data: Any) -> Any:
        return _cast_floating(data, self._dtype)


class DoublePrecision(HalfPrecision):
    """``64-true``."""

    def __init__(self) -> None:
        self.precision = "64-true"
        self._dtype = torch.float64


class DeepSpeedPrecision(Precision):
    """Precision under ``strategy="deepspeed"``: the DeepSpeed engine keeps the fp32 master weights, scales the
    loss (fp16), clips gradients and steps the optimizer; this plugin maps the precision flag to the engine's
    config (``fp16`` / ``bf16`` section), casts floating inputs to the engine's dtype and routes
    ``optimizer.step`` to ``engine.step``. The strategy registers each optimizer's engine in ``_engines``.
    """

    # the engine clips (the config's gradient_clipping): LightningModule.clip_gradients returns, Fabric's raises
    handles_gradient_clipping = True

    def __init__(self, precision: Any = "32-true") -> None:
        name = _ALIASES.get(precision, precision)
        if name not in ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true"):
            raise MisconfigurationException(
                f"DeepSpeedPrecision(precision={precision!r}); expected '32-true', '16-mixed', 'bf16-mixed', "
                "'16-true' or 'bf16-true'. Fix: e.g. precision='bf16-mixed'."
            )
        self.precision = str(name)
        self._dtype = {
            "16-mixed": torch.float16,
            "16-true": torch.float16,
            "bf16-mixed": torch.bfloat16,
            "bf16-true": torch.bfloat16,
        }.get(self.precision, torch.float32)
        self._engines: dict[int, Any] = {}

    def convert_module(self, module: nn.Module) -> nn.Module:
        if self.precision.endswith("-true") and self._dtype != torch.float32:
            return module.to(dtype=self._dtype)
        return module  # the engine casts the model for its fp16/bf16 section

    @contextmanager
    def module_init_context(self) -> Generator[None, None, None]:
        low_true = self.precision.endswith("-true") and self._dtype != torch.float32
        with _default_dtype(self._dtype) if low_true else nullcontext():
            yield

    def convert_input(self, data: Any) -> Any:
        return data if self._dtype == torch.float32 else _cast_floating(data, self._dtype)

    def optimizer_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any] | None,
        after_closure: Callable[[], None] | None = None,
        **kw: Any,
    ) -> Any:
        engine = self._engines.get(id(getattr(optimizer, "optimizer", optimizer)))
        if engine is None:
            raise MisconfigurationException(
                f"{type(optimizer).__name__} was not set up with the DeepSpeed engine, which steps it. Fix: in Fabric, "
                "`model, optimizer = fabric.setup(model, optimizer)`; in the Trainer, return it from "
                "configure_optimizers."
            )
        out = closure() if closure is not None else None
        if after_closure is not None:
            after_closure()
        engine.step()
        return out


PRECISION_REGISTRY: Registry[Precision] = Registry("precision")
PRECISION_REGISTRY.register("32-true", Precision)
PRECISION_REGISTRY.register("64-true", DoublePrecision)
PRECISION_REGISTRY.register("16-true", HalfPrecision, precision="16-true")
PRECISION_REGISTRY.register("bf16-true", HalfPrecision, precision="bf16-true")
PRECISION_REGISTRY.register("16-mixed", MixedPrecision, precision="16-mixed")
PRECISION_REGISTRY.register("bf16-mixed", MixedPrecision, precision="bf16-mixed")


def normalize_precision(precision: Any) -> str:
    if precision is None:
        return "32-true"
    value = _ALIASES.get(precision, precision)
    if value in ("transformer-engine", "transformer-engine-float16"):
        from fulmen.utilities.exceptions import NotSupportedYetError

        raise NotSupportedYetError(f"precision={precision!r} is not supported yet. Fix: use 'bf16-mixed' or '16-mixed'.")
    if value not in PRECISION_REGISTRY:
        raise MisconfigurationValueError(
            f"precision={precision!r} is not supported. Expected one of {PRECISION_REGISTRY.names()} or the aliases "
            "64, 32, 16, '64', '32', '16', 'bf16'. Fix: e.g. precision='bf16-mixed'."
        )
    return str(value)


def select_precision(precision: Any, device_type: str) -> Precision:
    if isinstance(precision, Precision):
        return precision
    name = normalize_precision(precision)
    if name in ("16-mixed", "bf16-mixed"):
        return PRECISION_REGISTRY.get(name, device=device_type)
    return PRECISION_REGISTRY.get(name)


__all__ = ["PRECISION_REGISTRY", "DeepSpeedPrecision", "DoublePrecision", "HalfPrecision", "MixedPrecision", "Precision"]
