"""A training script run by the tests in subprocesses, under the script launcher (strategy="ddp"), torchrun or
`fulmen fabric run`. Usage: _ddp_script.py MODE OUT_DIR.

Modes: ``trainer`` (fit; rank 0 saves the weights), ``trainer_fail`` (rank 1 raises in training_step),
``fabric`` (a Fabric loop whose flags come from `fulmen fabric run`; rank 0 saves the weights).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.fabric import Fabric

torch.set_num_threads(1)


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g))


def model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


class Regressor(L.LightningModule):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.net = model()
        self.fail = fail

    def training_step(self, batch, batch_idx):
        if self.fail and batch_idx == 2 and self.global_rank == 1:
            raise ValueError("boom on rank 1")
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def on_exception(self, exception: BaseException) -> None:
        (OUT / f"rank{self.global_rank}.txt").write_text(f"{type(exception).__name__}: {exception}")


def run_trainer(fail: bool) -> None:
    module = Regressor(fail)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(data(), batch_size=4))
    if trainer.is_global_zero:
        torch.save(module.net.state_dict(), OUT / "weights.pt")
    (OUT / f"done{trainer.global_rank}.txt").write_text(type(trainer.strategy.cluster_environment).__name__)


def run_two_nodes() -> None:
    """One process per "node" (devices=1, num_nodes=2), ranks from SLURM's variables."""
    module = Regressor()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        num_nodes=2,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(data(), batch_size=4))
    env = trainer.strategy.cluster_environment
    (OUT / f"done{trainer.global_rank}.txt").write_text(f"{type(env).__name__} node {trainer.node_rank}")
    if trainer.is_global_zero:
        torch.save(module.net.state_dict(), OUT / "weights.pt")


def run_fabric() -> None:
    fabric = Fabric()  # accelerator, devices, strategy come from `fulmen fabric run`
    fabric.launch()
    net = fabric.setup_module(model())
    opt = fabric.setup_optimizers(torch.optim.SGD(net.parameters(), lr=0.05))
    loader = fabric.setup_dataloaders(DataLoader(data(), batch_size=4))
    for _ in range(2):
        for x, y in loader:
            fabric.backward(nn.functional.mse_loss(net(x), y))
            opt.step()
            opt.zero_grad()
    fabric.save(OUT / "fabric.ckpt", {"model": net})
    (OUT / f"done{fabric.global_rank}.txt").write_text(f"{fabric.world_size}")


if __name__ == "__main__":
    MODE, OUT = sys.argv[1], Path(sys.argv[2])
    if MODE == "fabric":
        run_fabric()
    elif MODE == "nodes":
        run_two_nodes()
    else:
        run_trainer(fail=MODE == "trainer_fail")
