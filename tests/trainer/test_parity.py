"""Numerical parity: a fulmen fit and the hand-written PyTorch loop it stands for end with bitwise-equal weights.

Both sides start from the same initial weights, iterate a stock shuffled DataLoader whose order comes from
its own seeded ``torch.Generator``, and train with SGD (momentum) and a per-epoch StepLR. The raw loop is the
textbook one: ``zero_grad`` / forward / backward / ``step``, ``for batch in loader`` to exhaustion,
``scheduler.step()`` after every epoch. fulmen zeroes gradients inside the closure after the forward, which
changes no number.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L

EPOCHS = 3
N, BATCH = 40, 8  # 5 batches per epoch: with accumulate 2 the last window is partial
LR, MOMENTUM, GAMMA = 0.1, 0.9, 0.5


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(N, 6, generator=g)
    y = (x[:, :1] * 0.7 - x[:, 1:2] + 0.1 * torch.randn(N, 1, generator=g)).contiguous()
    return TensorDataset(x, y)


def loader(ds: TensorDataset) -> DataLoader:
    return DataLoader(ds, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(7))


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1))


def make_optim(params: Any) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=GAMMA)


class LitMLP(L.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> Any:
        opt, sched = make_optim(self.parameters())
        return {"optimizer": opt, "lr_scheduler": sched}


def raw_loop(
    net: nn.Module,
    data: DataLoader,
    *,
    accumulate: int = 1,
    clip_norm: float | None = None,
    clip_value: float | None = None,
    bf16: bool = False,
) -> torch.optim.Optimizer:
    opt, sched = make_optim(net.parameters())
    n = len(data)
    for _ in range(EPOCHS):
        for i, (x, y) in enumerate(data):
            if i % accumulate == 0:
                opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
                loss = nn.functional.mse_loss(net(x), y)
            if accumulate > 1:
                loss = loss / accumulate
            loss.backward()
            if (i + 1) % accumulate == 0 or i + 1 == n:
                if clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), clip_norm)
                if clip_value is not None:
                    torch.nn.utils.clip_grad_value_(net.parameters(), clip_value)
                opt.step()
        sched.step()
    return opt


def fulmen_fit(net: nn.Module, data: DataLoader, **trainer_kw: Any) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        **trainer_kw,
    )
    trainer.fit(LitMLP(net), data)
    return trainer


@pytest.fixture(autouse=True)
def _restore_torch_flags():
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)


VARIANTS = {
    "plain": ({}, {}),
    "accumulate2": ({"accumulate_grad_batches": 2}, {"accumulate": 2}),
    "clip_norm": ({"gradient_clip_val": 0.05}, {"clip_norm": 0.05}),
    "clip_value": ({"gradient_clip_val": 0.01, "gradient_clip_algorithm": "value"}, {"clip_value": 0.01}),
    "accumulate2_clip_norm": (
        {"accumulate_grad_batches": 2, "gradient_clip_val": 0.05},
        {"accumulate": 2, "clip_norm": 0.05},
    ),
    "bf16_mixed": ({"precision": "bf16-mixed"}, {"bf16": True}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bitwise_parity_with_raw_loop(variant: str) -> None:
    trainer_kw, raw_kw = VARIANTS[variant]
    ds = dataset()
    init = make_net()
    raw_net, lit_net = copy.deepcopy(init), copy.deepcopy(init)

    raw_opt = raw_loop(raw_net, loader(ds), **raw_kw)
    trainer = fulmen_fit(lit_net, loader(ds), **trainer_kw)

    steps_per_epoch = 3 if raw_kw.get("accumulate", 1) == 2 else 5
    assert trainer.global_step == EPOCHS * steps_per_epoch
    assert trainer.current_epoch == EPOCHS
    # the scheduler stepped once per epoch on both sides
    assert trainer.optimizers[0].param_groups[0]["lr"] == raw_opt.param_groups[0]["lr"] == LR * GAMMA**EPOCHS
    changed = False
    for (name, p_raw), p_lit in zip(raw_net.named_parameters(), lit_net.parameters()):
        assert p_raw.dtype == p_lit.dtype == torch.float32
        assert torch.equal(p_raw, p_lit), (
            f"{variant}: parameter {name} differs (max abs diff {(p_raw - p_lit).abs().max().item():.3e})"
        )
        changed |= not torch.equal(p_raw, dict(init.named_parameters())[name])
    assert changed, "training did not move the weights"
    # the momentum buffers match too
    for p_raw, p_lit in zip(raw_net.parameters(), lit_net.parameters()):
        b_raw = raw_opt.state[p_raw]["momentum_buffer"]
        b_lit = trainer.optimizers[0].state[p_lit]["momentum_buffer"]
        assert torch.equal(b_raw, b_lit)


def test_clipping_is_active() -> None:
    """The clip values above are small enough to change the result (so parity covers the clipping)."""
    ds = dataset()
    init = make_net()
    clipped, free = copy.deepcopy(init), copy.deepcopy(init)
    raw_loop(clipped, loader(ds), clip_norm=0.05)
    raw_loop(free, loader(ds))
    assert not all(torch.equal(a, b) for a, b in zip(clipped.parameters(), free.parameters()))


def test_bf16_autocast_is_active() -> None:
    """bf16-mixed really runs the forward in bfloat16 (the fp32 result differs)."""
    ds = dataset()
    init = make_net()
    mixed, full = copy.deepcopy(init), copy.deepcopy(init)
    fulmen_fit(mixed, loader(ds), precision="bf16-mixed")
    fulmen_fit(full, loader(ds))
    assert not all(torch.equal(a, b) for a, b in zip(mixed.parameters(), full.parameters()))
