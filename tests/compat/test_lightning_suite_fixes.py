"""Public behaviours that Lightning's own test suite checks (found with tests/compat/lightning_suite/).

Each test pins one fix on fulmen's side, without Lightning's test files. The expected strings are the ones the
installed ``pytorch-lightning==2.6.1`` produces (observed with a script; see docs/migration.md, "Lightning's own
test suite"); the mock.patch test also runs against real Lightning to show both agree.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from unittest import mock

import pytest
import torch
from torch.utils.data import DataLoader

import fulmen as L
from fulmen.callbacks import Timer
from fulmen.compat import lightning_imports
from fulmen.demos.boring_classes import BoringModel, RandomDataset
from fulmen.loggers import CSVLogger
from fulmen.utilities.exceptions import MisconfigurationException


def _quiet_trainer(**kw: object) -> L.Trainer:
    return L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, **kw)


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("limit_train_batches", 1, "`Trainer(limit_train_batches=1)` was configured so 1 batch per epoch will be used."),
        (
            "limit_train_batches", 1.0,
            "`Trainer(limit_train_batches=1.0)` was configured so 100% of the batches per epoch will be used..",
        ),
        ("limit_val_batches", 1, "`Trainer(limit_val_batches=1)` was configured so 1 batch will be used."),
        ("limit_test_batches", 1.0, "`Trainer(limit_test_batches=1.0)` was configured so 100% of the batches will be used.."),
        ("limit_predict_batches", 1, "`Trainer(limit_predict_batches=1)` was configured so 1 batch will be used."),
        ("overfit_batches", 1, "`Trainer(overfit_batches=1)` was configured so 1 batch will be used."),
        ("val_check_interval", 1, "`Trainer(val_check_interval=1)` was configured so validation will run after every batch."),
        (
            "val_check_interval", 1.0,
            "`Trainer(val_check_interval=1.0)` was configured so validation will run at the end of the training epoch..",
        ),
    ],
)
def test_one_versus_one_point_zero_is_spelled_out(caplog: pytest.LogCaptureFixture, argument: str, value: object,
                                                  message: str) -> None:
    with caplog.at_level(logging.INFO):
        _quiet_trainer(**{argument: value})
    assert message in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        _quiet_trainer()  # the defaults say nothing
        _quiet_trainer(**{argument: value}, fast_dev_run=True)  # nor does fast_dev_run, which sets them itself
    assert "was configured so" not in caplog.text


def test_timer_interval_error_has_lightnings_wording() -> None:
    with pytest.raises(MisconfigurationException, match=r"Unsupported parameter value `Timer\(interval=hour\)`"):
        Timer(duration=timedelta(seconds=1), interval="hour")


def test_max_time_with_a_timer_callback_says_it_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    user_timer = Timer(duration=timedelta(seconds=5))
    with caplog.at_level(logging.INFO):
        trainer = _quiet_trainer(max_time={"seconds": 1337}, callbacks=[user_timer])
    assert "Ignoring `Trainer(max_time=...)`, callbacks list already contains a Timer." in caplog.text
    assert [c for c in trainer.callbacks if isinstance(c, Timer)] == [user_timer]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        _quiet_trainer(max_time={"seconds": 1337})
    assert "already contains a Timer" not in caplog.text


def test_val_check_interval_beyond_the_epoch_is_a_value_error() -> None:
    class Model(BoringModel):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(RandomDataset(32, 10))

    trainer = _quiet_trainer(val_check_interval=100, max_epochs=1)
    with pytest.raises(ValueError, match="must be less than or equal to the number of the training batches") as err:
        trainer.fit(Model())
    assert isinstance(err.value, MisconfigurationException)  # still fulmen's configuration error too


def test_csv_logger_experiment_is_the_public_experiment_writer(tmp_path) -> None:
    from fulmen.loggers.csv_logs import ExperimentWriter

    logger = CSVLogger(tmp_path)
    assert isinstance(logger.experiment, ExperimentWriter)
    logger.log_metrics({"a": torch.tensor(1.0)}, step=0)
    logger.save()
    assert (tmp_path / "lightning_logs" / "version_0" / ExperimentWriter.NAME_METRICS_FILE).is_file()
    with lightning_imports():
        from lightning.pytorch.loggers.csv_logs import ExperimentWriter as Aliased

        assert Aliased is ExperimentWriter


@pytest.mark.parametrize("engine", ["fulmen", "lightning"])
def test_mock_patch_through_a_lightning_module_path_reaches_the_code(engine: str) -> None:
    """``mock.patch("pytorch_lightning.callbacks.timer.time")`` must change what the Timer reads, and undo it."""

    def check() -> None:
        import pytorch_lightning.callbacks.timer as timer_module
        from pytorch_lightning.callbacks import Timer as T

        with mock.patch("pytorch_lightning.callbacks.timer.time") as time_mock:
            time_mock.monotonic.return_value = 1234.5
            timer = T(duration=timedelta(seconds=10))
            timer.on_train_start(trainer=mock.Mock(), pl_module=mock.Mock())
            assert timer.start_time() == 1234.5
            time_mock.monotonic.return_value = 1237.5
            assert timer.time_remaining() == 7
        assert timer_module.time is time  # restored on the alias ...
        if engine == "fulmen":
            import fulmen.callbacks.timer

            assert fulmen.callbacks.timer.time is time  # ... and in fulmen's module

    if engine == "lightning":
        pytest.importorskip("pytorch_lightning")
        check()
    else:
        with lightning_imports():
            check()


@pytest.mark.parametrize("kind", ["shuffle", "custom_sampler", "sequential"])
def test_overfit_batches_turns_off_shuffling_of_train_and_val_loaders(kind: str) -> None:
    from torch.utils.data import Sampler, SequentialSampler

    class InOrder(Sampler):  # not a SequentialSampler, so Lightning (and fulmen) replace it
        def __init__(self, data: RandomDataset) -> None:
            self.data = data

        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter(range(len(self.data)))

        def __len__(self) -> int:
            return len(self.data)

    def loader() -> DataLoader:
        data = RandomDataset(32, 64)
        if kind == "custom_sampler":
            return DataLoader(data, sampler=InOrder(data))
        return DataLoader(data, shuffle=kind == "shuffle")

    class Model(BoringModel):
        def train_dataloader(self) -> DataLoader:
            return loader()

        def val_dataloader(self) -> DataLoader:
            return loader()

    trainer = _quiet_trainer(max_epochs=1, overfit_batches=2)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Model())
    messages = sorted(str(w.message) for w in caught if "requested to overfit" in str(w.message))
    if kind == "sequential":
        assert messages == []
    else:  # Lightning 2.6.1's two warnings, word for word
        assert messages == [
            f"You requested to overfit but enabled {mode} dataloader shuffling. We are turning off the {mode} "
            "dataloader shuffling for you."
            for mode in ("train", "val")
        ]
    assert isinstance(trainer.train_dataloader.sampler, SequentialSampler)
    assert isinstance(trainer.val_dataloaders.sampler, SequentialSampler)
    assert trainer.num_training_batches == 2 and trainer.num_val_batches == [2]


def test_csv_experiment_log_metrics_step_defaults_to_the_buffered_row_count(tmp_path) -> None:
    """As Lightning's ``ExperimentWriter.log_metrics(metrics)``: ``step`` optional, numbered from the buffer."""
    experiment = CSVLogger(tmp_path).experiment
    experiment.log_metrics({"loss": 0.1})
    experiment.log_metrics({"loss": 0.2})
    assert experiment.metrics == [{"loss": 0.1, "step": 0}, {"loss": 0.2, "step": 1}]
    experiment.log_metrics({"loss": 0.3}, step=7)
    assert experiment.metrics[-1] == {"loss": 0.3, "step": 7}
