"""Exact resume with a train loader that has its own generator (``DataLoader(generator=...)``, a common pattern, or
``RandomSampler(generator=...)``): the generator advances every epoch, so a checkpoint must carry its state.

k steps + checkpoint + resume for the rest gives bitwise the weights of one uninterrupted run, for checkpoints
written after fit, mid-epoch, at an epoch's last batch, inside ``on_train_epoch_end`` and by ModelCheckpoint.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

import fulmen as L
from fulmen.callbacks import Callback, ModelCheckpoint

QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False)
N = 30  # 3 epochs of 10 batches


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def loader(kind: str) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(40, 4, generator=g), torch.randn(40, 1, generator=g))
    if kind == "loader_generator":
        return DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(123))
    return DataLoader(ds, batch_size=4, sampler=RandomSampler(ds, generator=torch.Generator().manual_seed(123)))


class SaveAt(Callback):
    def __init__(self, path, hook: str, step: int) -> None:
        self.path, self.step, self.done = path, step, False
        setattr(self, hook, self._save)

    def _save(self, trainer, pl_module, *args) -> None:
        if not self.done and trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            self.done = True


def fit(kind: str, max_steps: int, ckpt=None, callbacks=(), **kw) -> Net:
    L.seed_everything(1, verbose=False)
    model = Net()
    trainer = L.Trainer(max_steps=max_steps, callbacks=list(callbacks), **QUIET, **kw)
    trainer.fit(model, loader(kind), ckpt_path=ckpt)
    assert trainer.global_step == max_steps
    return model


def assert_same(a: Net, b: Net) -> None:
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), f"{name} differs after resume (max abs diff {(pa - pb).abs().max():.3g})"


KINDS = ["loader_generator", "sampler_generator"]


@pytest.fixture(scope="module")
def uninterrupted() -> dict[str, Net]:
    return {kind: fit(kind, N, enable_checkpointing=False) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [7, 10, 20])
def test_checkpoint_after_fit(kind, k, tmp_path, uninterrupted) -> None:
    L.seed_everything(1, verbose=False)
    model = Net()
    trainer = L.Trainer(max_steps=k, enable_checkpointing=False, **QUIET)
    trainer.fit(model, loader(kind))
    trainer.save_checkpoint(tmp_path / "k.ckpt")
    L.seed_everything(99, verbose=False)  # the resumed process starts from another RNG state
    assert_same(uninterrupted[kind], fit(kind, N, ckpt=tmp_path / "k.ckpt", enable_checkpointing=False))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("hook", "k"), [("on_train_batch_end", 13), ("on_train_batch_end", 10),
                                         ("on_train_epoch_end", 10), ("on_train_epoch_end", 20)])
def test_checkpoint_inside_the_run(kind, hook, k, tmp_path, uninterrupted) -> None:
    saver = SaveAt(tmp_path / "mid.ckpt", hook, k)
    assert_same(uninterrupted[kind], fit(kind, N, callbacks=[saver], enable_checkpointing=False))
    assert saver.done
    L.seed_everything(99, verbose=False)
    assert_same(uninterrupted[kind], fit(kind, N, ckpt=tmp_path / "mid.ckpt", enable_checkpointing=False))


@pytest.mark.parametrize("kind", KINDS)
def test_model_checkpoint_every_n_train_steps(kind, tmp_path, uninterrupted) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=10, save_top_k=-1, filename="{step}")
    fit(kind, 20, callbacks=[mc])
    for step in (10, 20):
        L.seed_everything(99, verbose=False)
        assert_same(uninterrupted[kind], fit(kind, N, ckpt=tmp_path / f"step={step}.ckpt", enable_checkpointing=False))


def test_checkpoint_keeps_the_generator_states_and_loads_with_weights_only(tmp_path) -> None:
    L.seed_everything(1, verbose=False)
    trainer = L.Trainer(max_steps=10, enable_checkpointing=False, **QUIET)
    dl = loader("loader_generator")
    trainer.fit(Net(), dl)
    trainer.save_checkpoint(tmp_path / "k.ckpt")
    ckpt = torch.load(tmp_path / "k.ckpt", weights_only=True)
    (state,) = ckpt["fulmen"]["loader_generators"]
    assert torch.equal(state, dl.generator.get_state())
