"""Logging torchmetrics metrics: the Trainer computes and resets them at epoch ends.

Run: python examples/torchmetrics_example.py   (needs `pip install 'fulmen[metrics]'`)
"""

from __future__ import annotations

import torch
import torchmetrics
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=3)
        self.val_metrics = torchmetrics.MetricCollection(
            {"val_acc": torchmetrics.Accuracy(task="multiclass", num_classes=3),
             "val_f1": torchmetrics.F1Score(task="multiclass", num_classes=3, average="macro")}
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.train_acc(logits, y)  # forward: the step value
        self.log("train_acc", self.train_acc, on_step=True, on_epoch=True, prog_bar=True)
        return torch.nn.functional.cross_entropy(logits, y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_metrics.update(self.net(x), y)
        self.log_dict(self.val_metrics)  # computed once per validation run, then reset

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def main() -> None:
    L.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 10, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    train = DataLoader(TensorDataset(x[:500], y[:500]), batch_size=50, shuffle=True)
    val = DataLoader(TensorDataset(x[500:], y[500:]), batch_size=50)
    trainer = L.Trainer(max_epochs=15, logger=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(Classifier(), train, val)
    metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
    print("callback_metrics:", metrics)
    assert metrics["val_acc"] > 0.75, metrics


if __name__ == "__main__":
    main()
