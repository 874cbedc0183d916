"""``RunState``: everything a resume must restore, on one object, with a declared list of saved fields.

A checkpoint's run-state part is ``RunState.state_dict()``; resume is ``load_state_dict``. The loop
counters are also exported in Lightning's ``loops`` layout (spec §2.2) so Lightning can read a fulmen
checkpoint and fulmen can resume from a Lightning one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

_SCOPES = ("total", "current")
_STAGES = ("ready", "started", "processed", "completed")


class Progress:
    """Ready/started/processed/completed counters, total (whole run) and current (this epoch or run).

    The eight counters (``total_ready`` ... ``current_completed``) are read and written as attributes, as in
    Lightning's progress objects. Stored are, per scope, ``completed`` and the three gaps between neighbouring
    stages (processed - completed, started - processed, ready - started): :meth:`increment`, called a few times
    per training step, then moves two numbers instead of eight (the gaps do not change when every stage
    advances together). Reads add the gaps up; they happen at checkpoints and epoch ends, not per step.
    """

    __slots__ = ("_c", "_cp", "_cr", "_cs", "_t", "_tp", "_tr", "_ts")

    # the eight counters: properties installed below the class (annotated here for type checkers)
    total_ready: int
    total_started: int
    total_processed: int
    total_completed: int
    current_ready: int
    current_started: int
    current_processed: int
    current_completed: int

    def __init__(
        self, total_ready: int = 0, total_started: int = 0, total_processed: int = 0, total_completed: int = 0,
        current_ready: int = 0, current_started: int = 0, current_processed: int = 0, current_completed: int = 0,
    ) -> None:
        self._set("total", total_ready, total_started, total_processed, total_completed)
        self._set("current", current_ready, current_started, current_processed, current_completed)

    def _set(self, scope: str, ready: int, started: int, processed: int, completed: int) -> None:
        gaps = (completed, processed - completed, started - processed, ready - started)
        names = ("_t", "_tp", "_ts", "_tr") if scope == "total" else ("_c", "_cp", "_cs", "_cr")
        for name, value in zip(names, gaps):
            object.__setattr__(self, name, value)

    def _get(self, scope: str) -> tuple[int, int, int, int]:
        """``(ready, started, processed, completed)`` of ``scope``."""
        if scope == "total":
            completed, dp, ds, dr = self._t, self._tp, self._ts, self._tr
        else:
            completed, dp, ds, dr = self._c, self._cp, self._cs, self._cr
        processed = completed + dp
        started = processed + ds
        return started + dr, started, processed, completed

    def increment(self, n: int = 1) -> None:
        """Count one unit of work done end to end (ready, started, processed, completed)."""
        self._t += n
        self._c += n

    def start(self) -> None:
        """Ready and started advance; processed and completed wait for :meth:`complete`."""
        self._ts += 1
        self._cs += 1

    def complete(self) -> None:
        """Mark the unit started by :meth:`start` processed and completed."""
        self._t += 1
        self._ts -= 1
        self._c += 1
        self._cs -= 1

    def reset_current(self) -> None:
        self._c = self._cp = self._cs = self._cr = 0

    def reset(self) -> None:
        """Both scopes back to zero."""
        self._t = self._tp = self._ts = self._tr = 0
        self.reset_current()

    def as_dict(self) -> dict[str, int]:
        """The eight counters by name (``total_ready`` ... ``current_completed``)."""
        out: dict[str, int] = {}
        for scope in _SCOPES:
            for stage, value in zip(_STAGES, self._get(scope)):
                out[f"{scope}_{stage}"] = value
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Progress):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        return f"Progress({', '.join(f'{k}={v}' for k, v in self.as_dict().items())})"

    def to_lightning(self, with_processed: bool = True) -> dict[str, dict[str, int]]:
        keys = ("ready", "started", "processed", "completed") if with_processed else ("ready", "completed")
        return {
            "total": {k: getattr(self, f"total_{k}") for k in keys},
            "current": {k: getattr(self, f"current_{k}") for k in keys},
        }

    def from_lightning(self, d: dict[str, dict[str, int]]) -> None:
        for scope in ("total", "current"):
            for k, v in d.get(scope, {}).items():
                if hasattr(self, f"{scope}_{k}"):
                    setattr(self, f"{scope}_{k}", int(v))



def _counter(scope: str, index: int) -> property:
    def get(self: Progress) -> int:
        return self._get(scope)[index]

    def set(self: Progress, value: int) -> None:
        values = list(self._get(scope))
        values[index] = value
        self._set(scope, *values)

    return property(get, set, doc=f"{scope} {_STAGES[index]} count")


for _scope in _SCOPES:
    for _i, _stage in enumerate(_STAGES):
        setattr(Progress, f"{_scope}_{_stage}", _counter(_scope, _i))
PROGRESS_FIELDS = tuple(f"{scope}_{stage}" for scope in _SCOPES for stage in _STAGES)


@dataclass
class RunState:
    """The state of a run that survives a resume. ``SAVED`` lists what a checkpoint holds."""

    # Completed optimizer steps (automatic) or completed ``opt.step()`` calls (manual).
    global_step: int = 0
    # Completed training epochs (``trainer.current_epoch``).
    epoch: int = 0
    # The logger's step counter: batches that ended with an optimizer step.
    batches_that_stepped: int = 0
    # Training batches fully processed in the current epoch (the data position).
    batch_in_epoch: int = 0
    # Whether the current epoch's last batch has been consumed.
    is_last_batch: bool = False
    # Mutable because GradientAccumulationScheduler changes it per epoch.
    accumulate_grad_batches: int = 1
    should_stop: bool = False
    epoch_progress: Progress = field(default_factory=Progress)
    batch_progress: Progress = field(default_factory=Progress)
    scheduler_progress: Progress = field(default_factory=Progress)
    optimizer_steps: Progress = field(default_factory=Progress)
    zero_grad_progress: Progress = field(default_factory=Progress)
    val_batch_progress: Progress = field(default_factory=Progress)
    # RNG state captured right before the current epoch's train loader was iterated, and the train
    # loader's own sampler generator state at that moment: enough to rebuild the same batch order.
    epoch_rng_state: dict[str, Any] | None = None
    # Number of in-epoch validation runs already done in the current epoch.
    val_checks_in_epoch: int = 0
    # Where inside a batch/epoch the run was when a checkpoint was written: "" (between batches),
    # "batch_end" (batch done; its logging and validation pending), "val" (validation pending) or
    # "after_val" (validation done, the rest of the batch's work pending) or "epoch_end" (all batches
    # done; the work after on_train_epoch_end pending).
    resume_point: str = ""
    last_batch_stepped: bool = False
    last_batch_done: bool = False
    # Time-based val_check_interval: seconds of training since the last validation when the checkpoint was
    # written, so a resumed run validates when the uninterrupted one would have (Lightning restarts the timer).
    val_time_elapsed: float = 0.0
    # The training epoch's logged-metric accumulators (so epoch means continue across a resume).
    train_results: dict[str, Any] | None = None
    # Gradients accumulated so far inside an open accumulation window.
    grads: dict[str, Any] | None = None

    SAVED = (
        "global_step",
        "epoch",
        "batches_that_stepped",
        "batch_in_epoch",
        "is_last_batch",
        "accumulate_grad_batches",
        "epoch_progress",
        "batch_progress",
        "scheduler_progress",
        "optimizer_steps",
        "zero_grad_progress",
        "val_batch_progress",
        "epoch_rng_state",
        "val_checks_in_epoch",
        "resume_point",
        "last_batch_stepped",
        "last_batch_done",
        "val_time_elapsed",
        "train_results",
        "grads",
    )

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.SAVED:
            value = getattr(self, name)
            out[name] = value.as_dict() if isinstance(value, Progress) else value
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.SAVED:
            if name not in state:
                continue
            value = state[name]
            current = getattr(self, name)
            if isinstance(current, Progress):
                for k, v in value.items():
                    setattr(current, k, int(v))
            else:
                setattr(self, name, value)

    def reset_for_new_fit(self) -> None:
        fresh = RunState()
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))

    # ---- Lightning's ``loops`` layout (spec §2.2) ----
    def to_lightning_loops(self, manual: bool, combined_loader_state: Any = None) -> dict[str, Any]:
        opt = self.optimizer_steps.to_lightning(with_processed=False)
        zero = self.zero_grad_progress.to_lightning(with_processed=False)
        for scope in ("total", "current"):
            zero[scope]["started"] = zero[scope]["completed"]
        fit_loop: dict[str, Any] = {
            "state_dict": {"combined_loader": combined_loader_state} if combined_loader_state is not None else {},
            "epoch_loop.state_dict": {"_batches_that_stepped": self.batches_that_stepped},
            "epoch_loop.batch_progress": {**self.batch_progress.to_lightning(), "is_last_batch": self.is_last_batch},
            "epoch_loop.scheduler_progress": self.scheduler_progress.to_lightning(with_processed=False),
            "epoch_loop.automatic_optimization.state_dict": {},
            "epoch_loop.automatic_optimization.optim_progress": {
                "optimizer": {"step": opt if not manual else _zero_step(), "zero_grad": zero}
            },
            "epoch_loop.manual_optimization.state_dict": {},
            "epoch_loop.manual_optimization.optim_step_progress": opt if manual else _zero_step(),
            "epoch_loop.val_loop.state_dict": {},
            "epoch_loop.val_loop.batch_progress": {**self.val_batch_progress.to_lightning(), "is_last_batch": False},
            "epoch_progress": self.epoch_progress.to_lightning(),
        }
        empty_eval = {"state_dict": {}, "batch_progress": {**Progress().to_lightning(), "is_last_batch": False}}
        return {
            "fit_loop": fit_loop,
            "validate_loop": dict(empty_eval),
            "test_loop": dict(empty_eval),
            "predict_loop": {"state_dict": {}, "batch_progress": Progress().to_lightning()},
        }

    def load_lightning_loops(self, loops: dict[str, Any], manual: bool) -> None:
        """Restore counters from a Lightning-layout ``loops`` dict (a fulmen or a Lightning checkpoint)."""
        fit = loops.get("fit_loop", {})
        self.batches_that_stepped = int(fit.get("epoch_loop.state_dict", {}).get("_batches_that_stepped", 0))
        bp = fit.get("epoch_loop.batch_progress", {})
        self.batch_progress.from_lightning(bp)
        self.is_last_batch = bool(bp.get("is_last_batch", False))
        self.scheduler_progress.from_lightning(fit.get("epoch_loop.scheduler_progress", {}))
        optim = fit.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {})
        if manual:
            self.optimizer_steps.from_lightning(fit.get("epoch_loop.manual_optimization.optim_step_progress", {}))
        else:
            self.optimizer_steps.from_lightning(optim.get("step", {}))
        self.zero_grad_progress.from_lightning(optim.get("zero_grad", {}))
        self.val_batch_progress.from_lightning(fit.get("epoch_loop.val_loop.batch_progress", {}))
        self.epoch_progress.from_lightning(fit.get("epoch_progress", {}))
        self.global_step = self.optimizer_steps.total_completed
        self.epoch = self.epoch_progress.current_completed
        self.batch_in_epoch = self.batch_progress.current_completed


def _zero_step() -> dict[str, dict[str, int]]:
    return {"total": {"ready": 0, "completed": 0}, "current": {"ready": 0, "completed": 0}}
