"""Lightning's loop internals that public code reaches into, as views over fulmen's run state.

Real Lightning programs and libraries read (and a few write) counters on ``trainer.fit_loop``:
``trainer.fit_loop.epoch_loop.batch_progress.current.completed``, ``trainer.fit_loop.epoch_progress``,
``trainer.fit_loop.max_epochs``, ``epoch_loop._batches_that_stepped``,
``epoch_loop.automatic_optimization.optim_progress.optimizer.step.total.completed`` ... fulmen's loops keep
their counters in :class:`~fulmen.core.run_state.RunState`; the objects here are built when such an
attribute is read and translate fulmen's counters into Lightning's values at that moment (Lightning advances
a batch's ``ready``/``started``/``processed``/``completed`` counters at different hooks; fulmen advances
them together once the batch's step is done, so a read inside a batch is shifted to what Lightning shows).
Nothing here runs per training step. Which internals are offered, and why (how often public code uses
them), is in docs/migration.md ("Loop internals"). Any other attribute raises
:class:`UnsupportedLoopAttributeError`, an ``AttributeError`` that names it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fulmen.core.run_state import Progress

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer

_STAGES = ("ready", "started", "processed", "completed")

# hooks and steps that run inside a training batch before fulmen counts it (Lightning has already advanced
# ``ready`` at on_train_batch_start and ``started`` right after it)
_IN_BATCH = frozenset({
    "training_step", "on_before_backward", "backward", "on_after_backward", "on_before_optimizer_step",
    "optimizer_step", "configure_gradient_clipping", "on_before_zero_grad", "optimizer_zero_grad",
})


class UnsupportedLoopAttributeError(AttributeError):
    """A Lightning loop attribute fulmen does not offer (fulmen's loops are not Lightning's)."""

    def __init__(self, owner: str, name: str) -> None:
        super().__init__(
            f"`{owner}.{name}` is a Lightning loop internal that fulmen does not offer. fulmen offers the loop "
            "progress counters public code reads (see docs/migration.md, 'Loop internals'); fix: read the public "
            "Trainer attributes instead (trainer.global_step, trainer.current_epoch, trainer.is_last_batch, "
            "trainer.num_training_batches) or open an issue naming this attribute."
        )
        self.name = name


class _Unsupported:
    """Base of the views: unknown attributes raise :class:`UnsupportedLoopAttributeError`."""

    _owner = "loop"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise UnsupportedLoopAttributeError(self._owner, name)


# a shift of the stored counters: (ready, started, processed, completed) to add, per scope
_Shift = Callable[[], tuple[int, int, int, int]]


def _no_shift() -> tuple[int, int, int, int]:
    return (0, 0, 0, 0)


class _ScopeView(_Unsupported):
    """``progress.total`` or ``progress.current``: the four counters, read and written."""

    __slots__ = ("_on_write", "_owner", "_progress", "_scope", "_shift")

    def __init__(self, progress: Progress, scope: str, shift: _Shift, on_write: Callable[[], None] | None,
                 owner: str) -> None:
        object.__setattr__(self, "_progress", progress)
        object.__setattr__(self, "_scope", scope)
        object.__setattr__(self, "_shift", shift)
        object.__setattr__(self, "_on_write", on_write)
        object.__setattr__(self, "_owner", f"{owner}.{scope}")

    def _values(self) -> list[int]:
        stored = self._progress._get(self._scope)
        return [v + d for v, d in zip(stored, self._shift())]

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _STAGES:
            raise UnsupportedLoopAttributeError(self._owner, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"`{self._owner}.{name} = {value!r}`: expected an int")
        # the stored counter is what makes the shifted (Lightning-visible) value equal to ``value``
        delta = self._shift()[_STAGES.index(name)]
        setattr(self._progress, f"{self._scope}_{name}", value - delta)
        if self._on_write is not None:
            self._on_write()

    def reset(self) -> None:
        for stage in _STAGES:
            setattr(self._progress, f"{self._scope}_{stage}", 0)
        if self._on_write is not None:
            self._on_write()

    def __repr__(self) -> str:
        return f"_ProcessedTracker({', '.join(f'{k}={v}' for k, v in zip(_STAGES, self._values()))})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _ScopeView):
            return self._values() == other._values()
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


def _stage_property(index: int) -> property:
    def get(self: _ScopeView) -> int:
        return self._values()[index]

    return property(get)


for _i, _stage in enumerate(_STAGES):
    setattr(_ScopeView, _stage, _stage_property(_i))


class ProgressView(_Unsupported):
    """A Lightning progress object (``_Progress``/``_BatchProgress``): ``.total`` and ``.current`` scopes."""

    def __init__(self, progress: Progress, owner: str, shift: _Shift = _no_shift,
                 on_write: Callable[[], None] | None = None, is_last_batch: Callable[[], bool] | None = None,
                 current_shift: _Shift | None = None) -> None:
        self._owner = owner
        self._progress = progress
        self.total = _ScopeView(progress, "total", shift, on_write, owner)
        self.current = _ScopeView(progress, "current", current_shift or shift, on_write, owner)
        self._is_last_batch = is_last_batch

    @property
    def is_last_batch(self) -> bool:
        if self._is_last_batch is None:
            raise UnsupportedLoopAttributeError(self._owner, "is_last_batch")
        return self._is_last_batch()

    def reset(self) -> None:
        self.total.reset()
        self.current.reset()

    def reset_on_run(self) -> None:
        self.current.reset()

    def _bump(self, stage: str) -> None:
        for scope in (self.total, self.current):
            setattr(scope, stage, getattr(scope, stage) + 1)

    def increment_ready(self) -> None:
        self._bump("ready")

    def increment_started(self) -> None:
        self._bump("started")

    def increment_processed(self) -> None:
        self._bump("processed")

    def increment_completed(self) -> None:
        self._bump("completed")

    def state_dict(self) -> dict[str, Any]:
        return {"total": {s: getattr(self.total, s) for s in _STAGES},
                "current": {s: getattr(self.current, s) for s in _STAGES}}

    def __repr__(self) -> str:
        return f"Progress(total={self.total!r}, current={self.current!r})"


class _Namespace(_Unsupported):
    def __init__(self, owner: str, **attrs: Any) -> None:
        self._owner = owner
        for name, value in attrs.items():
            object.__setattr__(self, name, value)


def _batch_shift(trainer: Trainer) -> tuple[int, int, int, int]:
    """What Lightning's training batch counters show now, relative to fulmen's (see the module docstring)."""
    fx = trainer._current_fx
    if fx is None:
        return (0, 0, 0, 0)
    if fx == "on_train_batch_start":  # ready advanced just before the hook, started just after it
        return (1, 0, 0, 0)
    if fx in _IN_BATCH and trainer.state.stage == "train":
        return (1, 1, 0, 0)
    if trainer.run_state.resume_point == "batch_end":  # on_train_batch_end: completed advances after it
        return (0, 0, 0, -1)
    return (0, 0, 0, 0)


def _is_last_batch(trainer: Trainer) -> bool:
    """Lightning's flag stays up from the epoch's last batch until the next batch is fetched (after fit too);
    fulmen lowers its own when the epoch ends."""
    rs = trainer.run_state
    fx = trainer._current_fx
    in_batch = fx == "on_train_batch_start" or fx in _IN_BATCH or rs.resume_point in ("batch_end", "val", "after_val")
    if in_batch or rs.is_last_batch:
        return rs.is_last_batch
    return rs.batch_in_epoch == 0 and rs.epoch_progress.total_completed > 0


class EpochLoopView(_Unsupported):
    """``trainer.fit_loop.epoch_loop`` (Lightning's ``_TrainingEpochLoop``)."""

    _owner = "trainer.fit_loop.epoch_loop"

    def __init__(self, trainer: Trainer) -> None:
        object.__setattr__(self, "_trainer", trainer)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_batches_that_stepped":
            self._trainer.run_state.batches_that_stepped = int(value) + self._stepped_shift()
            return
        if name == "max_steps":  # as Lightning, the fit's step limit (trainer.max_steps reads it)
            if isinstance(value, bool) or not isinstance(value, int) or value < -1:
                raise ValueError(f"{self._owner}.max_steps = {value!r}: expected -1 (no limit) or a non-negative int")
            _set_config(self._trainer, max_steps=value)
            return
        if name == "min_steps":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{self._owner}.min_steps = {value!r}: expected a non-negative int or None")
            _set_config(self._trainer, min_steps=value)
            return
        raise UnsupportedLoopAttributeError(self._owner, name)

    def _stepped_shift(self) -> int:
        """fulmen counts a batch that stepped before its in-epoch validation; Lightning after it."""
        t = self._trainer
        rs = t.run_state
        in_val = t.state.stage == "validate" and rs.resume_point in ("val", "after_val")
        return 1 if in_val and rs.last_batch_stepped else 0

    @property
    def _batches_that_stepped(self) -> int:
        return self._trainer.run_state.batches_that_stepped - self._stepped_shift()

    @property
    def batch_progress(self) -> ProgressView:
        t = self._trainer
        rs = t.run_state

        def sync() -> None:
            rs.batch_in_epoch = rs.batch_progress.current_completed

        return ProgressView(rs.batch_progress, f"{self._owner}.batch_progress", lambda: _batch_shift(t), sync,
                            lambda: _is_last_batch(t))

    @property
    def scheduler_progress(self) -> ProgressView:
        return ProgressView(self._trainer.run_state.scheduler_progress, f"{self._owner}.scheduler_progress")

    def _optimizer_steps(self, owner: str) -> ProgressView:
        rs = self._trainer.run_state

        def sync() -> None:  # Lightning's global_step is this counter: writing it moves global_step
            rs.global_step = rs.optimizer_steps.total_completed

        return ProgressView(rs.optimizer_steps, owner, on_write=sync)

    @property
    def automatic_optimization(self) -> _Namespace:
        owner = f"{self._owner}.automatic_optimization"
        rs = self._trainer.run_state
        manual = not self._trainer_automatic()
        step = ProgressView(Progress(), f"{owner}.optim_progress.optimizer.step") if manual else \
            self._optimizer_steps(f"{owner}.optim_progress.optimizer.step")
        zero = ProgressView(rs.zero_grad_progress, f"{owner}.optim_progress.optimizer.zero_grad")
        optimizer = _Namespace(f"{owner}.optim_progress.optimizer", step=step, zero_grad=zero)
        return _Namespace(owner, optim_progress=_Namespace(f"{owner}.optim_progress", optimizer=optimizer,
                                                           optimizer_steps=step.total.completed))

    @property
    def manual_optimization(self) -> _Namespace:
        owner = f"{self._owner}.manual_optimization"
        step = self._optimizer_steps(f"{owner}.optim_step_progress") if not self._trainer_automatic() else \
            ProgressView(Progress(), f"{owner}.optim_step_progress")
        return _Namespace(owner, optim_step_progress=step)

    def _trainer_automatic(self) -> bool:
        module = self._trainer.lightning_module
        return module is None or bool(module.automatic_optimization)

    @property
    def val_loop(self) -> _Namespace:
        owner = f"{self._owner}.val_loop"
        return _Namespace(owner, batch_progress=ProgressView(self._trainer.run_state.val_batch_progress,
                                                             f"{owner}.batch_progress"))

    @property
    def global_step(self) -> int:
        return self._trainer.run_state.global_step

    @property
    def total_batch_idx(self) -> int:
        return self.batch_progress.total.ready - 1

    @property
    def batch_idx(self) -> int:
        return self.batch_progress.current.ready - 1

    @property
    def min_steps(self) -> int | None:
        return self._trainer.config.min_steps

    @property
    def max_steps(self) -> int:
        return self._trainer.config.max_steps


def _set_config(trainer: Trainer, **changes: Any) -> None:
    from fulmen.trainer.config import TrainerConfig

    # the same validation as the Trainer's own flags (a bad value is reported as the flag it is)
    cfg = dataclasses.replace(trainer.config, **changes)
    if not isinstance(cfg, TrainerConfig):  # pragma: no cover - replace keeps the type
        raise TypeError(cfg)
    trainer.config = cfg


class FitLoopViews:
    """Mixed into fulmen's ``FitLoop``: Lightning's public-by-use ``fit_loop`` attributes.

    Attribute lookups that find nothing on the loop end in ``__getattr__`` and raise
    :class:`UnsupportedLoopAttributeError`; the loop's own attributes are found first and cost nothing.
    """

    trainer: Trainer

    def __getattr__(self, name: str) -> Any:
        if (name.startswith("__") and name.endswith("__")) or name == "trainer":
            raise AttributeError(name)
        raise UnsupportedLoopAttributeError("trainer.fit_loop", name)

    @property
    def epoch_loop(self) -> EpochLoopView:
        return EpochLoopView(self.trainer)

    @property
    def epoch_progress(self) -> ProgressView:
        rs = self.trainer.run_state

        def sync() -> None:  # Lightning's current_epoch is epoch_progress.current.completed
            rs.epoch = rs.epoch_progress.current_completed

        t = self.trainer

        def shift() -> tuple[int, int, int, int]:
            # Lightning counts the epoch started after on_train_epoch_start and processed before on_train_epoch_end
            fx = t._current_fx
            if fx == "on_train_epoch_start":
                return (0, -1, 0, 0)
            return (0, 0, 1, 0) if fx == "on_train_epoch_end" else (0, 0, 0, 0)

        return ProgressView(rs.epoch_progress, "trainer.fit_loop.epoch_progress", shift, on_write=sync)

    @property
    def max_epochs(self) -> int | None:  # None until a fit resolves an unset max_epochs, as in Lightning
        return self.trainer.config.max_epochs

    @max_epochs.setter
    def max_epochs(self, value: int | None) -> None:
        # None: resolved by the next fit, as Lightning (1000 with its warning, or -1 with max_steps/max_time)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < -1):
            raise ValueError(
                f"trainer.fit_loop.max_epochs = {value!r}: expected -1 (infinite), a non-negative int or None"
            )
        _set_config(self.trainer, max_epochs=value)

    @property
    def min_epochs(self) -> int | None:
        # as Lightning: the Trainer's argument (None when not given) until a fit resolves it (lifecycle.resolve_max_epochs)
        return self.trainer.config.min_epochs

    @min_epochs.setter
    def min_epochs(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"trainer.fit_loop.min_epochs = {value!r}: expected a non-negative int or None")
        _set_config(self.trainer, min_epochs=value)

    @property
    def max_steps(self) -> int:
        return self.trainer.config.max_steps

    @property
    def min_steps(self) -> int | None:
        return self.trainer.config.min_steps

    @property
    def total_batch_idx(self) -> int:
        return self.epoch_loop.total_batch_idx

    @property
    def batch_idx(self) -> int:
        return self.epoch_loop.batch_idx
