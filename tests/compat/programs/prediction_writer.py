"""Batch predictions written to disk by a ``BasePredictionWriter`` callback (``write_interval="batch_and_epoch"``),
as inference scripts do for large datasets, then read back."""

import os

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class TorchWriter(BasePredictionWriter):
    def __init__(self, output_dir, write_interval="batch_and_epoch"):
        super().__init__(write_interval)
        self.output_dir = output_dir

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        torch.save(prediction, os.path.join(self.output_dir, f"batch_{dataloader_idx}_{batch_idx}.pt"))
        print(f"step {batch_idx} loss {prediction[:, 0].sum().item():.10e} {len(batch_indices or [])}")

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        torch.save(predictions, os.path.join(self.output_dir, "predictions.pt"))
        torch.save(batch_indices, os.path.join(self.output_dir, "batch_indices.pt"))


class Scorer(LightningModule):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        (x,) = batch
        return torch.softmax(self.fc(x), dim=-1)


if __name__ == "__main__":
    seed_everything(21)
    out = "predictions"
    os.makedirs(out, exist_ok=True)
    data = TensorDataset(torch.randn(22, 3))
    trainer = Trainer(callbacks=[TorchWriter(out)], logger=False, enable_progress_bar=False,
                      enable_model_summary=False)
    returned = trainer.predict(Scorer(), DataLoader(data, batch_size=5), return_predictions=False)
    print(f"metric returned {returned}")
    print(f"metric files {' '.join(sorted(os.listdir(out)))}")
    preds = torch.load(os.path.join(out, "predictions.pt"))
    indices = torch.load(os.path.join(out, "batch_indices.pt"))
    print(f"metric n_batches {len(preds[0]) if isinstance(preds[0], list) else len(preds)}")
    flat = preds[0] if isinstance(preds[0], list) else preds
    print(f"metric pred_sum {torch.cat(flat).sum().item():.10e}")
    print(f"metric pred_first {flat[0][0, 0].item():.10e}")
    print(f"metric batch_indices {indices}")
    print(f"metric batch3 {torch.load(os.path.join(out, 'batch_0_3.pt')).shape}")
