"""Golden per-step losses: 5 optimizer steps of a tiny seeded model, pinned as literals.

The run crosses an epoch boundary (3 batches per epoch), so the shuffled order of the second epoch is
covered too. The numbers were recorded once from fulmen and checked to equal a hand-written PyTorch loop's to 1e-7
(``test_golden_losses_match_raw_loop`` keeps checking that). A change in what the Trainer does per step
(loss scaling, zero_grad placement, an extra or missing step, batch order) moves them.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L

STEPS = 5
GOLDEN = [  # recorded from fulmen; equal (bitwise) to the raw loop's on the recording machine
    0.4661296606063843,
    0.12704478204250336,
    0.5066200494766235,
    0.17242197692394257,
    0.1086655855178833,
]


def make_data() -> DataLoader:
    g = torch.Generator().manual_seed(2024)
    x = torch.randn(24, 4, generator=g)
    y = torch.tanh(x @ torch.tensor([[0.5], [-1.0], [0.25], [0.8]])) + 0.05 * torch.randn(24, 1, generator=g)
    return DataLoader(
        TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3)
    )


def make_net() -> nn.Module:
    torch.manual_seed(42)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def make_opt(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.2, momentum=0.5)


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()
        self.losses: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> Any:
        return make_opt(self.parameters())


def fulmen_losses() -> list[float]:
    model = Tiny()
    trainer = L.Trainer(
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    trainer.fit(model, make_data())
    assert trainer.global_step == STEPS
    return model.losses


def raw_losses() -> list[float]:
    net = make_net()
    opt = make_opt(net.parameters())
    losses: list[float] = []
    data = make_data()
    while len(losses) < STEPS:  # 3 batches per epoch: the run crosses an epoch boundary
        for x, y in data:
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(x), y)
            losses.append(loss.item())
            loss.backward()
            opt.step()
            if len(losses) == STEPS:
                break
    return losses


@pytest.fixture(autouse=True)
def _restore_torch_flags():
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)


def test_golden_losses() -> None:
    losses = fulmen_losses()
    assert len(losses) == STEPS
    # pinned values; a relative 1e-6 leaves room for another CPU's float summation order, nothing more
    assert losses == pytest.approx(GOLDEN, rel=1e-6, abs=1e-7)
    assert losses[-1] < losses[0]  # it trains


def test_golden_losses_match_raw_loop() -> None:
    ours, raw = fulmen_losses(), raw_losses()
    assert len(ours) == len(raw) == STEPS
    for step, (a, b) in enumerate(zip(ours, raw)):
        assert abs(a - b) <= 1e-7, f"step {step}: fulmen {a!r} vs raw loop {b!r}"
