"""A Fabric training loop in the style of Lightning's ``examples/fabric``: model and optimizer through
``fabric.setup``, a cosine LR schedule with warm-up built *after* setup on the wrapped optimizer,
gradient clipping via ``fabric.clip_gradients``, ``fabric.no_backward_sync`` for accumulation and a
``fabric.save``/``fabric.load`` round trip."""

import math

import torch
import torch.nn.functional as F
from lightning.fabric import Fabric, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def lr_lambda(warmup, total):
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return f


def main():
    fabric = Fabric(accelerator="cpu", devices=1)
    fabric.launch()
    seed_everything(13)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    model, optimizer = fabric.setup(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup=2, total=8))

    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 8, generator=g)
    y = torch.randint(0, 4, (64,), generator=g)
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(x, y), batch_size=8))
    accumulate = 2
    step = 0
    for epoch in range(2):
        model.train()
        for i, (xb, yb) in enumerate(loader):
            is_accumulating = (i + 1) % accumulate != 0
            with fabric.no_backward_sync(model, enabled=is_accumulating):
                loss = F.cross_entropy(model(xb), yb) / accumulate
                fabric.backward(loss)
            if not is_accumulating:
                fabric.clip_gradients(model, optimizer, max_norm=1.0)
                optimizer.step()
                optimizer.zero_grad()
                scheduler.step()
                print(f"step {step} loss {loss.item():.10e} {scheduler.get_last_lr()[0]:.10e}")
                step += 1

    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "step": step}
    fabric.save("fabric_state.ckpt", state)
    restored = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    remainder = fabric.load("fabric_state.ckpt", restored)
    print(f"metric remainder {sorted(remainder)} {remainder['step']}")
    print(f"metric last_epoch {scheduler.last_epoch}")
    print(f"metric lr {optimizer.param_groups[0]['lr']:.10e}")
    print(f"metric param_sum {sum(p.sum() for p in model.parameters()).item():.10e}")
    print(f"metric device {fabric.device}")


if __name__ == "__main__":
    main()
