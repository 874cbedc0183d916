"""GPU tests: mixed precision on CUDA, DDP and FSDP over NCCL (world size 1 on one GPU, 2 where there are two),
and the Trainer's throughput against a hand-written AMP loop. Skipped, with the reason, without CUDA."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (NCCL, 16-mixed, bf16-mixed)"
)


def _data(n: int = 512, d: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    return TensorDataset(x, (x[:, :1] * 2 + 0.1 * torch.randn(n, 1, generator=g)))


class Net(L.LightningModule):
    def __init__(self, width: int = 64, d: int = 32) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(
            nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1)
        )
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x).float(), y)
        self.log("loss", loss, sync_dist=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.losses.append(float(self.trainer.callback_metrics["loss"]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def _trainer(**kw) -> L.Trainer:
    kw.setdefault("max_epochs", 4)
    return L.Trainer(
        accelerator="cuda",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "bf16-true", "32-true"])
def test_mixed_precision_trains_on_cuda(precision: str, tmp_path) -> None:
    if "bf16" in precision and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    model = Net()
    trainer = _trainer(devices=1, precision=precision)
    trainer.fit(model, DataLoader(_data(), batch_size=64))
    assert model.losses[-1] < model.losses[0] * 0.7, model.losses
    assert next(model.parameters()).device.type == "cuda"
    if precision == "16-mixed":
        assert trainer.scaler is not None and trainer.scaler.get_scale() > 0
        trainer.save_checkpoint(tmp_path / "amp.ckpt")
        ckpt = torch.load(tmp_path / "amp.ckpt", weights_only=True)
        assert any("scale" in str(v) for k, v in ckpt.items() if "Precision" in k), sorted(ckpt)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_nccl_strategies_world_size_one(strategy: str) -> None:
    model = Net()
    trainer = _trainer(
        devices=1, strategy=strategy, precision="bf16-mixed" if torch.cuda.is_bf16_supported() else 32
    )
    trainer.fit(model, DataLoader(_data(), batch_size=64))
    assert trainer.strategy.process_group_backend == "nccl" and trainer.world_size == 1
    assert model.losses[-1] < model.losses[0] * 0.7, model.losses


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_ddp_two_gpus_matches_one() -> None:
    single, ddp = Net(), Net()
    _trainer(devices=1, max_epochs=1).fit(single, DataLoader(_data(), batch_size=64))
    _trainer(devices=2, strategy="ddp_spawn", max_epochs=1).fit(ddp, DataLoader(_data(), batch_size=32))
    for p, q in zip(single.parameters(), ddp.parameters()):
        torch.testing.assert_close(p.cpu(), q.cpu(), rtol=1e-4, atol=1e-5)


def _raw_amp_loop(data: TensorDataset, epochs: int, batch: int) -> float:
    model = Net().net.cuda()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(data, batch_size=batch)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            x, y = x.cuda(non_blocking=True), y.cuda(non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = nn.functional.mse_loss(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def test_throughput_against_a_hand_written_amp_loop(capsys: pytest.CaptureFixture[str]) -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    data, epochs, batch = _data(16384), 3, 128  # 384 steps
    _raw_amp_loop(data, 1, batch)  # warm up CUDA and the kernels
    raw = min(_raw_amp_loop(data, epochs, batch) for _ in range(3))

    def fulmen_run() -> float:
        model = Net()
        trainer = L.Trainer(
            accelerator="cuda",
            devices=1,
            precision="bf16-mixed",
            max_epochs=epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.fit(model, DataLoader(data, batch_size=batch))
        torch.cuda.synchronize()
        return time.perf_counter() - start

    fulmen_run()
    ours = min(fulmen_run() for _ in range(3))
    steps = epochs * len(data) // batch
    with capsys.disabled():
        print(
            f"\n[throughput] raw AMP loop {steps / raw:.0f} steps/s, fulmen Trainer {steps / ours:.0f} steps/s "
            f"({ours / raw:.2f}x the raw loop's time, {torch.cuda.get_device_name()})"
        )
    assert ours < raw * 1.5 + 0.5, f"fulmen {ours:.3f}s vs raw {raw:.3f}s"
