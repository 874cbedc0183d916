"""Tuner.lr_find and LearningRateFinder: suggestion, restored state, callback use, plot."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch

import fulmen as L
from fulmen.callbacks import Callback, LearningRateFinder
from fulmen.loggers import CSVLogger
from fulmen.tuner import LRFinder, Tuner
from fulmen.utilities.exceptions import MisconfigurationException

from .conftest import Regression, make_trainer


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_lr_find_suggests_updates_and_restores_everything(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Regression(lr=1e-3)
    before = params(model)
    logger = CSVLogger(tmp_path)
    trainer = make_trainer(tmp_path, logger=logger, max_epochs=2)
    finder = Tuner(trainer).lr_find(model, min_lr=1e-4, max_lr=1.0, num_training=60)
    assert isinstance(finder, LRFinder)
    lrs, losses = finder.results["lr"], finder.results["loss"]
    assert len(lrs) == len(losses) and 20 <= len(lrs) <= 60
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-4)
    suggestion = finder.suggestion()
    assert suggestion is not None and 1e-4 <= suggestion <= 1.0
    # the suggestion is written to the attribute and the hparams
    assert model.lr == suggestion and model.hparams.lr == suggestion
    # the model and the trainer are as before
    for k, v in params(model).items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert trainer.global_step == 0 and trainer.current_epoch == 0
    assert not any(isinstance(cb, LearningRateFinder) for cb in trainer.callbacks)
    assert trainer.state.finished
    assert not list(tmp_path.glob(".lr_find_*.ckpt"))
    # the trial wrote nothing to the loggers
    metrics = Path(trainer.log_dir) / "metrics.csv"
    assert not metrics.exists() or len(list(csv.DictReader(metrics.open()))) == 0
    # the same trainer then fits normally, from step 0, with the new learning rate
    trainer.fit(model)
    assert trainer.global_step == 2 * 32
    assert trainer.optimizers[0].param_groups[0]["lr"] == suggestion


def test_a_fit_after_lr_find_equals_a_fit_without_it(tmp_path: Path) -> None:
    """Weights, optimizer and RNG are restored: tuning then fitting == fitting with the tuned LR."""
    torch.manual_seed(1)
    tuned = Regression()
    trainer = make_trainer(tmp_path / "a", max_epochs=1)
    lr = Tuner(trainer).lr_find(tuned, num_training=30).suggestion()
    trainer.fit(tuned)

    torch.manual_seed(1)
    plain = Regression(lr=lr)
    make_trainer(tmp_path / "b", max_epochs=1).fit(plain)
    for (k, a), b in zip(tuned.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_early_stop_on_divergence(tmp_path: Path) -> None:
    class Diverging(Regression):
        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    finder = Tuner(make_trainer(tmp_path)).lr_find(Diverging(), min_lr=1e-3, max_lr=100.0, num_training=100)
    assert finder is not None and len(finder.results["lr"]) < 100
    finder_no_stop = Tuner(make_trainer(tmp_path)).lr_find(
        Diverging(), min_lr=1e-3, max_lr=1.0, num_training=40, early_stop_threshold=None
    )
    assert finder_no_stop is not None and len(finder_no_stop.results["lr"]) == 40


def test_linear_mode_and_attr_name(tmp_path: Path) -> None:
    class Named(Regression):
        def __init__(self) -> None:
            super().__init__()
            self.my_lr = 0.5

    model = Named()
    finder = Tuner(make_trainer(tmp_path)).lr_find(
        model, mode="linear", min_lr=0.01, max_lr=0.2, num_training=20, attr_name="my_lr"
    )
    assert finder is not None
    lrs = finder.results["lr"]
    assert lrs[1] - lrs[0] == pytest.approx(lrs[2] - lrs[1])
    assert model.my_lr == finder.suggestion() and model.lr == 0.01


def test_update_attr_false_and_missing_attribute(tmp_path: Path) -> None:
    model = Regression(lr=0.123)
    Tuner(make_trainer(tmp_path)).lr_find(model, num_training=20, update_attr=False)
    assert model.lr == 0.123

    class NoLR(Regression):
        def __init__(self) -> None:
            super().__init__()
            del self.lr
            self._hparams.pop("lr")

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(AttributeError, match="neither `lr` nor `learning_rate`"):
        Tuner(make_trainer(tmp_path)).lr_find(NoLR(), num_training=20)
    with pytest.raises(AttributeError, match="attr_name='nope'"):
        Tuner(make_trainer(tmp_path)).lr_find(Regression(), num_training=20, attr_name="nope")


def test_configuration_errors(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path)
    with pytest.raises(MisconfigurationException, match="method='fit'"):
        Tuner(trainer).lr_find(Regression(), method="validate")
    with pytest.raises(MisconfigurationException, match="mode='cosine'"):
        Tuner(trainer).lr_find(Regression(), mode="cosine")
    with pytest.raises(MisconfigurationException, match="min_lr < max_lr"):
        Tuner(trainer).lr_find(Regression(), min_lr=1.0, max_lr=0.1)
    with pytest.raises(MisconfigurationException, match="already has a LearningRateFinder"):
        Tuner(make_trainer(tmp_path, callbacks=[LearningRateFinder()])).lr_find(Regression())
    with pytest.raises(MisconfigurationException, match="mode"):
        LearningRateFinder(mode="bogus")
    with pytest.warns(UserWarning, match="fast_dev_run"):
        assert Tuner(make_trainer(tmp_path, fast_dev_run=True)).lr_find(Regression()) is None


def test_schedulers_are_paused_during_the_trial_and_restored(tmp_path: Path) -> None:
    class WithPlateau(Regression):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=self.lr)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}

    model = WithPlateau()
    trainer = make_trainer(tmp_path, max_epochs=1)
    # 40 steps > 32 batches per epoch: an epoch ends inside the trial, where val_loss does not exist
    finder = Tuner(trainer).lr_find(model, num_training=40, early_stop_threshold=None)
    assert finder is not None and len(finder.results["lr"]) == 40
    trainer.fit(model)
    assert len(trainer.lr_scheduler_configs) == 1


def test_learning_rate_finder_callback_trains_with_the_suggestion(tmp_path: Path) -> None:
    seen: dict[str, float] = {}

    class ReadLR(Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            seen["lr"] = trainer.optimizers[0].param_groups[0]["lr"]

    finder = LearningRateFinder(min_lr=1e-4, max_lr=0.5, num_training_steps=30)
    model = Regression(lr=1e-3)
    trainer = make_trainer(tmp_path, callbacks=[finder, ReadLR()], max_epochs=1)
    trainer.fit(model)
    suggestion = finder.optimal_lr.suggestion()
    assert model.lr == suggestion and seen["lr"] == suggestion
    assert trainer.global_step == 32  # the trial's steps are not counted


def test_suggestion_needs_enough_points_and_plot(tmp_path: Path) -> None:
    finder = LRFinder("exponential", 1e-5, 1.0, 100)
    finder.results = {"lr": [1e-5, 1e-4], "loss": [1.0, 0.5]}
    assert finder.suggestion() is None
    lrs = [10 ** (-5 + 5 * i / 99) for i in range(100)]
    # the loss falls fastest (on the log-LR axis) between points 30 and 40
    loss = [2.0 - 0.01 * i if not 30 <= i < 40 else 1.7 - 0.1 * (i - 30) for i in range(100)]
    finder.results = {"lr": lrs, "loss": loss}
    suggestion = finder.suggestion(skip_begin=0)
    assert suggestion is not None and lrs[30] <= suggestion <= lrs[40]
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    path = tmp_path / "lr.png"
    fig = finder.plot(suggest=True, path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "Learning rate"
    assert len(ax.lines) == 2  # the curve and the suggestion marker


def test_works_with_a_datamodule_and_explicit_loaders(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from .conftest import regression_data

    class Plain(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.learning_rate = 0.01
            self.layer = torch.nn.Linear(8, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.learning_rate)

    model = Plain()
    loader = DataLoader(regression_data(64), batch_size=8)
    finder = Tuner(make_trainer(tmp_path)).lr_find(model, train_dataloaders=loader, num_training=20)
    assert finder is not None and model.learning_rate == finder.suggestion()
    dm = L.LightningDataModule.from_datasets(regression_data(64), batch_size=8)
    finder = Tuner(make_trainer(tmp_path)).lr_find(Plain(), datamodule=dm, num_training=20)
    assert finder is not None and len(finder.results["lr"]) == 20
