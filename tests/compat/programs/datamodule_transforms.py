"""A LightningDataModule with per-sample transforms, a seeded random split and a batch hook."""

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, random_split


class Standardize:
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = mean, std

    def __call__(self, x):
        return (x - self.mean) / self.std


class Compose:
    def __init__(self, *transforms):
        self.transforms = transforms

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class SignalDataset(Dataset):
    def __init__(self, n: int, seed: int, transform=None):
        g = torch.Generator().manual_seed(seed)
        self.x = 5.0 + 3.0 * torch.randn(n, 8, generator=g)
        self.y = (self.x[:, :4].sum(1) > self.x[:, 4:].sum(1)).long()
        self.transform = transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.y[i]


class SignalDataModule(pl.LightningDataModule):
    def __init__(self, batch_size: int = 16):
        super().__init__()
        self.batch_size = batch_size

    def prepare_data(self):
        pass  # nothing to download

    def setup(self, stage: str):
        full = SignalDataset(200, seed=0)
        train_idx = random_split(range(200), [160, 40], generator=torch.Generator().manual_seed(42))
        stats = full.x[list(train_idx[0])]
        transform = Compose(Standardize(stats.mean(0), stats.std(0)), lambda x: x.clamp(-3, 3))
        full.transform = transform
        self.train_set, self.val_set = (torch.utils.data.Subset(full, list(idx)) for idx in train_idx)
        self.test_set = SignalDataset(50, seed=1, transform=transform)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=self.batch_size)


class Model(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return x.float(), y

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        print(f"step {self.global_step} loss {loss.item():.10e}")
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(-1) == y).float().mean(), prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self.net(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=5e-3)


if __name__ == "__main__":
    pl.seed_everything(5)
    dm = SignalDataModule()
    model = Model()
    trainer = pl.Trainer(max_epochs=3, enable_progress_bar=False, logger=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    print(f"metric val_acc {trainer.callback_metrics['val_acc'].item():.10e}")
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    print(f"metric test_acc {result['test_acc']:.10e}")
