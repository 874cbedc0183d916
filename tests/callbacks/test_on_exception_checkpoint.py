"""Tests for fulmen.callbacks.on_exception_checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.on_exception_checkpoint import OnExceptionCheckpoint
from fulmen.utilities.exceptions import MisconfigurationException


class Failing(L.LightningModule):
    def __init__(self, fail_at_step: int | None) -> None:
        super().__init__()
        self.fail_at_step = fail_at_step
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_step == self.fail_at_step:
            raise RuntimeError("boom")
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(
    tmp_path: Path, cb: OnExceptionCheckpoint, model: L.LightningModule, ckpt_path: Any = None
) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[cb],
        default_root_dir=str(tmp_path),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=2), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dirpath": ""}, r"dirpath"),
        ({"dirpath": "d", "filename": ""}, r"filename=...\): got ''"),
        ({"dirpath": "d", "filename": 3}, r"filename"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        OnExceptionCheckpoint(**kwargs)


def test_ckpt_path() -> None:
    assert OnExceptionCheckpoint("dir", "crash").ckpt_path == str(Path("dir") / "crash.ckpt")


def test_saves_on_exception_and_resumes(tmp_path: Path) -> None:
    cb = OnExceptionCheckpoint(tmp_path / "ck")
    with pytest.raises(RuntimeError, match="boom"):
        _fit(tmp_path, cb, Failing(fail_at_step=4))  # epoch 1, second of three batches
    path = Path(cb.ckpt_path)
    assert path.is_file()  # kept although the trainer tears down after the exception
    assert torch.load(path, weights_only=True)["global_step"] == 4
    resumed = _fit(
        tmp_path, OnExceptionCheckpoint(tmp_path / "ck"), Failing(fail_at_step=None), ckpt_path=str(path)
    )
    assert resumed.global_step == 6
    assert not path.exists()  # a normal end makes the crash checkpoint stale: removed


def test_normal_run_writes_nothing(tmp_path: Path) -> None:
    cb = OnExceptionCheckpoint(tmp_path / "ck")
    _fit(tmp_path, cb, Failing(fail_at_step=None))
    assert not Path(cb.ckpt_path).exists()
