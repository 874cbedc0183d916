"""A tiny LightningModule for `fulmen serve CKPT --model tiny_module:TinyRegressor`."""

import torch
from torch import nn

import fulmen as L


class TinyRegressor(L.LightningModule):
    def __init__(self, width: int = 3):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Linear(width, 2)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return self(batch).pow(2).mean()

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch).softmax(-1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
