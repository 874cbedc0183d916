"""Exact resume with per-rank randomness: every rank's RNG states are in the checkpoint (``rng_per_rank``).

Each rank seeds ``SEED + global_rank`` in ``setup()``, so the ranks' streams differ: dropout masks, ``torch.rand``,
python ``random`` and numpy draws made in ``training_step``. A run of N steps in one go must equal a run saved at
step k (mid-epoch) and resumed: every rank's recorded draws after k and its final weights. With rank 0's states
restored on every rank (the behaviour before per-rank states), rank 1's draws after the resume are rank 0's and the
comparison fails.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.strategies import FSDPStrategy

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

SEED = 11
TOTAL_STEPS = 10
SAVE_AT = 5  # 32 samples, batch 4, 2 ranks (distributed sampler): 4 batches an epoch, so step 5 is mid-epoch


def _data(n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g))


class Augmented(TensorDataset):
    """Worker-side randomness: noise drawn in ``__getitem__`` from the worker's torch RNG, whose seed the worker
    gets from its rank's torch RNG when the epoch's iterator is made."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x + 0.1 * torch.rand(x.shape), y


class PerRankRandom(L.LightningModule):
    """Records, per rank and step, the draws of every global RNG; writes them and its weights at the end."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        torch.manual_seed(1)  # same initial weights in every run
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1))
        self.out = out
        self.draws: list[list[float]] = []

    def setup(self, stage: str) -> None:
        seed = SEED + self.global_rank  # each rank its own streams (the resumed run seeds the same way)
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)

    def training_step(self, batch, batch_idx):
        x, y = batch
        noise = torch.rand(1).item()
        self.draws.append([float(self.global_step), noise, random.random(), float(np.random.rand())])
        return nn.functional.mse_loss(self.net(x), y) * (1.0 + noise)

    def on_train_end(self) -> None:
        rank = self.global_rank
        (self.out / f"draws_r{rank}.json").write_text(json.dumps(self.draws))
        local = {
            k: getattr(v, "to_local", lambda v=v: v)() for k, v in self.net.state_dict().items()
        }  # FSDP: shards
        torch.save({k: v.detach().cpu() for k, v in local.items()}, self.out / f"weights_r{rank}.pt")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


class SaveAtStep(L.Callback):
    def __init__(self, path: Path, step: int) -> None:
        self.path, self.step = path, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def _strategy(kind: str, devices: int):
    if devices == 1:
        return "auto"
    if kind == "fsdp":
        return FSDPStrategy(start_method="fork", state_dict_type="sharded", auto_wrap_policy={nn.Linear})
    return "ddp_fork"


def _fit(
    out: Path,
    kind: str = "ddp",
    devices: int = 2,
    ckpt=None,
    save: Path | None = None,
    workers: int = 0,
    **kw,
) -> L.Trainer:
    out.mkdir(parents=True, exist_ok=True)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=_strategy(kind, devices),
        max_steps=TOTAL_STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[SaveAtStep(save, SAVE_AT)] if save is not None else None,
        **kw,
    )
    data = Augmented(*_data().tensors) if workers else _data()
    loader = DataLoader(data, batch_size=4, shuffle=True, num_workers=workers)
    trainer.fit(PerRankRandom(out), loader, ckpt_path=ckpt)
    return trainer


def _draws(out: Path, rank: int) -> list[list[float]]:
    return json.loads((out / f"draws_r{rank}.json").read_text())


def _weights(out: Path, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(out / f"weights_r{rank}.pt", weights_only=True)


@pytest.mark.parametrize(
    ("kind", "use_distributed_sampler", "workers"),
    [("ddp", True, 0), ("ddp", False, 0), ("ddp", True, 1), ("fsdp", True, 0)],
    ids=["ddp", "ddp-per-rank-shuffle", "ddp-worker-augmentation", "fsdp-sharded"],
)
def test_every_rank_resumes_its_own_random_streams(
    tmp_path: Path, kind: str, use_distributed_sampler: bool, workers: int
) -> None:
    # use_distributed_sampler=False: each rank shuffles the whole data set with its own global torch RNG, so the
    # resumed epoch's batch order is per rank too; with a worker, the worker's seed comes from the rank's torch RNG
    # when the epoch starts (the epoch-start states are per rank in the checkpoint)
    ckpt = tmp_path / ("mid" if kind == "fsdp" else "mid.ckpt")
    kw = {"use_distributed_sampler": use_distributed_sampler, "workers": workers}
    _fit(tmp_path / "full", kind, save=ckpt, **kw)
    resumed = _fit(tmp_path / "resumed", kind, ckpt=ckpt, **kw)
    assert resumed.global_step == TOTAL_STEPS

    full = {r: _draws(tmp_path / "full", r) for r in (0, 1)}
    assert full[0][0][1:] != full[1][0][1:]  # the ranks' streams do differ
    for rank in (0, 1):
        after_save = [d for d in full[rank] if d[0] >= SAVE_AT]
        assert _draws(tmp_path / "resumed", rank) == after_save, (
            f"rank {rank}'s random draws differ after resume"
        )
        expected, got = _weights(tmp_path / "full", rank), _weights(tmp_path / "resumed", rank)
        for name in expected:
            assert torch.equal(expected[name], got[name]), f"rank {rank}: {name} differs after resume"

    meta = torch.load(ckpt / "meta.pt" if kind == "fsdp" else ckpt, weights_only=True)["fulmen"]
    assert len(meta["rng_per_rank"]) == 2 and len(meta["epoch_rng_per_rank"]) == 2
    assert torch.equal(meta["rng"]["torch"], meta["rng_per_rank"][0]["torch"])  # "rng" stays rank 0's
    assert not torch.equal(meta["rng_per_rank"][0]["torch"], meta["rng_per_rank"][1]["torch"])


def test_a_two_rank_checkpoint_resumes_on_one_process_with_rank_0_states(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = tmp_path / "mid.ckpt"
    _fit(tmp_path / "full", save=ckpt)
    with caplog.at_level(logging.INFO, logger="fulmen"):
        trainer = _fit(tmp_path / "one", devices=1, ckpt=ckpt)
    assert trainer.global_step == TOTAL_STEPS
    lines = [r.getMessage() for r in caplog.records if "RNG states of 2 process(es)" in r.getMessage()]
    assert len(lines) == 1 and "this run has 1" in lines[0] and "rank 0's RNG states" in lines[0]
    # the first resumed step draws from rank 0's saved stream
    rank0_first_after_save = next(d for d in _draws(tmp_path / "full", 0) if d[0] >= SAVE_AT)
    assert _draws(tmp_path / "one", 0)[0] == rank0_first_after_save


def test_a_checkpoint_without_per_rank_states_still_resumes(tmp_path: Path) -> None:
    # checkpoints written before per-rank states hold rank 0's states only ("rng"): every rank resumes from them
    ckpt = tmp_path / "mid.ckpt"
    _fit(tmp_path / "full", save=ckpt)
    old = torch.load(ckpt, weights_only=True)
    del old["fulmen"]["rng_per_rank"], old["fulmen"]["epoch_rng_per_rank"]
    torch.save(old, tmp_path / "old.ckpt")
    trainer = _fit(tmp_path / "resumed", ckpt=tmp_path / "old.ckpt")
    assert trainer.global_step == TOTAL_STEPS
    rank0_first_after_save = next(d for d in _draws(tmp_path / "full", 0) if d[0] >= SAVE_AT)
    for rank in (0, 1):
        assert _draws(tmp_path / "resumed", rank)[0] == rank0_first_after_save
