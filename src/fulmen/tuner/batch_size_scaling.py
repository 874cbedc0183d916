"""Batch-size scaling: find the largest batch size that fits, with short trial runs.

:func:`scale_batch_size` runs inside a stage (``BatchSizeFinder.on_fit_start`` or
``on_{validation,test,predict}_start``). The batch size lives in an attribute (``batch_arg_name``) of the
model, its hparams or the datamodule, which the ``*_dataloader()`` hooks read; each trial sets it, rebuilds
the loaders and runs ``steps_per_trial`` steps. ``"power"`` doubles until a trial runs out of memory (or
``max_val``/``max_trials``/the dataset size is reached); ``"binsearch"`` then bisects between the last size
that fit and the first that did not, and keeps a ``margin`` below the result.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fulmen.tuner._attr import lightning_getattr, lightning_hasattr, lightning_setattr
from fulmen.tuner._trial import TrialSession, garbage_collection_cuda, is_oom_error
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer

log = logging.getLogger("fulmen.tuner")

__all__ = ["scale_batch_size"]


def _check(trainer: Trainer, model: Any, fn: str, mode: str, batch_arg_name: str, margin: float) -> None:
    if mode not in ("power", "binsearch"):
        raise MisconfigurationException(
            f"scale_batch_size(mode={mode!r}): expected 'power' or 'binsearch'. Fix: use one of them."
        )
    if not 0.0 <= margin < 1.0:
        raise MisconfigurationException(f"scale_batch_size(margin={margin}): expected a float in [0, 1).")
    if not lightning_hasattr(model, batch_arg_name, trainer):
        raise MisconfigurationException(
            f"Field {batch_arg_name!r} not found in the model, its hparams or the datamodule. Fix: store the batch "
            f"size there (e.g. self.{batch_arg_name} = 32) and read it in the *_dataloader() hooks, or pass "
            "batch_arg_name=..."
        )
    stage = {"fit": "train", "validate": "val", "test": "test", "predict": "predict"}[fn]
    if trainer._data.explicit.get(stage) is not None:
        raise MisconfigurationException(
            f"The batch size finder cannot change the batch size of dataloaders passed to trainer.{fn}() directly. "
            f"Fix: build the loader in {stage if stage != 'val' else 'val'}_dataloader() of the model or datamodule "
            f"from self.{batch_arg_name}."
        )


def _dataset_size(trainer: Trainer, fn: str) -> int | None:
    loader = {
        "fit": lambda: trainer._data.train_loader,
        "validate": lambda: (trainer._data.val_loaders or [None])[0],
        "test": lambda: (trainer._data.test_loaders or [None])[0],
        "predict": lambda: (trainer._data.predict_loaders or [None])[0],
    }[fn]()
    dataset = getattr(loader, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None


class _Scaler:
    def __init__(
        self, trainer: Trainer, model: Any, session: TrialSession, fn: str, name: str, max_val: int | None
    ):
        self.trainer = trainer
        self.model = model
        self.session = session
        self.fn = fn
        self.name = name
        self.max_val = max_val
        self.dataset_size: int | None = None

    @property
    def size(self) -> int:
        return int(lightning_getattr(self.model, self.name, self.trainer))

    def set(self, value: int) -> None:
        lightning_setattr(self.model, self.name, int(value), self.trainer)

    def adjust(
        self, factor: float = 1.0, value: int | None = None, desc: str | None = None
    ) -> tuple[int, bool]:
        """Set a new size (``value``, or the current one times ``factor``); returns (size, changed)."""
        current = self.size
        new = int(value) if value is not None else int(current * factor)
        if desc:
            rank_zero_info(f"Batch size {current} {desc}, trying batch size {new}")
        if self.max_val is not None and new > self.max_val:
            new = self.max_val
        if self.dataset_size is not None and new > self.dataset_size:
            new = self.dataset_size  # a larger batch holds the same samples
        new = max(1, new)
        self.set(new)
        return new, new != current

    def trial(self) -> None:
        if self.fn == "fit":
            self.session.run_fit()
        else:
            self.session.run_eval(self.fn)
        if self.dataset_size is None:
            self.dataset_size = _dataset_size(self.trainer, self.fn)

    def _try(self) -> bool:
        """Run one trial at the current size: True if it fit, False if it ran out of memory."""
        garbage_collection_cuda()
        try:
            self.trial()
        except RuntimeError as exc:
            if not is_oom_error(exc):
                raise
            del exc  # its traceback holds the failed trial's tensors
            garbage_collection_cuda(after_oom=True)
            return False
        return True

    def _result(self, last_ok: int | None) -> int:
        if last_ok is None:
            rank_zero_warn(
                f"The batch size finder found no {self.name} that fits in memory (even {self.size} ran out). "
                "Continuing with the smallest size tried."
            )
            return self.size
        return last_ok

    def power(self, max_trials: int) -> int:
        """Double after each success; halve after an out-of-memory until one fits."""
        last_ok: int | None = None
        for _ in range(max_trials):
            size = self.size
            if self._try():
                last_ok = size
                _, changed = self.adjust(factor=2.0, desc="succeeded")
                if not changed:
                    break
            else:
                if last_ok is not None:
                    break
                _, changed = self.adjust(factor=0.5, desc="failed")
                if not changed:
                    break
        return self._result(last_ok)

    def binsearch(self, max_trials: int) -> int:
        """Double until out of memory, then bisect between the largest size that fit and the smallest that did not."""
        last_ok: int | None = None
        first_fail: int | None = None
        for _ in range(max_trials):
            size = self.size
            ok = self._try()
            if ok:
                last_ok = size
            else:
                first_fail = size
            if first_fail is None:
                _, changed = self.adjust(factor=2.0, desc="succeeded")
            elif last_ok is None:
                _, changed = self.adjust(factor=0.5, desc="failed")
            else:
                if first_fail - last_ok <= 1:
                    break
                _, changed = self.adjust(
                    value=(last_ok + first_fail) // 2, desc="succeeded" if ok else "failed"
                )
            if not changed:
                break
        return self._result(last_ok)


def scale_batch_size(
    trainer: Trainer,
    model: Any,
    fn: str = "fit",
    mode: str = "power",
    steps_per_trial: int = 3,
    init_val: int = 2,
    max_trials: int = 25,
    batch_arg_name: str = "batch_size",
    margin: float = 0.05,
    max_val: int | None = 8192,
) -> int | None:
    """Find the largest batch size that runs, set it on the model/datamodule and restore the state.

    Returns:
        The batch size found (also written to ``batch_arg_name``), or ``None`` under ``fast_dev_run``.

    Raises:
        MisconfigurationException: For a bad ``mode``/``margin``, a missing ``batch_arg_name``, or loaders
            passed directly to the Trainer method.
    """
    if trainer.fast_dev_run:
        rank_zero_warn("Skipping the batch size finder since fast_dev_run is enabled.")
        return None
    _check(trainer, model, fn, mode, batch_arg_name, margin)
    all_limits: dict[str, dict[str, Any]] = {
        "fit": {
            "max_steps": steps_per_trial,
            "max_epochs": -1,
            "limit_val_batches": steps_per_trial,
            "val_check_interval": 1.0,
            "check_val_every_n_epoch": 1,
        },
        "validate": {"limit_val_batches": steps_per_trial},
        "test": {"limit_test_batches": steps_per_trial},
        "predict": {"limit_predict_batches": steps_per_trial},
    }
    limits = all_limits[fn]
    original = int(lightning_getattr(model, batch_arg_name, trainer))
    with TrialSession(trainer, "scale_batch_size", [], **limits) as session:
        scaler = _Scaler(trainer, model, session, fn, batch_arg_name, max_val)
        scaler.adjust(value=init_val)
        try:
            new_size = scaler.power(max_trials) if mode == "power" else scaler.binsearch(max_trials)
        except BaseException:
            scaler.set(original)
            raise
    if mode == "binsearch" and margin > 0:
        new_size = max(1, int(new_size * (1 - margin)))
    lightning_setattr(model, batch_arg_name, new_size, trainer)
    garbage_collection_cuda()
    rank_zero_info(f"Finished batch size finder, will continue with full run using batch size {new_size}")
    return new_size
