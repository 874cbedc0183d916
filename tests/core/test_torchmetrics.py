"""Logging torchmetrics ``Metric`` / ``MetricCollection`` objects: compute and reset at the right times."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import Callback
from fulmen.loggers import Logger

torchmetrics = pytest.importorskip("torchmetrics")

N, BS = 24, 4  # 6 batches per epoch


def data(seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 4, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def loader(seed: int = 0) -> DataLoader:
    return DataLoader(data(seed), batch_size=BS)


class Recorder(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "rec"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((step or 0, dict(metrics)))


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 2)
        self.train_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=2, average="micro")
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=2, average="micro")
        self.batch_accs: list[float] = []
        self.preds: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.layer(x)
        preds = logits.argmax(1)
        self.preds.setdefault(self.current_epoch, []).append((preds.detach(), y))
        batch_acc = self.train_acc(preds, y)  # forward: the batch value, and accumulates for the epoch
        self.batch_accs.append(float(batch_acc))
        self.log("train_acc", self.train_acc, on_step=True, on_epoch=True)
        return torch.nn.functional.cross_entropy(logits, y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.val_acc.update(self.layer(x).argmax(1), y)
        self.log("val_acc", self.val_acc)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.5)


def make_trainer(tmp_path: Path, **kw: Any) -> L.Trainer:
    defaults: dict[str, Any] = {
        "default_root_dir": tmp_path,
        "max_epochs": 2,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
    }
    defaults.update(kw)
    return L.Trainer(**defaults)


def accuracy(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    preds = torch.cat([p for p, _ in pairs])
    target = torch.cat([t for _, t in pairs])
    return float((preds == target).float().mean())


def test_step_value_is_the_forward_cache_and_epoch_value_the_epoch_compute(tmp_path: Path) -> None:
    logger = Recorder()
    model = Classifier()
    epoch_values: list[float] = []

    class Read(Callback):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            epoch_values.append(float(trainer.callback_metrics["train_acc_epoch"]))

    trainer = make_trainer(tmp_path, logger=logger, callbacks=[Read()])
    trainer.fit(model, loader(), loader(1))
    step_rows = [m["train_acc_step"] for _, m in logger.rows if "train_acc_step" in m]
    assert step_rows == pytest.approx(model.batch_accs)  # one per batch, the batch's own accuracy
    epoch_rows = [m["train_acc_epoch"] for _, m in logger.rows if "train_acc_epoch" in m]
    expected = [accuracy(model.preds[0]), accuracy(model.preds[1])]  # each epoch alone: reset in between
    assert epoch_rows == pytest.approx(expected)
    # monitoring callbacks at on_train_epoch_end already see the epoch value (computed on demand)
    assert epoch_values == pytest.approx(expected)


def test_validation_metric_is_computed_per_run_and_reset(tmp_path: Path) -> None:
    model = Classifier()
    seen: list[float] = []

    class Read(Callback):
        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            seen.append(float(trainer.callback_metrics["val_acc"]))

    trainer = make_trainer(tmp_path, logger=False, callbacks=[Read()], val_check_interval=0.5)
    trainer.fit(model, loader(), loader(1))
    assert len(seen) == 4  # two validation runs per epoch, two epochs
    assert model.val_acc._update_count == 0  # reset after the last run
    # trainer.validate returns the compute() of one full pass
    model.val_acc.reset()
    out = trainer.validate(model, loader(1), verbose=False)
    with torch.no_grad():
        xs, ys = data(1).tensors
        expected = float((model.layer(xs).argmax(1) == ys).float().mean())
    assert out == [{"val_acc": pytest.approx(expected)}]


def test_metric_collection_with_log_dict(tmp_path: Path) -> None:
    class WithCollection(Classifier):
        def __init__(self) -> None:
            super().__init__()
            self.metrics = torchmetrics.MetricCollection(
                {
                    "acc": torchmetrics.classification.MulticlassAccuracy(num_classes=2, average="micro"),
                    "prec": torchmetrics.classification.MulticlassPrecision(num_classes=2, average="macro"),
                },
                prefix="train_",
            )

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            logits = self.layer(x)
            self.preds.setdefault(self.current_epoch, []).append((logits.argmax(1).detach(), y))
            self.log_dict(self.metrics(logits.argmax(1), y), on_step=False, on_epoch=True)
            return torch.nn.functional.cross_entropy(logits, y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

    class ObjectLogging(WithCollection):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            logits = self.layer(x)
            self.preds.setdefault(self.current_epoch, []).append((logits.argmax(1).detach(), y))
            self.metrics.update(logits.argmax(1), y)
            self.log_dict(self.metrics, on_step=False, on_epoch=True)  # the collection itself
            return torch.nn.functional.cross_entropy(logits, y)

    for cls in (WithCollection, ObjectLogging):
        model = cls()
        trainer = make_trainer(tmp_path, logger=False, max_epochs=2)
        trainer.fit(model, loader())
        metrics = trainer.callback_metrics
        assert set(metrics) >= {"train_acc", "train_prec"}
        if cls is ObjectLogging:
            assert float(metrics["train_acc"]) == pytest.approx(
                accuracy(model.preds[1])
            )  # the last epoch only
            assert all(m._update_count == 0 for m in model.metrics.values())  # reset at epoch end


def test_metric_logged_in_epoch_end_hooks(tmp_path: Path) -> None:
    class EpochEndLogging(Classifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            logits = self.layer(x)
            self.preds.setdefault(self.current_epoch, []).append((logits.argmax(1).detach(), y))
            self.train_acc.update(logits.argmax(1), y)
            return torch.nn.functional.cross_entropy(logits, y)

        def on_train_epoch_end(self) -> None:
            self.log("epoch_acc", self.train_acc)

    logger = Recorder()
    model = EpochEndLogging()
    make_trainer(tmp_path, logger=logger, limit_val_batches=0).fit(model, loader())
    values = [m["epoch_acc"] for _, m in logger.rows if "epoch_acc" in m]
    assert values == pytest.approx([accuracy(model.preds[0]), accuracy(model.preds[1])])


def test_step_only_metric_is_reset_every_epoch(tmp_path: Path) -> None:
    class StepOnly(Classifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            logits = self.layer(x)
            self.train_acc(logits.argmax(1), y)
            self.log("train_acc", self.train_acc)  # default in training_step: on_step=True, on_epoch=False
            return torch.nn.functional.cross_entropy(logits, y)

    counts: list[int] = []

    class Count(Callback):
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            counts.append(int(pl_module.train_acc._update_count))

    model = StepOnly()
    make_trainer(tmp_path, logger=False, limit_val_batches=0, callbacks=[Count()]).fit(model, loader())
    assert counts == [0, 0]
