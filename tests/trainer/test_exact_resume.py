"""Exact resume: N steps in one go == k steps, checkpoint, resume for the rest (bitwise, CPU, deterministic).

Each case trains a model with dropout (so the global RNG matters) on a shuffled plain DataLoader,
saves a checkpoint at some point inside the run, then resumes a fresh process state from it. Weights
and every logger call made after the save point must be identical.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import Callback
from fulmen.loggers import Logger


class RecordingLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "rec"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.records.append((step, dict(metrics)))


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1)
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return {
            "optimizer": opt,
            # frequency 3 with 10 batches an epoch: the scheduler's batch count restarts every epoch, which a
            # resumed run must continue exactly
            "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 2), "interval": "step", "frequency": 3},
        }


class StatefulLoader:
    """A loader with its own state_dict/load_state_dict (like torchdata's StatefulDataLoader)."""

    def __init__(self, dataset, batch_size: int) -> None:
        self.dataset, self.batch_size, self.pos, self.epoch = dataset, batch_size, 0, 0

    def __len__(self) -> int:
        return (len(self.dataset) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        g = torch.Generator().manual_seed(100 + self.epoch)
        order = torch.randperm(len(self.dataset), generator=g)
        while self.pos < len(self):
            idx = order[self.pos * self.batch_size : (self.pos + 1) * self.batch_size]
            self.pos += 1
            yield self.dataset[idx]
        self.pos, self.epoch = 0, self.epoch + 1

    def state_dict(self):
        return {"pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, sd):
        self.pos, self.epoch = sd["pos"], sd["epoch"]


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(1234)
    return TensorDataset(torch.randn(40, 6, generator=g), torch.randn(40, 1, generator=g))


class SaveAt(Callback):
    """Save a checkpoint from inside the given hook once ``when(trainer)`` is true (once)."""

    def __init__(self, path, hook: str, when, logger: RecordingLogger) -> None:
        self.path, self.when, self.logger, self.done, self.records_at_save = path, when, logger, False, None
        setattr(self, hook, self._maybe_save)

    def _maybe_save(self, trainer, pl_module, *args) -> None:
        if not self.done and not trainer.sanity_checking and self.when(trainer):
            trainer.save_checkpoint(self.path)
            self.done = True
            self.records_at_save = len(self.logger.records)


def run(
    tmp_path, max_steps: int, *, ckpt=None, save=None, workers: int = 0, stateful: bool = False, **trainer_kw
):
    L.seed_everything(7, verbose=False)
    model = Net()
    logger = RecordingLogger()
    callbacks = []
    saver = None
    if save is not None:
        hook, when = save
        saver = SaveAt(tmp_path / "mid.ckpt", hook, when, logger)
        callbacks.append(saver)
    if stateful:
        train = StatefulLoader(dataset(), 4)
    else:
        train = DataLoader(dataset(), batch_size=4, shuffle=True, num_workers=workers)
    val = DataLoader(dataset(), batch_size=8)
    trainer = L.Trainer(
        max_steps=max_steps,
        deterministic=True,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **trainer_kw,
    )
    trainer.fit(model, train, val, ckpt_path=ckpt)
    return model, logger, saver, trainer


def assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), f"parameter {name} differs after resume"


CASES = {
    "mid_epoch": ("on_train_batch_end", lambda t: t.global_step == 13),
    "epoch_end": ("on_train_epoch_end", lambda t: t.current_epoch == 1),
    "during_validation": ("on_validation_end", lambda t: t.global_step >= 12),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_is_exact(tmp_path, case) -> None:
    full, full_log, saver, _ = run(tmp_path, 30, save=CASES[case], val_check_interval=0.5)
    assert saver.done
    resumed, resumed_log, _, trainer = run(
        tmp_path, 30, ckpt=str(tmp_path / "mid.ckpt"), val_check_interval=0.5
    )
    assert trainer.global_step == 30
    assert_same(full, resumed)
    assert resumed_log.records == full_log.records[saver.records_at_save :]


def test_resume_inside_an_accumulation_window(tmp_path) -> None:
    save = ("on_train_batch_end", lambda t: t.run_state.batch_progress.total_completed == 14)  # 14 % 3 != 0
    full, full_log, saver, _ = run(tmp_path, 12, save=save, accumulate_grad_batches=3)
    resumed, resumed_log, _, _ = run(tmp_path, 12, ckpt=str(tmp_path / "mid.ckpt"), accumulate_grad_batches=3)
    assert_same(full, resumed)
    assert resumed_log.records == full_log.records[saver.records_at_save :]


def test_resume_with_worker_processes(tmp_path) -> None:
    save = CASES["mid_epoch"]
    full, full_log, saver, _ = run(tmp_path, 24, save=save, workers=2)
    resumed, resumed_log, _, _ = run(tmp_path, 24, ckpt=str(tmp_path / "mid.ckpt"), workers=2)
    assert_same(full, resumed)
    assert resumed_log.records == full_log.records[saver.records_at_save :]


def test_stateful_loader_uses_its_own_state(tmp_path) -> None:
    save = CASES["mid_epoch"]
    full, _, _, _ = run(tmp_path, 24, save=save, stateful=True)
    ckpt = torch.load(tmp_path / "mid.ckpt", weights_only=True)
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == {"pos": 3, "epoch": 1}
    resumed, _, _, _ = run(tmp_path, 24, ckpt=str(tmp_path / "mid.ckpt"), stateful=True)
    assert_same(full, resumed)


def test_consumed_batches_are_not_run_through_the_model(tmp_path) -> None:
    seen: list[int] = []

    class Count(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch_idx)

    run(tmp_path, 30, save=CASES["mid_epoch"])
    L.seed_everything(7, verbose=False)
    trainer = L.Trainer(
        max_steps=16,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Count()],
    )
    trainer.fit(
        Net(), DataLoader(dataset(), batch_size=4, shuffle=True), ckpt_path=str(tmp_path / "mid.ckpt")
    )
    assert seen == [3, 4, 5]  # step 13 = epoch 1, batch 2 done; the resumed run starts at batch 3


def test_checkpoint_written_on_exception_during_the_last_batch_reruns_that_batch(tmp_path) -> None:
    class FailOnce(Net):
        fail = True

        def training_step(self, batch, batch_idx):
            if self.fail and self.global_step == 9:  # the 10th batch is the epoch's last
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    class SaveOnException(Callback):
        def on_exception(self, trainer, pl_module, exception):
            trainer.save_checkpoint(tmp_path / "exc.ckpt")

    L.seed_everything(7, verbose=False)
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(RuntimeError, match="boom"):
        L.Trainer(max_steps=12, callbacks=[SaveOnException()], **quiet).fit(
            FailOnce(), DataLoader(dataset(), batch_size=4, shuffle=True)
        )
    model = FailOnce()
    model.fail = False
    trainer = L.Trainer(max_steps=12, **quiet)
    trainer.fit(model, DataLoader(dataset(), batch_size=4, shuffle=True), ckpt_path=str(tmp_path / "exc.ckpt"))
    assert trainer.global_step == 12 and trainer.current_epoch == 1
