"""A classifier in the lightning-hydra-template style with torchmetrics: ``Accuracy``/``MeanMetric`` objects
updated in the steps and logged as metric objects (``self.log("val/acc", self.val_acc)``), a ``MaxMetric``
tracking the best validation accuracy, metrics reset in ``on_train_start``, and a test run after fit."""

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification.accuracy import Accuracy


class LitClassifier(LightningModule):
    def __init__(self, num_classes: int = 3, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, num_classes))
        self.criterion = nn.CrossEntropyLoss()
        self.train_acc = Accuracy(task="multiclass", num_classes=num_classes)
        self.val_acc = Accuracy(task="multiclass", num_classes=num_classes)
        self.test_acc = Accuracy(task="multiclass", num_classes=num_classes)
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()

    def forward(self, x):
        return self.net(x)

    def on_train_start(self):
        self.val_loss.reset()
        self.val_acc.reset()
        self.val_acc_best.reset()

    def model_step(self, batch):
        x, y = batch
        logits = self(x)
        return self.criterion(logits, y), logits.argmax(dim=1), y

    def training_step(self, batch, batch_idx):
        loss, preds, targets = self.model_step(batch)
        self.train_loss(loss)
        self.train_acc(preds, targets)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        print(f"step {self.global_step} loss {loss.item():.10e}")
        return loss

    def validation_step(self, batch, batch_idx):
        loss, preds, targets = self.model_step(batch)
        self.val_loss(loss)
        self.val_acc(preds, targets)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self):
        acc = self.val_acc.compute()
        self.val_acc_best(acc)
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch, batch_idx):
        loss, preds, targets = self.model_step(batch)
        self.test_loss(loss)
        self.test_acc(preds, targets)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def loaders():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(90, 5, generator=g)
    y = (x[:, 0] > 0.3).long() + (x[:, 1] > 0.0).long()
    train = DataLoader(TensorDataset(x[:60], y[:60]), batch_size=12)
    val = DataLoader(TensorDataset(x[60:], y[60:]), batch_size=10)
    return train, val


if __name__ == "__main__":
    seed_everything(6)
    model = LitClassifier()
    checkpoint = ModelCheckpoint(dirpath="ckpts", monitor="val/acc", mode="max", filename="epoch_{epoch:03d}",
                                 auto_insert_metric_name=False)
    trainer = Trainer(max_epochs=3, logger=False, callbacks=[checkpoint], enable_progress_bar=False,
                      enable_model_summary=False)
    train, val = loaders()
    trainer.fit(model, train, val)
    metrics = trainer.callback_metrics
    for name in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best"):
        print(f"metric {name} {metrics[name].item():.10e}")
    print(f"metric best {checkpoint.best_model_path.split('/')[-1]} {checkpoint.best_model_score.item():.10e}")
    (result,) = trainer.test(model, val, ckpt_path="best", verbose=False)
    print(f"metric test/acc {result['test/acc']:.10e}")
    print(f"metric test/loss {result['test/loss']:.10e}")
