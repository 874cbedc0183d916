"""``self.log`` corners that Lightning programs rely on, run on fulmen and on the real pytorch_lightning 2.6.1.

Each test runs the same module on both libraries (``lib`` parameter) and pins the observed values: the pinned
numbers are what Lightning 2.6.1 produced, so a fulmen regression and a drift in the reference both fail.
"""

from __future__ import annotations

import importlib
import statistics
import warnings
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

LIBS = ["fulmen", "pytorch_lightning"]


def _lib(name: str) -> ModuleType:
    if name == "pytorch_lightning":
        pytest.importorskip("pytorch_lightning")
    warnings.filterwarnings("ignore")
    return importlib.import_module(name)


def _recorder(lib: ModuleType) -> Any:
    class Recorder(importlib.import_module(f"{lib.__name__}.loggers").Logger):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[Any, dict[str, float]]] = []

        @property
        def name(self) -> str:
            return "rec"

        @property
        def version(self) -> int:
            return 0

        def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
            pass

        def log_metrics(self, metrics: Mapping[str, float], step: Any = None) -> None:
            self.calls.append((step, {k: float(v) for k, v in metrics.items()}))

    return Recorder()


def _trainer(lib: ModuleType, **kw: Any) -> Any:
    base = {
        "max_epochs": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
    }
    base.update(kw)
    return lib.Trainer(**base)


def _loader(n: int = 8) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(n, 2)), batch_size=2)


def _floats(d: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(d.items())}


# ---------------------------------------------------------------------------------------------------- reduce_fx
ACCEPTED = {"b_max": max, "b_min": min, "b_sum": sum, "t_max": torch.max, "t_min": torch.min, "t_sum": torch.sum,
            "t_mean": torch.mean, "s_MAX": "MAX", "s_min": "min", "s_sum": "sum", "s_Mean": "Mean", "s_avg": "avg"}
EXPECTED_EPOCH = {"b_max": 4.0, "b_min": 1.0, "b_sum": 10.0, "t_max": 4.0, "t_min": 1.0, "t_sum": 10.0, "t_mean": 2.5,
                  "s_MAX": 4.0, "s_min": 1.0, "s_sum": 10.0, "s_Mean": 2.5, "s_avg": 2.5}
REFUSED = {"lambda": lambda x: x.max(), "statistics.mean": statistics.mean, "torch.amax": torch.amax,
           "torch.median": torch.median, "median": "median", "Tensor.max": torch.Tensor.max}


@pytest.mark.parametrize("lib_name", LIBS)
def test_reduce_fx_accepts_what_lightning_accepts(lib_name: str) -> None:
    lib = _lib(lib_name)
    refused: dict[str, str] = {}

    class M(lib.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            for name, fx in ACCEPTED.items():
                self.log(name, float(batch_idx + 1), reduce_fx=fx, on_step=False, on_epoch=True)
            for name, fx in REFUSED.items():
                try:
                    self.log(name, 1.0, reduce_fx=fx, on_epoch=True)
                except Exception as exc:  # noqa: BLE001 - the type is what is checked
                    refused[name] = type(exc).__name__
            return self.layer(batch[0]).sum()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = _trainer(lib)
    trainer.fit(M(), _loader())
    assert refused == dict.fromkeys(REFUSED, "MisconfigurationException")
    got = _floats(trainer.callback_metrics)
    assert got == EXPECTED_EPOCH


# ---------------------------------------------------------------------------------------------------- "step" key
@pytest.mark.parametrize("lib_name", LIBS)
def test_a_logged_step_value_is_the_logger_step(lib_name: str) -> None:
    lib = _lib(lib_name)

    class M(lib.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            self.log("loss", float(batch_idx))
            self.log("step", torch.tensor(10.7 + batch_idx))  # truncated to an int
            return self.layer(batch[0]).sum()

        def on_train_epoch_end(self) -> None:
            self.log("e", 1.0)
            self.log("step", 77.0)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("v", float(batch_idx), on_step=True)
            self.log("step", float(200 + batch_idx), on_step=True, on_epoch=False)  # eval batches: a plain metric

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self.log("x", float(batch_idx))
            self.log("step", float(300 + batch_idx))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    rec = _recorder(lib)
    trainer = _trainer(lib, logger=rec, limit_val_batches=2)
    trainer.fit(M(), _loader(), _loader())
    trainer.test(M(), _loader(), verbose=False)
    assert rec.calls == [
        (10, {"loss": 0.0}),
        (11, {"loss": 1.0}),
        (12, {"loss": 2.0}),
        (13, {"loss": 3.0}),
        (0, {"v_step": 0.0, "step": 200.0}),
        (1, {"v_step": 1.0, "step": 201.0}),
        (3, {"v_epoch": 0.5, "epoch": 0.0}),
        (77, {"e": 1.0}),  # no "epoch" key when the step comes from the logged value
        (301, {"x": 1.5}),
    ]
    assert all(type(step) is int for step, _ in rec.calls)
    assert _floats(trainer.logged_metrics) == {"step": 301.5, "x": 1.5}  # logged_metrics keeps "step"


# ---------------------------------------------------------------------------------------------------- same name
@pytest.mark.parametrize("lib_name", LIBS)
def test_one_name_from_several_hooks_and_from_callbacks(lib_name: str) -> None:
    """The same name from two hooks is allowed; the hook that logs later wins. A callback and the module logging
    one name in the same hook share one accumulator (a mean of both values)."""
    lib = _lib(lib_name)

    class M(lib.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            self.log("a", float(batch_idx))
            self.log("b", float(batch_idx), on_epoch=True)
            self.log("c", float(batch_idx), on_step=False, on_epoch=True)
            return self.layer(batch[0]).sum()

        def on_train_batch_end(self, *args: Any) -> None:
            self.log("a", 50.0)
            self.log("c", 60.0, on_step=False, on_epoch=True)

        def on_train_epoch_end(self) -> None:
            self.log("b", 42.0)
            self.log("c", 43.0)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("v", float(batch_idx))
            self.log("w", float(batch_idx), on_step=True)

        def on_validation_epoch_end(self) -> None:
            self.log("v", 99.0)
            self.log("w", 98.0)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class CB(lib.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            pl_module.log("cb_batch", 5.0)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            pl_module.log("b", 77.0)

        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            pl_module.log("v", 55.0)

    rec = _recorder(lib)
    trainer = _trainer(lib, logger=rec, limit_val_batches=2, callbacks=[CB()])
    trainer.fit(M(), _loader(), _loader())
    assert rec.calls[0] == (0, {"a": 50.0, "b_step": 0.0, "cb_batch": 5.0, "epoch": 0.0})
    assert rec.calls[-2:] == [
        (3, {"v": 77.0, "w_epoch": 0.5, "w": 98.0, "epoch": 0.0}),
        (3, {"b_epoch": 1.5, "c": 43.0, "b": 59.5, "epoch": 0.0}),
    ]
    assert _floats(trainer.callback_metrics) == {
        "a": 50.0, "b": 59.5, "b_epoch": 1.5, "b_step": 3.0, "c": 43.0, "cb_batch": 5.0, "v": 77.0, "w": 98.0,
        "w_epoch": 0.5,
    }


# ---------------------------------------------------------------------------------------------------- permissions
_COMBOS = [(s, e) for s in (None, True, False) for e in (None, True, False)]
_CALLBACK_HOOKS = [
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
    "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start",
    "on_train_batch_end", "on_validation_start", "on_validation_end", "on_validation_epoch_start",
    "on_validation_epoch_end", "on_validation_batch_start", "on_validation_batch_end", "on_test_start", "on_test_end",
    "on_test_epoch_start", "on_test_epoch_end", "on_test_batch_start", "on_test_batch_end", "on_predict_start",
    "on_predict_end", "on_predict_epoch_start", "on_predict_epoch_end", "on_predict_batch_start",
    "on_predict_batch_end", "on_save_checkpoint", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad",
]
_MODULE_HOOKS = [
    "on_fit_start", "on_train_start", "on_train_epoch_start", "on_train_batch_start", "on_before_batch_transfer",
    "on_after_batch_transfer", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
    "on_before_zero_grad", "optimizer_zero_grad", "configure_gradient_clipping", "lr_scheduler_step",
    "on_train_batch_end", "on_train_epoch_end", "on_validation_epoch_start", "on_validation_batch_start",
    "on_validation_batch_end", "on_validation_epoch_end", "on_validation_end", "on_test_epoch_start",
    "on_test_epoch_end", "on_predict_epoch_start", "on_predict_batch_end", "on_train_end", "on_fit_end", "setup",
]


def _permission_table(lib_name: str) -> dict[str, dict[str, Any]]:
    lib = _lib(lib_name)
    table: dict[str, dict[str, Any]] = {}

    def meta_of(trainer: Any, name: str) -> Any:
        results = trainer._results
        if results is None:
            return None
        entries = results.values() if lib_name == "pytorch_lightning" else results.metrics.values()
        for entry in entries:
            if entry.meta.name == name:
                return (entry.meta.on_step, entry.meta.on_epoch)
        return None

    def probe(owner: str, hook: str, module: Any) -> None:
        key = f"{owner}.{hook}"
        if key in table:
            return
        out: dict[str, Any] = {}
        for s, e in _COMBOS:
            name = f"p_{owner}_{hook}_{s}_{e}"
            try:
                module.log(name, 1.0, on_step=s, on_epoch=e)
                out[f"{s},{e}"] = "ok"
                if s is None and e is None:
                    out["default"] = meta_of(module.trainer, name)
            except Exception as exc:  # noqa: BLE001 - the type is what is compared
                out[f"{s},{e}"] = type(exc).__name__
        table[key] = out

    def module_hook(hook: str) -> Any:
        def fn(self: Any, *args: Any, **kwargs: Any) -> Any:
            probe("M", hook, self)
            return getattr(lib.LightningModule, hook)(self, *args, **kwargs)

        return fn

    def callback_hook(hook: str) -> Any:
        def fn(self: Any, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
            probe("C", hook, pl_module)

        return fn

    class Base(lib.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            probe("M", "training_step", self)
            return self.layer(batch[0]).sum()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            probe("M", "validation_step", self)

        def test_step(self, batch: Any, batch_idx: int) -> None:
            probe("M", "test_step", self)

        def predict_step(self, batch: Any, batch_idx: int) -> Any:
            probe("M", "predict_step", self)
            return self.layer(batch[0])

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1)}

    Module = type("Module", (Base,), {h: module_hook(h) for h in _MODULE_HOOKS})
    Probe = type("Probe", (lib.Callback,), {h: callback_hook(h) for h in _CALLBACK_HOOKS})
    trainer = _trainer(lib, callbacks=[Probe()], num_sanity_val_steps=1, enable_checkpointing=True,
                       limit_train_batches=2, limit_val_batches=1, limit_test_batches=1, limit_predict_batches=1)
    module = Module()
    trainer.fit(module, _loader(4), _loader(4))
    trainer.test(module, _loader(4), verbose=False)
    trainer.predict(module, _loader(4))
    return table


def test_where_self_log_is_allowed_matches_lightning() -> None:
    """Module and callback hooks: which on_step/on_epoch combinations are accepted, the exception type otherwise,
    and the defaults, as in Lightning."""
    pytest.importorskip("pytorch_lightning")
    ours, theirs = _permission_table("fulmen"), _permission_table("pytorch_lightning")
    assert set(ours) == set(theirs) and len(ours) > 55
    assert {k: v for k, v in ours.items() if v != theirs[k]} == {}
    # callbacks log from their batch and epoch hooks with the hook's defaults
    assert ours["C.on_train_batch_end"]["default"] == (True, False)
    assert ours["C.on_validation_batch_end"]["default"] == (False, True)
    assert ours["C.on_train_epoch_end"]["default"] == (False, True)
    assert ours["C.on_fit_start"]["None,None"] == "MisconfigurationException"
