"""Train, unfreeze the backbone, and call ``trainer.fit`` again on the same Trainer with more epochs
(the "fine-tune in two phases" pattern: ``trainer.fit_loop.max_epochs`` raised between the calls)."""

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(6, 12), nn.ReLU())
        self.head = nn.Linear(12, 3)
        self.backbone.requires_grad_(False)

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        print(f"step {self.global_step} loss {loss.item():.10e}")
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        acc = (self(x).argmax(1) == y).float().mean()
        self.log("val_acc", acc)

    def configure_optimizers(self):
        return torch.optim.Adam(filter(lambda p: p.requires_grad, self.parameters()), lr=1e-2)


def data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(48, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=16), DataLoader(ds, batch_size=24)


if __name__ == "__main__":
    L.seed_everything(5)
    model = Classifier()
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    train, val = data()
    trainer.fit(model, train, val)
    print(f"metric phase1_epoch {trainer.current_epoch}")
    print(f"metric phase1_val_acc {trainer.callback_metrics['val_acc'].item():.10e}")

    model.backbone.requires_grad_(True)
    trainer.fit_loop.max_epochs = trainer.current_epoch + 2
    trainer.fit(model, train, val)
    print(f"metric phase2_epoch {trainer.current_epoch}")
    print(f"metric global_step {trainer.global_step}")
    print(f"metric phase2_val_acc {trainer.callback_metrics['val_acc'].item():.10e}")
    print(f"metric train_loss {trainer.callback_metrics['train_loss'].item():.10e}")
