"""Public misuse raises an exception of Lightning's type, so code written for Lightning that catches ``ValueError``,
``TypeError``, ``KeyError``, ``AttributeError``, ``FileNotFoundError`` or ``MisconfigurationException`` keeps working.

Each case runs on fulmen and (where installed) on pytorch_lightning 2.6.1; the pinned type is the one Lightning raised
(checked again live), and fulmen's exception must be an instance of it. fulmen's configuration errors stay
``MisconfigurationException`` subclasses, so ``except MisconfigurationException`` catches them too.
"""

from __future__ import annotations

import datetime
import importlib
import os
import warnings
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset


def _ns(lib_name: str) -> SimpleNamespace:
    if lib_name == "pytorch_lightning":
        pytest.importorskip("pytorch_lightning")
    lib = importlib.import_module(lib_name)
    return SimpleNamespace(
        L=lib,
        cbs=importlib.import_module(f"{lib_name}.callbacks"),
        Misconf=importlib.import_module(f"{lib_name}.utilities.exceptions").MisconfigurationException,
    )


def _data() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)


def _base(ns: SimpleNamespace) -> type:
    class Base(ns.L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return self.layer(batch[0]).sum()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Base


def _trainer(ns: SimpleNamespace, **kw: Any) -> Any:
    base = {"max_epochs": 1, "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
            "enable_checkpointing": False, "num_sanity_val_steps": 0}
    base.update(kw)
    return ns.L.Trainer(**base)


def _fit_with(ns: SimpleNamespace, **methods: Any) -> None:
    module = type("M", (_base(ns),), methods)()
    _trainer(ns).fit(module, _data(), _data())


def _log_in_step(*args: Any, **kw: Any) -> Callable[[SimpleNamespace], None]:
    def training_step(self: Any, batch: Any, batch_idx: int) -> Any:
        self.log(*args, **kw)
        return self.layer(batch[0]).sum()

    return lambda ns: _fit_with(ns, training_step=training_step)


def _optimizers(ret: Callable[[Any], Any]) -> Callable[[SimpleNamespace], None]:
    return lambda ns: _fit_with(ns, configure_optimizers=lambda self: ret(self))


def _sgd(module: Any) -> Any:
    return torch.optim.SGD(module.parameters(), lr=0.1)


def _fit_then_validate_best(ns: SimpleNamespace) -> None:
    trainer = _trainer(ns)
    trainer.fit(_base(ns)(), _data())
    trainer.validate(dataloaders=_data(), ckpt_path="best")


# name: (Lightning's exception type, the misuse); "misconf" stands for the library's MisconfigurationException
CASES: dict[str, tuple[Any, Callable[[SimpleNamespace], Any]]] = {
    # Trainer flags
    "accelerator": (ValueError, lambda ns: ns.L.Trainer(accelerator="foo")),
    "strategy": (ValueError, lambda ns: ns.L.Trainer(strategy="foo")),
    "precision": (ValueError, lambda ns: ns.L.Trainer(precision="foo")),
    "devices_str": (TypeError, lambda ns: ns.L.Trainer(devices="abc")),
    "num_nodes": (ValueError, lambda ns: ns.L.Trainer(num_nodes=0)),
    "val_check_interval": ("misconf", lambda ns: ns.L.Trainer(val_check_interval=-1)),
    "limit_train_batches": ("misconf", lambda ns: ns.L.Trainer(limit_train_batches=1.5)),
    "gradient_clip_algorithm": ("misconf", lambda ns: ns.L.Trainer(gradient_clip_algorithm="foo")),
    "profiler": ("misconf", lambda ns: ns.L.Trainer(profiler="foo")),
    "max_time": ("misconf", lambda ns: ns.L.Trainer(max_time="bad")),
    "fast_dev_run": ("misconf", lambda ns: ns.L.Trainer(fast_dev_run=-1)),
    "overfit_batches": ("misconf", lambda ns: ns.L.Trainer(overfit_batches=-1)),
    "unknown_kwarg": (TypeError, lambda ns: ns.L.Trainer(foo=1)),
    # self.log / log_dict
    "log_string": (ValueError, _log_in_step("x", "string")),
    "log_vector": (ValueError, _log_in_step("x", torch.ones(3))),
    "log_dict_value": (ValueError, _log_in_step("x", {"a": 1})),
    "log_reduce_fx": ("misconf", _log_in_step("x", 1.0, reduce_fx="median")),
    "log_nothing": ("misconf", _log_in_step("x", 1.0, on_step=False, on_epoch=False)),
    "log_in_on_fit_start": ("misconf", lambda ns: _fit_with(ns, on_fit_start=lambda self: self.log("x", 1.0))),
    "log_on_step_at_epoch_end": (
        "misconf", lambda ns: _fit_with(ns, on_train_epoch_end=lambda self: self.log("x", 1.0, on_step=True))),
    "log_dict_not_mapping": (AttributeError, lambda ns: _fit_with(
        ns, training_step=lambda self, b, i: (self.log_dict([1, 2]), self.layer(b[0]).sum())[1])),
    # configure_optimizers
    "optimizers_string": ("misconf", _optimizers(lambda self: "foo")),
    "optimizers_dict_without_optimizer": (KeyError, _optimizers(
        lambda self: {"lr_scheduler": torch.optim.lr_scheduler.StepLR(_sgd(self), 1)})),
    "scheduler_bad_interval": ("misconf", _optimizers(lambda self: (lambda o: {
        "optimizer": o, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(o, 1), "interval": "x"}})(
        _sgd(self)))),
    "scheduler_dict_without_scheduler": (
        "misconf", _optimizers(lambda self: {"optimizer": _sgd(self), "lr_scheduler": {"interval": "step"}})),
    "plateau_without_monitor": ("misconf", _optimizers(lambda self: (lambda o: {
        "optimizer": o, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(o)})(_sgd(self)))),
    # ckpt_path
    "ckpt_missing_file": (FileNotFoundError, lambda ns: _trainer(ns).fit(_base(ns)(), _data(), ckpt_path="no.ckpt")),
    "ckpt_best_without_fit": (ValueError, lambda ns: _trainer(ns).validate(_base(ns)(), _data(), ckpt_path="best")),
    "ckpt_best_without_checkpoint": (ValueError, _fit_then_validate_best),
    "ckpt_hpc": (ValueError, lambda ns: _trainer(ns).validate(_base(ns)(), _data(), ckpt_path="hpc")),
    # models and dataloaders
    "validate_without_model": (TypeError, lambda ns: _trainer(ns).validate()),
    "test_without_model": (TypeError, lambda ns: _trainer(ns).test(dataloaders=_data())),
    "fit_a_plain_module": (TypeError, lambda ns: _trainer(ns).fit(torch.nn.Linear(1, 1), _data())),
    "fit_without_train_data": ("misconf", lambda ns: _trainer(ns).fit(_base(ns)())),
    "train_dataloader_returns_none": (TypeError, lambda ns: _trainer(ns).fit(
        type("M", (_base(ns),), {"train_dataloader": lambda self: None})())),
    "validate_without_loader": ("misconf", lambda ns: _trainer(ns).validate(_base(ns)())),
    "predict_without_loader": ("misconf", lambda ns: _trainer(ns).predict(_base(ns)())),
    "save_checkpoint_without_model": (AttributeError, lambda ns: _trainer(ns).save_checkpoint("x.ckpt")),
    "load_from_missing_checkpoint": (FileNotFoundError, lambda ns: _base(ns).load_from_checkpoint("nope.ckpt")),
    "to_onnx_without_input": (ValueError, lambda ns: _base(ns)().to_onnx("x.onnx")),
    "to_torchscript_bad_method": (ValueError, lambda ns: _base(ns)().to_torchscript(method="foo")),
    # callbacks
    "checkpoint_mode": ("misconf", lambda ns: ns.cbs.ModelCheckpoint(mode="foo")),
    "checkpoint_top_k": ("misconf", lambda ns: ns.cbs.ModelCheckpoint(save_top_k=-2)),
    "checkpoint_two_triggers": ("misconf", lambda ns: ns.cbs.ModelCheckpoint(
        every_n_train_steps=1, train_time_interval=datetime.timedelta(seconds=1))),
    "early_stopping_mode": ("misconf", lambda ns: ns.cbs.EarlyStopping(monitor="x", mode="foo")),
    "early_stopping_missing_metric": (RuntimeError, lambda ns: _trainer(
        ns, callbacks=[ns.cbs.EarlyStopping(monitor="missing")]).fit(_base(ns)(), _data(), _data())),
    "lr_monitor_interval": ("misconf", lambda ns: ns.cbs.LearningRateMonitor(logging_interval="foo")),
    "lr_monitor_without_logger": ("misconf", lambda ns: _trainer(
        ns, callbacks=[ns.cbs.LearningRateMonitor()]).fit(_base(ns)(), _data())),
    "accumulation_schedule_empty": (TypeError, lambda ns: ns.cbs.GradientAccumulationScheduler(scheduling={})),
    "accumulation_schedule_bad_epoch": (
        "misconf", lambda ns: ns.cbs.GradientAccumulationScheduler(scheduling={"a": 1})),
    "prediction_writer_interval": ("misconf", lambda ns: ns.cbs.BasePredictionWriter("foo")),
    "swa_lrs": ("misconf", lambda ns: ns.cbs.StochasticWeightAveraging(swa_lrs=-1)),
    "timer_interval": ("misconf", lambda ns: ns.cbs.Timer(interval="foo")),
    "finetuning_without_backbone": (AttributeError, lambda ns: _trainer(
        ns, callbacks=[ns.cbs.BackboneFinetuning()]).fit(_base(ns)(), _data())),
    "lambda_callback_unknown_hook": (TypeError, lambda ns: ns.cbs.LambdaCallback(foo=1)),
}


def _raised(lib_name: str, case: str, tmp_path: Any) -> BaseException:
    ns = _ns(lib_name)
    os.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            CASES[case][1](ns)
        except Exception as exc:  # noqa: BLE001 - the type is what is checked
            return exc
    pytest.fail(f"{case}: {lib_name} raised nothing")


@pytest.mark.parametrize("case", sorted(CASES))
def test_misuse_raises_lightnings_exception_type(case: str, tmp_path: Any) -> None:
    expected, _ = CASES[case]
    ours = _raised("fulmen", case, tmp_path)
    fulmen_misconf = _ns("fulmen").Misconf
    want = fulmen_misconf if expected == "misconf" else expected
    assert isinstance(ours, want), f"{case}: fulmen raised {type(ours).__mro__}, Lightning raises {want}"
    if expected != "misconf" and not isinstance(ours, (FileNotFoundError, RuntimeError)):
        # a fulmen configuration error keeps being a MisconfigurationException as well
        assert isinstance(ours, fulmen_misconf) or type(ours).__module__.startswith("builtins")
    if importlib.util.find_spec("pytorch_lightning") is None:
        return
    theirs = _raised("pytorch_lightning", case, tmp_path)
    want_pl = _ns("pytorch_lightning").Misconf if expected == "misconf" else expected
    assert isinstance(theirs, want_pl), f"{case}: the pin is stale, Lightning raised {type(theirs).__mro__}"


def test_key_error_keeps_the_message_unquoted() -> None:
    from fulmen.utilities.exceptions import MisconfigurationKeyError

    assert str(MisconfigurationKeyError("configure_optimizers returned {}")) == "configure_optimizers returned {}"
