"""Distributed data parallel on two CPU processes (``strategy="ddp", devices=2, accelerator="cpu"``), written
with the ``pytorch_lightning`` package name as most public projects still do: the script is launched once and
Lightning starts the second process itself. Metrics are synced across processes (``sync_dist=True``) and only
rank zero prints."""

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class DDPRegressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, sync_dist=True)
        gathered = self.all_gather(loss.detach())
        if self.global_rank == 0:
            print(f"step {self.global_step} loss {gathered[0].item():.10e} {gathered[1].item():.10e}")
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=g)
    y = x @ torch.tensor([[0.5], [-1.0], [2.0]])
    return TensorDataset(x, y)


if __name__ == "__main__":
    pl.seed_everything(8)
    model = DDPRegressor()
    trainer = pl.Trainer(
        strategy="ddp",
        devices=2,
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    ds = data()
    trainer.fit(model, DataLoader(ds, batch_size=4, shuffle=True), DataLoader(ds, batch_size=8))
    weight = model.layer.weight.detach().clone()
    gathered = [torch.zeros_like(weight) for _ in range(trainer.world_size)]
    dist.all_gather(gathered, weight)  # the replicas must hold the same weights
    if trainer.global_rank == 0:
        print(f"metric world_size {trainer.world_size}")
        print(f"metric num_training_batches {trainer.num_training_batches}")
        print(f"metric global_step {trainer.global_step}")
        print(f"metric replicas_equal {all(torch.equal(gathered[0], w) for w in gathered)}")
        print(f"metric weight_sum {weight.sum().item():.10e}")
        print(f"metric train_loss {trainer.callback_metrics['train_loss'].item():.10e}")
        print(f"metric val_loss {trainer.callback_metrics['val_loss'].item():.10e}")
