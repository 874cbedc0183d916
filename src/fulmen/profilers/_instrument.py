"""How a run is profiled: the Trainer's hooks and steps become profiler actions, only while profiling.

With the default :class:`~fulmen.profilers.PassThroughProfiler` none of this runs, so the step loop is
untouched. With a real profiler, :class:`RunInstrumentation` is entered once per ``trainer.fit`` /
``validate`` / ``test`` / ``predict``: it wraps the few callables the loops look up on objects (the
module's step methods, the batch and epoch runners, backward, zero_grad, the optimizer step and the
batch transfer) in instance attributes that shadow the methods, and removes them when the run ends.
The dispatcher wraps each overridden hook once, when its hook table is built
(:func:`instrument_dispatcher`). Action names are computed once, never per call.

Actions: ``run_training_epoch``, ``run_training_batch``, ``[LightningModule]Model.training_step`` (and the
other steps), ``backward``, ``optimizer_zero_grad``, ``optimizer_step``, ``batch_to_device``,
``run_sanity_check`` / ``run_validation`` / ``run_test`` / ``run_predict``, ``[Callback]<state_key>.<hook>``,
``[LightningModule]Model.<hook>`` and ``[LightningDataModule]DataModule.<hook>``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fulmen.core.dispatch import Dispatcher
    from fulmen.profilers.profiler import Profiler
    from fulmen.trainer.trainer import Trainer


_MISSING = object()


def _profiled(profiler: Profiler, action: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    start, stop = profiler.start, profiler.stop

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start(action)
        try:
            return fn(*args, **kwargs)
        finally:
            stop(action)

    wrapper.__fulmen_profiled__ = True  # type: ignore[attr-defined]
    return wrapper


def _callback_name(fn: Callable[..., Any]) -> str:
    cb = getattr(fn, "__self__", None)
    if cb is None:
        return getattr(fn, "__qualname__", repr(fn))
    try:
        return str(cb.state_key)
    except Exception:  # noqa: BLE001 - a broken state_key must not break profiling
        return type(cb).__name__


def instrument_dispatcher(d: Dispatcher) -> None:
    """Make every hook call of ``d`` a profiler action (called by the Dispatcher when profiling)."""
    profiler: Profiler = d.trainer.profiler
    base_callback_fns = d._callback_fns
    base_module_hook = d.module_hook
    base_datamodule_hook = d.datamodule_hook
    cb_cache: dict[tuple[str, int], list[Callable[..., Any]]] = {}
    module_names: dict[str, str] = {}
    dm_names: dict[str, str] = {}

    def callback_fns(name: str, monitoring: int) -> list[Callable[..., Any]]:
        key = (name, monitoring)
        fns = cb_cache.get(key)
        if fns is None:
            fns = [
                _profiled(profiler, f"[Callback]{_callback_name(fn)}.{name}", fn)
                for fn in base_callback_fns(*key)
            ]
            cb_cache[key] = fns
        return fns

    def module_hook(name: str, *args: Any, **kwargs: Any) -> Any:
        action = module_names.get(name)
        if action is None:
            action = module_names[name] = f"[LightningModule]{type(d.module).__name__}.{name}"
        profiler.start(action)
        try:
            return base_module_hook(name, *args, **kwargs)
        finally:
            profiler.stop(action)

    def datamodule_hook(name: str, *args: Any) -> Any:
        if d.datamodule is None:
            return None
        action = dm_names.get(name)
        if action is None:
            action = dm_names[name] = f"[LightningDataModule]{type(d.datamodule).__name__}.{name}"
        profiler.start(action)
        try:
            return base_datamodule_hook(name, *args)
        finally:
            profiler.stop(action)

    d._callback_fns = callback_fns  # type: ignore[method-assign]
    d.module_hook = module_hook  # type: ignore[method-assign]
    d.datamodule_hook = datamodule_hook  # type: ignore[method-assign]


class RunInstrumentation:
    """Shadows the loops' callables with profiled versions for one run; :meth:`close` restores them."""

    _STEPS = ("training_step", "validation_step", "test_step", "predict_step")

    def __init__(self, trainer: Trainer, model: Any, stage: str) -> None:
        from fulmen.core.dispatch import _overrides
        from fulmen.core.module import LightningModule

        self.trainer = trainer
        self.stage = stage
        self.profiler: Profiler = trainer.profiler
        self._installed: list[tuple[Any, str, Any]] = []
        self.profiler.setup(stage=stage, local_rank=trainer.local_rank, log_dir=_log_dir(trainer))
        cls = type(model).__name__
        for name in self._STEPS:
            if _overrides(model, LightningModule, name):
                self._shadow(model, name, f"[LightningModule]{cls}.{name}")
        opt = trainer._optimization
        self._force_hookable_step(opt)
        self._shadow(opt, "step_auto", "run_training_batch")
        self._shadow(opt, "step_manual", "run_training_batch")
        self._shadow(opt, "_backward", "backward")
        self._shadow(opt, "_zero_grad", "optimizer_zero_grad")
        self._shadow(trainer.fit_loop, "_run_epoch", "run_training_epoch")
        self._shadow(trainer._val_loop_sanity, "run", "run_sanity_check")
        self._shadow(trainer._val_loop, "run", "run_validation")
        self._shadow(trainer._test_loop, "run", "run_test")
        self._shadow(trainer.predict_loop, "run", "run_predict")
        strategy = trainer.strategy
        if hasattr(strategy, "batch_to_device"):
            self._shadow(strategy, "batch_to_device", "batch_to_device")
        precision = getattr(strategy, "precision", None)
        if precision is not None and hasattr(precision, "optimizer_step"):
            self._shadow(precision, "optimizer_step", "optimizer_step")

    def _force_hookable_step(self, opt: Any) -> None:
        """The step's fast paths call ``loss.backward()`` / ``optimizer.zero_grad()`` inline (decided in
        ``Optimization.setup``); while profiling, take the equivalent method path so they are actions."""
        original = opt.setup

        def setup() -> None:
            original()
            for flag in ("plain_backward", "plain_zero_grad"):
                if getattr(opt, flag, False):
                    setattr(opt, flag, False)

        self._installed.append((opt, "setup", opt.__dict__.get("setup", _MISSING)))
        opt.__dict__["setup"] = setup

    def _shadow(self, obj: Any, attr: str, action: str) -> None:
        fn = getattr(obj, attr)
        if getattr(fn, "__fulmen_profiled__", False):
            return
        # written to __dict__ directly: no nn.Module bookkeeping, and removal restores the class method
        self._installed.append((obj, attr, obj.__dict__.get(attr, _MISSING)))
        obj.__dict__[attr] = _profiled(self.profiler, action, fn)

    def close(self) -> None:
        """Remove the shadows, then write the report (``describe``) and let the profiler clean up."""
        for obj, attr, previous in reversed(self._installed):
            if previous is _MISSING:
                obj.__dict__.pop(attr, None)
            else:
                obj.__dict__[attr] = previous
        self._installed.clear()
        try:
            self.profiler.describe()
        finally:
            self.profiler.teardown(self.stage)


def _log_dir(trainer: Trainer) -> str | None:
    try:
        return trainer.log_dir
    except Exception:  # noqa: BLE001 - a logger that cannot name its directory yet
        return trainer.default_root_dir
