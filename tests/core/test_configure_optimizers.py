"""``configure_optimizers`` return forms (spec §1.4) and how the Trainer steps the schedulers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import fulmen as L
from fulmen.core.optimizer import LightningOptimizer, LRSchedulerConfig
from fulmen.utilities.exceptions import MisconfigurationException

LR = 1.0


def loader(n_batches: int = 2) -> DataLoader:
    return DataLoader(torch.randn(2 * n_batches, 4), batch_size=2)


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


class Model(L.LightningModule):
    """Returns whatever ``make(self)`` builds from ``configure_optimizers``."""

    def __init__(self, make: Callable[[Model], Any], automatic: bool = True) -> None:
        super().__init__()
        self.a = nn.Linear(4, 1)
        self.b = nn.Linear(4, 1)
        self.make = make
        self.automatic_optimization = automatic
        self.returned: Any = None
        self.seen_optimizers: Any = None

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> Any:
        loss = (self.a(batch) + self.b(batch)).pow(2).mean()
        if self.automatic_optimization:
            return loss
        self.seen_optimizers = self.optimizers()
        opts = self.seen_optimizers if isinstance(self.seen_optimizers, list) else [self.seen_optimizers]
        for opt in opts:
            opt.zero_grad()
        self.manual_backward(loss)
        for opt in opts:
            opt.step()
        return None

    def configure_optimizers(self) -> Any:
        self.returned = self.make(self)
        return self.returned


def sgd(params: Any) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=LR)


def step_lr(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.StepLR:
    return torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)


def fit(tmp_path: Path, model: Model, n_batches: int = 2, **trainer_kw: Any) -> L.Trainer:
    trainer = make_trainer(tmp_path, **trainer_kw)
    trainer.fit(model, train_dataloaders=loader(n_batches))
    return trainer


def assert_config(cfg: LRSchedulerConfig, scheduler: Any, **expected: Any) -> None:
    defaults = {
        "interval": "epoch",
        "frequency": 1,
        "monitor": None,
        "strict": True,
        "name": None,
        "reduce_on_plateau": False,
        "opt_idx": 0,
    }
    defaults.update(expected)
    assert cfg.scheduler is scheduler
    for key, value in defaults.items():
        assert getattr(cfg, key) == value, key


# ---------------------------------------------------------------------------------------------- return forms


def test_single_optimizer(tmp_path: Path) -> None:
    model = Model(lambda m: sgd(m.parameters()))
    trainer = fit(tmp_path, model)
    assert trainer.optimizers == [model.returned]
    assert trainer.lr_scheduler_configs == []
    assert model.lr_schedulers() is None
    wrapped = model.optimizers()
    assert isinstance(wrapped, LightningOptimizer)
    assert wrapped.optimizer is model.returned
    assert isinstance(wrapped, torch.optim.SGD) and not isinstance(wrapped, torch.optim.Adam)
    assert model.optimizers(use_pl_optimizer=False) is model.returned


@pytest.mark.parametrize("container", [list, tuple])
def test_sequence_of_one_optimizer(tmp_path: Path, container: type) -> None:
    model = Model(lambda m: container([sgd(m.parameters())]))
    trainer = fit(tmp_path, model)
    assert trainer.optimizers == [model.returned[0]]
    assert trainer.lr_scheduler_configs == []


@pytest.mark.parametrize("container", [list, tuple])
def test_sequence_of_two_optimizers_manual(tmp_path: Path, container: type) -> None:
    model = Model(
        lambda m: container([sgd(m.a.parameters()), torch.optim.Adam(m.b.parameters())]), automatic=False
    )
    trainer = fit(tmp_path, model)
    assert trainer.optimizers == list(model.returned)
    assert trainer.lr_scheduler_configs == []
    assert [o.optimizer for o in model.seen_optimizers] == list(model.returned)
    assert isinstance(model.seen_optimizers[1], torch.optim.Adam)
    assert trainer.global_step == 2 * 2  # manual: every opt.step() counts


def test_two_lists(tmp_path: Path) -> None:
    def make(m: Model) -> Any:
        opt = sgd(m.parameters())
        return [opt], [step_lr(opt)]

    model = Model(make)
    trainer = fit(tmp_path, model)
    (opt,), (sched,) = model.returned
    assert trainer.optimizers == [opt]
    assert len(trainer.lr_scheduler_configs) == 1
    assert_config(trainer.lr_scheduler_configs[0], sched)
    assert model.lr_schedulers() is sched


def test_two_lists_with_config_dicts_and_two_optimizers(tmp_path: Path) -> None:
    def make(m: Model) -> Any:
        o1, o2 = sgd(m.a.parameters()), sgd(m.b.parameters())
        s2 = torch.optim.lr_scheduler.ExponentialLR(o2, gamma=0.9)
        return [o1, o2], [{"scheduler": s2, "interval": "step", "name": "exp"}, step_lr(o1)]

    model = Model(make, automatic=False)
    trainer = fit(tmp_path, model)
    (o1, o2), (s2_cfg, s1) = model.returned
    assert trainer.optimizers == [o1, o2]
    assert_config(
        trainer.lr_scheduler_configs[0], s2_cfg["scheduler"], interval="step", name="exp", opt_idx=1
    )
    assert_config(trainer.lr_scheduler_configs[1], s1, opt_idx=0)
    assert model.lr_schedulers() == [s2_cfg["scheduler"], s1]


def test_dict_with_scheduler_object(tmp_path: Path) -> None:
    def make(m: Model) -> Any:
        opt = sgd(m.parameters())
        return {"optimizer": opt, "lr_scheduler": step_lr(opt)}

    model = Model(make)
    trainer = fit(tmp_path, model)
    assert trainer.optimizers == [model.returned["optimizer"]]
    assert_config(trainer.lr_scheduler_configs[0], model.returned["lr_scheduler"])


def test_dict_with_scheduler_config(tmp_path: Path) -> None:
    def make(m: Model) -> Any:
        opt = sgd(m.parameters())
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
        return {
            "optimizer": opt,
            "lr_scheduler": {
                "scheduler": sched,
                "interval": "step",
                "frequency": 3,
                "monitor": "loss",
                "strict": False,
                "name": "plateau",
            },
        }

    model = Model(make)
    trainer = fit(tmp_path, model)
    cfg_in = model.returned["lr_scheduler"]
    assert trainer.optimizers == [model.returned["optimizer"]]
    assert_config(
        trainer.lr_scheduler_configs[0],
        cfg_in["scheduler"],
        interval="step",
        frequency=3,
        monitor="loss",
        strict=False,
        name="plateau",
        reduce_on_plateau=True,
    )


def test_dict_with_top_level_monitor(tmp_path: Path) -> None:
    def make(m: Model) -> Any:
        opt = sgd(m.parameters())
        return {
            "optimizer": opt,
            "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt),
            "monitor": "val_loss",
        }

    model = Model(make)
    trainer = make_trainer(tmp_path)
    with pytest.raises(MisconfigurationException, match="val_loss"):  # monitored but never logged (strict)
        trainer.fit(model, train_dataloaders=loader())
    assert_config(
        trainer.lr_scheduler_configs[0],
        model.returned["lr_scheduler"],
        monitor="val_loss",
        reduce_on_plateau=True,
    )


def test_tuple_of_dicts_manual(tmp_path: Path) -> None:
    def make(m: Model) -> Any:
        o1, o2 = sgd(m.a.parameters()), torch.optim.Adam(m.b.parameters())
        return (
            {"optimizer": o1, "lr_scheduler": {"scheduler": step_lr(o1), "interval": "step"}},
            {"optimizer": o2, "lr_scheduler": step_lr(o2)},
            {"optimizer": sgd(m.b.parameters())},
        )

    model = Model(make, automatic=False)
    trainer = fit(tmp_path, model)
    d1, d2, d3 = model.returned
    assert trainer.optimizers == [d1["optimizer"], d2["optimizer"], d3["optimizer"]]
    assert len(trainer.lr_scheduler_configs) == 2
    assert_config(
        trainer.lr_scheduler_configs[0], d1["lr_scheduler"]["scheduler"], interval="step", opt_idx=0
    )
    assert_config(trainer.lr_scheduler_configs[1], d2["lr_scheduler"], opt_idx=1)
    # manual optimization: the user steps the schedulers, the Trainer does not
    assert d2["lr_scheduler"].last_epoch == 0
    assert d1["lr_scheduler"]["scheduler"].last_epoch == 0


def test_none_trains_without_optimizer(tmp_path: Path) -> None:
    model = Model(lambda m: None)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(UserWarning, match="returned `None`, this fit will run with no optimizer"):
        trainer = fit(tmp_path, model, n_batches=3)
    # as in Lightning: one stand-in optimizer whose step only runs the closure
    assert [type(o).__name__ for o in trainer.optimizers] == ["_MockOptimizer"]
    assert trainer.lr_scheduler_configs == []
    assert trainer.global_step == 3  # the batches still count as steps
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_scheduler_for_an_optimizer_not_returned(tmp_path: Path) -> None:
    def make(m: Model) -> Any:
        other = sgd(m.b.parameters())
        return [sgd(m.a.parameters())], [step_lr(other)]

    with pytest.raises(MisconfigurationException, match="Fix:"):
        fit(tmp_path, Model(make))


# ---------------------------------------------------------------------------------------------- stepping


class Recorder:
    """Wraps ``scheduler.step`` to record ``(global_step, current_epoch, args)`` at every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, tuple[Any, ...]]] = []
        self.trainer: L.Trainer | None = None

    def wrap(self, scheduler: Any) -> Any:
        original = scheduler.step

        def step(*args: Any, **kwargs: Any) -> Any:
            assert self.trainer is not None
            self.calls.append((self.trainer.global_step, self.trainer.current_epoch, args))
            return original(*args, **kwargs)

        scheduler.step = step
        return scheduler


def run_schedule(
    tmp_path: Path, config: dict[str, Any], n_batches: int = 4, max_epochs: int = 2
) -> tuple[Recorder, Model]:
    rec = Recorder()

    def make(m: Model) -> Any:
        opt = sgd(m.parameters())
        return {"optimizer": opt, "lr_scheduler": {"scheduler": rec.wrap(step_lr(opt)), **config}}

    model = Model(make)
    trainer = make_trainer(tmp_path, max_epochs=max_epochs)
    rec.trainer = trainer
    trainer.fit(model, train_dataloaders=loader(n_batches))
    return rec, model


def lr_of(model: Model) -> float:
    return model.returned["optimizer"].param_groups[0]["lr"]


def test_interval_step_every_optimizer_step(tmp_path: Path) -> None:
    rec, model = run_schedule(tmp_path, {"interval": "step"})
    assert [(g, e) for g, e, _ in rec.calls] == [
        (1, 0),
        (2, 0),
        (3, 0),
        (4, 0),
        (5, 1),
        (6, 1),
        (7, 1),
        (8, 1),
    ]
    assert lr_of(model) == pytest.approx(LR * 0.5**8)


def test_interval_step_with_frequency(tmp_path: Path) -> None:
    rec, model = run_schedule(tmp_path, {"interval": "step", "frequency": 2})
    assert [g for g, _, _ in rec.calls] == [2, 4, 6, 8]
    assert lr_of(model) == pytest.approx(LR * 0.5**4)


def test_interval_epoch_steps_once_per_epoch_at_the_last_batch(tmp_path: Path) -> None:
    rec, model = run_schedule(tmp_path, {"interval": "epoch"}, max_epochs=3)
    assert [(g, e) for g, e, _ in rec.calls] == [(4, 0), (8, 1), (12, 2)]
    assert lr_of(model) == pytest.approx(LR * 0.5**3)


def test_default_interval_is_epoch(tmp_path: Path) -> None:
    rec, model = run_schedule(tmp_path, {}, max_epochs=2)
    assert len(rec.calls) == 2
    assert lr_of(model) == pytest.approx(LR * 0.25)


def test_interval_epoch_with_frequency(tmp_path: Path) -> None:
    rec, model = run_schedule(tmp_path, {"interval": "epoch", "frequency": 2}, max_epochs=5)
    assert [e for _, e, _ in rec.calls] == [1, 3]  # after the 2nd and 4th epochs
    assert lr_of(model) == pytest.approx(LR * 0.25)


def test_epoch_scheduler_steps_before_end_of_epoch_validation(tmp_path: Path) -> None:
    """As in Lightning, epoch-interval schedulers step at the last batch, so validation sees the new lr."""
    val_lrs: list[float] = []

    class WithVal(Model):
        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            if batch_idx == 0:
                val_lrs.append(self.optimizers().param_groups[0]["lr"])

    def make(m: Model) -> Any:
        opt = sgd(m.parameters())
        return {"optimizer": opt, "lr_scheduler": step_lr(opt)}

    trainer = make_trainer(tmp_path, max_epochs=2)
    trainer.fit(WithVal(make), train_dataloaders=loader(2), val_dataloaders=loader(1))
    assert val_lrs == pytest.approx([LR * 0.5, LR * 0.25])


# ---------------------------------------------------------------------------------------------- ReduceLROnPlateau


VAL_LOSSES = [3.0, 2.0, 2.5, 2.75]  # improves once, then gets worse twice -> two reductions with patience=0


class PlateauModel(Model):
    def __init__(self, config: dict[str, Any]) -> None:
        def make(m: Model) -> Any:
            opt = sgd(m.parameters())
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, **config}}

        super().__init__(make)
        self.fed: list[tuple[float | None, float | None]] = []

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val_loss", VAL_LOSSES[self.current_epoch])

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        monitored = self.trainer.callback_metrics.get("val_loss")
        self.fed.append(
            (None if metric is None else float(metric), None if monitored is None else float(monitored))
        )
        super().lr_scheduler_step(scheduler, metric)


def test_reduce_on_plateau_steps_with_the_monitored_value(tmp_path: Path) -> None:
    model = PlateauModel({"monitor": "val_loss"})
    trainer = make_trainer(tmp_path, max_epochs=4)
    trainer.fit(model, train_dataloaders=loader(2), val_dataloaders=loader(1))
    assert [metric for metric, _ in model.fed] == VAL_LOSSES
    assert all(metric == monitored for metric, monitored in model.fed)
    assert lr_of(model) == pytest.approx(LR * 0.25)


def test_reduce_on_plateau_missing_metric_strict_raises(tmp_path: Path) -> None:
    model = PlateauModel({"monitor": "not_logged"})
    trainer = make_trainer(tmp_path, max_epochs=2)
    with pytest.raises(MisconfigurationException) as info:
        trainer.fit(model, train_dataloaders=loader(2), val_dataloaders=loader(1))
    msg = str(info.value)
    assert "not_logged" in msg and "val_loss" in msg and "strict" in msg and "Fix:" in msg


def test_reduce_on_plateau_missing_metric_not_strict_skips(tmp_path: Path) -> None:
    model = PlateauModel({"monitor": "not_logged", "strict": False})
    trainer = make_trainer(tmp_path, max_epochs=3)
    with pytest.warns(RuntimeWarning, match="not_logged"):
        trainer.fit(model, train_dataloaders=loader(2), val_dataloaders=loader(1))
    assert model.fed == []
    assert lr_of(model) == LR
    assert trainer.current_epoch == 3
