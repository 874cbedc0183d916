"""Time-based ``val_check_interval`` ("DD:HH:MM:SS", timedelta or dict; Lightning 2.6).

A fake clock replaces the fit loop's time source: it advances one second per training batch, so the
batches after which validation runs are known exactly. Lightning's own loop runs with the same clock
(its loops read ``time.monotonic``) and must validate after the same batches.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import Callback
from fulmen.trainer.loops import fit as fit_loop
from fulmen.utilities.exceptions import MisconfigurationException

QUIET = {
    "logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _body(base):
    class Net(base):
        def __init__(self, clock: Clock) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.clock = clock
            self.val_at: list[tuple[int, int]] = []  # (epoch, batches done in the epoch)
            self.batches = 0

        def training_step(self, batch, batch_idx):
            self.clock.now += 1.0  # each training batch takes one second
            self.batches = batch_idx + 1
            return self.layer(batch[0]).pow(2).mean()

        def on_validation_start(self) -> None:
            self.val_at.append((self.current_epoch, self.batches))

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.layer(batch[0]).pow(2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Net


Net = _body(L.LightningModule)


def data() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(40, 4)), batch_size=4)  # 10 batches


def run_fulmen(monkeypatch, **kw) -> tuple[list[tuple[int, int]], L.Trainer]:
    clock = Clock()
    monkeypatch.setattr(fit_loop, "_clock", clock)
    model = Net(clock)
    trainer = L.Trainer(**{**QUIET, **kw})
    trainer.fit(model, data(), data())
    return model.val_at, trainer


def run_lightning(monkeypatch, **kw) -> list[tuple[int, int]]:
    pl = pytest.importorskip("pytorch_lightning")
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)  # Lightning's loops call time.monotonic()
    model = _body(pl.LightningModule)(clock)
    pl.Trainer(**{**QUIET, **kw}).fit(model, data(), data())
    monkeypatch.undo()
    return model.val_at


@pytest.mark.parametrize(
    "interval", ["00:00:00:03", dt.timedelta(seconds=3), {"seconds": 3}], ids=["str", "timedelta", "dict"]
)
def test_validates_after_the_batches_where_the_interval_passed(monkeypatch, interval) -> None:
    val_at, trainer = run_fulmen(monkeypatch, max_epochs=2, val_check_interval=interval)
    # timer starts at fit start, restarts after each validation; no extra validation at the epoch end (batch 10)
    assert val_at == [(0, 3), (0, 6), (0, 9), (1, 2), (1, 5), (1, 8)]
    assert trainer.val_check_interval == dt.timedelta(seconds=3)
    assert trainer.val_check_batch is None


def test_same_batches_as_lightning(monkeypatch) -> None:
    kw = {"max_epochs": 2, "val_check_interval": "00:00:00:04"}
    ours, _ = run_fulmen(monkeypatch, **kw)
    assert ours == run_lightning(monkeypatch, **kw)


def test_with_check_val_every_n_epoch_same_as_lightning(monkeypatch) -> None:
    # epochs that are not multiples of 2 never validate; in a multiple-of-2 epoch the first batch after the
    # interval passed validates (here the first batch of the epoch)
    kw = {"max_epochs": 4, "val_check_interval": "00:00:00:03", "check_val_every_n_epoch": 2}
    ours, _ = run_fulmen(monkeypatch, **kw)
    assert ours == [(1, 1), (1, 4), (1, 7), (1, 10), (3, 1), (3, 4), (3, 7), (3, 10)]
    assert ours == run_lightning(monkeypatch, **kw)


def test_zero_interval_validates_after_every_batch(monkeypatch) -> None:
    val_at, _ = run_fulmen(monkeypatch, max_epochs=1, limit_train_batches=3, val_check_interval={"seconds": 0})
    assert val_at == [(0, 1), (0, 2), (0, 3)]


def test_fast_dev_run_turns_it_off(monkeypatch) -> None:
    val_at, trainer = run_fulmen(monkeypatch, fast_dev_run=2, val_check_interval="00:00:00:01")
    assert val_at == [(0, 2)] and trainer.val_check_interval == 1.0


def test_model_checkpoint_saves_after_validation_in_time_mode() -> None:
    from fulmen.callbacks.model_checkpoint import should_save_on_train_epoch_end

    assert should_save_on_train_epoch_end(None, dt.timedelta(seconds=5), 1, [4]) is False
    assert should_save_on_train_epoch_end(None, dt.timedelta(seconds=5), 1, [0]) is False
    assert should_save_on_train_epoch_end(None, 1.0, 1, [4]) is True


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("00:00:00:-5", "'00:00:00:-5'"),
        ("1:2:3", "'1:2:3'"),
        ("ten minutes", "'ten minutes'"),
        ({"secondz": 3}, "secondz"),
        ({"seconds": -5}, "{'seconds': -5}"),
        (dt.timedelta(seconds=-1), "timedelta"),
    ],
)
def test_bad_time_intervals_are_clear_errors(value, shown) -> None:
    with pytest.raises(MisconfigurationException) as info:
        L.Trainer(val_check_interval=value, **QUIET)
    msg = str(info.value)
    assert "val_check_interval" in msg and shown in msg and "Fix:" in msg


# ---------------------------------------------------------------------------------------------- exact resume
class SaveAt(Callback):
    def __init__(self, path, hook: str, step: int) -> None:
        self.path, self.step, self.done = path, step, False
        setattr(self, hook, self._maybe_save)

    def _maybe_save(self, trainer, pl_module, *args) -> None:
        if not self.done and trainer.global_step >= self.step:
            trainer.save_checkpoint(self.path)
            self.done = True
            pl_module.val_at_save = len(pl_module.val_at)


def resume_run(monkeypatch, tmp_path, *, save=None, ckpt=None):
    clock = Clock()
    clock.now = 5000.0 if ckpt else 1000.0  # a resumed process's clock has nothing to do with the first one's
    monkeypatch.setattr(fit_loop, "_clock", clock)
    L.seed_everything(3, verbose=False)
    model = Net(clock)
    callbacks = [SaveAt(tmp_path / "mid.ckpt", *save)] if save else []
    trainer = L.Trainer(
        max_epochs=3, val_check_interval="00:00:00:04", deterministic=True, callbacks=callbacks, **QUIET
    )
    train = DataLoader(TensorDataset(torch.randn(40, 4, generator=torch.Generator().manual_seed(0))), batch_size=4)
    trainer.fit(model, train, data(), ckpt_path=ckpt)
    return model


@pytest.mark.parametrize(
    "save", [("on_train_batch_end", 13), ("on_validation_end", 14), ("on_train_epoch_end", 10)],
    ids=["mid_epoch", "during_validation", "epoch_end"],
)
def test_resume_is_exact_in_time_mode(monkeypatch, tmp_path, save) -> None:
    full = resume_run(monkeypatch, tmp_path, save=save)
    resumed = resume_run(monkeypatch, tmp_path, ckpt=str(tmp_path / "mid.ckpt"))
    # the resumed run validates after the same batches as the uninterrupted one
    assert resumed.val_at == full.val_at[full.val_at_save :]
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_several_processes_are_refused_clearly() -> None:
    from fulmen.utilities.exceptions import NotSupportedYetError

    trainer = L.Trainer(val_check_interval="00:00:10:00", **QUIET)
    trainer.strategy.is_distributed = True  # as on a multi-process strategy: each rank would read its own clock
    with pytest.raises(NotSupportedYetError, match=r"val_check_interval.*several processes.*Fix:"):
        trainer._data._compute_val_check_batch()
