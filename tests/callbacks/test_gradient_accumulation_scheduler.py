"""Tests for fulmen.callbacks.gradient_accumulation_scheduler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.gradient_accumulation_scheduler import (
    GradientAccumulationScheduler,
    accumulation_for_epoch,
)
from fulmen.callbacks.model_checkpoint import ModelCheckpoint
from fulmen.utilities.exceptions import MisconfigurationException


def test_accumulation_for_epoch() -> None:
    scheduling = {2: 4, 5: 8}
    assert [accumulation_for_epoch(scheduling, e) for e in range(7)] == [1, 1, 4, 4, 4, 8, 8]
    assert accumulation_for_epoch({0: 3}, 10) == 3


def test_scheduling_fills_epoch_zero() -> None:
    cb = GradientAccumulationScheduler({3: 2})
    assert cb.scheduling == {0: 1, 3: 2} and cb.epochs == [0, 3]
    assert cb.going_to_accumulate_grad_batches()
    assert not GradientAccumulationScheduler({0: 1}).going_to_accumulate_grad_batches()


@pytest.mark.parametrize(
    ("scheduling", "match"),
    [
        ({}, r"got \{\}; expected a non-empty dict"),
        ([(0, 1)], r"expected a non-empty dict"),
        ({-1: 2}, r"epoch keys \[-1\] are invalid; expected ints >= 0"),
        ({"1": 2}, r"epoch keys \['1'\]"),
        ({1: 0}, r"accumulation factors \[0\] are invalid; expected ints >= 1"),
        ({1: 2.5}, r"accumulation factors \[2.5\]"),
        ({1: True}, r"accumulation factors \[True\]"),
    ],
)
def test_bad_scheduling(scheduling: Any, match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        GradientAccumulationScheduler(scheduling)


class Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.per_epoch: list[int] = []

    def on_train_epoch_start(self) -> None:
        self.per_epoch.append(self.trainer.accumulate_grad_batches)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(
    tmp_path: Path, callbacks: list[Any], model: L.LightningModule, max_epochs: int, **kw: Any
) -> L.Trainer:
    kw.setdefault("enable_checkpointing", False)
    trainer = L.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        default_root_dir=str(tmp_path),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=2))
    return trainer


def test_changes_accumulation_per_epoch(tmp_path: Path) -> None:
    model = Recorder()
    trainer = _fit(tmp_path, [GradientAccumulationScheduler({1: 2, 2: 4})], model, 3)
    assert model.per_epoch == [1, 2, 4]
    assert trainer.global_step == 8 + 4 + 2  # 8 batches per epoch


def test_conflicts_with_trainer_accumulate_grad_batches(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match=r"Trainer\(accumulate_grad_batches=2\) was also set"):
        _fit(tmp_path, [GradientAccumulationScheduler({1: 2})], Recorder(), 1, accumulate_grad_batches=2)


def test_manual_optimization_is_rejected(tmp_path: Path) -> None:
    class Manual(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(self.layer(batch[0]).sum())
            opt.step()

    with pytest.raises(MisconfigurationException, match="manual optimization"):
        _fit(tmp_path, [GradientAccumulationScheduler({1: 2})], Manual(), 1)


def test_warns_when_optimizer_step_is_overridden(tmp_path: Path) -> None:
    class CustomStep(Recorder):
        def optimizer_step(
            self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
        ) -> None:
            optimizer.step(closure=optimizer_closure)

    with pytest.warns(UserWarning, match="hooks will not be called on every batch"):
        _fit(tmp_path, [GradientAccumulationScheduler({0: 2})], CustomStep(), 1)


def test_resume_keeps_the_schedule(tmp_path: Path) -> None:
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, save_top_k=0)
    sched = {1: 2, 2: 4}
    first = L.Trainer(
        max_epochs=2,
        callbacks=[GradientAccumulationScheduler(sched), ck],
        default_root_dir=str(tmp_path),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=2)
    first.fit(Recorder(), data)
    model = Recorder()
    second = L.Trainer(
        max_epochs=3,
        callbacks=[GradientAccumulationScheduler(sched)],
        default_root_dir=str(tmp_path),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    second.fit(
        model, data, ckpt_path=ck.last_model_path
    )  # must not mistake the restored value for a conflict
    assert model.per_epoch == [4] and second.global_step == 8 + 4 + 2
