"""LightningCLI with the model class defined in this script and a backbone injected through the config:
``model.backbone`` is typed ``nn.Module`` and given as ``class_path``/``init_args`` in the YAML (the
dependency-injection style of the LightningCLI docs), the optimizer and LR scheduler come from the config
too, and the subcommand is ``fit``.

Run: ``python cli_module_injection.py fit --config cli_module_injection.yaml``
"""

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class MLPBackbone(nn.Module):
    def __init__(self, in_features: int = 4, hidden: int = 8, out_features: int = 1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features))

    def forward(self, x):
        return self.net(x)


class LitRegressor(LightningModule):
    def __init__(self, backbone: nn.Module, loss_scale: float = 1.0):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.hparams.loss_scale * nn.functional.mse_loss(self.backbone(x), y)
        self.log("train_loss", loss)
        print(f"step {self.global_step} loss {loss.item():.10e}")
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.backbone(x), y))


class SineData(LightningDataModule):
    def __init__(self, samples: int = 32, batch_size: int = 8):
        super().__init__()
        self.samples = samples
        self.batch_size = batch_size

    def setup(self, stage):
        x = torch.linspace(-2, 2, self.samples * 4).reshape(self.samples, 4)
        self.data = TensorDataset(x, torch.sin(x).sum(1, keepdim=True))

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size * 2)


if __name__ == "__main__":
    cli = LightningCLI(LitRegressor, SineData, save_config_kwargs={"overwrite": True})
    model = cli.model
    print(f"metric backbone {type(model.backbone).__name__} {model.backbone.net[0].out_features}")
    print(f"metric loss_scale {model.hparams.loss_scale}")
    print(f"metric optimizer {type(cli.trainer.optimizers[0]).__name__} {cli.trainer.optimizers[0].defaults['lr']}")
    print(f"metric scheduler {type(cli.trainer.lr_scheduler_configs[0].scheduler).__name__}")
    print(f"metric lr_end {cli.trainer.optimizers[0].param_groups[0]['lr']:.10e}")
    print(f"metric global_step {cli.trainer.global_step}")
    print(f"metric val_loss {cli.trainer.callback_metrics['val_loss'].item():.10e}")
