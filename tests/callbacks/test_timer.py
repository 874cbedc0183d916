"""Tests for fulmen.callbacks.timer."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.model_checkpoint import ModelCheckpoint
from fulmen.callbacks.timer import Timer, parse_duration
from fulmen.utilities.exceptions import MisconfigurationException


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [
        (None, None),
        ("00:00:00:30", 30.0),
        (" 01:02:03:04 ", 93784.0),
        ("100:00:00:00", 8640000.0),
        (timedelta(minutes=2), 120.0),
        ({"hours": 1, "minutes": 30}, 5400.0),
    ],
)
def test_parse_duration(duration: Any, seconds: float | None) -> None:
    assert parse_duration(duration) == seconds


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"duration": "1:00:00"}, r"Timer\(duration=...\): got '1:00:00'; expected a string 'DD:HH:MM:SS'"),
        ({"duration": "00:1:00:00"}, r"DD:HH:MM:SS"),
        ({"duration": {"hourz": 1}}, r"dict of datetime.timedelta arguments"),
        ({"duration": 30}, r"got 30"),
        ({"interval": "batch"}, r"Unsupported parameter value `Timer\(interval=batch\)`. Possible choices are: epoch, step"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        Timer(**kwargs)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr("fulmen.callbacks.timer.time.monotonic", c)
    return c


def test_time_elapsed_per_stage(clock: Clock) -> None:
    timer = Timer(duration="00:00:01:00")
    assert timer.time_elapsed() == 0.0 and timer.start_time() is None and timer.time_remaining() == 60.0
    timer.on_train_start(None, None)  # type: ignore[arg-type]
    clock.now += 5
    assert timer.time_elapsed("train") == 5.0 and timer.end_time("train") is None
    timer.on_validation_start(None, None)  # type: ignore[arg-type]
    clock.now += 2
    timer.on_validation_end(None, None)  # type: ignore[arg-type]
    clock.now += 3
    timer.on_train_end(None, None)  # type: ignore[arg-type]
    clock.now += 50
    assert timer.time_elapsed() == 10.0 and timer.time_elapsed("validate") == 2.0
    assert timer.time_remaining() == 50.0 and timer.time_elapsed("test") == 0.0
    assert timer.start_time("train") == 100.0 and timer.end_time("train") == 110.0
    with pytest.raises(MisconfigurationException, match="Timer stage"):
        timer.time_elapsed("training")
    assert Timer().time_remaining() is None


def test_state_dict_restores_training_time(clock: Clock) -> None:
    timer = Timer()
    timer.on_train_start(None, None)  # type: ignore[arg-type]
    clock.now += 7
    state = timer.state_dict()
    assert state == {
        "time_elapsed": {"train": 7.0, "sanity_check": 0.0, "validate": 0.0, "test": 0.0, "predict": 0.0}
    }
    resumed = Timer()
    resumed.load_state_dict(state)
    assert resumed.time_elapsed() == 7.0
    resumed.on_train_start(None, None)  # type: ignore[arg-type]
    clock.now += 3
    assert resumed.time_elapsed() == 10.0
    assert resumed.time_elapsed("validate") == 0.0  # only training time carries over


class Ticking(L.LightningModule):
    """Each training step advances the fake clock by ``tick`` seconds."""

    def __init__(self, clock: Clock, tick: float) -> None:
        super().__init__()
        self.clock, self.tick = clock, tick
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.clock.now += self.tick
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)  # 4 batches per epoch


def _trainer(tmp_path: Path, callbacks: list[Any], **kw: Any) -> L.Trainer:
    kw.setdefault("enable_checkpointing", False)
    return L.Trainer(
        default_root_dir=str(tmp_path),
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def test_stops_after_duration_per_step(tmp_path: Path, clock: Clock) -> None:
    timer = Timer(duration=timedelta(seconds=25), verbose=False)
    trainer = _trainer(tmp_path, [timer], max_epochs=100)
    trainer.fit(Ticking(clock, 10.0), _loader())
    assert trainer.global_step == 3  # elapsed 30 >= 25 after the third step
    assert timer.time_elapsed() == 30.0


def test_stops_at_epoch_end_with_epoch_interval(tmp_path: Path, clock: Clock) -> None:
    timer = Timer(duration=timedelta(seconds=25), interval="epoch", verbose=False)
    trainer = _trainer(tmp_path, [timer], max_epochs=100)
    trainer.fit(Ticking(clock, 10.0), _loader())
    assert trainer.global_step == 4 and trainer.current_epoch == 1


def test_trainer_max_time_adds_timer(tmp_path: Path, clock: Clock) -> None:
    trainer = _trainer(tmp_path, [], max_epochs=100, max_time={"seconds": 15})
    timers = [c for c in trainer.callbacks if isinstance(c, Timer)]
    assert len(timers) == 1 and timers[0].duration == 15.0
    trainer.fit(Ticking(clock, 10.0), _loader())
    assert trainer.global_step == 2


def test_resume_continues_budget(tmp_path: Path, clock: Clock) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, save_top_k=0)
    first = _trainer(
        tmp_path,
        [Timer(duration="00:00:01:00", verbose=False), ckpt],
        max_epochs=1,
        enable_checkpointing=True,
    )
    first.fit(Ticking(clock, 10.0), _loader())  # 4 steps: 40 s of the 60 s budget
    saved = torch.load(ckpt.last_model_path, weights_only=True)["callbacks"]["Timer"]
    assert saved["time_elapsed"]["train"] == 40.0
    timer = Timer(duration="00:00:01:00", verbose=False)
    resumed = _trainer(tmp_path, [timer], max_epochs=100)
    resumed.fit(Ticking(clock, 10.0), _loader(), ckpt_path=ckpt.last_model_path)
    assert resumed.global_step == 6  # only 2 more steps fit in the remaining 20 s
    assert timer.time_elapsed() == 60.0


def test_spent_budget_stops_before_first_step(tmp_path: Path, clock: Clock) -> None:
    timer = Timer(duration=timedelta(seconds=5), verbose=False)
    timer.load_state_dict({"time_elapsed": {"train": 10.0}})
    trainer = _trainer(tmp_path, [timer], max_epochs=100)
    trainer.fit(Ticking(clock, 1.0), _loader())
    assert trainer.global_step == 0
