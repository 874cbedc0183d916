"""``BasePredictionWriter``: write predictions to disk (or anywhere) during ``trainer.predict``.

Subclass it and implement :meth:`~BasePredictionWriter.write_on_batch_end` and/or
:meth:`~BasePredictionWriter.write_on_epoch_end`. For the epoch interval the writer gathers the
predictions itself, so it also works with ``trainer.predict(..., return_predictions=False)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from fulmen.callbacks.callback import Callback
from fulmen.utilities.exceptions import NotSupportedYetError, misconfig

if TYPE_CHECKING:
    from fulmen.core.module import LightningModule
    from fulmen.trainer.trainer import Trainer


class WriteInterval(str, Enum):
    """When :class:`BasePredictionWriter` writes: after each batch, at epoch end, or both."""

    BATCH = "batch"
    EPOCH = "epoch"
    BATCH_AND_EPOCH = "batch_and_epoch"

    @property
    def on_batch(self) -> bool:
        return self in (WriteInterval.BATCH, WriteInterval.BATCH_AND_EPOCH)

    @property
    def on_epoch(self) -> bool:
        return self in (WriteInterval.EPOCH, WriteInterval.BATCH_AND_EPOCH)


def _current_batch_indices(trainer: Trainer) -> list[int]:
    # the dataset indices of the current batch, recorded by the predict loop from the loader's batch sampler (as in
    # Lightning); empty for a loader without one (an IterableDataset, batch_size=None, a dataloader_iter step)
    loop = getattr(trainer, "predict_loop", None)
    indices = getattr(loop, "current_batch_indices", None)
    return list(indices) if indices is not None else []


class BasePredictionWriter(Callback):
    r"""Base class for writing predictions.

    Args:
        write_interval: ``"batch"`` calls :meth:`write_on_batch_end` after every predict batch,
            ``"epoch"`` calls :meth:`write_on_epoch_end` once with every prediction, and
            ``"batch_and_epoch"`` calls both.

    Raises:
        MisconfigurationException: for an unknown ``write_interval``.

    Example::

        class CustomWriter(BasePredictionWriter):
            def __init__(self, output_dir):
                super().__init__(write_interval="epoch")
                self.output_dir = output_dir

            def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
                path = os.path.join(self.output_dir, f"predictions_{trainer.global_rank}.pt")
                torch.save(predictions, path)
    """

    def __init__(self, write_interval: str = "batch") -> None:
        super().__init__()
        valid = [i.value for i in WriteInterval]
        value = getattr(write_interval, "value", write_interval)
        if value not in valid:
            raise misconfig(
                "BasePredictionWriter(write_interval=...)",
                write_interval,
                f"one of {valid}",
                "pass write_interval='batch', 'epoch' or 'batch_and_epoch'",
            )
        self.interval = WriteInterval(value)
        self._predictions: list[list[Any]] = []
        self._batch_indices: list[list[Any]] = []

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        predict_step = getattr(pl_module, "predict_step", None)
        if predict_step is not None:
            try:
                params = inspect.signature(predict_step).parameters
            except (TypeError, ValueError):  # builtins or C callables: nothing to check
                return
            if "dataloader_iter" in params:
                raise NotSupportedYetError(
                    "BasePredictionWriter does not support `predict_step(dataloader_iter)`: the writer "
                    "needs each "
                    "batch. Fix: write predict_step(batch, batch_idx) instead."
                )

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Override to write the predictions of one batch (called when the interval includes batches)."""
        raise NotImplementedError(
            f"{type(self).__name__}(write_interval={self.interval.value!r}) must implement "
            "`write_on_batch_end`."
        )

    def write_on_epoch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        """Override to write all predictions of the epoch (called when the interval includes epochs).

        ``predictions`` is the list of batch predictions, or one such list per dataloader when there
        are several; ``batch_indices`` is always one list per dataloader.
        """
        raise NotImplementedError(
            f"{type(self).__name__}(write_interval={self.interval.value!r}) must implement "
            "`write_on_epoch_end`."
        )

    @override
    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._predictions = []
        self._batch_indices = []

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
        if not (self.interval.on_batch or self.interval.on_epoch):
            return
        batch_indices = _current_batch_indices(trainer)
        if self.interval.on_batch:
            self.write_on_batch_end(
                trainer, pl_module, outputs, batch_indices, batch, batch_idx, dataloader_idx
            )
        if self.interval.on_epoch:
            while len(self._predictions) <= dataloader_idx:
                self._predictions.append([])
                self._batch_indices.append([])
            self._predictions[dataloader_idx].append(outputs)
            self._batch_indices[dataloader_idx].append(batch_indices)

    @override
    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.interval.on_epoch:
            return
        num_dataloaders = max(len(trainer.num_predict_batches), len(self._predictions), 1)
        while len(self._predictions) < num_dataloaders:
            self._predictions.append([])
            self._batch_indices.append([])
        predictions: Sequence[Any] = self._predictions[0] if num_dataloaders == 1 else self._predictions
        self.write_on_epoch_end(trainer, pl_module, predictions, self._batch_indices)
        self._predictions, self._batch_indices = [], []


__all__ = ["BasePredictionWriter", "WriteInterval"]
