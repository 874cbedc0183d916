"""A classifier validated on two dataloaders (``dataloader_idx``) and tested on both."""

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def blobs(n: int, shift: float, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.tensor([[0.0, 2.0], [2.0, -1.0], [-2.0, -1.0]])
    x = centers[y] + shift + 0.7 * torch.randn(n, 2, generator=g)
    return TensorDataset(x, y)


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        print(f"step {self.global_step} loss {loss.item():.10e}")
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.log("test_acc", (self(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)


if __name__ == "__main__":
    pl.seed_everything(3)
    train = DataLoader(blobs(120, 0.0, 0), batch_size=20)
    in_dist = DataLoader(blobs(40, 0.0, 1), batch_size=20)
    shifted = DataLoader(blobs(40, 0.8, 2), batch_size=20)
    model = Classifier()
    trainer = pl.Trainer(max_epochs=3, enable_progress_bar=False, logger=False, enable_checkpointing=False)
    trainer.fit(model, train, [in_dist, shifted])
    for key in sorted(trainer.callback_metrics):
        print(f"metric {key} {trainer.callback_metrics[key].item():.10e}")
    results = trainer.test(model, [in_dist, shifted], verbose=False)
    for i, result in enumerate(results):
        for key in sorted(result):
            print(f"metric test{i}:{key} {result[key]:.10e}")
