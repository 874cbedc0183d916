"""Trainer flags and run control: counts of steps/epochs/validation runs against hand-computed values."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import Callback

QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def data(n: int = 40, bs: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)), batch_size=bs)


class Model(L.LightningModule):
    def __init__(self, hidden: int = 4, lr: float = 0.05, loss_fn: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["loss_fn"])
        self.net = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
        self.val_runs = 0
        self.train_batches = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        self.train_batches += 1
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.val_runs += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def test_max_steps_stops_mid_epoch() -> None:
    m = Model()
    t = L.Trainer(max_steps=7, **QUIET)
    t.fit(m, data())
    assert t.global_step == 7 and m.train_batches == 7
    # the cut-short epoch is not counted as completed (a resume continues it at batch 7; Lightning counts it)
    assert t.current_epoch == 0 and t.run_state.batch_in_epoch == 7


def test_max_epochs_and_limits() -> None:
    m = Model()
    t = L.Trainer(max_epochs=3, limit_train_batches=4, limit_val_batches=0.5, **QUIET)
    t.fit(m, data(), data())
    assert t.global_step == 12 and t.current_epoch == 3
    assert t.num_val_batches == [5] and m.val_runs == 3


def test_val_check_interval_fraction_and_int() -> None:
    m = Model()
    L.Trainer(max_epochs=2, val_check_interval=0.25, num_sanity_val_steps=0, **QUIET).fit(m, data(), data())
    assert m.val_runs == 10  # every int(10 * 0.25) = 2 batches, as Lightning
    m = Model()
    L.Trainer(max_epochs=2, val_check_interval=0.5, num_sanity_val_steps=0, **QUIET).fit(m, data(), data())
    assert m.val_runs == 4
    m = Model()
    L.Trainer(max_epochs=1, val_check_interval=3, num_sanity_val_steps=0, **QUIET).fit(m, data(), data())
    assert m.val_runs == 3  # after batches 3, 6, 9 of 10


def test_val_check_interval_across_epochs() -> None:
    m = Model()
    L.Trainer(max_epochs=2, val_check_interval=15, check_val_every_n_epoch=None, num_sanity_val_steps=0, **QUIET).fit(
        m, data(), data()
    )
    assert m.val_runs == 1  # 20 batches in total, one check at batch 15


def test_check_val_every_n_epoch() -> None:
    m = Model()
    L.Trainer(max_epochs=4, check_val_every_n_epoch=2, num_sanity_val_steps=0, **QUIET).fit(m, data(), data())
    assert m.val_runs == 2


def test_fast_dev_run_runs_one_batch_everywhere() -> None:
    m = Model()
    t = L.Trainer(fast_dev_run=True, enable_progress_bar=False, enable_model_summary=False)
    t.fit(m, data(), data())
    # as Lightning: the loggers become one DummyLogger, the default ModelCheckpoint is there but saves nothing
    assert t.global_step == 1 and m.val_runs == 1
    assert [type(lg).__name__ for lg in t.loggers] == ["DummyLogger"]
    assert t.checkpoint_callback is not None and t.checkpoint_callback.best_model_path == ""


def test_min_epochs_overrides_should_stop() -> None:
    class Stopper(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    m = Model()
    t = L.Trainer(max_epochs=10, min_epochs=3, callbacks=[Stopper()], **QUIET)
    t.fit(m, data())
    assert t.current_epoch == 3


def test_should_stop_mid_epoch_ends_after_the_step() -> None:
    class Stopper(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 2:
                trainer.should_stop = True

    m = Model()
    t = L.Trainer(max_epochs=5, callbacks=[Stopper()], **QUIET)
    t.fit(m, data())
    assert t.global_step == 3 and t.current_epoch == 0  # stopped mid-epoch: the epoch is not completed


def test_training_step_returning_none_skips_the_update() -> None:
    class Skip(Model):
        def training_step(self, batch, batch_idx):
            return None if batch_idx % 2 else super().training_step(batch, batch_idx)

    m = Skip()
    before = [p.detach().clone() for p in m.parameters()]
    t = L.Trainer(max_steps=1, limit_train_batches=2, **QUIET)
    t.fit(m, data())
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_overfit_batches_uses_the_same_batches() -> None:
    seen = []

    class Record(Model):
        def training_step(self, batch, batch_idx):
            seen.append(batch[0].sum().item())
            return super().training_step(batch, batch_idx)

    dl = DataLoader(data().dataset, batch_size=4, shuffle=True)
    L.Trainer(max_epochs=2, overfit_batches=2, **QUIET).fit(Record(), dl)
    assert len(seen) == 4 and seen[:2] == seen[2:]


def test_keyboard_interrupt_is_graceful_and_calls_on_exception() -> None:
    events = []

    class Interrupt(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 1:
                raise KeyboardInterrupt

        def on_exception(self, trainer, pl_module, exception):
            events.append(type(exception).__name__)

    t = L.Trainer(max_epochs=1, callbacks=[Interrupt()], **QUIET)
    with pytest.raises(SystemExit) as info:  # as Lightning: after the graceful shutdown the process exits with 1
        t.fit(Model(), data())
    assert info.value.code == 1
    assert events == ["KeyboardInterrupt"] and t.interrupted


def test_exception_calls_on_exception_and_reraises() -> None:
    events = []

    class Boom(Model):
        def training_step(self, batch, batch_idx):
            raise ValueError("boom")

    class Rec(Callback):
        def on_exception(self, trainer, pl_module, exception):
            events.append(str(exception))

    with pytest.raises(ValueError, match="boom"):
        L.Trainer(max_epochs=1, callbacks=[Rec()], **QUIET).fit(Boom(), data())
    assert events == ["boom"]


def test_predict_return_predictions_and_multiple_loaders() -> None:
    class P(Model):
        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            return self(batch[0])

    m = P()
    t = L.Trainer(**QUIET)
    out = t.predict(m, [data(8), data(12)])
    assert [len(o) for o in out] == [2, 3] and out[0][0].shape == (4, 1)
    assert t.predict(m, data(8), return_predictions=False) is None


def test_validate_and_test_with_ckpt_path(tmp_path) -> None:
    m = Model()
    t = L.Trainer(max_epochs=1, **QUIET)
    t.fit(m, data())
    path = tmp_path / "m.ckpt"
    t.save_checkpoint(path)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    res = t.validate(m, data(), ckpt_path=str(path), verbose=False)
    fresh = Model.load_from_checkpoint(path)
    assert torch.equal(next(m.parameters()), next(fresh.parameters()))
    assert set(res[0]) == {"val_loss"}


def test_hparams_saved_ignored_and_overridden(tmp_path) -> None:
    m = Model(hidden=6, loss_fn=torch.nn.L1Loss())
    assert dict(m.hparams) == {"hidden": 6, "lr": 0.05}
    t = L.Trainer(max_steps=1, **QUIET)
    t.fit(m, data())
    t.save_checkpoint(tmp_path / "a.ckpt")
    ckpt = torch.load(tmp_path / "a.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"] == {"hidden": 6, "lr": 0.05}
    assert {"epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops", "callbacks",
            "optimizer_states", "lr_schedulers", "hparams_name", "hyper_parameters"} <= set(ckpt)
    loaded = Model.load_from_checkpoint(tmp_path / "a.ckpt", lr=0.5)
    assert loaded.hparams.lr == 0.5 and loaded.hparams.hidden == 6 and not loaded.training


def test_freeze_unfreeze_and_properties() -> None:
    m = Model()
    assert m.freeze() is m and not any(p.requires_grad for p in m.parameters()) and not m.training
    assert m.unfreeze() is m and all(p.requires_grad for p in m.parameters()) and m.training
    assert m.device == torch.device("cpu") and m.dtype == torch.float32
    assert m.current_epoch == 0 and m.global_step == 0 and m.logger is None
    m.double()
    assert m.dtype == torch.float64


def test_datamodule_state_and_from_datasets(tmp_path) -> None:
    ds = data().dataset

    class DM(L.LightningDataModule):
        def __init__(self) -> None:
            super().__init__()
            self.counter = 3

        def train_dataloader(self):
            return DataLoader(ds, batch_size=4)

        def state_dict(self):
            return {"counter": self.counter}

        def load_state_dict(self, sd):
            self.counter = sd["counter"]

    t = L.Trainer(max_steps=2, **QUIET)
    t.fit(Model(), datamodule=DM())
    t.save_checkpoint(tmp_path / "dm.ckpt")
    assert torch.load(tmp_path / "dm.ckpt", weights_only=True)[DM.__qualname__] == {"counter": 3}
    dm = L.LightningDataModule.from_datasets(train_dataset=ds, val_dataset=ds, batch_size=8)
    t = L.Trainer(max_epochs=1, **QUIET)
    m = Model()
    t.fit(m, datamodule=dm)
    assert t.global_step == 5 and m.val_runs == 1


def test_reload_dataloaders_every_n_epochs() -> None:
    calls = []

    class Reload(Model):
        def train_dataloader(self):
            calls.append(self.current_epoch)
            return data()

    L.Trainer(max_epochs=4, reload_dataloaders_every_n_epochs=2, **QUIET).fit(Reload())
    assert calls == [0, 2]


def test_default_logger_writes_csv_and_hparams(tmp_path, monkeypatch) -> None:
    # without tensorboard installed, the default logger is CSVLogger, as in Lightning (with it, TensorBoardLogger:
    # tests/trainer/test_trainer_defaults_compat.py)
    from fulmen.trainer import lifecycle

    monkeypatch.setattr(lifecycle, "_tensorboard_available", lambda: False)
    t = L.Trainer(max_epochs=1, log_every_n_steps=2, enable_progress_bar=False, enable_model_summary=False,
                  default_root_dir=tmp_path)
    t.fit(Model(), data())
    vdir = tmp_path / "lightning_logs" / "version_0"
    assert (vdir / "metrics.csv").exists() and (vdir / "hparams.yaml").exists()
    rows = (vdir / "metrics.csv").read_text().strip().splitlines()
    assert set(rows[0].split(",")) == {"epoch", "step", "loss"} and len(rows) == 1 + 5
    assert list((vdir / "checkpoints").glob("epoch=0-step=10.ckpt"))
