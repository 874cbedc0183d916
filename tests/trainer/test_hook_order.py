"""The exact hook order of fit/validate/test/predict, pinned against Lightning's (spec §1.1).

A LightningModule that overrides every hook and a Callback that overrides every callback hook both
append ``(name, *args summary)`` to one shared list; callback entries are prefixed ``Callback.``. The
expected sequences below are written out from the spec (not from what the code does), with small
helpers for the shapes that repeat (batch transfer, one training batch, one evaluation epoch).

Entries are recorded on *entry* to each hook, so a hook that calls another (``optimizer_step`` runs
the closure: ``training_step``, zero_grad, backward) appears before what it calls.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.callback import Callback
from fulmen.core.optimizer import LightningOptimizer

QUIET: dict[str, Any] = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}

Call = tuple[Any, ...]


def loader(n_batches: int, bs: int = 2, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    n = n_batches * bs
    return DataLoader(
        TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g)), batch_size=bs
    )


# ---------------------------------------------------------------------------------------------- recorders


class HookedModel(L.LightningModule):
    """Overrides every LightningModule hook; each records itself, then does the default work."""

    def __init__(
        self,
        calls: list[Call],
        *,
        n_train: int = 2,
        n_val: int = 2,
        sched_interval: str | None = "step",
        stop_at: int | None = None,
    ) -> None:
        super().__init__()
        self.calls = calls
        self.layer = torch.nn.Linear(4, 2)
        self.n_train = n_train
        self.n_val = n_val
        self.sched_interval = sched_interval
        self.stop_at = stop_at
        self.optimizer_types: list[type] = []

    def rec(self, *entry: Any) -> None:
        self.calls.append(entry)

    # ---- configuration and data
    def configure_callbacks(self) -> Any:
        self.rec("configure_callbacks")
        return []

    def prepare_data(self) -> None:
        self.rec("prepare_data")

    def setup(self, stage: str) -> None:
        self.rec("setup", stage)

    def configure_model(self) -> None:
        self.rec("configure_model")

    def configure_optimizers(self) -> Any:
        self.rec("configure_optimizers")
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        if self.sched_interval is None:
            return opt
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.sched_interval}}

    def train_dataloader(self) -> Any:
        self.rec("train_dataloader")
        return loader(self.n_train)

    def val_dataloader(self) -> Any:
        self.rec("val_dataloader")
        return loader(self.n_val, seed=1)

    def test_dataloader(self) -> Any:
        self.rec("test_dataloader")
        return loader(self.n_val, seed=2)

    def predict_dataloader(self) -> Any:
        self.rec("predict_dataloader")
        return loader(self.n_val, seed=3)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        self.rec("on_before_batch_transfer", dataloader_idx)
        return super().on_before_batch_transfer(batch, dataloader_idx)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        self.rec("transfer_batch_to_device", dataloader_idx)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        self.rec("on_after_batch_transfer", dataloader_idx)
        return super().on_after_batch_transfer(batch, dataloader_idx)

    # ---- steps
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rec("forward")
        return self.layer(x)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.rec("training_step", batch_idx)
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        self.rec("validation_step", batch_idx)
        self(batch[0])

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        self.rec("test_step", batch_idx)
        self(batch[0])

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        self.rec("predict_step", batch_idx)
        return self(batch[0])

    # ---- lifecycle
    def on_fit_start(self) -> None:
        self.rec("on_fit_start")

    def on_fit_end(self) -> None:
        self.rec("on_fit_end")

    def on_train_start(self) -> None:
        self.rec("on_train_start")

    def on_train_end(self) -> None:
        self.rec("on_train_end")

    def on_train_epoch_start(self) -> None:
        self.rec("on_train_epoch_start")

    def on_train_epoch_end(self) -> None:
        self.rec("on_train_epoch_end")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any:
        self.rec("on_train_batch_start", batch_idx)
        return -1 if batch_idx == self.stop_at else None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.rec("on_train_batch_end", batch_idx)

    def teardown(self, stage: str) -> None:
        self.rec("teardown", stage)

    # ---- optimisation
    def zero_grad(self, set_to_none: bool = True) -> None:
        self.rec("zero_grad")
        super().zero_grad(set_to_none)

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        self.rec("optimizer_step", epoch, batch_idx)
        self.optimizer_types.append(type(optimizer))  # the real type, not the ``__class__`` it reports
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)

    def on_before_zero_grad(self, optimizer: Any) -> None:
        self.rec("on_before_zero_grad")

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        self.rec("optimizer_zero_grad", epoch, batch_idx)
        super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self.rec("on_before_backward")

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        self.rec("backward")
        super().backward(loss, *args, **kwargs)

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        self.rec("manual_backward")
        super().manual_backward(loss, *args, **kwargs)

    def on_after_backward(self) -> None:
        self.rec("on_after_backward")

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.rec("on_before_optimizer_step")

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        self.rec("configure_gradient_clipping", gradient_clip_val, gradient_clip_algorithm)
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def clip_gradients(
        self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        self.rec("clip_gradients", gradient_clip_val, gradient_clip_algorithm)
        super().clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        self.rec("lr_scheduler_step", metric)
        super().lr_scheduler_step(scheduler, metric)

    # ---- evaluation
    def on_validation_model_zero_grad(self) -> None:
        self.rec("on_validation_model_zero_grad")
        super().on_validation_model_zero_grad()

    def on_validation_model_eval(self) -> None:
        self.rec("on_validation_model_eval")
        super().on_validation_model_eval()

    def on_validation_model_train(self) -> None:
        self.rec("on_validation_model_train")
        super().on_validation_model_train()

    def on_test_model_eval(self) -> None:
        self.rec("on_test_model_eval")
        super().on_test_model_eval()

    def on_test_model_train(self) -> None:
        self.rec("on_test_model_train")
        super().on_test_model_train()

    def on_predict_model_eval(self) -> None:
        self.rec("on_predict_model_eval")
        super().on_predict_model_eval()

    def on_validation_start(self) -> None:
        self.rec("on_validation_start")

    def on_validation_end(self) -> None:
        self.rec("on_validation_end")

    def on_validation_epoch_start(self) -> None:
        self.rec("on_validation_epoch_start")

    def on_validation_epoch_end(self) -> None:
        self.rec("on_validation_epoch_end")

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.rec("on_validation_batch_start", batch_idx, dataloader_idx)

    def on_validation_batch_end(
        self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.rec("on_validation_batch_end", batch_idx, dataloader_idx)

    def on_test_start(self) -> None:
        self.rec("on_test_start")

    def on_test_end(self) -> None:
        self.rec("on_test_end")

    def on_test_epoch_start(self) -> None:
        self.rec("on_test_epoch_start")

    def on_test_epoch_end(self) -> None:
        self.rec("on_test_epoch_end")

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.rec("on_test_batch_start", batch_idx, dataloader_idx)

    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.rec("on_test_batch_end", batch_idx, dataloader_idx)

    def on_predict_start(self) -> None:
        self.rec("on_predict_start")

    def on_predict_end(self) -> None:
        self.rec("on_predict_end")

    def on_predict_epoch_start(self) -> None:
        self.rec("on_predict_epoch_start")

    def on_predict_epoch_end(self) -> None:
        self.rec("on_predict_epoch_end")

    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.rec("on_predict_batch_start", batch_idx, dataloader_idx)

    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.rec("on_predict_batch_end", batch_idx, dataloader_idx)

    # ---- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.rec("on_save_checkpoint")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.rec("on_load_checkpoint")


class ManualModel(HookedModel):
    """Manual optimization: zero_grad / manual_backward / step inside training_step."""

    def __init__(self, calls: list[Call], **kw: Any) -> None:
        super().__init__(calls, **kw)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.rec("training_step", batch_idx)
        opt = self.optimizers()
        opt.zero_grad()
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.manual_backward(loss)
        opt.step()
        return loss


class HookedCallback(Callback):
    """Overrides every Callback hook; each records ``Callback.<name>``."""

    def __init__(self, calls: list[Call]) -> None:
        self.calls = calls

    def rec(self, *entry: Any) -> None:
        self.calls.append(("Callback." + entry[0], *entry[1:]))

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.rec("setup", stage)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.rec("teardown", stage)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_fit_start")

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_fit_end")

    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_sanity_check_start")

    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_sanity_check_end")

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_train_start")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_train_end")

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_train_epoch_start")

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_train_epoch_end")

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.rec("on_train_batch_start", batch_idx)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.rec("on_train_batch_end", batch_idx)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_validation_start")

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_validation_end")

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_validation_epoch_start")

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_validation_epoch_end")

    def on_validation_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.rec("on_validation_batch_start", batch_idx, dataloader_idx)

    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.rec("on_validation_batch_end", batch_idx, dataloader_idx)

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_test_start")

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_test_end")

    def on_test_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_test_epoch_start")

    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_test_epoch_end")

    def on_test_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.rec("on_test_batch_start", batch_idx, dataloader_idx)

    def on_test_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.rec("on_test_batch_end", batch_idx, dataloader_idx)

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_predict_start")

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_predict_end")

    def on_predict_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_predict_epoch_start")

    def on_predict_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_predict_epoch_end")

    def on_predict_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.rec("on_predict_batch_start", batch_idx, dataloader_idx)

    def on_predict_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.rec("on_predict_batch_end", batch_idx, dataloader_idx)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.rec("on_exception", type(exception).__name__)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        self.rec("on_before_backward")

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        self.rec("on_after_backward")

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.rec("on_before_optimizer_step")

    def on_before_zero_grad(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.rec("on_before_zero_grad")

    def state_dict(self) -> dict[str, Any]:
        self.rec("state_dict")
        return {"foo": True}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rec("load_state_dict", state_dict)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self.rec("on_save_checkpoint")

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self.rec("on_load_checkpoint")


# ---------------------------------------------------------------------------------------------- expected shapes


def both(name: str, *args: Any) -> list[Call]:
    """``Callback.X`` always runs immediately before the LightningModule's ``X``."""
    return [("Callback." + name, *args), (name, *args)]


def transfer(dataloader_idx: int = 0) -> list[Call]:
    return [
        ("on_before_batch_transfer", dataloader_idx),
        ("transfer_batch_to_device", dataloader_idx),
        ("on_after_batch_transfer", dataloader_idx),
    ]


def train_batch(
    i: int,
    epoch: int = 0,
    *,
    step: bool = True,
    zero: bool = True,
    sched: bool = True,
    clip: Call = (None, "norm"),
) -> list[Call]:
    """One automatic-optimization batch (spec §1.1 step 8), in call-entry order."""
    closure = [("training_step", i), ("forward",)]
    if zero:  # first batch of an accumulation window: zero_grad inside the closure, before backward
        closure += [*both("on_before_zero_grad"), ("optimizer_zero_grad", epoch, i)]
    closure += [*both("on_before_backward"), ("backward",), *both("on_after_backward")]
    out = [*transfer(), *both("on_train_batch_start", i)]
    if step:
        out += [
            ("optimizer_step", epoch, i),
            *closure,
            *both("on_before_optimizer_step"),
            ("configure_gradient_clipping", *clip),
            ("clip_gradients", *clip),
        ]
        if sched:
            out += [("lr_scheduler_step", None)]
    else:  # a non-stepping accumulation batch: only the closure runs
        out += closure
    return out + both("on_train_batch_end", i)


def manual_batch(i: int) -> list[Call]:
    return [
        *transfer(),
        *both("on_train_batch_start", i),
        ("training_step", i),
        ("forward",),
        ("manual_backward",),
        *both("on_before_backward"),
        ("backward",),
        *both("on_after_backward"),
        *both("on_before_optimizer_step"),
        *both("on_train_batch_end", i),
    ]


def eval_epoch(prefix: str, n: int, step: str | None = None) -> list[Call]:
    """``[eval epoch]``: epoch start, per batch transfer/batch_start/step/batch_end, epoch end."""
    step = step or f"{prefix}_step"
    out = both(f"on_{prefix}_epoch_start")
    for i in range(n):
        out += [
            *transfer(),
            *both(f"on_{prefix}_batch_start", i, 0),
            (step, i),
            ("forward",),
            *both(f"on_{prefix}_batch_end", i, 0),
        ]
    return out + both(f"on_{prefix}_epoch_end")


def fit_start() -> list[Call]:
    return [
        ("configure_callbacks",),
        ("prepare_data",),
        *both("setup", "fit"),
        ("configure_model",),
        ("configure_optimizers",),
        *both("on_fit_start"),
        ("zero_grad",),
    ]


def sanity_check(n_val: int) -> list[Call]:
    return [
        ("Callback.on_sanity_check_start",),
        ("val_dataloader",),
        ("on_validation_model_eval",),
        *both("on_validation_start"),
        *eval_epoch("validation", n_val),
        *both("on_validation_end"),
        ("on_validation_model_train",),  # overridden, so called instead of restoring recorded modes
        ("Callback.on_sanity_check_end",),
    ]


def in_fit_validation(n_val: int, *, zero_grad: bool = True) -> list[Call]:
    zero = [("on_validation_model_zero_grad",), ("zero_grad",)] if zero_grad else []
    return [
        *zero,
        ("on_validation_model_eval",),
        *both("on_validation_start"),
        *eval_epoch("validation", n_val),
        *both("on_validation_end"),
        ("on_validation_model_train",),
    ]


def fit_end() -> list[Call]:
    return [*both("on_train_end"), *both("on_fit_end"), *both("teardown", "fit")]


def run_fit(model: HookedModel, calls: list[Call], **trainer_kw: Any) -> L.Trainer:
    kw: dict[str, Any] = dict(max_epochs=1, **QUIET)
    kw.update(trainer_kw)
    trainer = L.Trainer(callbacks=[HookedCallback(calls)], **kw)
    trainer.fit(model)
    return trainer


def assert_sequence(actual: list[Call], expected: list[Call]) -> None:
    """Equal sequences; on failure, name the first position that differs."""
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a == e, f"hook #{i}: got {a}, expected {e}\n context got: {actual[max(0, i - 4) : i + 4]}"
    assert len(actual) == len(expected), (
        f"got {len(actual)} hooks, expected {len(expected)}; extra tail: "
        f"{actual[len(expected) :] if len(actual) > len(expected) else expected[len(actual) :]}"
    )


@pytest.fixture(autouse=True)
def _restore_torch_flags():
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)


# ---------------------------------------------------------------------------------------------- fit


def test_fit_hook_order() -> None:
    """Spec §1.1: 2 train batches, 2 val batches, 1 epoch, sanity check, a step-interval scheduler."""
    calls: list[Call] = []
    model = HookedModel(calls)
    trainer = run_fit(model, calls)
    expected = [
        *fit_start(),
        *sanity_check(2),
        ("train_dataloader",),
        *both("on_train_start"),
        *both("on_train_epoch_start"),
        *train_batch(0),
        *train_batch(1),
        # validation of epoch N finishes before on_train_epoch_end of epoch N
        *in_fit_validation(2),
        *both("on_train_epoch_end"),
        *fit_end(),
    ]
    assert_sequence(calls, expected)
    assert trainer.global_step == 2
    # optimizer_step receives the LightningOptimizer wrapper, not the raw torch optimizer
    assert model.optimizer_types == [LightningOptimizer, LightningOptimizer]
    assert model.training  # on_validation_model_train put the module back in train mode


def test_fit_hook_order_two_epochs_epoch_scheduler() -> None:
    """An ``interval="epoch"`` scheduler steps on the epoch's last batch, before ``on_train_batch_end``."""
    calls: list[Call] = []
    model = HookedModel(calls, sched_interval="epoch")
    run_fit(model, calls, max_epochs=2, num_sanity_val_steps=0, limit_val_batches=0)

    def epoch(e: int) -> list[Call]:
        return [
            *both("on_train_epoch_start"),
            *train_batch(0, e, sched=False),
            *train_batch(1, e, sched=False)[:-2],
            ("lr_scheduler_step", None),
            *both("on_train_batch_end", 1),
            *both("on_train_epoch_end"),
        ]

    expected = [
        *fit_start(),
        ("train_dataloader",),
        *both("on_train_start"),
        *epoch(0),
        *epoch(1),
        *fit_end(),
    ]
    assert_sequence(calls, expected)


class PlateauModel(HookedModel):
    """ReduceLROnPlateau schedulers monitoring a validation metric, one per interval."""

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        self.rec("validation_step", batch_idx)
        self.log("val_loss", torch.nn.functional.mse_loss(self(batch[0]), batch[1]))

    def configure_optimizers(self) -> Any:
        self.rec("configure_optimizers")
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
        return [opt], [
            {"scheduler": plateau(opt), "interval": "step", "monitor": "val_loss", "frequency": 2},
            {"scheduler": plateau(opt), "interval": "epoch", "monitor": "val_loss"},
        ]

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        self.rec("lr_scheduler_step", "metric" if metric is not None else None)
        self.metrics.append(float(metric))
        L.LightningModule.lr_scheduler_step(self, scheduler, metric)


def test_plateau_schedulers_step_after_validation() -> None:
    """A step-interval ReduceLROnPlateau steps after the batch's validation (so it sees this validation's
    metric); an epoch-interval one after on_train_epoch_end."""
    calls: list[Call] = []
    model = PlateauModel(calls, n_train=4)
    model.metrics = []
    trainer = run_fit(model, calls, val_check_interval=2, num_sanity_val_steps=0)
    i = calls.index(("Callback.on_train_epoch_start",))
    expected = [
        *both("on_train_epoch_start"),
        *train_batch(0, sched=False),
        *train_batch(1, sched=False),
        *in_fit_validation(2),
        ("lr_scheduler_step", "metric"),  # step-interval plateau (frequency 2: global_step 2)
        *train_batch(2, sched=False),
        *train_batch(3, sched=False),
        *in_fit_validation(2),
        ("lr_scheduler_step", "metric"),  # step-interval plateau, global_step 4
        *both("on_train_epoch_end"),
        ("lr_scheduler_step", "metric"),  # epoch-interval plateau
        *fit_end(),
    ]
    assert_sequence(calls[i:], expected)
    # each plateau step saw the validation that ran just before it
    assert model.metrics[1] == model.metrics[2] == pytest.approx(float(trainer.callback_metrics["val_loss"]))
    assert model.metrics[0] != model.metrics[1]


def test_fit_accumulate_grad_batches() -> None:
    """4 batches, accumulate 2: zero_grad only on window starts, optimizer_step only on window ends."""
    calls: list[Call] = []
    model = HookedModel(calls, n_train=4)
    trainer = run_fit(model, calls, accumulate_grad_batches=2)
    expected = [
        *fit_start(),
        *sanity_check(2),
        ("train_dataloader",),
        *both("on_train_start"),
        *both("on_train_epoch_start"),
        *train_batch(0, step=False, zero=True),
        *train_batch(1, step=True, zero=False),
        *train_batch(2, step=False, zero=True),
        *train_batch(3, step=True, zero=False),
        *in_fit_validation(2),
        *both("on_train_epoch_end"),
        *fit_end(),
    ]
    assert_sequence(calls, expected)
    assert trainer.global_step == 2


def test_fit_accumulate_partial_window_steps_at_epoch_end() -> None:
    """3 batches, accumulate 2: the last (partial) window still steps at the epoch's end."""
    calls: list[Call] = []
    model = HookedModel(calls, n_train=3, sched_interval=None)
    trainer = run_fit(model, calls, accumulate_grad_batches=2, num_sanity_val_steps=0, limit_val_batches=0)
    expected = [
        *fit_start(),
        ("train_dataloader",),
        *both("on_train_start"),
        *both("on_train_epoch_start"),
        *train_batch(0, step=False, zero=True),
        *train_batch(1, step=True, zero=False, sched=False),
        *train_batch(2, step=True, zero=True, sched=False),
        *both("on_train_epoch_end"),
        *fit_end(),
    ]
    assert_sequence(calls, expected)
    assert trainer.global_step == 2


def test_fit_val_check_interval_half() -> None:
    """val_check_interval=0.5 with 4 batches: validation after batches 1 and 3, then on_train_epoch_end."""
    calls: list[Call] = []
    model = HookedModel(calls, n_train=4)
    run_fit(model, calls, val_check_interval=0.5)
    expected = [
        *fit_start(),
        *sanity_check(2),
        ("train_dataloader",),
        *both("on_train_start"),
        *both("on_train_epoch_start"),
        *train_batch(0),
        *train_batch(1),
        *in_fit_validation(2),
        *train_batch(2),
        *train_batch(3),
        *in_fit_validation(2),
        *both("on_train_epoch_end"),
        *fit_end(),
    ]
    assert_sequence(calls, expected)


def test_validation_model_zero_grad_skipped_while_accumulating() -> None:
    """Validation after every batch with accumulate 2: on_validation_model_zero_grad only after stepping batches."""
    calls: list[Call] = []
    model = HookedModel(calls, n_train=4, sched_interval=None)
    run_fit(model, calls, accumulate_grad_batches=2, val_check_interval=1, num_sanity_val_steps=0)
    expected = [
        *fit_start(),
        ("train_dataloader",),
        *both("on_train_start"),
        *both("on_train_epoch_start"),
        *train_batch(0, step=False, zero=True),
        *in_fit_validation(2, zero_grad=False),
        *train_batch(1, step=True, zero=False, sched=False),
        *in_fit_validation(2),
        *train_batch(2, step=False, zero=True),
        *in_fit_validation(2, zero_grad=False),
        *train_batch(3, step=True, zero=False, sched=False),
        *in_fit_validation(2),
        *both("on_train_epoch_end"),
        *fit_end(),
    ]
    # no sanity check: val_dataloader is requested before the first validation
    assert ("val_dataloader",) in calls
    calls = [c for c in calls if c != ("val_dataloader",)]
    assert_sequence(calls, expected)


def test_fit_manual_optimization() -> None:
    """Manual optimization: per batch only transfer, on_train_batch_start, training_step, on_train_batch_end;
    manual_backward fires the backward hooks and opt.step fires on_before_optimizer_step."""
    calls: list[Call] = []
    model = ManualModel(calls)
    trainer = run_fit(model, calls)
    expected = [
        *fit_start(),
        *sanity_check(2),
        ("train_dataloader",),
        *both("on_train_start"),
        *both("on_train_epoch_start"),
        *manual_batch(0),
        *manual_batch(1),
        *in_fit_validation(2),
        *both("on_train_epoch_end"),
        *fit_end(),
    ]
    assert_sequence(calls, expected)
    assert trainer.global_step == 2


def test_fit_gradient_clipping_args() -> None:
    """configure_gradient_clipping receives the Trainer's gradient_clip_val/algorithm, then clip_gradients."""
    calls: list[Call] = []
    model = HookedModel(calls, sched_interval=None)
    run_fit(model, calls, gradient_clip_val=0.5, gradient_clip_algorithm="value", limit_val_batches=0)
    clip = [c for c in calls if c[0] in ("configure_gradient_clipping", "clip_gradients")]
    assert clip == [("configure_gradient_clipping", 0.5, "value"), ("clip_gradients", 0.5, "value")] * 2


def test_on_train_batch_start_minus_one_ends_epoch() -> None:
    """Returning -1 from on_train_batch_start skips the rest of the epoch (every epoch here)."""
    calls: list[Call] = []
    model = HookedModel(calls, n_train=4, sched_interval=None, stop_at=1)
    trainer = run_fit(model, calls, max_epochs=2, num_sanity_val_steps=0, limit_val_batches=0)

    def epoch(e: int) -> list[Call]:
        return [
            *both("on_train_epoch_start"),
            *train_batch(0, e, sched=False),
            *transfer(),
            *both("on_train_batch_start", 1),  # returns -1: no step, no on_train_batch_end, no more batches
            *both("on_train_epoch_end"),
        ]

    expected = [
        *fit_start(),
        ("train_dataloader",),
        *both("on_train_start"),
        *epoch(0),
        *epoch(1),
        *fit_end(),
    ]
    assert_sequence(calls, expected)
    assert trainer.global_step == 2
    assert trainer.current_epoch == 2


# ---------------------------------------------------------------------------------------------- evaluation


def eval_stage(verb: str, noun: str, loader_hook: str, n: int, *, with_train_hook: bool) -> list[Call]:
    step = "predict_step" if noun == "predict" else None
    return [
        ("configure_callbacks",),
        ("prepare_data",),
        *both("setup", verb),
        ("configure_model",),
        (loader_hook,),
        (f"on_{noun}_model_eval",),
        *both(f"on_{noun}_start"),
        *eval_epoch(noun, n, step),
        *both(f"on_{noun}_end"),
        *([(f"on_{noun}_model_train",)] if with_train_hook else []),
        *both("teardown", verb),
    ]


def test_validate_hook_order() -> None:
    calls: list[Call] = []
    trainer = L.Trainer(callbacks=[HookedCallback(calls)], **QUIET)
    trainer.validate(HookedModel(calls), verbose=False)
    assert_sequence(calls, eval_stage("validate", "validation", "val_dataloader", 2, with_train_hook=True))


def test_test_hook_order() -> None:
    calls: list[Call] = []
    trainer = L.Trainer(callbacks=[HookedCallback(calls)], **QUIET)
    trainer.test(HookedModel(calls), verbose=False)
    assert_sequence(calls, eval_stage("test", "test", "test_dataloader", 2, with_train_hook=True))


def test_predict_hook_order() -> None:
    calls: list[Call] = []
    trainer = L.Trainer(callbacks=[HookedCallback(calls)], **QUIET)
    preds = trainer.predict(HookedModel(calls))
    assert preds is not None and len(preds) == 2
    # there is no on_predict_model_train hook: the recorded modes are restored
    assert_sequence(calls, eval_stage("predict", "predict", "predict_dataloader", 2, with_train_hook=False))


def test_eval_mode_restored_after_predict() -> None:
    model = HookedModel([])
    model.layer.eval()  # a submodule in eval mode stays so; the root goes back to train
    L.Trainer(**QUIET).predict(model)
    assert model.training and not model.layer.training


def test_validate_two_dataloaders_pass_dataloader_idx() -> None:
    """With several eval loaders, the transfer and batch hooks get each loader's index."""
    calls: list[Call] = []
    model = HookedModel(calls)
    trainer = L.Trainer(callbacks=[HookedCallback(calls)], **QUIET)
    trainer.validate(model, dataloaders=[loader(1), loader(2, seed=5)], verbose=False)
    batch_hooks = [c for c in calls if "batch" in c[0]]
    expected: list[Call] = []
    for dl, n in ((0, 1), (1, 2)):
        for i in range(n):
            expected += [
                *transfer(dl),
                *both("on_validation_batch_start", i, dl),
                *both("on_validation_batch_end", i, dl),
            ]
    assert batch_hooks == expected
    assert ("val_dataloader",) not in calls  # explicit loaders win over the hook


# ---------------------------------------------------------------------------------------------- checkpoints


def test_save_checkpoint_hook_order(tmp_path: Path) -> None:
    """Callback.state_dict -> Callback.on_save_checkpoint -> on_save_checkpoint (spec §1.1 step 10)."""
    calls: list[Call] = []
    model = HookedModel(calls, sched_interval=None)
    trainer = run_fit(model, calls, limit_val_batches=0)
    del calls[:]
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    assert calls == [("Callback.state_dict",), ("Callback.on_save_checkpoint",), ("on_save_checkpoint",)]


def test_model_checkpoint_saves_after_on_train_epoch_end(tmp_path: Path) -> None:
    """ModelCheckpoint is a monitoring callback: it runs after the module's on_train_epoch_end."""
    from fulmen.callbacks import ModelCheckpoint

    calls: list[Call] = []
    model = HookedModel(calls, sched_interval=None)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=tmp_path), HookedCallback(calls)],
    )
    trainer.fit(model)
    i = calls.index(("Callback.on_train_epoch_end",))
    assert calls[i : i + 6] == [
        ("Callback.on_train_epoch_end",),
        ("on_train_epoch_end",),
        ("Callback.state_dict",),
        ("Callback.on_save_checkpoint",),
        ("on_save_checkpoint",),
        ("Callback.on_train_end",),
    ]


def test_model_checkpoint_on_validation_end_runs_before_the_module(tmp_path: Path) -> None:
    """Saving after in-epoch validation: every callback's on_validation_end (ModelCheckpoint's save
    included) runs before the module's, as for any hook other than on_train_epoch_end."""
    from fulmen.callbacks import ModelCheckpoint

    calls: list[Call] = []
    model = HookedModel(calls, n_train=4, sched_interval=None)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=0.5,
        num_sanity_val_steps=0,
        callbacks=[ModelCheckpoint(dirpath=tmp_path), HookedCallback(calls)],
    )
    trainer.fit(model)
    i = calls.index(("Callback.on_validation_end",))
    assert calls[i : i + 6] == [
        ("Callback.on_validation_end",),
        ("Callback.state_dict",),
        ("Callback.on_save_checkpoint",),
        ("on_save_checkpoint",),
        ("on_validation_end",),
        ("on_validation_model_train",),
    ]
    assert calls.count(("on_save_checkpoint",)) == 2  # after each of the two validations


def test_resume_hook_order(tmp_path: Path) -> None:
    """Resume (spec §2.3): configure_model, on_load_checkpoint, Callback.on_load_checkpoint,
    Callback.load_state_dict, configure_optimizers, on_fit_start, zero_grad, then epoch 1."""
    calls: list[Call] = []
    model = HookedModel(calls, sched_interval=None)
    trainer = run_fit(model, calls, limit_val_batches=0)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    del calls[:]
    model = HookedModel(calls, sched_interval=None)
    trainer = L.Trainer(max_epochs=2, callbacks=[HookedCallback(calls)], limit_val_batches=0, **QUIET)
    trainer.fit(model, ckpt_path=tmp_path / "a.ckpt")
    expected = [
        ("configure_callbacks",),
        ("prepare_data",),
        *both("setup", "fit"),
        ("configure_model",),
        ("on_load_checkpoint",),
        ("Callback.on_load_checkpoint",),
        ("Callback.load_state_dict", {"foo": True}),
        ("configure_optimizers",),
        *both("on_fit_start"),
        ("zero_grad",),
        ("train_dataloader",),
        *both("on_train_start"),
        *both("on_train_epoch_start"),
        *train_batch(0, 1, sched=False),
        *train_batch(1, 1, sched=False),
        *both("on_train_epoch_end"),
        *fit_end(),
    ]
    assert_sequence(calls, expected)
    assert trainer.global_step == 4


# ---------------------------------------------------------------------------------------------- counts and skipping


def test_hook_call_counts() -> None:
    """2 epochs x 3 train batches, 2 val batches, sanity check of 2: every hook's exact count."""
    calls: list[Call] = []
    model = HookedModel(calls, n_train=3, n_val=2, sched_interval="epoch")
    run_fit(model, calls, max_epochs=2)
    counts = Counter(c[0] for c in calls)
    train, val_runs, val = 6, 1 + 2, 2 * 3  # train batches; sanity + 2 epoch-end runs; val batches overall
    once = [
        "configure_callbacks",
        "prepare_data",
        "configure_model",
        "configure_optimizers",
        "train_dataloader",
        "val_dataloader",
        "Callback.on_sanity_check_start",
        "Callback.on_sanity_check_end",
    ]
    expected: Counter[str] = Counter({name: 1 for name in once})
    for name in ("setup", "teardown", "on_fit_start", "on_fit_end", "on_train_start", "on_train_end"):
        expected.update({name: 1, "Callback." + name: 1})
    for name in ("on_train_epoch_start", "on_train_epoch_end"):
        expected.update({name: 2, "Callback." + name: 2})
    for name in (
        "on_train_batch_start",
        "on_train_batch_end",
        "on_before_zero_grad",
        "on_before_backward",
        "on_after_backward",
        "on_before_optimizer_step",
    ):
        expected.update({name: train, "Callback." + name: train})
    for name in ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer"):
        expected[name] = train + val
    for name in (
        "optimizer_step",
        "training_step",
        "optimizer_zero_grad",
        "backward",
        "configure_gradient_clipping",
        "clip_gradients",
    ):
        expected[name] = train
    expected["lr_scheduler_step"] = 2  # interval="epoch": once per epoch
    expected["forward"] = train + val
    expected["validation_step"] = val
    for name in ("on_validation_batch_start", "on_validation_batch_end"):
        expected.update({name: val, "Callback." + name: val})
    for name in (
        "on_validation_start",
        "on_validation_end",
        "on_validation_epoch_start",
        "on_validation_epoch_end",
    ):
        expected.update({name: val_runs, "Callback." + name: val_runs})
    expected["on_validation_model_eval"] = val_runs
    expected["on_validation_model_train"] = val_runs
    expected["on_validation_model_zero_grad"] = 2  # not during the sanity check
    expected["zero_grad"] = 1 + 2  # after on_fit_start, then once per in-fit validation
    assert counts == expected


def test_non_overriding_callback_is_never_called(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dispatcher calls only hooks a callback overrides: the base Callback's are never entered."""
    entered: list[str] = []
    names = [
        n
        for n, v in vars(Callback).items()
        if callable(v) and (n.startswith("on_") or n in ("setup", "teardown"))
    ]
    assert len(names) > 30
    for name in names:

        def spy(self: Any, *args: Any, _name: str = name, **kwargs: Any) -> None:
            entered.append(_name)

        monkeypatch.setattr(Callback, name, spy)

    class Plain(Callback):
        pass

    calls: list[Call] = []
    trainer = L.Trainer(max_epochs=1, callbacks=[Plain()], **QUIET)
    trainer.fit(HookedModel(calls))
    trainer.validate(HookedModel(calls), verbose=False)
    trainer.test(HookedModel(calls), verbose=False)
    trainer.predict(HookedModel(calls))
    assert calls  # the module's hooks did run
    assert entered == []


def test_exception_hooks_order() -> None:
    """A failing training_step: Callback.on_exception comes right after the failure; no later training
    hook (batch end, epoch end, on_train_end, on_fit_end) runs. (Whether teardown hooks follow is not
    pinned: Lightning skips them on failure, fulmen runs them to release resources.)"""
    calls: list[Call] = []

    class Failing(HookedModel):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            raise ValueError("boom")

    trainer = L.Trainer(max_epochs=1, callbacks=[HookedCallback(calls)], num_sanity_val_steps=0, **QUIET)
    with pytest.raises(ValueError, match="boom"):
        trainer.fit(Failing(calls, sched_interval=None))
    tail = calls[calls.index(("optimizer_step", 0, 0)) :]
    assert tail[:2] == [("optimizer_step", 0, 0), ("Callback.on_exception", "ValueError")]
    assert set(tail[2:]) <= {*both("teardown", "fit")}
    assert trainer.interrupted
