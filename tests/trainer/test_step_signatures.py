"""Step signatures Lightning accepts, pinned against pytorch-lightning 2.6.1: ``training_step(self, batch)``
(no ``batch_idx``) and the ``dataloader_iter`` flavor, where the step pulls its own batches.

The expected hook sequences below were recorded by running the same programs under the real Lightning.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import Callback
from fulmen.trainer.loops.step_args import BATCH, BATCH_IDX, DATALOADER_ITER, adapt_step, step_flavor

QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def data(n: int = 40, bs: int = 10, shuffle: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g))
    return DataLoader(ds, batch_size=bs, shuffle=shuffle)


class Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def loss(self, batch):
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def training_step(self, batch, batch_idx):
        return self.loss(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_step_flavors_from_signatures() -> None:
    class M:
        def two(self, batch, batch_idx): ...
        def renamed(self, b, i): ...
        def varargs(self, batch, *args): ...
        def one(self, batch): ...
        def it(self, dataloader_iter): ...
        def with_default(self, batch, batch_idx=0): ...

        @functools.wraps(one)
        def decorated(self, *args, **kwargs): ...

    m = M()
    assert step_flavor(m.two) == step_flavor(m.renamed) == step_flavor(m.varargs) == BATCH_IDX
    assert step_flavor(m.with_default) == BATCH_IDX
    assert step_flavor(m.one) == step_flavor(m.decorated) == BATCH
    assert step_flavor(m.it) == DATALOADER_ITER
    step = m.two
    assert adapt_step(step, BATCH_IDX) is step  # the common flavor calls the step itself: nothing per step

    @functools.wraps(m.decorated)  # a profiler's timing shadow over a decorated bound step
    def profiled(*args, **kwargs): ...

    assert step_flavor(profiled) == BATCH


def test_a_profiled_run_calls_a_step_without_batch_idx() -> None:
    class NoIdx(Model):
        def training_step(self, batch):
            return self.loss(batch)

    trainer = L.Trainer(max_epochs=1, profiler="simple", **QUIET)
    trainer.fit(NoIdx(), data())
    assert trainer.global_step == 4


def test_steps_without_batch_idx_train_and_evaluate_as_with_it() -> None:
    class NoIdx(Model):
        def training_step(self, batch):
            return self.loss(batch)

        def validation_step(self, batch):
            self.log("v", self.loss(batch))

        def test_step(self, batch):
            self.log("t", self.loss(batch))

        def predict_step(self, batch):
            return batch[0].shape[0]

    class WithIdx(Model):
        def validation_step(self, batch, batch_idx):
            self.log("v", self.loss(batch))

    weights = []
    for cls in (NoIdx, WithIdx):
        torch.manual_seed(0)
        model = cls()
        L.Trainer(max_epochs=2, **QUIET).fit(model, data(shuffle=True), data())
        weights.append(model.layer.weight.detach().clone())
    assert torch.equal(*weights)
    trainer = L.Trainer(**QUIET)
    assert set(trainer.validate(NoIdx(), data(), verbose=False)[0]) == {"v"}
    assert set(trainer.test(NoIdx(), data(), verbose=False)[0]) == {"t"}
    assert trainer.predict(NoIdx(), data(30)) == [10, 10, 10]


class Record(Callback):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.events.append(("start", batch is None, batch_idx, trainer.global_step))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.events.append(("end", batch is None, batch_idx, sorted(outputs), trainer.is_last_batch))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.events.append(("val_start", batch is None, batch_idx))

    def on_train_epoch_end(self, trainer, pl_module):
        bp = trainer.fit_loop.epoch_loop.batch_progress
        self.events.append(("epoch_end", trainer.current_epoch, trainer.global_step, bp.current.completed,
                            bp.total.completed))


def test_dataloader_iter_flavor_matches_lightning() -> None:
    pulled = []

    class Iter(Model):
        def training_step(self, dataloader_iter):
            batch, batch_idx, dataloader_idx = next(dataloader_iter)
            pulled.append(("train", batch_idx, dataloader_idx))
            return self.loss(batch)

        def validation_step(self, dataloader_iter):
            _, batch_idx, dataloader_idx = next(dataloader_iter)
            pulled.append(("val", batch_idx, dataloader_idx))

    rec = Record()
    trainer = L.Trainer(max_epochs=2, callbacks=[rec], limit_val_batches=2, num_sanity_val_steps=0, **QUIET)
    with pytest.warns(UserWarning, match="Found `dataloader_iter` argument in the `training_step`"):
        trainer.fit(Iter(), data(30), data())
    assert (trainer.current_epoch, trainer.global_step) == (2, 6)
    epoch = lambda n: [  # noqa: E731 - what Lightning 2.6.1 calls for one 3-batch epoch
        ("start", True, 0, 3 * n), ("end", False, 0, ["loss"], False),
        ("start", False, 0, 3 * n + 1), ("end", False, 1, ["loss"], False),
        ("start", False, 1, 3 * n + 2), ("end", False, 2, ["loss"], True),
        ("val_start", True, 0), ("val_start", False, 0),
        ("epoch_end", n, 3 * n + 3, 3, 3 * n + 3),
    ]
    assert rec.events == epoch(0) + epoch(1)
    assert pulled[:5] == [("train", 0, 0), ("train", 1, 0), ("train", 2, 0), ("val", 0, 0), ("val", 1, 0)]


def test_dataloader_iter_step_taking_two_batches_ends_the_epoch_on_stop_iteration() -> None:
    class Two(Model):
        def training_step(self, dataloader_iter):
            first, second = next(dataloader_iter), next(dataloader_iter)  # the 3rd step finds one batch only
            return self.loss(first[0]) + self.loss(second[0])

    rec = Record()
    trainer = L.Trainer(max_epochs=1, callbacks=[rec], limit_val_batches=0, **QUIET)
    trainer.fit(Two(), data(50))  # 5 batches
    assert trainer.global_step == 2
    assert rec.events == [  # Lightning 2.6.1
        ("start", True, 0, 0), ("end", False, 1, ["loss"], False),
        ("start", False, 1, 1), ("end", False, 3, ["loss"], False),
        ("start", False, 3, 2),
        ("epoch_end", 0, 2, 2, 2),
    ]


def test_dataloader_iter_predict_and_test() -> None:
    class Iter(Model):
        def predict_step(self, dataloader_iter):
            _, batch_idx, _ = next(dataloader_iter)
            return batch_idx

        def test_step(self, dataloader_iter):
            batch, _, _ = next(dataloader_iter)
            self.log("t", self.loss(batch))

    trainer = L.Trainer(**QUIET)
    assert trainer.predict(Iter(), data(30)) == [0, 1, 2]
    assert set(trainer.test(Iter(), data(30), verbose=False)[0]) == {"t"}
    trainer = L.Trainer(limit_predict_batches=2, **QUIET)
    assert trainer.predict(Iter(), data(30)) == [0, 1]


def test_dataloader_iter_resumes_exactly_mid_epoch(tmp_path) -> None:
    class Iter(Model):
        def training_step(self, dataloader_iter):
            batch, _, _ = next(dataloader_iter)
            return self.loss(batch)

    class SaveAt(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 6:
                trainer.save_checkpoint(tmp_path / "mid.ckpt")

    def run(callbacks=(), ckpt=None):
        L.seed_everything(3, verbose=False)
        model = Iter()
        trainer = L.Trainer(max_steps=12, callbacks=list(callbacks), limit_val_batches=0, **QUIET)
        trainer.fit(model, data(40, 8, shuffle=True), ckpt_path=ckpt)  # 5 batches an epoch
        assert trainer.global_step == 12
        return model.layer.weight.detach().clone()

    full = run([SaveAt()])
    assert torch.equal(full, run(ckpt=tmp_path / "mid.ckpt"))
