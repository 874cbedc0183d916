"""Each rank's train-loader generators (``RandomSampler(generator=...)`` seeded per rank) are saved and restored
per rank (``loader_generators_per_rank``), so a 2-process CPU DDP run resumed from a checkpoint written at an
epoch's end trains exactly as the uninterrupted run: the next epochs' orders continue each rank's own generator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

import fulmen as L

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

TOTAL_STEPS = 24  # 3 epochs of 8 batches per rank (no distributed sampler: each rank shuffles all 32 samples)
SAVE_AT = 8  # the end of epoch 0: the resume starts epoch 1 from the saved generator states


class PerRankShuffle(L.LightningModule):
    def __init__(self, out: Path) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.out = out
        self.seen: list[int] = []

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g))
        # each rank its own generator: the ranks' orders differ, and each advances every epoch
        sampler = RandomSampler(data, generator=torch.Generator().manual_seed(100 + self.global_rank))
        return DataLoader(data, batch_size=4, sampler=sampler)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.seen.append(int((x[:, 0] * 1e4).sum().round()))
        return nn.functional.mse_loss(self.net(x), y)

    def on_train_end(self) -> None:
        rank = self.global_rank
        torch.save({"weights": {k: v.detach().clone() for k, v in self.net.state_dict().items()},
                    "seen": self.seen}, self.out / f"r{rank}.pt")

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class SaveAtStep(L.Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == SAVE_AT:
            trainer.save_checkpoint(self.path)


def _fit(out: Path, ckpt: Path | None = None, save: Path | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_steps=TOTAL_STEPS, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, callbacks=[SaveAtStep(save)] if save else None)
    trainer.fit(PerRankShuffle(out), ckpt_path=ckpt)
    assert trainer.global_step == TOTAL_STEPS


def _result(out: Path, rank: int) -> dict[str, Any]:
    return torch.load(out / f"r{rank}.pt", weights_only=True)


def test_each_rank_resumes_its_own_loader_generator(tmp_path: Path) -> None:
    ckpt = tmp_path / "epoch_end.ckpt"
    _fit(tmp_path / "full", save=ckpt)
    meta = torch.load(ckpt, weights_only=True)["fulmen"]
    per_rank = meta["loader_generators_per_rank"]
    assert len(per_rank) == 2 and not torch.equal(per_rank[0][0], per_rank[1][0])
    assert torch.equal(meta["loader_generators"][0], per_rank[0][0])  # "loader_generators" stays rank 0's

    _fit(tmp_path / "resumed", ckpt=ckpt)
    full = {r: _result(tmp_path / "full", r) for r in (0, 1)}
    assert full[0]["seen"][:8] != full[1]["seen"][:8]  # the ranks' orders do differ
    for rank in (0, 1):
        got = _result(tmp_path / "resumed", rank)
        assert got["seen"] == full[rank]["seen"][SAVE_AT:], f"rank {rank}'s batch order differs after resume"
        for name, value in full[rank]["weights"].items():
            assert torch.equal(value, got["weights"][name]), f"rank {rank}: {name} differs after resume"

    # the control: with rank 0's generator states on every rank (a checkpoint without the per-rank list), rank 1
    # continues rank 0's order and the run is no longer the uninterrupted one
    old = torch.load(ckpt, weights_only=True)
    del old["fulmen"]["loader_generators_per_rank"]
    torch.save(old, tmp_path / "old.ckpt")
    _fit(tmp_path / "old", ckpt=tmp_path / "old.ckpt")
    assert _result(tmp_path / "old", 1)["seen"] != full[1]["seen"][SAVE_AT:]
    assert _result(tmp_path / "old", 1)["seen"] == _result(tmp_path / "resumed", 0)["seen"]
