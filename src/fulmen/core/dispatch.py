"""The one hook dispatcher. Only overridden hooks are called; the table is computed once per run.

Order (Lightning's): for each hook, the callbacks' version runs right before the module's. Only at
``on_train_epoch_end`` do the *monitoring* callbacks (checkpointing and early stopping) run after the
module's hook, so they see what the module logged there (``on_validation_end`` cannot log).

Hook names are :class:`~fulmen.core.events.Event` values. The dispatcher checks a name when it first builds
the callbacks' table entry or the module-override entry for it in a run (never per call); a name that is not
an Event raises. ``module_hook`` is not checked at run time (a per-call cost on the step path): the names the
Trainer passes to it are checked by tests/core/test_events.py, which reads them from the source.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fulmen.core.callback import Callback

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer


def check_hook_name(name: str) -> None:
    """:func:`fulmen.core.events.check_hook_name`, importing the enum at the first check of a run, not with
    ``import fulmen`` (building its 65 members costs about a millisecond)."""
    from fulmen.core.events import check_hook_name as check

    check(name)


def _overrides(obj: Any, base: type, name: str) -> bool:
    own = getattr(obj, "__dict__", {})
    if name in own:
        # as Lightning: ``model.validation_step = None`` disables the step (and its loop)
        return own[name] is not None
    impl = getattr(type(obj), name, None)
    return impl is not None and impl is not getattr(base, name, None)


def is_monitoring(cb: Callback) -> bool:
    from fulmen.core.callback import Checkpoint

    return isinstance(cb, Checkpoint) or type(cb).__name__ == "EarlyStopping" or getattr(cb, "_is_monitoring", False)


class Dispatcher:
    """Calls callback and module hooks for one run of the Trainer."""

    def __init__(self, trainer: Trainer, module: Any, datamodule: Any, callbacks: list[Callback]) -> None:
        from fulmen.core.datamodule import LightningDataModule
        from fulmen.core.module import LightningModule

        self.trainer = trainer
        self.module = module
        self.datamodule = datamodule
        self.callbacks = callbacks
        self._cb_cache: dict[tuple[str, int], list[Callable[..., Any]]] = {}
        self._lm_base = LightningModule
        self._dm_base = LightningDataModule
        self._module_overrides: dict[str, bool] = {}

    def _callback_fns(self, name: str, monitoring: int) -> list[Callable[..., Any]]:
        key = (name, monitoring)
        fns = self._cb_cache.get(key)
        if fns is None:
            check_hook_name(name)  # once per name and run: the table entry is cached below
            # A callback may list hooks it overrides but never acts in with its configuration (e.g. a
            # ModelCheckpoint that saves at epoch ends has nothing to do per batch): they are skipped, so the
            # default Trainer dispatches nothing per batch that does nothing.
            fns = [
                getattr(cb, name)
                for cb in self.callbacks
                if _overrides(cb, Callback, name)
                and name not in getattr(cb, "_inactive_hooks", ())
                and (monitoring == 0 or (monitoring == 2) == is_monitoring(cb))
            ]
            self._cb_cache[key] = fns
        return fns

    def has_callbacks(self, name: str) -> bool:
        return bool(self._callback_fns(name, 0))

    def module_overrides(self, name: str) -> bool:
        value = self._module_overrides.get(name)
        if value is None:
            check_hook_name(name)  # once per name and run: cached below
            value = _overrides(self.module, self._lm_base, name)
            self._module_overrides[name] = value
        return value

    def callbacks_hook(self, name: str, *args: Any, monitoring: int = 0) -> None:
        """Call ``name`` on callbacks: monitoring=0 all, 1 non-monitoring only, 2 monitoring only."""
        fns = self._callback_fns(name, monitoring)
        if not fns:
            return
        trainer = self.trainer
        prev = trainer._current_fx
        trainer._current_fx = name
        try:
            for fn in fns:
                fn(trainer, self.module, *args)
        finally:
            trainer._current_fx = prev

    def module_hook(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the module's hook ``name`` (even if not overridden: defaults may do work)."""
        trainer = self.trainer
        prev = trainer._current_fx
        trainer._current_fx = name
        try:
            return getattr(self.module, name)(*args, **kwargs)
        finally:
            trainer._current_fx = prev

    def datamodule_hook(self, name: str, *args: Any) -> Any:
        check_hook_name(name)  # a few calls per run (set-up and tear-down), never per batch
        dm = self.datamodule
        if dm is None or not _overrides(dm, self._dm_base, name):
            return None
        return getattr(dm, name)(*args)

    def both(self, name: str, *args: Any) -> None:
        """Callbacks then module, skipping the module if it does not override a no-op hook."""
        self.callbacks_hook(name, *args)
        if self.module_overrides(name):
            self.module_hook(name, *args)

    def epoch_end(self, name: str) -> None:
        """Non-monitoring callbacks, module, then monitoring callbacks (Lightning's epoch-end order)."""
        self.callbacks_hook(name, monitoring=1)
        if self.module_overrides(name):
            self.module_hook(name)
        self.callbacks_hook(name, monitoring=2)
