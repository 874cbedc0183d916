"""Structural checks of the training step's cost (never timings; benchmarks/run.py measures time).

- With nothing overriding them, no hook runs per training step: no Python-level call to a hook (a
  callback's, the module's or the base classes' no-op defaults) and no call into the dispatcher.
- A hook that *is* overridden is called exactly once per step, and only that one.
- In the default configuration, values move from the device to the host (``.item()`` and friends,
  from fulmen's code) only at the progress bar's refresh points, the logger's interval and the epoch
  end; with the bar and the logger off, never during the batches.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import fulmen as L
from fulmen.callbacks.progress import TQDMProgressBar
from fulmen.core.dispatch import Dispatcher
from fulmen.core.events import Event

FULMEN_SRC = str(Path(L.__file__).parent)
HOOKS = {e.value for e in Event} - {"training_step"}
DISPATCH = {"callbacks_hook", "module_hook", "both", "epoch_end", "datamodule_hook"}
MINIMAL = dict(
    accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
    enable_model_summary=False, num_sanity_val_steps=0,
)


class Data:
    """A sized iterable of (x, y) batches."""

    def __init__(self, n: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.batches = [(torch.randn(4, 3, generator=gen), torch.randn(4, 1, generator=gen)) for _ in range(n)]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Model(L.LightningModule):
    def __init__(self, log: bool = False) -> None:
        super().__init__()
        self.net = nn.Linear(3, 1)
        self.log_loss = log

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        if self.log_loss:
            self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _hook_calls(n_batches: int, callbacks: list[Any], **trainer_kwargs: Any) -> collections.Counter[str]:
    """Python-level calls of hooks (methods of a module, datamodule or callback, the base classes' no-op
    defaults included) and of the dispatcher's methods."""
    calls: collections.Counter[str] = collections.Counter()
    hook_owners = (L.LightningModule, L.LightningDataModule, L.Callback)

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call":
            return
        name = frame.f_code.co_name
        if name in HOOKS:
            owner = frame.f_locals.get("self")
            if isinstance(owner, hook_owners):
                calls[name] += 1
        elif name in DISPATCH and isinstance(frame.f_locals.get("self"), Dispatcher):
            calls[f"Dispatcher.{name}"] += 1

    trainer = L.Trainer(max_epochs=1, callbacks=callbacks, **{**MINIMAL, **trainer_kwargs})
    sys.setprofile(profile)
    try:
        trainer.fit(Model(), Data(n_batches))
    finally:
        sys.setprofile(None)
    return calls


def _per_step(make_callbacks: Callable[[], list[Any]], **kwargs: Any) -> dict[str, float]:
    """Calls per training step: the difference between a 20-batch and a 5-batch fit, over 15 batches."""
    short = _hook_calls(5, make_callbacks(), **kwargs)
    long = _hook_calls(20, make_callbacks(), **kwargs)
    return {k: (long[k] - short[k]) / 15 for k in long.keys() | short.keys() if long[k] != short[k]}


def test_no_hook_or_dispatcher_call_per_step_when_nothing_overrides_them() -> None:
    assert _per_step(lambda: []) == {}


def test_a_plain_callback_costs_nothing_per_step() -> None:
    class EpochOnly(L.Callback):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            pass

    assert _per_step(lambda: [EpochOnly()]) == {}


def test_only_the_overridden_hook_is_called_once_per_step() -> None:
    class BatchEnd(L.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            pass

    per_step = _per_step(lambda: [BatchEnd()])
    assert per_step.pop("on_train_batch_end") == 1
    assert set(per_step) <= {f"Dispatcher.{n}" for n in DISPATCH}  # the one dispatch that calls it
    assert sum(per_step.values()) <= 2


def test_checkpoint_callback_without_step_triggers_adds_no_call_per_step() -> None:
    # the default ModelCheckpoint saves at epoch ends only: it must not be dispatched per batch
    from fulmen.callbacks.model_checkpoint import ModelCheckpoint

    assert _per_step(lambda: [ModelCheckpoint()], enable_checkpointing=True) == {}
    per_step = _per_step(lambda: [ModelCheckpoint(every_n_train_steps=2)], enable_checkpointing=True)
    assert per_step.pop("on_train_batch_end") == 1


# --------------------------------------------------------------------------------------------------
# host syncs
# --------------------------------------------------------------------------------------------------
SYNC_METHODS = ("item", "tolist", "__float__", "__int__", "__bool__", "numpy")


@contextmanager
def _record_syncs(monkeypatch: pytest.MonkeyPatch, where: Callable[[], int]) -> Iterator[list[int]]:
    """Record ``where()`` at every device->host conversion called directly from fulmen's code."""
    seen: list[int] = []
    for name in SYNC_METHODS:
        original = getattr(torch.Tensor, name)

        def wrapper(self: torch.Tensor, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(FULMEN_SRC):
                seen.append(where())
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    yield seen


class _BatchCounter(L.Callback):
    """Marks the training batches: syncs outside them (sanity check, epoch end, teardown) are not per step."""

    def __init__(self) -> None:
        self.in_batches = False

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.in_batches = True

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.in_batches = False


def _syncs_during_batches(monkeypatch: pytest.MonkeyPatch, n: int, **kwargs: Any) -> list[int]:
    marker = _BatchCounter()
    trainer = L.Trainer(max_epochs=1, **{**kwargs, "callbacks": [*kwargs.get("callbacks", []), marker]})
    with _record_syncs(monkeypatch, lambda: trainer.run_state.batch_in_epoch if marker.in_batches else -1) as seen:
        trainer.fit(Model(log=True), Data(n))
    return [b for b in seen if b >= 0]


def test_default_step_syncs_only_at_bar_refresh_and_logging_points(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    n, refresh, log_every = 20, 5, 7
    seen = _syncs_during_batches(
        monkeypatch, n, accelerator="cpu", devices=1, default_root_dir=tmp_path, num_sanity_val_steps=0,
        callbacks=[TQDMProgressBar(refresh_rate=refresh)], log_every_n_steps=log_every,
    )
    # batch_in_epoch counts finished batches: a refresh after batch b (1-based) reads b
    allowed = {b for b in range(1, n + 1) if b % refresh == 0 or b % log_every == 0 or b == n}
    assert seen, "expected the bar and the logger to read the logged loss"
    assert set(seen) <= allowed, f"host syncs at batches {sorted(set(seen) - allowed)}"
    assert set(seen) == allowed  # every refresh and logging point reads it (and nothing else does)


def test_minimal_step_never_syncs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen = _syncs_during_batches(monkeypatch, 20, default_root_dir=tmp_path, **MINIMAL)
    assert seen == []


# The points of a default CUDA fit that must wait for the device (they need host numbers), by the function that
# runs them. Everything else from on_train_start to on_train_end (every batch, progress-bar refreshes included)
# must issue no synchronizing CUDA call.
CUDA_SYNC_POINTS = (
    ("fulmen.trainer.loops.fit", "FitLoop", "_finish_epoch"),  # epoch end: bar's exact read, loggers, checkpoint
    ("fulmen.trainer.metrics", "MetricsStore", "log_train_step"),  # a logger interval: values to the loggers
)
_CUDA_SKIP = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.set_sync_debug_mode); run benchmarks/gpu"
)


class _SyncDebugWindow(L.Callback):
    """Sync-debug mode ``mode`` from on_train_start (after setup moved the model) to on_train_end."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        torch.cuda.set_sync_debug_mode(self.mode)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        torch.cuda.set_sync_debug_mode(0)


def _allow_sync_points(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    for module, cls_name, fn_name in CUDA_SYNC_POINTS:
        cls = getattr(importlib.import_module(module), cls_name)
        original = getattr(cls, fn_name)

        def allowed(*args: Any, __original: Any = original, **kwargs: Any) -> Any:
            mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode(0)
            try:
                return __original(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode(mode)

        monkeypatch.setattr(cls, fn_name, allowed)


def _cuda_default_fit(tmp_path: Path, mode: str, precision: str) -> None:
    # the default Trainer (progress bar, logger, checkpointing), the bar refreshing every batch (the deferred read
    # each time) and a logger interval inside the epoch
    trainer = L.Trainer(
        accelerator="cuda", devices=1, max_epochs=2, default_root_dir=tmp_path, log_every_n_steps=4,
        precision=precision, callbacks=[TQDMProgressBar(refresh_rate=1), _SyncDebugWindow(mode)],
    )
    try:
        trainer.fit(Model(log=True), Data(10))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert trainer.global_step == 20
    assert set(trainer.progress_bar_metrics) == {"loss"}


@_CUDA_SKIP
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_cuda_default_fit_syncs_only_at_the_listed_points(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, precision: str
) -> None:
    """A whole default fit under ``set_sync_debug_mode("error")``: any synchronizing call outside
    CUDA_SYNC_POINTS raises. (16-mixed is left out: GradScaler reads its inf check on the host each step.)"""
    _allow_sync_points(monkeypatch)
    _cuda_default_fit(tmp_path, "error", precision)


@_CUDA_SKIP
def test_cuda_default_fit_lists_every_unlisted_sync(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The same fit in "warn" mode: every synchronizing call outside the listed points, with where it came from
    (the error-mode test stops at the first; this one names them all in one GPU run)."""
    import traceback
    import warnings

    _allow_sync_points(monkeypatch)
    found: collections.Counter[str] = collections.Counter()

    def record(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if "synchroniz" in str(message):
            frames = [f for f in traceback.extract_stack() if f.filename.startswith(FULMEN_SRC)]
            where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-4:]))
            found[f"{filename}:{lineno} | {where}"] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        _cuda_default_fit(tmp_path, "warn", "32-true")
    assert not found, "synchronizing CUDA calls outside the listed points:\n" + "\n".join(
        f"{n}x {k}" for k, n in found.most_common()
    )


def test_dispatcher_precomputes_which_hooks_are_overridden() -> None:
    """The dispatcher decides once per run whether a hook has implementations; later lookups hit its cache."""
    trainer = L.Trainer(max_epochs=1, **MINIMAL)
    trainer.fit(Model(), Data(3))
    d = trainer._dispatcher
    assert isinstance(d, Dispatcher)
    assert not d.has_callbacks("on_train_batch_end") and not d.module_overrides("on_train_batch_end")
