"""``self.log`` semantics (spec §1.3) checked against hand-computed values.

The standard data is ``0, 1, 2, 3, 4`` in batches of 2: batches ``[0, 1], [2, 3], [4]`` with means
``0.5, 2.5, 4.0``. Their batch-size-weighted mean is ``(0.5*2 + 2.5*2 + 4.0*1) / 5 = 2.0`` while the
plain mean of the three values is ``7/3``, so the tests tell the two reductions apart.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import fulmen as L
from fulmen.callbacks.callback import Callback
from fulmen.loggers import Logger

BATCH_MEANS = [0.5, 2.5, 4.0]
WEIGHTED_MEAN = 2.0


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call as ``(step, metrics)``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.calls.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def calls_with(self, key: str) -> list[tuple[int | None, float]]:
        return [(step, m[key]) for step, m in self.calls if key in m]


def data(n: int = 5, scale: float = 1.0) -> torch.Tensor:
    return (torch.arange(float(n)) * scale).unsqueeze(1)


def loader(n: int = 5, batch_size: int = 2, scale: float = 1.0) -> DataLoader:
    return DataLoader(data(n, scale), batch_size=batch_size)


def make_trainer(tmp_path: Path, **kw: Any) -> L.Trainer:
    defaults: dict[str, Any] = {
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": tmp_path,
    }
    defaults.update(kw)
    return L.Trainer(**defaults)


class Base(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(batch).sum()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.0)  # lr 0: weights (and logged values) stay fixed


def approx(value: Any) -> Any:
    return pytest.approx(value, rel=1e-6, abs=1e-6)


# ---------------------------------------------------------------------------------------------- defaults per hook

STEP_KEYS = ("ts", "tbs", "tbe", "obb", "oab", "obo")
EPOCH_FORCED_KEYS = ("tst", "tes", "tee", "vst", "ves", "vee")
EVAL_KEYS = ("vs", "vbe")


class LogsEverywhere(Base):
    """Logs one key from each loggable hook with the default on_step/on_epoch."""

    def on_train_start(self) -> None:
        self.log("tst", 11.0)

    def on_train_epoch_start(self) -> None:
        self.log("tes", 12.0)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.log("tbs", batch.mean())

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.log("ts", batch.mean())
        return super().training_step(batch, batch_idx)

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self.log("obb", 1.0)

    def on_after_backward(self) -> None:
        self.log("oab", 2.0)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.log("obo", 3.0)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.log("tbe", batch.mean())

    def on_train_epoch_end(self) -> None:
        self.log("tee", 13.0)

    def on_validation_start(self) -> None:
        self.log("vst", 21.0)

    def on_validation_epoch_start(self) -> None:
        self.log("ves", 22.0)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("vs", batch.mean())

    def on_validation_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.log("vbe", batch.mean())

    def on_validation_epoch_end(self) -> None:
        self.log("vee", 23.0)


def test_on_step_on_epoch_defaults_per_hook(tmp_path: Path) -> None:
    rec = RecordingLogger()
    trainer = make_trainer(tmp_path, logger=rec, log_every_n_steps=1)
    trainer.fit(LogsEverywhere(), train_dataloaders=loader(), val_dataloaders=loader())

    # step hooks: one logger call per training step (steps 0, 1, 2), the last value in callback_metrics
    for key in STEP_KEYS:
        assert [s for s, _ in rec.calls_with(key)] == [0, 1, 2], key
        assert (
            f"{key}_epoch" not in trainer.callback_metrics and f"{key}_step" not in trainer.callback_metrics
        )
    for key in ("ts", "tbs", "tbe"):
        assert [v for _, v in rec.calls_with(key)] == approx(BATCH_MEANS)
        assert trainer.callback_metrics[key].item() == approx(BATCH_MEANS[-1])
    # eval step hooks: reduced once per epoch with the batch-size-weighted mean
    for key in EVAL_KEYS:
        assert rec.calls_with(key) == [(2, approx(WEIGHTED_MEAN))], key
        assert trainer.callback_metrics[key].item() == approx(WEIGHTED_MEAN)
    # forced epoch hooks (on_train_start included): logged once, at the end of the epoch
    expected = {"tst": 11.0, "tes": 12.0, "tee": 13.0, "vst": 21.0, "ves": 22.0, "vee": 23.0}
    for key, value in expected.items():
        assert rec.calls_with(key) == [(2, approx(value))], key
        assert trainer.callback_metrics[key].item() == approx(value)
    assert set(trainer.logged_metrics) == set(STEP_KEYS + EPOCH_FORCED_KEYS + EVAL_KEYS)


@pytest.mark.parametrize("hook", ["on_train_epoch_start", "on_validation_epoch_end", "on_train_start"])
def test_forced_epoch_hooks_accept_explicit_defaults(tmp_path: Path, hook: str) -> None:
    class Explicit(Base):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

    def fn(self: Any) -> None:
        self.log("x", 5.0, on_step=False, on_epoch=True)

    setattr(Explicit, hook, fn)
    trainer = make_trainer(tmp_path)
    trainer.fit(Explicit(), train_dataloaders=loader(), val_dataloaders=loader())
    assert trainer.callback_metrics["x"].item() == 5.0


# ---------------------------------------------------------------------------------------------- naming


def test_on_step_and_on_epoch_fork_names(tmp_path: Path) -> None:
    class Forked(Base):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            self.log("f", batch.mean(), on_step=True, on_epoch=True)
            return super().training_step(batch, batch_idx)

    rec = RecordingLogger()
    trainer = make_trainer(tmp_path, logger=rec, log_every_n_steps=1)
    trainer.fit(Forked(), train_dataloaders=loader())

    cb = trainer.callback_metrics
    assert {"f", "f_step", "f_epoch"} <= set(cb)
    assert cb["f_step"].item() == approx(BATCH_MEANS[-1])
    assert cb["f_epoch"].item() == approx(WEIGHTED_MEAN)
    assert cb["f"].item() == approx(WEIGHTED_MEAN)  # after the epoch, the plain name holds the epoch value

    assert {"f_step", "f_epoch"} <= set(trainer.logged_metrics)
    assert "f" not in trainer.logged_metrics
    assert "epoch" not in trainer.logged_metrics  # "epoch" is added for the loggers only
    assert trainer.logged_metrics["f_epoch"] == approx(WEIGHTED_MEAN)
    assert not rec.calls_with("f")
    assert [v for _, v in rec.calls_with("f_step")] == approx(BATCH_MEANS)
    assert rec.calls_with("f_epoch") == [(2, approx(WEIGHTED_MEAN))]
    assert all(m["epoch"] == 0 for _, m in rec.calls)


def test_forked_name_during_the_epoch(tmp_path: Path) -> None:
    """Mid-epoch, callbacks see the step value under both ``f`` and ``f_step`` (the epoch value is not ready)."""
    seen: list[dict[str, float]] = []

    class Forked(Base):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            self.log("f", batch.mean(), on_step=True, on_epoch=True)
            return super().training_step(batch, batch_idx)

    class Peek(Callback):
        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            seen.append({k: v.item() for k, v in trainer.callback_metrics.items()})

    trainer = make_trainer(tmp_path, callbacks=[Peek()])
    trainer.fit(Forked(), train_dataloaders=loader())
    assert [s["f_step"] for s in seen] == approx(BATCH_MEANS)
    assert [s["f"] for s in seen] == approx(BATCH_MEANS)
    assert all("f_epoch" not in s for s in seen)


# ---------------------------------------------------------------------------------------------- reductions


def test_weighted_epoch_mean_with_a_smaller_last_batch(tmp_path: Path) -> None:
    class Means(Base):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            self.log("train_mean", batch.mean(), on_step=False, on_epoch=True)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.log("val_mean", batch.mean())

    trainer = make_trainer(tmp_path)
    trainer.fit(Means(), train_dataloaders=loader(), val_dataloaders=loader())
    assert trainer.callback_metrics["train_mean"].item() == approx(WEIGHTED_MEAN)
    assert trainer.callback_metrics["val_mean"].item() == approx(WEIGHTED_MEAN)
    assert trainer.callback_metrics["val_mean"].item() != approx(sum(BATCH_MEANS) / 3)


def test_batch_size_inferred_from_a_dict_batch(tmp_path: Path) -> None:
    class DictBatches(Base):
        def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
            self.log("v", batch["x"].mean())

    dict_loader = DataLoader([{"x": torch.tensor([float(i)])} for i in range(5)], batch_size=2)
    out = make_trainer(tmp_path).validate(DictBatches(), dataloaders=dict_loader, verbose=False)
    assert out == [{"v": approx(WEIGHTED_MEAN)}]


def test_explicit_batch_size_weights_the_mean(tmp_path: Path) -> None:
    weights = [1, 3, 6]

    class Explicit(Base):
        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.log("v", float(batch_idx), batch_size=weights[batch_idx])

    out = make_trainer(tmp_path).validate(Explicit(), dataloaders=loader(), verbose=False)
    expected = sum(w * i for i, w in enumerate(weights)) / sum(weights)  # (0 + 3 + 12) / 10 = 1.5
    assert out == [{"v": approx(expected)}]


@pytest.mark.parametrize(
    ("reduce_fx", "expected"),
    [
        ("sum", sum(BATCH_MEANS)),
        ("max", max(BATCH_MEANS)),
        ("min", min(BATCH_MEANS)),
        ("mean", WEIGHTED_MEAN),
        ("avg", WEIGHTED_MEAN),
        (torch.max, max(BATCH_MEANS)),
        (torch.sum, sum(BATCH_MEANS)),
    ],
)
def test_reduce_fx(tmp_path: Path, reduce_fx: Any, expected: float) -> None:
    class Reduce(Base):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            self.log("t", batch.mean(), on_step=False, on_epoch=True, reduce_fx=reduce_fx)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.log("v", batch.mean(), reduce_fx=reduce_fx)

    trainer = make_trainer(tmp_path)
    trainer.fit(Reduce(), train_dataloaders=loader(), val_dataloaders=loader())
    assert trainer.callback_metrics["t"].item() == approx(expected)
    assert trainer.callback_metrics["v"].item() == approx(expected)


def test_log_dict_and_python_numbers(tmp_path: Path) -> None:
    class Dict(Base):
        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.log_dict({"a": batch.mean(), "b": batch_idx, "c": torch.tensor([2.0])}, reduce_fx="sum")

    out = make_trainer(tmp_path).validate(Dict(), dataloaders=loader(), verbose=False)
    assert out == [{"a": approx(sum(BATCH_MEANS)), "b": approx(0 + 1 + 2), "c": approx(6.0)}]


# ---------------------------------------------------------------------------------------------- multiple dataloaders


class TwoLoaders(Base):
    def validation_step(self, batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.log("v", batch.mean())
        self.log(f"total_{dataloader_idx}", batch.sum(), reduce_fx="sum", add_dataloader_idx=False)

    def on_validation_epoch_end(self) -> None:
        self.log("after", 1.0)

    test_step = validation_step
    on_test_epoch_end = on_validation_epoch_end


def two_loaders() -> list[DataLoader]:
    # loader 1: [0, 10, 20], [30, 40] -> means 10 and 35, weighted mean (10*3 + 35*2) / 5 = 20
    return [loader(), loader(scale=10.0, batch_size=3)]


@pytest.mark.parametrize("fn", ["validate", "test"])
def test_dataloader_idx_suffix_and_add_dataloader_idx_false(tmp_path: Path, fn: str) -> None:
    trainer = make_trainer(tmp_path)
    out = getattr(trainer, fn)(TwoLoaders(), dataloaders=two_loaders(), verbose=False)
    assert out == [
        {"v/dataloader_idx_0": approx(2.0), "total_0": approx(10.0), "after": 1.0},
        {"v/dataloader_idx_1": approx(20.0), "total_1": approx(100.0), "after": 1.0},
    ]
    cb = {k: v.item() for k, v in trainer.callback_metrics.items()}
    assert cb == {
        "v/dataloader_idx_0": approx(2.0),
        "v/dataloader_idx_1": approx(20.0),
        "total_0": approx(10.0),
        "total_1": approx(100.0),
        "after": 1.0,
    }


def test_add_dataloader_idx_false_with_a_shared_name_raises(tmp_path: Path) -> None:
    class Shared(Base):
        def validation_step(self, batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> None:
            self.log("shared", batch.mean(), add_dataloader_idx=False)

    with pytest.raises(L.utilities.exceptions.MisconfigurationException, match="Fix:") as info:
        make_trainer(tmp_path).validate(Shared(), dataloaders=two_loaders(), verbose=False)
    assert "shared" in str(info.value) and "add_dataloader_idx" in str(info.value)


def test_single_loader_has_no_suffix_and_validate_test_return_values(tmp_path: Path) -> None:
    class Eval(Base):
        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.log("val_mean", batch.mean())
            self.log("val_max", batch.max(), reduce_fx="max")

        def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.log("test_sum", batch.sum(), reduce_fx="sum")

    trainer = make_trainer(tmp_path)
    val = trainer.validate(Eval(), dataloaders=loader(), verbose=False)
    test = trainer.test(Eval(), dataloaders=loader(), verbose=False)
    assert val == [{"val_mean": approx(2.0), "val_max": approx(4.0)}]
    assert test == [{"test_sum": approx(10.0)}]
    assert all(isinstance(v, float) for v in val[0].values())


# ---------------------------------------------------------------------------------------------- where values land


def test_progress_bar_metrics_only_prog_bar_keys_as_floats(tmp_path: Path) -> None:
    class Bar(Base):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            self.log("shown", batch.mean(), prog_bar=True)
            self.log("hidden", batch.mean())
            self.log("both", batch.mean(), prog_bar=True, on_step=True, on_epoch=True)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.log("val_shown", batch.mean(), prog_bar=True)
            self.log("val_hidden", batch.mean())

    trainer = make_trainer(tmp_path)
    trainer.fit(Bar(), train_dataloaders=loader(), val_dataloaders=loader())
    pbar = trainer.progress_bar_metrics
    assert pbar == {
        "shown": approx(4.0),
        "both_step": approx(4.0),
        "both_epoch": approx(WEIGHTED_MEAN),
        "val_shown": approx(WEIGHTED_MEAN),
    }
    assert all(type(v) is float for v in pbar.values())


def test_logger_false_keeps_metrics_out_of_loggers(tmp_path: Path) -> None:
    class Hidden(Base):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            self.log("no_logger", batch.mean(), logger=False)
            self.log("to_logger", batch.mean())
            return super().training_step(batch, batch_idx)

    rec = RecordingLogger()
    trainer = make_trainer(tmp_path, logger=rec, log_every_n_steps=1)
    trainer.fit(Hidden(), train_dataloaders=loader())
    assert not rec.calls_with("no_logger")
    assert len(rec.calls_with("to_logger")) == 3
    assert "no_logger" in trainer.callback_metrics and "no_logger" not in trainer.logged_metrics


def test_logger_receives_metrics_every_n_steps_at_batches_that_stepped(tmp_path: Path) -> None:
    class Steps(Base):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            self.log("idx", float(batch_idx))
            self.log("per_epoch", 1.0, on_step=False, on_epoch=True)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.log("val", 1.0)

    rec = RecordingLogger()
    trainer = make_trainer(tmp_path, logger=rec, log_every_n_steps=3, max_epochs=2)
    # 7 batches per epoch: batches_that_stepped runs 0..6 in epoch 0 and 7..13 in epoch 1
    trainer.fit(Steps(), train_dataloaders=loader(n=14), val_dataloaders=loader())

    # step values are sent when (batches_that_stepped + 1) % 3 == 0, with step=batches_that_stepped
    assert rec.calls_with("idx") == [(2, 2.0), (5, 5.0), (8, 1.0), (11, 4.0)]
    # epoch values go out at the step of the epoch's last batch (as in Lightning)
    assert rec.calls_with("per_epoch") == [(6, 1.0), (13, 1.0)]
    assert rec.calls_with("val") == [(6, 1.0), (13, 1.0)]
    assert [m["epoch"] for s, m in rec.calls if "idx" in m] == [0, 0, 1, 1]
    assert trainer.run_state.batches_that_stepped == 14


def test_logger_steps_with_gradient_accumulation(tmp_path: Path) -> None:
    class Steps(Base):
        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            self.log("idx", float(batch_idx))
            return super().training_step(batch, batch_idx)

    rec = RecordingLogger()
    trainer = make_trainer(tmp_path, logger=rec, log_every_n_steps=1, accumulate_grad_batches=2)
    trainer.fit(Steps(), train_dataloaders=loader(n=12))  # 6 batches -> optimizer steps after 1, 3, 5
    assert rec.calls_with("idx") == [(0, 1.0), (1, 3.0), (2, 5.0)]
    assert trainer.global_step == 3


def test_validate_after_fit_logs_at_the_last_step(tmp_path: Path) -> None:
    class Eval(Base):
        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.log("v", batch.mean())

    rec = RecordingLogger()
    trainer = make_trainer(tmp_path, logger=rec)
    model = Eval()
    trainer.fit(model, train_dataloaders=loader(), val_dataloaders=loader())
    rec.calls.clear()
    trainer.validate(model, dataloaders=loader(), verbose=False)
    assert rec.calls_with("v") == [(3, approx(WEIGHTED_MEAN))]


# ---------------------------------------------------------------------------------------------- no host syncs


class ItemCounter:
    def __init__(self) -> None:
        self.n = 0


_DATALOADER_DIR = os.path.dirname(torch.utils.data.__file__)


@pytest.fixture
def item_counter(monkeypatch: pytest.MonkeyPatch) -> ItemCounter:
    """Counts ``Tensor.item()`` / ``float(tensor)`` calls, except the DataLoader's own seed draw per ``iter()``."""
    counter = ItemCounter()
    original_item = torch.Tensor.item
    original_float = torch.Tensor.__float__

    def count() -> None:
        if not sys._getframe(2).f_code.co_filename.startswith(_DATALOADER_DIR):
            counter.n += 1

    def item(self: torch.Tensor) -> Any:
        count()
        return original_item(self)

    def as_float(self: torch.Tensor) -> float:
        count()
        return original_float(self)

    monkeypatch.setattr(torch.Tensor, "item", item)
    monkeypatch.setattr(torch.Tensor, "__float__", as_float)
    return counter


class PerBatchItems(Callback):
    """Host syncs per training batch: the counter delta from one batch start to the next."""

    def __init__(self, counter: ItemCounter) -> None:
        self.counter = counter
        self.marks: list[int] = []
        self.per_batch: list[int] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.marks.append(self.counter.n)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.marks.append(self.counter.n)
        self.per_batch.extend(b - a for a, b in zip(self.marks, self.marks[1:]))
        self.marks = []


class LogsEveryStep(Base):
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("loss", loss)
        self.log("mean", batch.mean(), on_step=True, on_epoch=True)
        self.log("bar", batch.mean(), prog_bar=True)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val", batch.mean())


def test_no_item_calls_per_step_with_default_settings(tmp_path: Path, item_counter: ItemCounter) -> None:
    spy = PerBatchItems(item_counter)
    # Trainer defaults except logger=False and enable_progress_bar=False
    trainer = make_trainer(
        tmp_path,
        callbacks=[spy],
        max_epochs=2,
        num_sanity_val_steps=None,
        enable_checkpointing=None,
        enable_model_summary=None,
    )
    # 60 batches per epoch: more than the default log_every_n_steps=50, so a logging step is included
    trainer.fit(LogsEveryStep(), train_dataloaders=loader(n=120), val_dataloaders=loader())
    assert len(spy.per_batch) == 120
    assert sum(spy.per_batch) == 0, [i for i, n in enumerate(spy.per_batch) if n]


def test_item_calls_only_at_logging_steps(tmp_path: Path, item_counter: ItemCounter) -> None:
    spy = PerBatchItems(item_counter)
    trainer = make_trainer(
        tmp_path, callbacks=[spy], logger=RecordingLogger(), log_every_n_steps=4, limit_val_batches=0
    )
    trainer.fit(LogsEveryStep(), train_dataloaders=loader(n=24))  # 12 batches
    logged_per_step = 3  # loss, mean_step, bar
    expected = [logged_per_step if (i + 1) % 4 == 0 else 0 for i in range(12)]
    assert spy.per_batch == expected


# ---------------------------------------------------------------------------------------------- torchmetrics


def test_torchmetric_computed_and_reset_once_per_epoch(tmp_path: Path) -> None:
    torchmetrics = pytest.importorskip("torchmetrics")

    class CountingSum(torchmetrics.SumMetric):
        def __init__(self) -> None:
            super().__init__()
            self.n_compute = 0
            self.n_reset = 0

        def compute(self) -> torch.Tensor:
            self.n_compute += 1
            return super().compute()

        def reset(self) -> None:
            self.n_reset += 1
            super().reset()

    class WithMetric(Base):
        def __init__(self) -> None:
            super().__init__()
            self.train_sum = CountingSum()
            self.val_sum = CountingSum()

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            self.train_sum.update(batch.sum())
            self.log("train_sum", self.train_sum, on_step=False, on_epoch=True)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.val_sum.update(batch.sum())
            self.log("val_sum", self.val_sum)

    model = WithMetric()
    resets_before = model.train_sum.n_reset
    epoch_values: list[tuple[float, float]] = []

    class Read(Callback):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            pass

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            epoch_values.append((trainer.current_epoch, trainer.callback_metrics["val_sum"].item()))

    trainer = make_trainer(tmp_path, max_epochs=3, callbacks=[Read()])
    trainer.fit(model, train_dataloaders=loader(), val_dataloaders=loader())
    assert model.train_sum.n_compute == 3
    assert model.train_sum.n_reset - resets_before == 3
    assert model.val_sum.n_compute == 3
    assert model.val_sum.n_reset - resets_before == 3
    # each epoch's value covers only that epoch (reset in between): 0+1+2+3+4 = 10
    assert trainer.callback_metrics["train_sum"].item() == 10.0
    assert [v for _, v in epoch_values] == [10.0, 10.0, 10.0]

    out = trainer.validate(model, dataloaders=loader(), verbose=False)
    assert out == [{"val_sum": 10.0}]
