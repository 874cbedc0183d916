"""Tests for fulmen.callbacks.lambda_function."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.callback import Callback
from fulmen.callbacks.lambda_function import LambdaCallback, callback_hook_names
from fulmen.utilities.exceptions import MisconfigurationException


def test_hook_names_cover_the_callback_api() -> None:
    names = callback_hook_names()
    assert {"setup", "teardown", "on_train_batch_end", "on_exception", "on_save_checkpoint"} <= set(names)
    assert not {"state_dict", "load_state_dict", "state_key"} & set(names)


def test_unknown_hook_and_non_callable_are_clear_errors() -> None:
    with pytest.raises(
        MisconfigurationException,
        match=r"'on_trian_start' is not a Callback hook. Did you mean 'on_train_start'",
    ):
        LambdaCallback(on_trian_start=lambda *a: None)
    with pytest.raises(
        MisconfigurationException, match=r"LambdaCallback\(setup=...\): got 3, which is not callable"
    ):
        LambdaCallback(setup=3)  # type: ignore[arg-type]


def test_only_given_hooks_count_as_overridden() -> None:
    cb = LambdaCallback(on_fit_start=lambda trainer, pl_module: None, teardown=None)
    assert isinstance(cb, LambdaCallback) and cb.state_key == "LambdaCallback"
    assert type(cb).on_fit_start is not Callback.on_fit_start
    assert type(cb).teardown is Callback.teardown and type(cb).setup is Callback.setup
    assert type(LambdaCallback()) is LambdaCallback
    # same hooks -> same generated class (no class per instance)
    assert type(LambdaCallback(on_fit_start=print)) is type(cb)


def test_copy_keeps_the_hooks() -> None:
    calls: list[str] = []
    cb = LambdaCallback(setup=lambda trainer, pl_module, stage: calls.append(stage))
    clone = copy.deepcopy(cb)
    clone.setup(None, None, "fit")  # type: ignore[arg-type]
    assert calls == ["fit"] and type(clone) is type(cb)


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_hooks_fire_in_a_real_fit(tmp_path: Path) -> None:
    calls: list[tuple[str, Any]] = []
    cb = LambdaCallback(
        setup=lambda trainer, pl_module, stage: calls.append(("setup", stage)),
        on_train_batch_end=lambda trainer, pl_module, outputs, batch, batch_idx: calls.append(
            ("batch_end", batch_idx)
        ),
        on_train_epoch_end=lambda trainer, pl_module: calls.append(("epoch_end", trainer.current_epoch)),
        teardown=lambda trainer, pl_module, stage: calls.append(("teardown", stage)),
    )
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[cb],
        default_root_dir=str(tmp_path),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2))
    assert calls == [
        ("setup", "fit"),
        ("batch_end", 0),
        ("batch_end", 1),
        ("epoch_end", 0),
        ("batch_end", 0),
        ("batch_end", 1),
        ("epoch_end", 1),
        ("teardown", "fit"),
    ]
