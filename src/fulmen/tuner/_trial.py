"""Trial runs for the tuner: short fits (or evaluations) on the user's Trainer, with everything restored after.

The tuner is part of the Trainer's layer: it drives the real loops (so precision, accumulation, clipping
and every model hook behave exactly as in the full run) on the same Trainer instance, from inside
``on_fit_start`` (or ``on_{validation,test,predict}_start``), as Lightning does. A :class:`TrialSession`

1. writes a temporary checkpoint with ``trainer.save_checkpoint`` (weights, optimizer and scheduler
   states, run-state counters, RNG);
2. swaps in trial settings: a ``dataclasses.replace``-d copy of the frozen config (``max_steps``,
   no sanity check, ...), a dispatcher whose only callbacks are the tuner's, no loggers and no LR
   schedulers (a tuner sets learning rates itself);
3. runs one or more trials (``run_fit`` / ``run_eval``);
4. puts the original config, dispatcher, loggers and schedulers back, restores the checkpoint, forgets
   the trial's loaders and metrics, and deletes the file, whether the trials succeeded or not.

Afterwards the run continues (callback use) or ends (``Tuner`` use) as if no trial had happened, and the
Trainer can run ``fit`` / ``validate`` / ... again.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import uuid
from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import Self

from fulmen.utilities.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from fulmen.callbacks.callback import Callback
    from fulmen.trainer.trainer import Trainer

__all__ = ["TrialSession", "garbage_collection_cuda", "is_oom_error"]

_OOM_MESSAGES = (
    "CUDA out of memory",
    "CUDA error: out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_NOT_SUPPORTED",
    "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED",
    "DefaultCPUAllocator: can't allocate memory",
    "MPS backend out of memory",
    "XPU out of memory",
)


def is_oom_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error of any accelerator (or the CPU allocator)."""
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return (
        isinstance(exc, RuntimeError)
        and len(exc.args) == 1
        and any(m in str(exc.args[0]) for m in _OOM_MESSAGES)
    )


def garbage_collection_cuda(after_oom: bool = False) -> None:
    """Return cached accelerator memory (and, after an out-of-memory error, collect what the trial left).

    ``gc.collect`` costs ~0.3 s with torch loaded, so on a CPU-only run it only runs after an OOM error.
    """
    cuda = torch.cuda.is_available()
    if cuda or after_oom:
        gc.collect()
    if cuda:
        torch.cuda.empty_cache()


class TrialSession:
    """Temporary trial settings on ``trainer``; use as a context manager.

    Args:
        trainer: The Trainer, with a model attached (inside one of its ``on_*_start`` hooks).
        name: Names the temporary checkpoint ``.{name}_{uuid}.ckpt`` in ``default_root_dir``.
        callbacks: The only callbacks that run during trials.
        weights_only: Passed to the checkpoint load that restores the state.
        **config: Trainer config fields to override during trials (e.g. ``max_steps=100``).
    """

    def __init__(
        self,
        trainer: Trainer,
        name: str,
        callbacks: list[Callback],
        weights_only: bool | None = None,
        **config: Any,
    ) -> None:
        if trainer.lightning_module is None:
            raise MisconfigurationException(
                f"The {name} needs a model attached to the Trainer (call it during fit)."
            )
        self.trainer = trainer
        self.callbacks = callbacks
        self.weights_only = weights_only
        self.overrides = {"num_sanity_val_steps": 0, "min_epochs": None, "min_steps": None, **config}
        self.ckpt_path = os.path.join(trainer.default_root_dir, f".{name}_{uuid.uuid4().hex}.ckpt")
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> Self:
        from fulmen.core.dispatch import Dispatcher

        t = self.trainer
        t.save_checkpoint(self.ckpt_path)
        self._saved = {
            "config": t.config,
            "dispatcher": t._dispatcher,
            "loggers": t.loggers,
            "lr_scheduler_configs": t.lr_scheduler_configs,
            "stage": t.state.stage,
            "current_fx": t._current_fx,
            "results": t._results,
            "explicit": dict(t._data.explicit),
        }
        t.config = dataclasses.replace(t.config, **self.overrides)
        t._dispatcher = Dispatcher(t, t.lightning_module, t.datamodule, list(self.callbacks))
        t.loggers = []
        t.lr_scheduler_configs = []
        return self

    def _reset_data(self) -> None:
        t = self.trainer
        explicit = self._saved["explicit"]
        t._data.reset()
        t._data.explicit = dict(explicit)

    def run_fit(self) -> None:
        """One short fit from step 0 (the model's weights carry over between trials)."""
        t = self.trainer
        t.run_state.reset_for_new_fit()
        t.run_state.accumulate_grad_batches = t.config.accumulate_grad_batches
        self._reset_data()
        t._metrics.reset()
        t._optimization.setup()
        t.fit_loop.run()

    def run_eval(self, fn: str) -> None:
        """One short ``validate`` / ``test`` / ``predict`` run with the trial limits."""
        t = self.trainer
        self._reset_data()
        t._metrics.reset()
        if fn == "predict":
            loaders, limits = t._data.load_eval("predict")
            t.predict_loop.run(loaders, limits, False)
            return
        key = "val" if fn == "validate" else "test"
        loaders, limits = t._data.load_eval(key)
        loop = t._val_loop if key == "val" else t._test_loop
        loop.run(loaders, limits)

    def __exit__(self, *exc: object) -> None:
        from fulmen.checkpoint.sharded import ShardedEntry
        from fulmen.core.saving import load_state_dict_strictly
        from fulmen.trainer.checkpointing import restore_sharded_weights, restore_training_state

        t = self.trainer
        saved = self._saved
        t.config = saved["config"]
        t._dispatcher = saved["dispatcher"]
        t.loggers = saved["loggers"]
        t.lr_scheduler_configs = saved["lr_scheduler_configs"]
        t.state.stage = saved["stage"]
        t._current_fx = saved["current_fx"]
        t._results = saved["results"]
        t._accumulating = False
        try:
            garbage_collection_cuda()
            checkpoint = t.strategy.load_checkpoint(self.ckpt_path, weights_only=self.weights_only)
            module = t.lightning_module
            if isinstance(checkpoint.get("state_dict"), ShardedEntry):  # FSDP, state_dict_type="sharded"
                restore_sharded_weights(t, checkpoint)
            else:
                load_state_dict_strictly(module, checkpoint["state_dict"], True, self.ckpt_path)
            restore_training_state(t, checkpoint)
            module.zero_grad(set_to_none=True)
        finally:
            t.strategy.remove_checkpoint(self.ckpt_path)
            self._reset_data()
            t._metrics.reset()
