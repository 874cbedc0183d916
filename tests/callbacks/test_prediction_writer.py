"""Tests for fulmen.callbacks.prediction_writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.prediction_writer import BasePredictionWriter, WriteInterval
from fulmen.utilities.exceptions import MisconfigurationException


class Recorder(BasePredictionWriter):
    def __init__(self, interval: str) -> None:
        super().__init__(interval)
        self.batches: list[tuple[Any, int, int]] = []
        self.epochs: list[tuple[Any, Any]] = []

    def write_on_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        self.batches.append((prediction, batch_idx, dataloader_idx))

    def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Any, batch_indices: Any) -> None:
        self.epochs.append((predictions, batch_indices))


class Doubler(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return batch[0] * 2


def _loader(values: list[float]) -> DataLoader:
    return DataLoader(TensorDataset(torch.tensor(values).unsqueeze(1)), batch_size=2)


def _trainer(tmp_path: Path, cb: BasePredictionWriter) -> L.Trainer:
    return L.Trainer(
        callbacks=[cb],
        default_root_dir=str(tmp_path),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_interval_values_and_bad_interval() -> None:
    assert WriteInterval("batch").on_batch and not WriteInterval("batch").on_epoch
    assert WriteInterval("batch_and_epoch").on_batch and WriteInterval("batch_and_epoch").on_epoch
    with pytest.raises(MisconfigurationException, match=r"write_interval=...\): got 'step'; expected one of"):
        BasePredictionWriter("step")


@pytest.mark.parametrize("return_predictions", [True, False])
def test_batch_and_epoch_writes(tmp_path: Path, return_predictions: bool) -> None:
    cb = Recorder("batch_and_epoch")
    _trainer(tmp_path, cb).predict(Doubler(), _loader([1, 2, 3]), return_predictions=return_predictions)
    assert [(p.flatten().tolist(), i, d) for p, i, d in cb.batches] == [([2.0, 4.0], 0, 0), ([6.0], 1, 0)]
    ((predictions, indices),) = cb.epochs
    assert [p.flatten().tolist() for p in predictions] == [[2.0, 4.0], [6.0]]  # one dataloader: flat list
    assert len(indices) == 1 and len(indices[0]) == 2  # always one list per dataloader


def test_multiple_dataloaders_epoch_only(tmp_path: Path) -> None:
    cb = Recorder("epoch")
    _trainer(tmp_path, cb).predict(Doubler(), [_loader([1, 2]), _loader([5])])
    assert cb.batches == []
    ((predictions, indices),) = cb.epochs
    assert [[p.flatten().tolist() for p in dl] for dl in predictions] == [[[2.0, 4.0]], [[10.0]]]
    assert len(indices) == 2


def test_unimplemented_writer_raises(tmp_path: Path) -> None:
    with pytest.raises(NotImplementedError, match="must implement `write_on_batch_end`"):
        _trainer(tmp_path, BasePredictionWriter()).predict(Doubler(), _loader([1]))


def test_dataloader_iter_predict_step_is_rejected() -> None:
    class IterStep(Doubler):
        def predict_step(self, dataloader_iter: Any) -> Any:  # type: ignore[override]
            return None

    with pytest.raises(MisconfigurationException, match="dataloader_iter"):
        Recorder("batch").setup(None, IterStep(), "predict")  # type: ignore[arg-type]
