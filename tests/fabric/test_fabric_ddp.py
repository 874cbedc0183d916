"""Fabric on 2 CPU processes (gloo, fork launcher): the same loop as on one device, equal weights, collectives,
checkpoints, and failures that end every rank with the failing rank named."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.fabric import Fabric
from fulmen.utilities.exceptions import MisconfigurationException, RankFailedError, RanksOutOfSyncError


def _data(n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g))


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _train(fabric: Fabric, batch_size: int, accumulate: int = 1) -> dict[str, torch.Tensor]:
    model = fabric.setup_module(_model())
    opt = fabric.setup_optimizers(torch.optim.SGD(model.parameters(), lr=0.05))
    loader = fabric.setup_dataloaders(DataLoader(_data(), batch_size=batch_size))
    for _ in range(2):
        for i, (x, y) in enumerate(loader):
            accumulating = (i + 1) % accumulate != 0
            with fabric.no_backward_sync(model, enabled=accumulating):
                loss = nn.functional.mse_loss(model(x), y) / accumulate
                fabric.backward(loss)
            if not accumulating:
                opt.step()
                opt.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _fabric(devices: int = 2, **kw: Any) -> Fabric:
    return Fabric(accelerator="cpu", devices=devices, strategy="ddp_fork" if devices > 1 else "auto", **kw)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_fabric_ddp_matches_one_process_on_the_combined_batch(accumulate: int) -> None:
    single = _fabric(1)
    single.launch()
    expected = _train(single, 8, accumulate)
    got = _fabric().launch(_train, 4, accumulate)
    assert got.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], msg=k)


class LitRegressor(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = _model()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _drive_lightning_module(fabric: Fabric, batch_size: int) -> dict[str, torch.Tensor]:
    module = LitRegressor()
    model, opt = fabric.setup(module, module.configure_optimizers())
    loader = fabric.setup_dataloaders(DataLoader(_data(), batch_size=batch_size))
    for i, batch in enumerate(loader):
        loss = model.training_step(batch, i)  # through DDP's forward: gradients synchronize
        fabric.backward(loss)
        opt.step()
        opt.zero_grad()
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_a_lightning_module_driven_by_fabric_synchronizes_its_training_step() -> None:
    single = _fabric(1)
    single.launch()
    expected = _drive_lightning_module(single, 8)
    got = _fabric().launch(_drive_lightning_module, 4)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], msg=k)


def _collectives(fabric: Fabric, out: Path) -> str:
    rank = fabric.global_rank
    assert fabric.world_size == 2 and fabric.device == torch.device("cpu")
    assert fabric.broadcast(f"hello from {rank}") == "hello from 0"
    assert fabric.all_gather(torch.tensor(rank)).tolist() == [0, 1]
    gathered = fabric.all_gather({"a": torch.tensor([rank, rank])})
    assert gathered["a"].tolist() == [[0, 0], [1, 1]]
    assert fabric.all_reduce(torch.tensor(float(rank)), reduce_op="sum").item() == 1.0
    assert fabric.all_reduce(torch.tensor(float(rank))).item() == 0.5
    fabric.barrier()
    with fabric.rank_zero_first():
        if rank == 0:
            (out / "first.txt").write_text("0")
        else:
            assert (out / "first.txt").read_text() == "0"
    loader = fabric.setup_dataloaders(DataLoader(_data(), batch_size=4, shuffle=True))
    epoch0 = [int(i) for i in iter(loader.sampler)]
    list(loader)
    list(loader)  # each iteration is a new epoch for the distributed sampler
    assert loader.sampler.epoch == 1 and [int(i) for i in iter(loader.sampler)] != epoch0
    halves = fabric.all_gather(torch.tensor(epoch0))
    assert sorted(halves.flatten().tolist()) == list(range(32))
    # save: every rank calls it, rank 0 writes; load: every rank reads
    model = fabric.setup_module(_model())
    fabric.save(out / "state.ckpt", {"model": model, "step": 7})
    fresh = fabric.setup_module(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)))
    rest = fabric.load(out / "state.ckpt", {"model": fresh})
    assert rest == {"step": 7}
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    fabric.print("only local rank 0 prints")
    return "done"


def test_fabric_collectives_samplers_and_checkpoints(tmp_path: Path) -> None:
    assert _fabric().launch(_collectives, tmp_path) == "done"


def _fails_on_rank_1(fabric: Fabric) -> None:
    model = fabric.setup_module(_model())
    loader = fabric.setup_dataloaders(DataLoader(_data(), batch_size=4))
    for i, (x, y) in enumerate(loader):
        if i == 2 and fabric.global_rank == 1:
            raise ValueError("boom on rank 1")
        fabric.backward(nn.functional.mse_loss(model(x), y))


def test_a_failing_rank_ends_the_run_naming_the_rank() -> None:
    start = time.monotonic()
    with pytest.raises(RankFailedError, match="Rank 1 raised ValueError: boom on rank 1"):
        _fabric().launch(_fails_on_rank_1)
    assert time.monotonic() - start < 15


def _saves_on_rank_0_only(fabric: Fabric, out: Path) -> None:
    model = fabric.setup_module(_model())
    loader = fabric.setup_dataloaders(DataLoader(_data(), batch_size=4))
    for i, (x, y) in enumerate(loader):
        fabric.backward(nn.functional.mse_loss(model(x), y))
        if i == 1 and fabric.global_rank == 0:
            fabric.save(out / "x.ckpt", {"model": model})


def test_a_save_on_one_rank_raises_instead_of_hanging(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(RanksOutOfSyncError, match="collective"):
        _fabric().launch(_saves_on_rank_0_only, tmp_path)
    assert time.monotonic() - start < 15


def test_launch_needs_a_function_with_the_fork_launcher() -> None:
    with pytest.raises(MisconfigurationException, match="fabric.launch"):
        _fabric().launch()


def test_setup_before_launch_is_an_error() -> None:
    with pytest.raises(MisconfigurationException, match=r"fabric.launch\(\) was not called"):
        _fabric().setup_module(_model())


def test_cli_flags_are_fabric_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LT_ACCELERATOR", "cpu")
    monkeypatch.setenv("LT_PRECISION", "bf16-mixed")
    fabric = Fabric()
    assert fabric.accelerator.name == "cpu" and fabric.strategy.precision.precision == "bf16-mixed"
    with pytest.raises(MisconfigurationException, match="conflicts with --precision=bf16-mixed"):
        Fabric(precision="16-true")
