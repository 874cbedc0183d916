"""``ThroughputMonitor`` (Trainer callback): what it logs, when and at which step, compared with Lightning's."""

from __future__ import annotations

from typing import Any
from unittest.mock import Mock

import pytest

import fulmen
from fulmen.callbacks import ThroughputMonitor
from fulmen.demos import BoringModel


def _calls(pl: Any, monitor_cls: Any, model_cls: Any, tmp_path: Any, monitor: dict, fn: str = "fit", **trainer: Any):
    logger = Mock()  # a stand-in logger that records its calls (both frameworks treat it as a logger)
    logger.save_dir = logger.log_dir = str(tmp_path)
    logger.name, logger.version = "x", 0
    model = model_cls()
    model.flops_per_batch = 10
    run = pl.Trainer(
        accelerator="cpu", devices=1, logger=logger, callbacks=monitor_cls(**monitor), enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=False, default_root_dir=str(tmp_path), **trainer,
    )
    getattr(run, fn)(model)
    if fn != "fit":
        getattr(run, fn)(model)  # a second run continues the stage's step count
    return [(c.kwargs["step"], sorted(c.kwargs["metrics"])) for c in logger.log_metrics.mock_calls]


CASES = {
    "fit": ({"length_fn": lambda b: 6, "batch_size_fn": lambda b: 3, "window_size": 4, "separator": "|"},
            "fit", {"max_steps": 5, "log_every_n_steps": 1, "limit_val_batches": 0}),
    "fit_with_validation": ({"batch_size_fn": lambda b: 1, "window_size": 2}, "fit",
                            {"max_steps": 2, "val_check_interval": 1, "log_every_n_steps": 1, "limit_val_batches": 1}),
    "accumulation": ({"batch_size_fn": lambda b: 3, "window_size": 2}, "fit",
                     {"limit_train_batches": 5, "limit_val_batches": 0, "max_epochs": 2, "log_every_n_steps": 1,
                      "accumulate_grad_batches": 2}),
    "validate": ({"batch_size_fn": lambda b: 3, "window_size": 3, "separator": "|"}, "validate",
                 {"limit_val_batches": 6, "log_every_n_steps": 4}),
    "test": ({"batch_size_fn": lambda b: 3, "window_size": 3}, "test", {"limit_test_batches": 6, "log_every_n_steps": 2}),
    "predict": ({"batch_size_fn": lambda b: 3, "window_size": 3}, "predict",
                {"limit_predict_batches": 6, "log_every_n_steps": 3}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logged_metrics_and_steps_match_lightning(case: str, tmp_path: Any) -> None:
    pl = pytest.importorskip("pytorch_lightning")
    from pytorch_lightning.callbacks import ThroughputMonitor as RealMonitor
    from pytorch_lightning.demos.boring_classes import BoringModel as RealBoring

    monitor, fn, trainer = CASES[case]
    ours = _calls(fulmen, ThroughputMonitor, BoringModel, tmp_path / "ours", monitor, fn, **trainer)
    theirs = _calls(pl, RealMonitor, RealBoring, tmp_path / "real", monitor, fn, **trainer)
    assert ours and ours == theirs


def test_rates_are_logged_with_the_epoch(tmp_path: Any) -> None:
    logger = Mock()
    logger.save_dir = logger.log_dir = str(tmp_path)
    model = BoringModel()
    model.flops_per_batch = 100
    monitor = ThroughputMonitor(batch_size_fn=lambda b: b.size(0), length_fn=lambda b: b.numel(), window_size=2)
    trainer = fulmen.Trainer(
        accelerator="cpu", max_steps=3, logger=logger, callbacks=monitor, log_every_n_steps=1, limit_val_batches=0,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model)
    last = logger.log_metrics.mock_calls[-1].kwargs
    assert last["step"] == 2 and last["metrics"]["epoch"] == 0
    metrics = last["metrics"]
    batch_size = model.train_dataloader().batch_size
    assert metrics["train/batches"] == 3 and metrics["train/samples"] == 3 * batch_size
    assert metrics["train/lengths"] == 3 * batch_size * 32  # numel of [batch, 32] batches
    assert metrics["train/device/samples_per_sec"] == pytest.approx(batch_size * metrics["train/device/batches_per_sec"])
    assert metrics["train/device/flops_per_sec"] > 0
    assert "train/device/mfu" not in metrics  # a CPU has no known peak FLOPs


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="batch_size_fn"):
        ThroughputMonitor(batch_size_fn=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window_size"):
        ThroughputMonitor(batch_size_fn=len, window_size=1)


def test_warns_without_flops_per_batch(tmp_path: Any) -> None:
    trainer = fulmen.Trainer(
        accelerator="cpu", max_steps=1, logger=False, callbacks=ThroughputMonitor(batch_size_fn=len),
        limit_val_batches=0, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    with pytest.warns(UserWarning, match="flops_per_batch"):
        trainer.fit(BoringModel())
