"""Checkpoints across frameworks: Lightning 2.6.1 loads and resumes fulmen checkpoints, and the reverse.

Skipped when pytorch-lightning is not installed (it is in the dev extra, pinned to a clean release).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L

pl = pytest.importorskip("pytorch_lightning")


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g)), batch_size=8)


def _body(base: type) -> type:
    class Model(base):  # type: ignore[misc, valid-type]
        def __init__(self, hidden: int = 8, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)}

    return Model


FModel = _body(L.LightningModule)
PModel = _body(pl.LightningModule)
QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False)


def test_lightning_loads_and_resumes_a_fulmen_checkpoint(tmp_path) -> None:
    model = FModel(hidden=6)
    t = L.Trainer(max_epochs=2, enable_checkpointing=False, **QUIET)
    t.fit(model, loader())
    path = tmp_path / "fulmen.ckpt"
    t.save_checkpoint(path)

    loaded = PModel.load_from_checkpoint(path)  # Lightning's loader, torch's weights_only default
    assert loaded.hparams.hidden == 6
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)

    resumed = PModel(hidden=6)
    pt = pl.Trainer(max_epochs=3, enable_checkpointing=False, **QUIET)
    pt.fit(resumed, loader(), ckpt_path=str(path))
    assert pt.global_step == 12 and pt.current_epoch == 3
    assert resumed.lr_schedulers().last_epoch == 3  # the scheduler state came across


def test_fulmen_loads_and_resumes_a_lightning_checkpoint(tmp_path) -> None:
    model = PModel(hidden=5)
    pt = pl.Trainer(max_epochs=2, enable_checkpointing=False, **QUIET)
    pt.fit(model, loader())
    path = tmp_path / "lightning.ckpt"
    pt.save_checkpoint(path)

    loaded = FModel.load_from_checkpoint(path)
    assert loaded.hparams.hidden == 5
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)

    resumed = FModel(hidden=5)
    t = L.Trainer(max_epochs=3, enable_checkpointing=False, **QUIET)
    t.fit(resumed, loader(), ckpt_path=str(path))
    assert t.global_step == 12 and t.current_epoch == 3
    assert t.lr_scheduler_configs[0].scheduler.last_epoch == 3
