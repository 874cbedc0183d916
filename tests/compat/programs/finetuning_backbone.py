"""Transfer learning as in Lightning's computer-vision fine-tuning example: a ``BaseFinetuning`` callback freezes
the backbone, then unfreezes it at a milestone epoch and adds its parameters to the optimizer with a lower
learning rate (no LR scheduler: torch's schedulers refuse param groups added after they were built); the
learning rates of both groups are logged by ``LearningRateMonitor``."""

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import BaseFinetuning, LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class MilestonesFinetuning(BaseFinetuning):
    def __init__(self, milestone: int = 1):
        super().__init__()
        self.milestone = milestone

    def freeze_before_training(self, pl_module):
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module, epoch, optimizer):
        if epoch == self.milestone:
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer=optimizer, lr=1e-3)


class TransferModel(LightningModule):
    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.backbone = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU())
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        groups = self.trainer.optimizers[0].param_groups
        print(f"step {self.global_step} loss {loss.item():.10e} {len(groups)} {groups[0]['lr']:.10e}")
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(filter(lambda p: p.requires_grad, self.parameters()), lr=self.hparams.lr)
        return optimizer

    def on_train_start(self):
        print(f"metric stepping_batches_at_start {self.trainer.estimated_stepping_batches}")


if __name__ == "__main__":
    seed_everything(10)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 6, generator=g)
    y = (x.sum(1) > 0).long()
    trainer = Trainer(max_epochs=3, accumulate_grad_batches=2, logger=CSVLogger("logs"), log_every_n_steps=1,
                      callbacks=[MilestonesFinetuning(milestone=1), LearningRateMonitor("step")],
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    model = TransferModel()
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8))
    print(f"metric estimated_stepping_batches {trainer.estimated_stepping_batches}")
    print(f"metric global_step {trainer.global_step}")
    print(f"metric param_groups {len(trainer.optimizers[0].param_groups)}")
    print(f"metric backbone_trainable {all(p.requires_grad for p in model.backbone.parameters())}")
    print(f"metric lr_logged {' '.join(sorted(k for k in trainer.callback_metrics if k.startswith('lr')))}")
    print(f"metric train_loss {trainer.callback_metrics['train_loss'].item():.10e}")
