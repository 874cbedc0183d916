"""Tuner.scale_batch_size and BatchSizeFinder: power / binsearch, where the size lives, restored state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

import fulmen as L
from fulmen.callbacks import BatchSizeFinder
from fulmen.tuner import Tuner
from fulmen.utilities.exceptions import MisconfigurationException

from .conftest import Regression, make_trainer, regression_data


def test_power_mode_finds_the_largest_power_of_two_that_fits(tmp_path: Path) -> None:
    model = Regression(batch_size=7, oom_above=100)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = make_trainer(tmp_path)
    size = Tuner(trainer).scale_batch_size(model, mode="power", steps_per_trial=2)
    assert size == 64 and model.batch_size == 64
    assert sorted(set(model.seen_batch_sizes)) == [2, 4, 8, 16, 32, 64, 128]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert trainer.global_step == 0
    assert not any(isinstance(cb, BatchSizeFinder) for cb in trainer.callbacks)
    assert not list(tmp_path.glob(".scale_batch_size_*.ckpt"))
    # the trainer is reusable, and the fit uses the size found
    model.seen_batch_sizes.clear()
    trainer.fit(model)
    assert trainer.train_dataloader.batch_size == 64
    assert max(model.seen_batch_sizes) == 64 and trainer.global_step == 512 // 64


def test_binsearch_finds_the_boundary_and_keeps_a_margin(tmp_path: Path) -> None:
    model = Regression(oom_above=100)
    size = Tuner(make_trainer(tmp_path)).scale_batch_size(
        model, mode="binsearch", steps_per_trial=1, margin=0.1
    )
    assert size == int(100 * 0.9) and model.batch_size == 90
    assert 101 in model.seen_batch_sizes or 102 in model.seen_batch_sizes  # it probed just above the limit
    no_margin = Regression(oom_above=100)
    assert (
        Tuner(make_trainer(tmp_path)).scale_batch_size(
            no_margin, mode="binsearch", steps_per_trial=1, margin=0.0
        )
        == 100
    )


def test_max_val_max_trials_and_dataset_size(tmp_path: Path) -> None:
    assert Tuner(make_trainer(tmp_path)).scale_batch_size(Regression(), max_val=48, steps_per_trial=1) == 48
    assert Tuner(make_trainer(tmp_path)).scale_batch_size(Regression(), max_trials=3, steps_per_trial=1) == 8
    # no size beyond the dataset: a larger batch holds the same samples
    assert Tuner(make_trainer(tmp_path)).scale_batch_size(Regression(n=50), steps_per_trial=1) == 50


def test_batch_size_in_hparams_and_in_a_datamodule(tmp_path: Path) -> None:
    class HparamsOnly(Regression):
        def __init__(self) -> None:
            super().__init__(oom_above=40)
            del self.batch_size

        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.data, batch_size=self.hparams.batch_size)

        def val_dataloader(self) -> DataLoader:
            return self.train_dataloader()

    model = HparamsOnly()
    assert Tuner(make_trainer(tmp_path, limit_val_batches=0)).scale_batch_size(model, steps_per_trial=1) == 32
    assert model.hparams.batch_size == 32

    class DM(L.LightningDataModule):
        def __init__(self) -> None:
            super().__init__()
            self.batch_size = 4

        def train_dataloader(self) -> DataLoader:
            return DataLoader(regression_data(256), batch_size=self.batch_size)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(regression_data(64), batch_size=self.batch_size)

    class NoLoaders(Regression):
        def __init__(self) -> None:
            super().__init__(oom_above=20)
            del self.batch_size
            self._hparams.pop("batch_size")

    dm = DM()
    trainer = make_trainer(tmp_path, limit_val_batches=0)
    assert Tuner(trainer).scale_batch_size(NoLoaders(), datamodule=dm, steps_per_trial=1) == 16
    assert dm.batch_size == 16


@pytest.mark.parametrize("method", ["validate", "test", "predict"])
def test_evaluation_methods(tmp_path: Path, method: str) -> None:
    model = Regression(oom_above=70)
    size = Tuner(make_trainer(tmp_path)).scale_batch_size(model, method=method, steps_per_trial=1)
    assert size == 64 and model.batch_size == 64


def test_errors_and_state_after_a_real_error(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path)
    loader = DataLoader(regression_data(64), batch_size=4)
    with pytest.raises(MisconfigurationException, match="passed to trainer.fit"):
        Tuner(trainer).scale_batch_size(Regression(), train_dataloaders=loader)
    with pytest.raises(MisconfigurationException, match="'nope' not found"):
        Tuner(trainer).scale_batch_size(Regression(), batch_arg_name="nope")
    with pytest.raises(MisconfigurationException, match="mode='linear'"):
        Tuner(trainer).scale_batch_size(Regression(), mode="linear")
    with pytest.raises(MisconfigurationException, match="dataloaders"):
        Tuner(trainer).scale_batch_size(Regression(), dataloaders=loader)
    with pytest.raises(MisconfigurationException, match="already has a BatchSizeFinder"):
        Tuner(make_trainer(tmp_path, callbacks=[BatchSizeFinder()])).scale_batch_size(Regression())

    class Broken(Regression):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if batch[0].shape[0] > 8:
                raise ValueError("not an out-of-memory error")
            return super().training_step(batch, batch_idx)

    model = Broken(batch_size=5)
    config = trainer.config
    with pytest.raises(ValueError, match="not an out-of-memory"):
        Tuner(trainer).scale_batch_size(model, steps_per_trial=1)
    assert model.batch_size == 5  # the original size is put back
    assert trainer.config is config and not list(tmp_path.glob(".scale_batch_size_*.ckpt"))
    model.training_step = Regression.training_step.__get__(model)  # type: ignore[method-assign]
    trainer.fit(model)  # the trainer still works
    assert trainer.global_step == 512 // 5 + 1


def test_batch_size_finder_callback_then_trains_with_the_size(tmp_path: Path) -> None:
    model = Regression(oom_above=30)
    finder = BatchSizeFinder(steps_per_trial=1)
    trainer = make_trainer(tmp_path, callbacks=[finder])
    trainer.fit(model)
    assert finder.optimal_batch_size == 16
    assert trainer.train_dataloader.batch_size == 16
    assert trainer.global_step == 512 // 16


def test_fast_dev_run_skips(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="fast_dev_run"):
        assert Tuner(make_trainer(tmp_path, fast_dev_run=True)).scale_batch_size(Regression()) is None
