"""Tests for fulmen.callbacks.stochastic_weight_avg."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import SWALR
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.model_checkpoint import ModelCheckpoint
from fulmen.callbacks.stochastic_weight_avg import (
    StochasticWeightAveraging,
    contains_batch_norm,
    swa_epoch_range,
)
from fulmen.utilities.exceptions import MisconfigurationException


def test_swa_epoch_range() -> None:
    assert swa_epoch_range(0.8, 10) == (7, 9)
    assert swa_epoch_range(3, 10) == (2, 9)
    assert swa_epoch_range(1, 5) == (0, 4)
    assert swa_epoch_range(0.0, 5) == (0, 4)


def test_contains_batch_norm() -> None:
    assert contains_batch_norm(nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1)))
    assert not contains_batch_norm(nn.Linear(1, 1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"swa_lrs": 0.1, "swa_epoch_start": 0}, r"swa_epoch_start=...\): got 0; expected an int >= 1"),
        ({"swa_lrs": 0.1, "swa_epoch_start": 1.5}, r"swa_epoch_start"),
        ({"swa_lrs": -0.1}, r"swa_lrs=...\): got -0.1; expected a positive float"),
        ({"swa_lrs": [0.1, 0]}, r"swa_lrs"),
        ({"swa_lrs": "0.1"}, r"swa_lrs"),
        ({"swa_lrs": 0.1, "annealing_epochs": -1}, r"annealing_epochs"),
        ({"swa_lrs": 0.1, "annealing_strategy": "exp"}, r"annealing_strategy=...\): got 'exp'"),
        ({"swa_lrs": 0.1, "avg_fn": 1}, r"avg_fn"),
        ({"swa_lrs": 0.1, "device": 0}, r"device"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        StochasticWeightAveraging(**kwargs)


class Recorder(L.LightningModule):
    def __init__(self, bn: bool = False, scheduler: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.bn = nn.BatchNorm1d(2) if bn else nn.Identity()
        self.layer = nn.Linear(2, 1)
        self.scheduler = scheduler
        self.epoch_end_weights: list[torch.Tensor] = []
        self.epoch_lrs: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.bn(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return (self(batch[0]) - 1).pow(2).mean()

    def on_train_epoch_end(self) -> None:
        self.epoch_end_weights.append(self.layer.weight.detach().clone())
        self.epoch_lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.5)
        if not self.scheduler:
            return opt
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)]


def _data() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    return DataLoader(
        TensorDataset(torch.randn(8, 2, generator=g) * 3 + 1), batch_size=4
    )  # 2 steps per epoch


def _fit(
    tmp_path: Path,
    callbacks: list[Any],
    model: L.LightningModule,
    max_epochs: int,
    ckpt_path: Any = None,
    checkpointing: bool = False,
    **kw: Any,
) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        default_root_dir=str(tmp_path),
        logger=False,
        enable_checkpointing=checkpointing,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )
    trainer.fit(model, _data(), ckpt_path=ckpt_path)
    return trainer


def test_averages_the_swa_epochs_and_anneals_the_lr(tmp_path: Path) -> None:
    model = Recorder(scheduler=True)
    cb = StochasticWeightAveraging(
        swa_lrs=0.05, swa_epoch_start=3, annealing_epochs=1, annealing_strategy="linear"
    )
    trainer = _fit(tmp_path, [cb], model, 5)
    assert (cb.swa_start, cb.swa_end) == (2, 4)
    assert int(cb.n_averaged) == 3  # type: ignore[arg-type]
    # the model ends with the mean of the weights after epochs 2, 3 and 4
    torch.testing.assert_close(model.layer.weight.detach(), torch.stack(model.epoch_end_weights[2:]).mean(0))
    # StepLR until SWA starts (0.5, 0.05), then SWALR takes over and anneals to swa_lr
    assert isinstance(trainer.lr_scheduler_configs[0].scheduler, SWALR)
    assert model.epoch_lrs[:2] == pytest.approx([0.05, 0.005])
    assert model.epoch_lrs[2:] == pytest.approx([0.05, 0.05, 0.05])


def test_early_stop_before_swa_end_keeps_trained_weights(tmp_path: Path) -> None:
    class StopEarly(Recorder):
        def on_train_epoch_end(self) -> None:
            super().on_train_epoch_end()
            if self.current_epoch == 2:
                self.trainer.should_stop = True

    model = StopEarly()
    cb = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2)
    _fit(tmp_path, [cb], model, 5)
    assert int(cb.n_averaged) == 2  # type: ignore[arg-type]
    torch.testing.assert_close(model.layer.weight.detach(), model.epoch_end_weights[-1])


def test_batch_norm_statistics_are_recomputed_for_the_average(tmp_path: Path) -> None:
    model = Recorder(bn=True)
    cb = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2)
    _fit(tmp_path, [cb], model, 3)
    batches = [b[0] for b in _data()]
    # BatchNorm sits on the input here, so its recomputed statistics are the cumulative average of the
    # per-batch statistics of one pass over the data (momentum=None), not what training left behind
    torch.testing.assert_close(model.bn.running_mean, torch.stack([b.mean(0) for b in batches]).mean(0))
    torch.testing.assert_close(model.bn.running_var, torch.stack([b.var(0) for b in batches]).mean(0))
    assert model.bn.momentum == 0.1  # restored after the pass


def test_rejects_several_optimizers_and_unbounded_epochs(tmp_path: Path) -> None:
    class TwoOpts(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            return None

        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.SGD(self.parameters(), lr=0.1)]

    with pytest.raises(
        MisconfigurationException, match="exactly 1 optimizer; configure_optimizers returned 2"
    ):
        _fit(tmp_path, [StochasticWeightAveraging(swa_lrs=0.1)], TwoOpts(), 2)
    with pytest.raises(MisconfigurationException, match=r"finite Trainer\(max_epochs=...\)"):
        _fit(tmp_path, [StochasticWeightAveraging(swa_lrs=0.1)], Recorder(), -1, max_steps=4)
    with pytest.raises(MisconfigurationException, match="2 values but the optimizer has 1 param groups"):
        _fit(tmp_path, [StochasticWeightAveraging(swa_lrs=[0.1, 0.2])], Recorder(), 2)


def test_resume_inside_swa_phase_is_exact(tmp_path: Path) -> None:
    def make_cb() -> StochasticWeightAveraging:
        return StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2, annealing_epochs=2)

    straight = Recorder(scheduler=True)
    _fit(tmp_path / "a", [make_cb()], straight, 5)

    ck = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_epochs=1, save_top_k=-1)
    first = Recorder(scheduler=True)
    _fit(tmp_path / "b", [make_cb(), ck], first, 5, checkpointing=True)
    mid = tmp_path / "ck" / "epoch=2-step=6.ckpt"  # after two averaged epochs (1 and 2)
    state = torch.load(mid, weights_only=True)["callbacks"]["StochasticWeightAveraging"]
    assert state["n_averaged"] == 2 and state["latest_update_epoch"] == 2
    assert state["scheduler_state"] is not None and set(state["average_model_state"]) >= {"layer.weight"}
    before_swa = torch.load(tmp_path / "ck" / "epoch=0-step=2.ckpt", weights_only=True)["callbacks"]
    assert before_swa["StochasticWeightAveraging"]["average_model_state"] is None  # nothing averaged yet

    resumed = Recorder(scheduler=True)
    cb = make_cb()
    _fit(tmp_path / "b", [cb], resumed, 5, ckpt_path=str(mid))
    assert int(cb.n_averaged) == 4  # type: ignore[arg-type]
    assert resumed.epoch_lrs == pytest.approx(straight.epoch_lrs[3:])
    torch.testing.assert_close(resumed.layer.weight, straight.layer.weight)
