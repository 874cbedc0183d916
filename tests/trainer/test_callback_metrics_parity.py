"""``trainer.callback_metrics`` after validate/test and after the validation inside fit: a validation/test run
contributes only its epoch-level values (no ``*_step`` keys, no on_step-only names), as in Lightning; training
step values stay. Compared key by key with pytorch_lightning where installed."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen

pl = pytest.importorskip("pytorch_lightning")


def _classes(lib: Any) -> tuple[type, type]:
    class Net(lib.LightningModule):
        def __init__(self, two_val_loaders: bool = False) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.two = two_val_loaders

        def _value(self, batch):
            return self.layer(batch[0]).pow(2).mean()

        def training_step(self, batch, batch_idx):
            loss = self._value(batch)
            self.log("t_both", loss, on_step=True, on_epoch=True)
            self.log("t_step", loss, on_step=True, on_epoch=False)
            self.log("t_epoch", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            v = self._value(batch)
            self.log("v_both", v, on_step=True, on_epoch=True, prog_bar=True)
            self.log("v_step", v, on_step=True, on_epoch=False)
            self.log("v_epoch", v)

        def on_validation_epoch_end(self) -> None:
            self.log("v_hook", 1.0)

        def test_step(self, batch, batch_idx):
            v = self._value(batch)
            self.log("x_both", v, on_step=True, on_epoch=True)
            self.log("x_step", v, on_step=True, on_epoch=False)
            self.log("x_epoch", v)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Spy(lib.Callback):
        def __init__(self) -> None:
            self.seen: dict[str, list[str]] = {}

        def on_validation_batch_end(self, trainer, *args) -> None:
            self.seen.setdefault("validation_batch_end", sorted(trainer.callback_metrics))

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            self.seen.setdefault("validation_epoch_end", sorted(trainer.callback_metrics))

        def on_validation_end(self, trainer, pl_module) -> None:
            self.seen.setdefault("validation_end", sorted(trainer.callback_metrics))

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.seen.setdefault("train_epoch_end", sorted(trainer.callback_metrics))

    return Net, Spy


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=4)


def _keys(lib: Any, val_check_interval: float, two_val_loaders: bool) -> dict[str, Any]:
    Net, Spy = _classes(lib)
    spy = Spy()
    kw = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
    trainer = lib.Trainer(max_epochs=1, num_sanity_val_steps=0, val_check_interval=val_check_interval,
                          callbacks=[spy], **kw)
    model = Net(two_val_loaders)
    val = [_loader(), _loader()] if two_val_loaders else _loader()
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, _loader(), val)
        out["fit"] = sorted(trainer.callback_metrics)
        out["fit_hooks"] = spy.seen
        trainer.validate(model, val, verbose=False)
        out["validate"] = sorted(trainer.callback_metrics)
        trainer.test(model, _loader(), verbose=False)
        out["test"] = sorted(trainer.callback_metrics)
        fresh = lib.Trainer(**kw)
        fresh.validate(model, val, verbose=False)
        out["fresh_validate"] = sorted(fresh.callback_metrics)
        out["progress_bar"] = sorted(fresh.progress_bar_metrics)
    return out


@pytest.mark.parametrize("two_val_loaders", [False, True], ids=["one_val_loader", "two_val_loaders"])
@pytest.mark.parametrize("val_check_interval", [1.0, 0.5])
def test_callback_metrics_keys_match_lightning(val_check_interval, two_val_loaders) -> None:
    ours = _keys(fulmen, val_check_interval, two_val_loaders)
    assert ours == _keys(pl, val_check_interval, two_val_loaders)
    if not two_val_loaders:
        assert ours["validate"] == ["v_both", "v_both_epoch", "v_epoch", "v_hook"]
        assert ours["test"] == ["x_both", "x_both_epoch", "x_epoch"]
        # training step values stay (a training collection's step values reach callbacks)
        assert {"t_both_step", "t_step"} <= set(ours["fit"]) and "v_both_step" not in ours["fit"]
        # the bar still shows the evaluation step values
        assert "v_both_step" in ours["progress_bar"]
