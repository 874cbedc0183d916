"""``fast_dev_run`` does what Lightning 2.6 does: loggers become one DummyLogger (nothing is written), the
checkpoint callbacks stay but save nothing, EarlyStopping does not act, the tuner is skipped, every loop runs
``n`` batches, and ``ckpt_path="best"`` is refused. Compared against pytorch_lightning where installed."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen
from fulmen.utilities.exceptions import MisconfigurationException

pl = pytest.importorskip("pytorch_lightning")


def _model_class(base: type) -> type:
    class Net(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.lr, self.batch_size = 0.1, 4  # what the tuner looks for before it skips
            self.seen = {"train": 0, "val": 0, "test": 0, "predict": 0}

        def training_step(self, batch, batch_idx):
            self.seen["train"] += 1
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            self.seen["val"] += 1
            self.log("val_loss", self.layer(batch[0]).pow(2).mean())

        def test_step(self, batch, batch_idx):
            self.seen["test"] += 1
            self.log("test_loss", self.layer(batch[0]).pow(2).mean())

        def predict_step(self, batch, batch_idx):
            self.seen["predict"] += 1
            return batch[0]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def _loader(self) -> DataLoader:
            return DataLoader(TensorDataset(torch.randn(40, 4)), batch_size=4)

        train_dataloader = val_dataloader = test_dataloader = predict_dataloader = _loader

    return Net


def _run(lib: Any, root: Path, fast_dev_run: int | bool, logger: str | bool | None) -> dict[str, Any]:
    if lib is pl:
        from pytorch_lightning.callbacks import EarlyStopping
        from pytorch_lightning.loggers import CSVLogger
        from pytorch_lightning.tuner import Tuner
    else:
        from fulmen.callbacks import EarlyStopping
        from fulmen.loggers import CSVLogger
        from fulmen.tuner import Tuner
    root.mkdir()
    lg = CSVLogger(str(root)) if logger == "csv" else logger
    es = EarlyStopping("val_loss", patience=0)
    trainer = lib.Trainer(
        fast_dev_run=fast_dev_run, default_root_dir=str(root), logger=lg, callbacks=[es],
        enable_progress_bar=False, enable_model_summary=False,
    )
    model = _model_class(lib.LightningModule)()
    trainer.fit(model)
    out: dict[str, Any] = {
        "fast_dev_run": trainer.fast_dev_run,
        "loggers": [type(x).__name__ for x in trainer.loggers],
        "logger": type(trainer.logger).__name__ if trainer.logger is not None else None,
        "checkpoint_callbacks": [type(c).__name__ for c in trainer.checkpoint_callbacks],
        "best_model_path": trainer.checkpoint_callback.best_model_path,
        "limits": (trainer.limit_train_batches, trainer.limit_val_batches, trainer.limit_test_batches,
                   trainer.limit_predict_batches),
        "loop": (trainer.max_steps, trainer.max_epochs, trainer.num_sanity_val_steps, trainer.val_check_interval,
                 trainer.check_val_every_n_epoch),
        "early_stopping": (es.wait_count, float(es.best_score), trainer.should_stop),
        "callback_metrics": sorted(trainer.callback_metrics),
    }
    trainer.validate(model, verbose=False)
    trainer.test(model, verbose=False)
    trainer.predict(model)
    out["seen"] = dict(model.seen)
    with pytest.raises(Exception, match="fast_dev_run") as info:
        trainer.test(model, ckpt_path="best", verbose=False)
    out["best_error_is_value_error_like"] = isinstance(info.value, (ValueError, MisconfigurationException))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["tuner"] = (Tuner(trainer).lr_find(model), Tuner(trainer).scale_batch_size(model))
    out["files"] = sorted(os.path.relpath(os.path.join(r, f), root) for r, _, fs in os.walk(root) for f in fs)
    return out


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("logger", [None, "csv", False], ids=["default_logger", "csv_logger", "no_logger"])
@pytest.mark.parametrize("fast_dev_run", [True, 3], ids=["true", "int"])
def test_fast_dev_run_matches_lightning(tmp_path, fast_dev_run, logger) -> None:
    ours = _run(fulmen, tmp_path / "fulmen", fast_dev_run, logger)
    theirs = _run(pl, tmp_path / "pl", fast_dev_run, logger)
    assert ours == theirs
    # and what that means, spelled out
    n = 1 if fast_dev_run is True else fast_dev_run
    assert ours["files"] == []  # no log files, no checkpoints
    assert ours["loggers"] == ([] if logger is False else ["DummyLogger"])
    assert ours["seen"] == {"train": n, "val": 2 * n, "test": n, "predict": n}
    assert ours["tuner"] == (None, None)


def test_fast_dev_run_property_and_message(tmp_path) -> None:
    assert fulmen.Trainer(fast_dev_run=True, default_root_dir=str(tmp_path)).fast_dev_run is True
    assert fulmen.Trainer(fast_dev_run=1, default_root_dir=str(tmp_path)).fast_dev_run is True
    assert fulmen.Trainer(fast_dev_run=4, default_root_dir=str(tmp_path)).fast_dev_run == 4
    assert not fulmen.Trainer(fast_dev_run=False, default_root_dir=str(tmp_path)).fast_dev_run
