"""User mistakes: each one raises a MisconfigurationException (or a subclass) with a clear message.

A clear message names the hook or argument, shows what was given, and carries a ``Fix:`` hint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import fulmen as L
from fulmen.utilities.exceptions import MisconfigurationException

# ---------------------------------------------------------------------------------------------- helpers


def loader(n: int = 4, batch_size: int = 2) -> DataLoader:
    return DataLoader(torch.randn(n, 4), batch_size=batch_size)


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


def assert_clear(exc: BaseException, *needles: str) -> str:
    """The message contains every needle and a 'Fix:' hint."""
    msg = str(exc)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in message: {msg}"
    assert "Fix:" in msg, f"no 'Fix:' hint in message: {msg}"
    return msg


class Base(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self(batch).sum()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_raises(
    tmp_path: Path, model: L.LightningModule, exc_type: type = MisconfigurationException, **fit_kw: Any
):
    fit_kw.setdefault("train_dataloaders", loader())
    with pytest.raises(exc_type) as info:
        make_trainer(tmp_path).fit(model, **fit_kw)
    return info.value


# ---------------------------------------------------------------------------------------------- training_step


def test_training_step_missing(tmp_path: Path) -> None:
    class NoStep(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 1)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    exc = fit_raises(tmp_path, NoStep())
    assert_clear(exc, "training_step", "NoStep")


def test_training_step_returns_string(tmp_path: Path) -> None:
    class StrStep(Base):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return "not a loss"

    exc = fit_raises(tmp_path, StrStep())
    assert_clear(exc, "training_step", "str", "not a loss")


def test_training_step_returns_non_scalar_tensor(tmp_path: Path) -> None:
    class VecStep(Base):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return self(batch)  # shape (2, 1)

    exc = fit_raises(tmp_path, VecStep())
    assert_clear(exc, "training_step", "(2, 1)", "scalar")


def test_training_step_dict_without_loss(tmp_path: Path) -> None:
    class DictStep(Base):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return {"los": self(batch).sum()}

    exc = fit_raises(tmp_path, DictStep())
    assert_clear(exc, "training_step", "'loss'", "los")


# ---------------------------------------------------------------------------------------------- configure_optimizers


def test_configure_optimizers_returns_string(tmp_path: Path) -> None:
    class StrOpt(Base):
        def configure_optimizers(self) -> Any:
            return "adam"

    exc = fit_raises(tmp_path, StrOpt())
    assert_clear(exc, "configure_optimizers", "'adam'", "str")


def test_configure_optimizers_list_with_non_optimizer(tmp_path: Path) -> None:
    class ListOpt(Base):
        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.parameters(), lr=0.1), "sgd2"]

    exc = fit_raises(tmp_path, ListOpt())
    assert_clear(exc, "configure_optimizers", "sgd2")


def test_scheduler_config_without_scheduler_key(tmp_path: Path) -> None:
    class NoSchedKey(Base):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": {"interval": "step"}}

    exc = fit_raises(tmp_path, NoSchedKey())
    assert_clear(exc, "configure_optimizers", "'scheduler'", "'interval': 'step'")


def test_reduce_on_plateau_without_monitor(tmp_path: Path) -> None:
    class Plateau(Base):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt)}

    exc = fit_raises(tmp_path, Plateau())
    assert_clear(exc, "configure_optimizers", "ReduceLROnPlateau", "monitor")


def test_scheduler_interval_batch(tmp_path: Path) -> None:
    class BatchInterval(Base):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "batch"}}

    exc = fit_raises(tmp_path, BatchInterval())
    assert_clear(exc, "configure_optimizers", "interval", "'batch'", "'step'")


def test_two_optimizers_with_automatic_optimization(tmp_path: Path) -> None:
    class TwoOpts(Base):
        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.Adam(self.parameters(), lr=0.1)]

    # Lightning raises a RuntimeError with this text (pinned against pytorch-lightning 2.6.1)
    exc = fit_raises(tmp_path, TwoOpts(), RuntimeError)
    msg = assert_clear(exc, "configure_optimizers", "2 optimizers", "automatic_optimization = False")
    assert msg.startswith("Training with multiple optimizers is only supported with manual optimization. Set")


def test_optimizer_idx_in_training_step(tmp_path: Path) -> None:
    """A Lightning 1.x ``training_step(batch, batch_idx, optimizer_idx)``: Lightning's RuntimeError, not a TypeError
    from deep inside the loop."""

    class OldStyle(Base):
        def training_step(self, batch: Any, batch_idx: int, optimizer_idx: int) -> Any:
            return self(batch).sum()

    exc = fit_raises(tmp_path, OldStyle(), RuntimeError)
    assert_clear(exc, "Remove the `optimizer_idx` argument from `training_step`")


def test_optimizer_step_that_never_runs_the_closure(tmp_path: Path) -> None:
    """Lightning raises at the first such step instead of silently training nothing."""

    class NoClosure(Base):
        def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
            optimizer.step()  # the closure (training_step + backward) never runs

    exc = fit_raises(tmp_path, NoClosure())
    msg = assert_clear(exc, "NoClosure.optimizer_step", "optimizer.step(closure=optimizer_closure)")
    assert msg.startswith("The closure hasn't been executed. HINT: did you call `optimizer_closure()`")


def test_manual_backward_with_automatic_optimization(tmp_path: Path) -> None:
    class ManualBwd(Base):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = self(batch).sum()
            self.manual_backward(loss)
            return loss

    exc = fit_raises(tmp_path, ManualBwd())
    assert_clear(exc, "manual_backward", "automatic_optimization=True")


# ---------------------------------------------------------------------------------------------- self.log values


class LogsIn(Base):
    """Logs ``value`` from training_step (with ``log_kw``)."""

    def __init__(self, value: Any, **log_kw: Any) -> None:
        super().__init__()
        self.value = value
        self.log_kw = log_kw

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.log("metric", self.value, **self.log_kw)
        return super().training_step(batch, batch_idx)


def test_log_string(tmp_path: Path) -> None:
    exc = fit_raises(tmp_path, LogsIn("high"))
    assert_clear(exc, "self.log('metric'", "'high'", "str")


def test_log_non_scalar_tensor(tmp_path: Path) -> None:
    exc = fit_raises(tmp_path, LogsIn(torch.ones(3)))
    assert_clear(exc, "self.log('metric'", "(3,)", "scalar")


def test_log_dict_value(tmp_path: Path) -> None:
    exc = fit_raises(tmp_path, LogsIn({"a": 1.0}))
    assert_clear(exc, "self.log('metric'", "dict", "log_dict")


def test_log_reduce_fx_median(tmp_path: Path) -> None:
    exc = fit_raises(tmp_path, LogsIn(1.0, reduce_fx="median"))
    assert_clear(exc, "self.log('metric'", "reduce_fx='median'", "'mean'")


def test_log_on_step_in_on_train_epoch_end(tmp_path: Path) -> None:
    class EpochEndStep(Base):
        def on_train_epoch_end(self) -> None:
            self.log("metric", 1.0, on_step=True)

    exc = fit_raises(tmp_path, EpochEndStep())
    assert_clear(exc, "on_train_epoch_end", "on_step=True", "self.log('metric'")


@pytest.mark.parametrize("hook", ["setup", "on_fit_start", "configure_optimizers", "predict_step"])
def test_log_in_forbidden_hook(tmp_path: Path, hook: str) -> None:
    class ForbiddenLog(Base):
        def setup(self, stage: str) -> None:
            if hook == "setup":
                self.log("metric", 1.0)

        def on_fit_start(self) -> None:
            if hook == "on_fit_start":
                self.log("metric", 1.0)

        def configure_optimizers(self) -> Any:
            if hook == "configure_optimizers":
                self.log("metric", 1.0)
            return super().configure_optimizers()

        def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
            if hook == "predict_step":
                self.log("metric", 1.0)
            return self(batch)

    trainer = make_trainer(tmp_path)
    with pytest.raises(MisconfigurationException) as info:
        if hook == "predict_step":
            trainer.predict(ForbiddenLog(), dataloaders=loader())
        else:
            trainer.fit(ForbiddenLog(), train_dataloaders=loader())
    assert_clear(info.value, f"'{hook}'", "self.log('metric'", "not allowed")


# ---------------------------------------------------------------------------------------------- Trainer arguments


def test_unknown_trainer_argument() -> None:
    with pytest.raises(TypeError, match="max_epoch'"):
        L.Trainer(max_epoch=3)


@pytest.mark.parametrize(
    ("arg", "value", "needle"),
    [
        ("max_epochs", -2, "-2"),
        ("limit_train_batches", 1.5, "1.5"),
        ("val_check_interval", 1.5, "1.5"),
        ("gradient_clip_algorithm", "foo", "'foo'"),
        ("accumulate_grad_batches", 0, "0"),
    ],
)
def test_bad_trainer_argument(tmp_path: Path, arg: str, value: Any, needle: str) -> None:
    with pytest.raises(MisconfigurationException) as info:
        make_trainer(tmp_path, **{arg: value})
    assert_clear(info.value, f"{arg}={needle}")


def test_barebones_with_checkpointing(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException) as info:
        L.Trainer(barebones=True, enable_checkpointing=True, default_root_dir=tmp_path)
    assert_clear(info.value, "barebones=True", "enable_checkpointing")


def test_int_val_check_interval_longer_than_epoch(tmp_path: Path) -> None:
    class WithVal(Base):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

    trainer = make_trainer(tmp_path, val_check_interval=10)
    with pytest.raises(MisconfigurationException) as info:
        trainer.fit(WithVal(), train_dataloaders=loader(n=4, batch_size=2), val_dataloaders=loader())
    assert_clear(info.value, "val_check_interval=10", "(2)")


# ---------------------------------------------------------------------------------------------- data


def test_empty_train_loader(tmp_path: Path) -> None:
    exc = fit_raises(tmp_path, Base(), train_dataloaders=DataLoader(torch.empty(0, 4), batch_size=2))
    assert_clear(exc, "train dataloader", "empty")


def test_train_loader_not_iterable(tmp_path: Path) -> None:
    exc = fit_raises(tmp_path, Base(), train_dataloaders=5)
    assert_clear(exc, "train dataloader", "int", "(5)")


def test_val_dataloaders_without_validation_step(tmp_path: Path) -> None:
    # a warning and no validation, as Lightning ("You passed in a `val_dataloader` but have no `validation_step`.")
    with pytest.warns(UserWarning, match="You passed in a `val_dataloader` but Base has no `validation_step`") as rec:
        make_trainer(tmp_path).fit(Base(), train_dataloaders=loader(), val_dataloaders=loader())
    assert_clear(next(w.message for w in rec if "val_dataloader" in str(w.message)), "validation_step")


def test_validation_step_without_val_loader_warns(tmp_path: Path) -> None:
    class WithVal(Base):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

    trainer = make_trainer(tmp_path)
    with pytest.warns(UserWarning) as record:
        trainer.fit(WithVal(), train_dataloaders=loader())
    messages = [str(w.message) for w in record if "validation_step" in str(w.message)]
    assert messages, [str(w.message) for w in record]
    assert_clear(Exception(messages[0]), "validation_step", "val_dataloaders", "val_dataloader()")
    assert trainer.global_step == 2  # training still ran


# ---------------------------------------------------------------------------------------------- trainer entry points


def test_predict_without_predict_step_or_forward(tmp_path: Path) -> None:
    class NoForward(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 1)

    with pytest.raises(MisconfigurationException) as info:
        make_trainer(tmp_path).predict(NoForward(), dataloaders=loader())
    assert_clear(info.value, "predict_step", "forward", "NoForward")


def test_test_without_test_step(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException) as info:
        make_trainer(tmp_path).test(Base(), dataloaders=loader())
    assert_clear(info.value, "test_step", "Base", "trainer.test")


def test_fit_with_plain_module(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException) as info:
        make_trainer(tmp_path).fit(nn.Linear(4, 1), train_dataloaders=loader())
    assert_clear(info.value, "trainer.fit", "LightningModule", "Linear")


# ---------------------------------------------------------------------------------------------- checkpoints


def test_resume_from_weights_only_checkpoint(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path)
    trainer.fit(Base(), train_dataloaders=loader())
    path = tmp_path / "weights.ckpt"
    trainer.save_checkpoint(path, weights_only=True)

    trainer2 = make_trainer(tmp_path, max_epochs=2)
    with pytest.raises(MisconfigurationException) as info:
        trainer2.fit(Base(), train_dataloaders=loader(), ckpt_path=path)
    assert_clear(info.value, "weights only", "weights.ckpt", "load_from_checkpoint")


def test_load_from_checkpoint_of_a_different_model(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path)
    trainer.fit(Base(), train_dataloaders=loader())
    path = tmp_path / "base.ckpt"
    trainer.save_checkpoint(path)

    class Wider(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 3)

    with pytest.raises(MisconfigurationException) as info:
        Wider.load_from_checkpoint(path)
    assert_clear(info.value, "Wider", "base.ckpt", "layer.weight", "(1, 4)", "(3, 4)", "layer.bias")


def test_ckpt_path_best_without_checkpoint_callback(tmp_path: Path) -> None:
    class WithVal(Base):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

    trainer = make_trainer(tmp_path)
    with pytest.raises(MisconfigurationException) as info:
        trainer.validate(WithVal(), dataloaders=loader(), ckpt_path="best")
    assert_clear(info.value, 'ckpt_path="best"', "ModelCheckpoint")
