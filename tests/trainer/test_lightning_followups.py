"""Lightning 2.6.1 parity for details found after the main parity work (compared against the real Lightning).

Each test runs the same module code on both frameworks and compares what was observed. Skipped when
pytorch-lightning is not installed (it is in the dev extra, pinned to a clean release).
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

import fulmen as L

pl = pytest.importorskip("pytorch_lightning")

QUIET = dict(
    logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    accelerator="cpu", devices=1,
)


def loader(n: int) -> DataLoader:
    return DataLoader(torch.randn(2 * n, 4, generator=torch.Generator().manual_seed(0)), batch_size=2)


# ---------------------------------------------------------------------------------------------- lr schedulers


def _sched_module(base: type) -> type:
    class Model(base):  # type: ignore[misc, valid-type]
        def __init__(self, config: dict[str, Any], none_at: tuple[int, ...] = (), stop_at: int | None = None,
                     plateau: dict[str, Any] | None = None) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)
            self.config, self.none_at, self.stop_at, self.plateau = config, none_at, stop_at, plateau
            self.steps: list[tuple[int, int, str]] = []  # (epoch, batch_idx, which scheduler)

        def training_step(self, batch, batch_idx):
            loss = self.net(batch).pow(2).mean()
            self.log("train_loss", loss)
            return None if batch_idx in self.none_at else loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.net(batch).pow(2).mean() + self.current_epoch)

        def on_train_batch_start(self, batch, batch_idx):
            if self.stop_at is not None and batch_idx == self.stop_at:
                return -1
            return None

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            scheds = [{"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5), **self.config}]
            if self.plateau is not None:
                p = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.9)
                scheds.append({"scheduler": p, "monitor": "val_loss", **self.plateau})
            return [opt], scheds

        def lr_scheduler_step(self, scheduler, metric):
            kind = "plateau" if metric is not None else "plain"
            self.steps.append((self.current_epoch, self._batch_idx, kind))
            super().lr_scheduler_step(scheduler, metric)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.lrs.append((self.current_epoch, batch_idx, self.optimizers().param_groups[0]["lr"]))

    def tbs(self, batch, batch_idx, _orig=Model.on_train_batch_start):  # record the batch index first
        self._batch_idx = batch_idx
        return _orig(self, batch, batch_idx)

    Model.on_train_batch_start = tbs
    return Model


FSched, PSched = _sched_module(L.LightningModule), _sched_module(pl.LightningModule)

SCHED_CASES = {
    "step_f1": dict(config={"interval": "step"}),
    "step_f3": dict(config={"interval": "step", "frequency": 3}),
    "step_f3_acc2": dict(config={"interval": "step", "frequency": 3}, accumulate_grad_batches=2),
    "step_f1_acc2": dict(config={"interval": "step"}, accumulate_grad_batches=2),
    "step_f2_acc3": dict(config={"interval": "step", "frequency": 2}, accumulate_grad_batches=3),
    "step_f3_none": dict(config={"interval": "step", "frequency": 3}, none_at=(1, 2, 4)),
    "step_f2_acc2_none": dict(config={"interval": "step", "frequency": 2}, none_at=(3,), accumulate_grad_batches=2),
    "step_f2_stop": dict(config={"interval": "step", "frequency": 2}, stop_at=5),
    "epoch_f1_stop": dict(config={"interval": "epoch"}, stop_at=4),
    "plateau_step_f3": dict(config={"interval": "step", "frequency": 3},
                            plateau={"interval": "step", "frequency": 3}, val_check_interval=3),
    "plateau_step_f2_acc2": dict(config={"interval": "epoch"}, plateau={"interval": "step", "frequency": 2},
                                 val_check_interval=2, accumulate_grad_batches=2),
}


def _run_sched(framework: Any, cls: type, case: dict[str, Any], n_batches: int = 7, epochs: int = 3) -> Any:
    case = dict(case)
    model_kw = {k: case.pop(k) for k in ("config", "none_at", "stop_at", "plateau") if k in case}
    torch.manual_seed(0)  # the same weights (and so the same monitored val_loss) on both sides
    model = cls(**model_kw)
    model.lrs = []
    model._batch_idx = None
    val = loader(2) if model_kw.get("plateau") else None
    trainer = framework.Trainer(max_epochs=epochs, num_sanity_val_steps=0, **QUIET, **case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, train_dataloaders=loader(n_batches), val_dataloaders=val)
    return model.lrs, model.steps, trainer.global_step


@pytest.mark.parametrize("name", sorted(SCHED_CASES))
def test_scheduler_steps_at_the_same_batches_as_lightning(name: str) -> None:
    """Step-interval schedulers count the batches of the current epoch (``batch_idx + 1``, reset every epoch),
    skip while accumulating and step after a batch whose training_step returned None, as Lightning does."""
    case = SCHED_CASES[name]
    ours = _run_sched(L, FSched, case)
    theirs = _run_sched(pl, PSched, case)
    assert ours[1] == theirs[1]  # which scheduler stepped at which (epoch, batch)
    assert ours[0] == theirs[0]  # the lr seen in on_train_batch_end of every batch
    assert ours[2] == theirs[2]  # global_step


# ---------------------------------------------------------------------------------------------- no optimizer


def _no_opt_module(base: type) -> type:
    class Model(base):  # type: ignore[misc, valid-type]
        def __init__(self, bare_return: bool) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)
            self.bare_return = bare_return
            self.seen: list[Any] = []

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            # the stand-in optimizer (both frameworks name its class _MockOptimizer), wrapped in LightningOptimizer
            inner = type(opt.optimizer).__name__
            self.seen.append((batch_idx, self.trainer.global_step, inner, self.lr_schedulers()))
            return self.net(batch).pow(2).mean()

        def configure_optimizers(self):
            if self.bare_return:
                return
            return None

    return Model


FNoOpt, PNoOpt = _no_opt_module(L.LightningModule), _no_opt_module(pl.LightningModule)


def _run_no_opt(framework: Any, cls: type, bare_return: bool, tmp_path: Any) -> Any:
    torch.manual_seed(0)
    model = cls(bare_return)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = framework.Trainer(max_epochs=2, default_root_dir=tmp_path, **QUIET)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, train_dataloaders=loader(3))
    msgs = [str(w.message) for w in caught if "configure_optimizers" in str(w.message)]
    unchanged = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    stand_in = trainer.optimizers[0]
    return (msgs, model.seen, trainer.global_step, len(trainer.optimizers), unchanged, trainer.lr_scheduler_configs,
            stand_in.param_groups, stand_in.state_dict())  # no param groups (nothing for LearningRateMonitor)


@pytest.mark.parametrize("bare_return", [False, True])
def test_configure_optimizers_returning_none_warns_and_trains_without_stepping(tmp_path, bare_return) -> None:
    ours = _run_no_opt(L, FNoOpt, bare_return, tmp_path / "f")
    theirs = _run_no_opt(pl, PNoOpt, bare_return, tmp_path / "p")
    assert ours[1:] == theirs[1:]  # training_step ran on every batch, global_step counted, no weight changed
    assert len(ours[0]) == len(theirs[0]) == 1
    assert ours[0][0].startswith(theirs[0][0])  # Lightning's warning, then what it means and the fix


# ---------------------------------------------------------------------------------------------- eval on_step logging


def _eval_log_module(framework: Any) -> tuple[type, type]:
    class Rec(framework.loggers.Logger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[Any] = []

        name = "rec"
        version = 0

        def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
            pass

        def log_metrics(self, metrics, step=None) -> None:
            self.calls.append((step, dict(sorted(metrics.items()))))

    class Model(framework.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            self.log("t", float(batch_idx))
            return self.net(batch).pow(2).mean()

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("a", float(10 * dataloader_idx + batch_idx), on_step=True, on_epoch=True)
            self.log("b", float(100 + batch_idx), on_step=True, on_epoch=False)
            self.log("hidden", 1.0, on_step=True, logger=False)
            if batch_idx == 0:  # logged once: Lightning sends its last value again with the later batches
                self.log("c", 7.0, on_step=True, on_epoch=False)

        def test_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("ta", float(batch_idx), on_step=True, on_epoch=True)
            self.log("tb", float(batch_idx), on_step=True, on_epoch=False)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Rec, Model


def _run_eval_logging(framework: Any, multi: bool) -> list[Any]:
    import importlib

    importlib.import_module(f"{framework.__name__}.loggers")
    Rec, Model = _eval_log_module(framework)
    rec = Rec()
    trainer = framework.Trainer(
        max_epochs=2, logger=rec, log_every_n_steps=1, val_check_interval=0.5, num_sanity_val_steps=2,
        **{k: v for k, v in QUIET.items() if k != "logger"},
    )
    model = Model()
    vals = [loader(3), loader(2)] if multi else loader(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader(4), vals)
        rec.calls.append("validate")
        out = trainer.validate(model, vals, verbose=False)
        rec.calls.append(("validate returned", out, sorted(trainer.logged_metrics)))
        trainer.validate(model, vals, verbose=False)  # a second call starts its step count again
        rec.calls.append("test")
        trainer.test(model, vals, verbose=False)
    return rec.calls


@pytest.mark.parametrize("multi", [False, True], ids=["one_loader", "two_loaders"])
def test_eval_on_step_values_reach_the_loggers_as_in_lightning(multi: bool) -> None:
    """on_step values logged in validation_step/test_step go to the loggers after every batch (not in the sanity
    check) under Lightning's keys (``a_step``, ``b``, ``a_step/dataloader_idx_1``), at the evaluation loop's own
    step (counting on across one fit's validation runs, from 0 in each validate/test call), without 'epoch'."""
    ours = _run_eval_logging(L, multi)
    theirs = _run_eval_logging(pl, multi)
    assert ours == theirs
    assert any(isinstance(c, tuple) and "a_step" in "".join(c[1]) for c in ours)  # the check has teeth
