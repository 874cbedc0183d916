"""A LightningDataModule handed to ``trainer.validate(model, dm)`` and ``trainer.test(model, dm)`` in the
dataloaders position, and to ``trainer.fit(model, dm)``, as the Lightning docs' snippets do."""

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class BlobsDataModule(pl.LightningDataModule):
    def __init__(self, batch_size: int = 10):
        super().__init__()
        self.batch_size = batch_size
        self.calls = []

    def setup(self, stage=None):
        self.calls.extend(name for name in ("fit", "validate", "test", "predict") if stage == name)
        g = torch.Generator().manual_seed(7)
        centers = torch.tensor([[2.0, 2.0], [-2.0, -2.0]])
        y = torch.arange(40) % 2
        x = centers[y] + torch.randn(40, 2, generator=g)
        self.train_set = TensorDataset(x[:30], y[:30])
        self.val_set = TensorDataset(x[30:], y[30:])

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.val_set, batch_size=5)


class Logistic(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.linear(x), y)
        print(f"step {self.global_step} loss {loss.item():.10e}")
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.linear(x), y))
        self.log("val_acc", (self.linear(x).argmax(-1) == y).float().mean())

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self.linear(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


if __name__ == "__main__":
    pl.seed_everything(1)
    dm = BlobsDataModule()
    model = Logistic()
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    (before,) = trainer.validate(model, dm, verbose=False)
    trainer.fit(model, dm)
    (after,) = trainer.validate(model, dm, verbose=False)
    (test,) = trainer.test(model, dm, verbose=False)
    print(f"metric val_loss_before {before['val_loss']:.10e}")
    print(f"metric val_loss_after {after['val_loss']:.10e}")
    print(f"metric val_acc_after {after['val_acc']:.10e}")
    print(f"metric test_acc {test['test_acc']:.10e}")
    print(f"metric setup_calls {' '.join(dm.calls)}")
