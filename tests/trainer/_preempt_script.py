"""Training script for the preemption test: prints each finished step, sleeps a little per step."""

import sys
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        time.sleep(0.02)
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        print(f"step {self.global_step}", flush=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def main(root: str, out: str) -> None:
    torch.set_num_threads(1)
    L.seed_everything(3, verbose=False)
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(48, 5, generator=g), torch.randn(48, 1, generator=g))
    model = Net()
    trainer = L.Trainer(max_steps=36, default_root_dir=root, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, deterministic=True)
    trainer.fit(model, DataLoader(ds, batch_size=4, shuffle=True))
    torch.save(model.state_dict(), out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
