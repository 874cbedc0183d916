"""Tests for fulmen.callbacks.lr_monitor."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.finetuning import BackboneFinetuning
from fulmen.callbacks.lr_monitor import LearningRateMonitor, optimizer_stat_names
from fulmen.loggers.logger import Logger
from fulmen.utilities.exceptions import MisconfigurationException


def _params(n: int = 1) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(1)) for _ in range(n)]


def _sched(opt: torch.optim.Optimizer, name: str | None = None, interval: str = "epoch") -> Any:
    return SimpleNamespace(scheduler=SimpleNamespace(optimizer=opt), name=name, interval=interval)


def _names(entries: Any) -> list[list[str]]:
    return [names for _, _, names in entries]


def test_names_single_optimizer_and_param_groups() -> None:
    adam = torch.optim.Adam(_params(), lr=0.1)
    assert _names(optimizer_stat_names([], [adam])) == [["lr-Adam"]]
    groups = torch.optim.SGD([{"params": _params()}, {"params": _params(), "name": "head"}], lr=0.1)
    assert _names(optimizer_stat_names([], [groups])) == [["lr-SGD/pg1", "lr-SGD/head"]]
    named_single = torch.optim.SGD([{"params": _params(), "name": "enc"}], lr=0.1)
    assert _names(optimizer_stat_names([], [named_single])) == [["lr-SGD/enc"]]


def test_names_duplicates_schedulers_and_prefix() -> None:
    a1, a2 = torch.optim.Adam(_params(), lr=0.1), torch.optim.Adam(_params(), lr=0.2)
    sgd = torch.optim.SGD(_params(), lr=0.3)
    entries = optimizer_stat_names([_sched(a2, interval="step"), _sched(sgd, name="my-sched")], [a1, a2, sgd])
    # scheduled optimizers first (in scheduler order), then the rest; a named scheduler keeps its name
    assert _names(entries) == [["lr-Adam"], ["my-sched"], ["lr-Adam-1"]]
    assert [(opt is o, interval) for (opt, interval, _), o in zip(entries, [a2, sgd, a1], strict=True)] == [
        (True, "step"),
        (True, "epoch"),
        (True, None),
    ]
    prefixed = optimizer_stat_names([_sched(sgd, name="s")], [a1, sgd], prefix="optim/")
    assert _names(prefixed) == [["optim/s"], ["optim/lr-Adam"]]


def test_duplicate_param_group_names_raise() -> None:
    opt = torch.optim.SGD([{"params": _params(), "name": "x"}, {"params": _params(), "name": "x"}], lr=0.1)
    with pytest.raises(MisconfigurationException, match=r"duplicated param group names \['x'\]"):
        optimizer_stat_names([], [opt])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"logging_interval": "batch"}, r"logging_interval=...\): got 'batch'"),
        ({"log_key_prefix": 3}, r"log_key_prefix"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        LearningRateMonitor(**kwargs)


class RecordingLogger(Logger):
    def __init__(self) -> None:
        self.records: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "rec"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        self.records.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def lr_records(self, key: str) -> list[tuple[int | None, float]]:
        return [(step, m[key]) for step, m in self.records if key in m]


class Scheduled(L.LightningModule):
    def __init__(self, interval: str = "step", optimizer: str = "sgd") -> None:
        super().__init__()
        self.interval, self.optimizer = interval, optimizer
        self.backbone = torch.nn.Linear(2, 2)
        self.head = torch.nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.head(self.backbone(batch[0])).pow(2).mean()

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=1.0, betas=(0.8, 0.99), weight_decay=0.5)
        else:
            opt = torch.optim.SGD(params, lr=1.0, momentum=0.9)
        if self.interval == "none":
            return opt
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.interval}}


def _fit(
    tmp_path: Path,
    cb: LearningRateMonitor,
    model: L.LightningModule,
    logger: Any,
    max_epochs: int = 2,
    extra: list[Any] | None = None,
) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=max_epochs,
        callbacks=[cb, *(extra or [])],
        logger=logger,
        default_root_dir=str(tmp_path),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=2))
    return trainer


def test_requires_a_logger(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match="has no logger"):
        _fit(tmp_path, LearningRateMonitor(), Scheduled(), logger=False)


def test_step_scheduler_logged_every_step(tmp_path: Path) -> None:
    logger = RecordingLogger()
    cb = LearningRateMonitor(log_momentum=True)
    _fit(tmp_path, cb, Scheduled("step"), logger)
    # logged at each batch start (before the step), with the logger step = batches_that_stepped
    assert logger.lr_records("lr-SGD") == [(i, 0.5**i) for i in range(6)]
    assert cb.lrs == {"lr-SGD": [0.5**i for i in range(6)]}
    assert {m["lr-SGD-momentum"] for _, m in logger.records if "lr-SGD-momentum" in m} == {0.9}


def test_epoch_scheduler_logged_at_epoch_start(tmp_path: Path) -> None:
    logger = RecordingLogger()
    _fit(
        tmp_path,
        LearningRateMonitor(log_weight_decay=True, log_key_prefix="optim/"),
        Scheduled("epoch", "adam"),
        logger,
        max_epochs=3,
    )
    assert logger.lr_records("optim/lr-Adam") == [(0, 1.0), (3, 0.5), (6, 0.25)]
    assert logger.lr_records("optim/lr-Adam-weight_decay") == [(0, 0.5), (3, 0.5), (6, 0.5)]


def test_forced_interval_and_log_every_n_steps(tmp_path: Path) -> None:
    logger = RecordingLogger()
    cb = LearningRateMonitor(logging_interval="step")
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[cb],
        logger=logger,
        default_root_dir=str(tmp_path),
        log_every_n_steps=2,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Scheduled("epoch"), DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2))
    # an epoch scheduler, but logging_interval="step": logged on steps where (step + 1) % 2 == 0
    assert logger.lr_records("lr-SGD") == [(1, 1.0), (3, 1.0)]


def test_momentum_warning_without_momentum(tmp_path: Path) -> None:
    class Plain(Scheduled):
        def configure_optimizers(self) -> Any:
            return torch.optim.Adagrad(self.parameters(), lr=0.1)

    with pytest.warns(RuntimeWarning, match="do not have momentum"):
        _fit(tmp_path, LearningRateMonitor(log_momentum=True), Plain("none"), RecordingLogger(), max_epochs=1)


def test_param_group_added_during_training_keeps_history(tmp_path: Path) -> None:
    logger = RecordingLogger()
    cb = LearningRateMonitor()
    finetune = BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_lr=0.01)
    _fit(tmp_path, cb, Scheduled("none"), logger, max_epochs=2, extra=[finetune])
    # epoch 0: one group ("lr-SGD"); epoch 1: two groups, the first continues the old series.
    # Without a scheduler an optimizer is logged at every epoch start and every step (as Lightning).
    assert cb.lrs["lr-SGD/pg1"] == [1.0] * 8 and "lr-SGD" not in cb.lrs
    # The monitor runs before the finetuning callback at epoch 1's start, so pg2 appears from the first step.
    assert cb.lrs["lr-SGD/pg2"] == [0.01] * 3
    assert logger.lr_records("lr-SGD/pg2") == [(3, 0.01), (4, 0.01), (5, 0.01)]



def test_logged_learning_rates_are_in_callback_metrics(tmp_path: Path) -> None:
    """As in Lightning, the monitor's values can be monitored (and read) through ``trainer.callback_metrics``."""
    from fulmen.demos import BoringModel
    from fulmen.loggers import CSVLogger

    class Persisting(L.Callback):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            trainer.callback_metrics["from_callback"] = torch.tensor(1.0)

    trainer = L.Trainer(
        max_steps=3,
        log_every_n_steps=1,
        limit_val_batches=0,
        logger=CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_checkpointing=False,
        callbacks=[LearningRateMonitor(logging_interval="step"), Persisting()],
    )
    trainer.fit(BoringModel())
    assert trainer.callback_metrics["lr-SGD"].item() == pytest.approx(0.1)
    assert "from_callback" in trainer.callback_metrics  # one persistent dict, as in Lightning
