"""Tests for fulmen.callbacks.weight_averaging."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.model_checkpoint import ModelCheckpoint
from fulmen.callbacks.weight_averaging import (
    EMAWeightAveraging,
    WeightAveraging,
    copy_weights,
    make_averaged_model,
    swap_weights,
)
from fulmen.utilities.exceptions import MisconfigurationException

pytestmark = pytest.mark.filterwarnings("ignore:.*no val dataloader was found")


def test_make_averaged_model_shares_the_trainer() -> None:
    module = nn.Sequential(nn.Linear(2, 2))
    trainer = SimpleNamespace(big=torch.zeros(10))
    module.__dict__["_trainer"] = trainer
    module[0].__dict__["_trainer"] = trainer
    averaged = make_averaged_model(module, device="cpu", use_buffers=True)
    assert (
        averaged.module.__dict__["_trainer"] is trainer and averaged.module[0].__dict__["_trainer"] is trainer
    )
    assert averaged.module[0].weight is not module[0].weight
    assert torch.equal(averaged.module[0].weight, module[0].weight) and int(averaged.n_averaged) == 0


def test_swap_and_copy_weights() -> None:
    a, b = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        a.weight.fill_(1.0)
        b.weight.fill_(2.0)
        a.running_mean.fill_(3.0)
    swap_weights(a, b, with_buffers=False)
    assert a.weight.tolist() == [2.0, 2.0] and b.weight.tolist() == [1.0, 1.0]
    assert a.running_mean.tolist() == [3.0, 3.0] and b.running_mean.tolist() == [0.0, 0.0]
    copy_weights(a, b, with_buffers=True)
    assert b.weight.tolist() == [2.0, 2.0] and b.running_mean.tolist() == [3.0, 3.0]


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (WeightAveraging, {"device": 1.5}, r"WeightAveraging\(device=...\): got 1.5"),
        (WeightAveraging, {"bogus": 1}, r"\['bogus'\]"),
        (WeightAveraging, {"avg_fn": 3}, r"avg_fn"),
        (EMAWeightAveraging, {"decay": 1.5}, r"decay=...\): got 1.5; expected a float in \[0, 1\]"),
        (EMAWeightAveraging, {"update_every_n_steps": 0}, r"update_every_n_steps"),
        (EMAWeightAveraging, {"update_starting_at_step": -1}, r"update_starting_at_step"),
        (EMAWeightAveraging, {"update_starting_at_epoch": 1.0}, r"update_starting_at_epoch"),
        (EMAWeightAveraging, {"multi_avg_fn": print}, r"EMA defines its own"),
    ],
)
def test_bad_arguments(cls: type, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        cls(**kwargs)


def test_ema_should_update() -> None:
    ema = EMAWeightAveraging(update_every_n_steps=2, update_starting_at_step=3)
    assert [s for s in range(10) if ema.should_update(step_idx=s)] == [4, 6, 8]
    assert not ema.should_update(epoch_idx=5)
    by_epoch = EMAWeightAveraging(update_starting_at_epoch=1)
    assert not by_epoch.should_update(step_idx=0)
    by_epoch.on_train_epoch_start(SimpleNamespace(current_epoch=1), None)  # type: ignore[arg-type]
    assert by_epoch.should_update(step_idx=0)
    assert WeightAveraging().should_update(step_idx=0) and not WeightAveraging().should_update(epoch_idx=0)


class Recorder(L.LightningModule):
    """Records its weights after every step and what validation sees."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(2, 1)
        self.after_step: list[torch.Tensor] = []
        self.val_weights: list[torch.Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return (self.layer(batch[0]) - 1).pow(2).mean()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.after_step.append(self.layer.weight.detach().clone())

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.val_weights.append(self.layer.weight.detach().clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    return DataLoader(TensorDataset(torch.randn(8, 2, generator=g)), batch_size=2)  # 4 steps per epoch


def _fit(
    tmp_path: Path,
    callbacks: list[Any],
    model: L.LightningModule,
    max_epochs: int,
    val: bool = False,
    ckpt_path: Any = None,
    checkpointing: bool = False,
) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        default_root_dir=str(tmp_path),
        logger=False,
        enable_checkpointing=checkpointing,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, _data(), _data() if val else None, ckpt_path=ckpt_path)
    return trainer


def test_swa_average_of_every_step_swapped_in_for_validation_and_at_the_end(tmp_path: Path) -> None:
    model = Recorder()
    cb = WeightAveraging()
    _fit(tmp_path, [cb], model, 2, val=True)
    expected = torch.stack(model.after_step).mean(0)
    assert int(cb.average_model.n_averaged) == 8  # type: ignore[union-attr]
    torch.testing.assert_close(model.layer.weight.detach(), expected)
    # validation after epoch 0 saw the average of the first 4 steps, not the live weights
    torch.testing.assert_close(model.val_weights[0], torch.stack(model.after_step[:4]).mean(0))
    assert not torch.allclose(model.val_weights[0], model.after_step[3])


def test_ema_matches_a_hand_written_ema(tmp_path: Path) -> None:
    model = Recorder()
    _fit(tmp_path, [EMAWeightAveraging(decay=0.5, update_starting_at_step=2)], model, 2)
    ema = model.after_step[2]  # first update (step index 2) copies the weights
    for w in model.after_step[3:]:
        ema = 0.5 * ema + 0.5 * w
    torch.testing.assert_close(model.layer.weight.detach(), ema)


def test_checkpoint_holds_averaged_and_current_weights_and_resume_is_exact(tmp_path: Path) -> None:
    straight = Recorder()
    _fit(tmp_path / "a", [EMAWeightAveraging(decay=0.7)], straight, 4)

    # save_top_k=1 without a monitor keeps the latest, so last.ckpt is written at the last epoch end, before
    # on_train_end copies the average into the model (with save_top_k=0 Lightning 2.6.1 writes last.ckpt only at
    # train end, after that copy: a different case)
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, save_top_k=1)
    first = Recorder()
    _fit(tmp_path / "b", [EMAWeightAveraging(decay=0.7), ck], first, 2, checkpointing=True)
    ckpt = torch.load(ck.last_model_path, weights_only=True)
    live = first.after_step[-1]
    torch.testing.assert_close(ckpt["current_model_state"]["layer.weight"], live)
    assert not torch.allclose(
        ckpt["state_dict"]["layer.weight"], live
    )  # the EMA, what load_from_checkpoint gets
    assert int(ckpt["averaging_state"]["n_averaged"]) == 8
    assert ckpt["callbacks"]["EMAWeightAveraging"] == {"latest_update_step": 8, "latest_update_epoch": -1}

    resumed = Recorder()
    cb = EMAWeightAveraging(decay=0.7)
    _fit(tmp_path / "b", [cb], resumed, 4, ckpt_path=ck.last_model_path)
    assert int(cb.average_model.n_averaged) == 16  # type: ignore[union-attr]
    # training resumed from the live weights (not the average) and the average continued
    torch.testing.assert_close(resumed.after_step, straight.after_step[8:])
    torch.testing.assert_close(resumed.layer.weight, straight.layer.weight)


def test_checkpoint_without_averaging_state_starts_both_from_it(tmp_path: Path) -> None:
    # save_top_k=1 without a monitor keeps the latest, so last.ckpt is written at the last epoch end, before
    # on_train_end copies the average into the model (with save_top_k=0 Lightning 2.6.1 writes last.ckpt only at
    # train end, after that copy: a different case)
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, save_top_k=1)
    plain = Recorder()
    _fit(tmp_path, [ck], plain, 1, checkpointing=True)
    cb = WeightAveraging()
    with pytest.warns(UserWarning, match="not created with WeightAveraging"):
        _fit(tmp_path, [cb], Recorder(), 2, ckpt_path=ck.last_model_path)
    assert int(cb.average_model.n_averaged) == 4  # type: ignore[union-attr]


def test_use_buffers_false_keeps_live_buffers_in_checkpoint(tmp_path: Path) -> None:
    class WithBN(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm1d(2)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return (self.layer(self.bn(batch[0])) - 1).pow(2).mean()

    # save_top_k=1 without a monitor keeps the latest, so last.ckpt is written at the last epoch end, before
    # on_train_end copies the average into the model (with save_top_k=0 Lightning 2.6.1 writes last.ckpt only at
    # train end, after that copy: a different case)
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, save_top_k=1)
    model = WithBN()
    _fit(tmp_path, [WeightAveraging(use_buffers=False), ck], model, 1, checkpointing=True)
    ckpt = torch.load(ck.last_model_path, weights_only=True)
    torch.testing.assert_close(
        ckpt["state_dict"]["bn.running_mean"], ckpt["current_model_state"]["bn.running_mean"]
    )
    assert float(ckpt["state_dict"]["bn.running_mean"].abs().sum()) > 0
