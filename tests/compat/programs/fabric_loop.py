"""A hand-written training loop on Lightning Fabric: setup, backward, clipping, save and load."""

import os

import torch
import torch.nn.functional as F
from lightning.fabric import Fabric, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def main():
    seed_everything(123)
    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    fabric.launch()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 5, generator=g)
    y = (x.sum(1) > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)

    model = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=6, gamma=0.5)
    model, optimizer = fabric.setup(model, optimizer)
    loader = fabric.setup_dataloaders(loader)

    step = 0
    for epoch in range(3):
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            fabric.backward(loss)
            fabric.clip_gradients(model, optimizer, max_norm=1.0)
            optimizer.step()
            scheduler.step()
            fabric.print(f"step {step} loss {loss.item():.10e}")
            step += 1

    state = {"model": model, "optimizer": optimizer, "step": step}
    fabric.save(os.path.join("fabric_ckpt", "state.ckpt"), state)

    fresh = fabric.setup_module(nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 2)))
    restored = {"model": fresh}
    remainder = fabric.load(os.path.join("fabric_ckpt", "state.ckpt"), restored)
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    print(f"metric restored_equal {same}")
    print(f"metric restored_step {remainder['step']}")
    with torch.no_grad():
        acc = (model(x).argmax(-1) == y).float().mean()
    print(f"metric accuracy {acc.item():.10e}")


if __name__ == "__main__":
    main()
