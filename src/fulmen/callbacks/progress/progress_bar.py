"""The ``ProgressBar`` base class: what every progress bar knows about the run, without drawing anything.

Concrete bars (:class:`~fulmen.callbacks.progress.tqdm_progress.TQDMProgressBar`,
:class:`~fulmen.callbacks.progress.rich_progress.RichProgressBar`) subclass it and draw.

The one performance rule every bar follows: ``trainer.progress_bar_metrics`` converts on-device
values to host numbers (a device->host sync), so a bar reads it (through :meth:`get_metrics`) only
when it refreshes, i.e. every ``refresh_rate`` batches and at the end of an epoch, never on every
batch. Between refreshes a bar only bumps an integer.

The refreshes inside a training epoch do not sync at all: there :meth:`get_metrics` reads CUDA values
through a :class:`~fulmen.core.host_read.DeferredHostRead` (a non-blocking copy to pinned memory and
an event), so they are shown one refresh late. The epoch end and other refreshes read exact values.
CPU values are always exact (reading them waits for nothing).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from fulmen.callbacks.callback import Callback
from fulmen.core.host_read import DeferredHostRead
from fulmen.utilities.exceptions import misconfig
from fulmen.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from fulmen.core.module import LightningModule
    from fulmen.trainer.trainer import Trainer

__all__ = ["ProgressBar", "get_standard_metrics"]


def get_standard_metrics(trainer: Trainer) -> dict[str, int | str]:
    """The metrics every bar shows besides the user's: ``v_num``, the first logger's version.

    A string version (e.g. a wandb run id) is shortened to its last four characters.

    Args:
        trainer: The running trainer.

    Returns:
        ``{"v_num": version}``, or ``{}`` without a logger or a version.
    """
    loggers = getattr(trainer, "loggers", None) or []
    if not loggers:
        return {}
    version = loggers[0].version
    if version is None:
        return {}
    return {"v_num": version[-4:] if isinstance(version, str) else version}


def _validate_non_negative_int(owner: str, name: str, value: Any, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise misconfig(f"{owner}({name}=...)", value, f"an int >= 0 ({meaning})", f"pass e.g. `{name}=1`")
    return value


class ProgressBar(Callback):
    """Base class for progress bars: run sizes, counters and the metrics to show.

    A subclass implements the ``on_*`` hooks to draw, calls :meth:`get_metrics` only at refresh
    points, and overrides :meth:`enable`, :meth:`disable` and :attr:`is_enabled`.

    Attributes:
        train_batch_idx: Training batches processed in the current epoch (kept by the subclass).
        val_batch_idx: Validation batches processed in the current dataloader.
        test_batch_idx: Test batches processed in the current dataloader.
        predict_batch_idx: Predict batches processed in the current dataloader.
    """

    def __init__(self) -> None:
        self._trainer: Trainer | None = None
        self._current_eval_dataloader_idx: int | None = None
        self._enabled = True
        self._duplicate_warned = False
        self._deferred_read = False  # True while a mid-epoch training refresh draws (see get_metrics)
        self._host_reader = DeferredHostRead()
        self.train_batch_idx = 0
        self.val_batch_idx = 0
        self.test_batch_idx = 0
        self.predict_batch_idx = 0

    # ----------------------------------------------------------------------------------------------
    # state
    # ----------------------------------------------------------------------------------------------
    @property
    def trainer(self) -> Trainer:
        """The trainer this bar is attached to (set in :meth:`setup`).

        Raises:
            RuntimeError: Before the bar has been attached to a trainer.
        """
        if self._trainer is None:
            raise RuntimeError(
                f"{type(self).__name__} is not attached to a Trainer yet: its `trainer` is set in `setup`. "
                "Fix: pass the bar in `Trainer(callbacks=[...])` and read `trainer` from a hook."
            )
        return self._trainer

    @property
    def is_enabled(self) -> bool:
        """Whether the bar draws anything."""
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self.is_enabled

    def enable(self) -> None:
        """Let the bar draw (the trainer may call this, e.g. after a tuner ran silently)."""
        self._enabled = True

    def disable(self) -> None:
        """Stop the bar from drawing (the trainer calls this on ranks other than 0)."""
        self._enabled = False

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print without breaking the bars (the base class simply prints)."""
        print(*args, **kwargs)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer
        if not trainer.is_global_zero:
            self.disable()

    # ----------------------------------------------------------------------------------------------
    # descriptions
    # ----------------------------------------------------------------------------------------------
    @property
    def sanity_check_description(self) -> str:
        return "Sanity Checking"

    @property
    def train_description(self) -> str:
        return "Training"

    @property
    def validation_description(self) -> str:
        return "Validation"

    @property
    def test_description(self) -> str:
        return "Testing"

    @property
    def predict_description(self) -> str:
        return "Predicting"

    # ----------------------------------------------------------------------------------------------
    # sizes (``float('inf')`` means unknown length)
    # ----------------------------------------------------------------------------------------------
    @property
    def total_train_batches(self) -> int | float:
        """Training batches in one epoch; ``inf`` for an iterable without a length."""
        return self.trainer.num_training_batches

    @property
    def total_val_batches_current_dataloader(self) -> int | float:
        """Batches of the validation (or sanity-check) dataloader being run."""
        trainer = self.trainer
        sizes = trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches
        return _size_at(sizes, self._current_eval_dataloader_idx)

    @property
    def total_test_batches_current_dataloader(self) -> int | float:
        return _size_at(self.trainer.num_test_batches, self._current_eval_dataloader_idx)

    @property
    def total_predict_batches_current_dataloader(self) -> int | float:
        return _size_at(self.trainer.num_predict_batches, self._current_eval_dataloader_idx)

    @property
    def total_val_batches(self) -> int | float:
        """Validation batches run during the current training epoch (0 if validation skips it).

        This is the batches of all validation dataloaders times the number of validation runs the
        ``val_check_interval`` schedules in the epoch. A time-based interval cannot be predicted and
        counts as one run; the bars grow their total if more batches come.
        """
        trainer = self.trainer
        if not getattr(trainer, "enable_validation", True):
            return 0
        every_n = getattr(trainer, "check_val_every_n_epoch", 1)
        if every_n is not None and (trainer.current_epoch + 1) % every_n != 0:
            return 0
        per_run = sum(trainer.num_val_batches or [])
        return per_run * _val_runs_per_epoch(trainer) if per_run else 0

    @property
    def total_batches_current_epoch(self) -> int | float:
        """What the main bar counts in a training epoch: training plus in-epoch validation batches."""
        return self.total_train_batches + self.total_val_batches

    # ----------------------------------------------------------------------------------------------
    # dataloader tracking
    # ----------------------------------------------------------------------------------------------
    def has_dataloader_changed(self, dataloader_idx: int) -> bool:
        """Whether ``dataloader_idx`` differs from the evaluation dataloader seen last (and remember it)."""
        old = self._current_eval_dataloader_idx
        self._current_eval_dataloader_idx = dataloader_idx
        return old != dataloader_idx

    def reset_dataloader_idx_tracker(self) -> None:
        self._current_eval_dataloader_idx = None

    # ----------------------------------------------------------------------------------------------
    # metrics
    # ----------------------------------------------------------------------------------------------
    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, int | float | str]:
        """The items shown next to the bar: ``v_num`` plus ``trainer.progress_bar_metrics``.

        Reading ``trainer.progress_bar_metrics`` moves logged values from the device to the host,
        so call this only at a refresh point. At the refreshes inside a training epoch the bar reads
        CUDA values without a sync instead, through a non-blocking copy shown one refresh late
        (:mod:`fulmen.core.host_read`); elsewhere (epoch end, after validation, your own calls) the
        values are exact. Override to add or drop items::

            def get_metrics(self, trainer, pl_module):
                items = super().get_metrics(trainer, pl_module)
                items.pop("v_num", None)
                return items

        Args:
            trainer: The running trainer.
            pl_module: The module being run.

        Returns:
            The metrics by name; a logged metric wins over a standard one of the same name.
        """
        standard = get_standard_metrics(trainer)
        store = getattr(trainer, "_metrics", None)  # fulmen's Trainer (a stand-in trainer reads exactly)
        if self._deferred_read and store is not None:
            # a refresh inside the training batches: CUDA values one refresh late, without a host sync
            logged = self._host_reader.read(store.progress_bar_values())
        else:
            logged = trainer.progress_bar_metrics
            self._host_reader.settle(logged)  # the next deferred read starts from these exact values
        clashes = standard.keys() & logged.keys()
        if clashes and not self._duplicate_warned:
            self._duplicate_warned = True
            rank_zero_warn(
                f"The progress bar already shows {sorted(clashes)}; the values logged under the same names "
                "replace them. Fix: log them under other names to see both.",
            )
        return {**standard, **logged}

    # ----------------------------------------------------------------------------------------------
    # helpers for subclasses
    # ----------------------------------------------------------------------------------------------
    @staticmethod
    def _is_refresh_point(current: int, total: float, refresh_rate: int) -> bool:
        """True every ``refresh_rate`` batches and on the last batch of a known-length loader."""
        return current % refresh_rate == 0 or current == total

    @staticmethod
    def _stream_is_tty(stream: Any) -> bool:
        try:
            return bool(stream.isatty())
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            return False

    @staticmethod
    def _default_stream() -> Any:
        return sys.stdout


class _StageProgressBar(ProgressBar):
    """The stage bookkeeping that :class:`TQDMProgressBar` and :class:`RichProgressBar` share.

    It counts batches, keeps the sizes of the running epoch and dataloader, picks the refresh
    points and names the bars; the subclass draws. It is not part of the public ``ProgressBar``
    base: a user's ``ProgressBar`` subclass implements its own hooks, so the base keeps none.

    The main bar counts the epoch's training batches plus the validation batches run inside it
    (``_main_n`` of ``_train_total + total_val_batches``). Between refresh points a batch hook
    only bumps integers: the training hook reads one attribute, ``_train_progress_bar``.

    A subclass provides:

    - ``_train_progress_bar``: the main bar's handle (a tqdm bar, a rich task id), ``None``
      while no main bar is drawn;
    - ``_open_main_bar(trainer, total)``: show the main bar for a new epoch;
    - ``_refresh_main(trainer, pl_module, with_metrics)``: redraw it at ``_main_n``;
    - ``_end_epoch_bar()``: after the epoch's last redraw;
    - ``_eval_bar(trainer, stage)``: the handle of the evaluation bar of ``stage``
      (``"validate"`` also covers the sanity check);
    - ``_reset_eval_bar(trainer, stage, dataloader_idx)``: show that bar for a new dataloader
      of ``_eval_total`` batches (named by :meth:`_eval_bar_description`);
    - ``_draw(handle, n)``: redraw a bar at ``n``.
    """

    _train_progress_bar: Any

    def __init__(self, owner: str, refresh_rate: int, leave: bool) -> None:
        super().__init__()
        self._refresh_rate = _validate_non_negative_int(
            owner, "refresh_rate", refresh_rate, "batches between redraws; 0 disables the bar"
        )
        self._leave = bool(leave)
        self._train_progress_bar = None
        self._fitting = False  # between on_train_start and on_train_end: validation also feeds the main bar
        self._main_n = 0  # batches the main bar has counted this epoch (training + in-epoch validation)
        self._train_total: int | float = 0
        self._eval_total: int | float = 0  # batches of the evaluation dataloader being run

    @property
    def refresh_rate(self) -> int:
        return self._refresh_rate

    @property
    @override
    def is_enabled(self) -> bool:
        return self._enabled and self._refresh_rate > 0

    # ----------------------------------------------------------------------------------------------
    # drawing (the subclass)
    # ----------------------------------------------------------------------------------------------
    def _open_main_bar(self, trainer: Trainer, total: float) -> None:
        raise NotImplementedError

    def _refresh_main(self, trainer: Trainer, pl_module: LightningModule, with_metrics: bool) -> None:
        raise NotImplementedError

    def _end_epoch_bar(self) -> None:
        raise NotImplementedError

    def _eval_bar(self, trainer: Trainer, stage: str) -> Any:
        raise NotImplementedError

    def _reset_eval_bar(self, trainer: Trainer, stage: str, dataloader_idx: int) -> None:
        raise NotImplementedError

    def _draw(self, bar: Any, n: int) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------
    # descriptions
    # ----------------------------------------------------------------------------------------------
    def _eval_description(self, base: str, sizes: Any, dataloader_idx: int) -> str:
        many = isinstance(sizes, (list, tuple)) and len(sizes) > 1
        return f"{base} DataLoader {dataloader_idx}" if many else base

    def _eval_bar_description(self, trainer: Trainer, stage: str, dataloader_idx: int) -> str:
        """The evaluation bar's name: ``Validation``, ``Sanity Checking``, ``Testing`` or ``Predicting``.

        With several dataloaders, ``... DataLoader i``.
        """
        if stage == "validate":
            if trainer.sanity_checking:
                base, sizes = self.sanity_check_description, trainer.num_sanity_val_batches
            else:
                base, sizes = self.validation_description, trainer.num_val_batches
        elif stage == "test":
            base, sizes = self.test_description, trainer.num_test_batches
        else:
            base, sizes = self.predict_description, trainer.num_predict_batches
        return self._eval_description(base, sizes, dataloader_idx)

    def _draw_eval_at(self, trainer: Trainer, stage: str, n: int) -> None:
        """After the ``n``-th test/predict batch: redraw the bar of ``stage`` at a refresh point."""
        if self.is_enabled and self._is_refresh_point(n, self._eval_total, self._refresh_rate):
            self._draw(self._eval_bar(trainer, stage), n)

    # ----------------------------------------------------------------------------------------------
    # training
    # ----------------------------------------------------------------------------------------------
    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.train_batch_idx = 0
        self._main_n = 0
        if self.is_disabled:
            return
        self._train_total = self.total_train_batches
        self._open_main_bar(trainer, self._train_total + self.total_val_batches)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.train_batch_idx = batch_idx + 1
        self._main_n += 1
        if self._train_progress_bar is not None and self._is_refresh_point(
            self.train_batch_idx, self._train_total, self._refresh_rate or 1
        ):
            self._deferred_read = True
            try:
                self._refresh_main(trainer, pl_module, with_metrics=True)
            finally:
                self._deferred_read = False

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._train_progress_bar is None:
            return
        self._refresh_main(trainer, pl_module, with_metrics=True)
        self._end_epoch_bar()

    # ----------------------------------------------------------------------------------------------
    # evaluation batches (validation, sanity check, test, predict)
    # ----------------------------------------------------------------------------------------------
    @override
    def on_validation_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.has_dataloader_changed(dataloader_idx):
            self._eval_total = self.total_val_batches_current_dataloader
            self._reset_eval_bar(trainer, "validate", dataloader_idx)

    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.val_batch_idx = batch_idx + 1
        in_epoch = self._fitting and not trainer.sanity_checking
        if in_epoch:
            self._main_n += 1
        if self.is_disabled or not self._is_refresh_point(
            self.val_batch_idx, self._eval_total, self._refresh_rate
        ):
            return
        self._draw(self._eval_bar(trainer, "validate"), self.val_batch_idx)
        if in_epoch:
            self._refresh_main(trainer, pl_module, with_metrics=False)

    @override
    def on_test_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.has_dataloader_changed(dataloader_idx):
            self._eval_total = self.total_test_batches_current_dataloader
            self._reset_eval_bar(trainer, "test", dataloader_idx)

    @override
    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.test_batch_idx = batch_idx + 1
        self._draw_eval_at(trainer, "test", self.test_batch_idx)

    @override
    def on_predict_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.has_dataloader_changed(dataloader_idx):
            self._eval_total = self.total_predict_batches_current_dataloader
            self._reset_eval_bar(trainer, "predict", dataloader_idx)

    @override
    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.predict_batch_idx = batch_idx + 1
        self._draw_eval_at(trainer, "predict", self.predict_batch_idx)


def _size_at(sizes: Any, idx: int | None) -> int | float:
    """The entry ``idx`` of a per-dataloader size list (a bare number is accepted too)."""
    if isinstance(sizes, (int, float)):
        return sizes
    if not sizes:
        return 0
    index = 0 if idx is None else idx
    return sizes[index] if index < len(sizes) else 0


def _val_runs_per_epoch(trainer: Trainer) -> int:
    """How many times validation runs within the current training epoch, from ``val_check_interval``."""
    n_train = trainer.num_training_batches
    interval = getattr(trainer, "val_check_interval", 1.0)
    if n_train == float("inf") or n_train <= 0 or isinstance(interval, bool):
        return 1
    n_train = int(n_train)
    if isinstance(interval, float):
        return max(1, n_train // max(1, int(n_train * interval)))
    if isinstance(interval, int) and interval > 0:
        if getattr(trainer, "check_val_every_n_epoch", 1) is None:
            # the interval counts batches across epochs: count its multiples inside this epoch
            start = trainer.current_epoch * n_train
            return (start + n_train) // interval - start // interval
        return max(1, n_train // interval)
    return 1  # time-based interval: unknowable in advance
