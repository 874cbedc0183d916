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


def _index_log(lib_name: str, shuffle: bool, n_loaders: int, num_workers: int = 0) -> list[Any]:
    """What a writer receives (batch and epoch), run on ``lib_name``: each prediction is the batch's own
    dataset indices, so ``batch_indices`` must equal it."""
    import importlib

    lib = importlib.import_module(lib_name)
    base = importlib.import_module(f"{lib_name}.callbacks").BasePredictionWriter

    class Ident(lib.LightningModule):
        def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
            return batch[0].long().tolist()

    class Writer(base):
        def __init__(self) -> None:
            super().__init__("batch_and_epoch")
            self.rec: list[Any] = []

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,  # type: ignore[no-untyped-def]
                               dataloader_idx) -> None:
            self.rec.append(("batch", dataloader_idx, batch_idx, list(batch_indices), prediction))

        def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:  # type: ignore[no-untyped-def]
            self.rec.append(("epoch", predictions, batch_indices))

    ds = TensorDataset(torch.arange(7))
    torch.manual_seed(0)
    loaders = [DataLoader(ds, batch_size=3, shuffle=shuffle, num_workers=num_workers) for _ in range(n_loaders)]
    writer = Writer()
    trainer = lib.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[writer])
    torch.manual_seed(0)
    trainer.predict(Ident(), loaders if n_loaders > 1 else loaders[0], return_predictions=False)
    return writer.rec


@pytest.mark.parametrize("n_loaders", [1, 2])
@pytest.mark.parametrize("shuffle", [False, True])
def test_batch_indices_are_the_samplers_indices(shuffle: bool, n_loaders: int) -> None:
    got = _index_log("fulmen", shuffle, n_loaders)
    for entry in got:
        if entry[0] == "batch":
            assert entry[3] == entry[4] and entry[3]  # the indices of the samples in this batch
    (epoch,) = [e for e in got if e[0] == "epoch"]
    per_loader = epoch[1] if n_loaders > 1 else [epoch[1]]
    assert epoch[2] == per_loader  # one list of per-batch indices per dataloader
    assert sorted(i for batch in epoch[2][0] for i in batch) == list(range(7))
    pytest.importorskip("pytorch_lightning")
    import warnings

    warnings.filterwarnings("ignore")
    assert got == _index_log("pytorch_lightning", shuffle, n_loaders)


def test_batch_indices_with_workers() -> None:
    got = _index_log("fulmen", True, 1, num_workers=2)
    assert all(e[3] == e[4] for e in got if e[0] == "batch") and len(got) == 4
