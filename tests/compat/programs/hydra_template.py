"""A training entry point in the lightning-hydra-template style: the datamodule, model, callbacks, loggers
and Trainer are built from a Hydra config with ``hydra.utils.instantiate`` (callbacks and loggers given as
lists, so the Trainer receives what Hydra makes of ``ListConfig`` sequences), and messages go through a
``RankedLogger`` built on ``lightning_utilities.core.rank_zero``.

Run: ``python hydra_template.py [key=value overrides]``
"""

import logging
import os
from collections.abc import Mapping
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import Logger
from lightning_utilities.core.rank_zero import rank_prefixed_message, rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split


class RankedLogger(logging.LoggerAdapter):
    """A multi-GPU-friendly python command line logger: messages carry the rank, or go out on rank zero."""

    def __init__(self, name: str = __name__, rank_zero_only: bool = False,
                 extra: Mapping[str, object] | None = None) -> None:
        super().__init__(logger=logging.getLogger(name), extra=extra)
        self.rank_zero_only = rank_zero_only

    def log(self, level: int, msg: str, rank: int | None = None, *args, **kwargs) -> None:
        if not self.isEnabledFor(level):
            return
        msg, kwargs = self.process(msg, kwargs)
        current_rank = getattr(rank_zero_only, "rank", None)
        if current_rank is None:
            raise RuntimeError("The `rank_zero_only.rank` needs to be set before use")
        msg = rank_prefixed_message(msg, current_rank)
        if self.rank_zero_only:
            if current_rank == 0:
                self.logger.log(level, msg, *args, **kwargs)
        elif rank is None or current_rank == rank:
            self.logger.log(level, msg, *args, **kwargs)


log = RankedLogger(__name__, rank_zero_only=True)
MESSAGES = []


class _Collect(logging.Handler):
    def emit(self, record):
        MESSAGES.append(record.getMessage())


class MoonsDataModule(LightningDataModule):
    def __init__(self, n: int = 48, batch_size: int = 8, splits=(36, 12)):
        super().__init__()
        self.save_hyperparameters(logger=False)

    def setup(self, stage: str | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        t = torch.rand(self.hparams.n, generator=g) * 3.14
        y = (torch.arange(self.hparams.n) % 2).long()
        x = torch.stack([torch.cos(t) + y, torch.sin(t) * (1 - 2 * y) + 0.3 * y], dim=1)
        x = x + 0.1 * torch.randn(x.shape, generator=g)
        self.train_set, self.val_set = random_split(
            TensorDataset(x, y), list(self.hparams.splits), generator=torch.Generator().manual_seed(1)
        )

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)


class SimpleDenseNet(nn.Module):
    def __init__(self, sizes):
        super().__init__()
        layers = []
        for a, b in zip(sizes[:-2], sizes[1:-1]):  # noqa: RUF007 - the hidden layers only
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-2], sizes[-1]))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class LitClassifier(LightningModule):
    def __init__(self, net: nn.Module, optimizer, scheduler):
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net"])
        self.net = net

    def model_step(self, batch):
        x, y = batch
        logits = self.net(x)
        return nn.functional.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()

    def training_step(self, batch, batch_idx):
        loss, acc = self.model_step(batch)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", acc, on_step=False, on_epoch=True)
        print(f"step {self.global_step} loss {loss.item():.10e}")
        return loss

    def validation_step(self, batch, batch_idx):
        loss, acc = self.model_step(batch)
        self.log("val/loss", loss, on_step=False, on_epoch=True)
        self.log("val/acc", acc, on_step=False, on_epoch=True)

    def configure_optimizers(self):
        optimizer = self.hparams.optimizer(params=self.trainer.model.parameters())
        scheduler = self.hparams.scheduler(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss",
                                                         "interval": "epoch", "frequency": 1}}


def instantiate_list(cfg: ListConfig, kind: str) -> list:
    objects = []
    for item in cfg:
        if isinstance(item, DictConfig) and "_target_" in item:
            log.info(f"Instantiating {kind} <{item._target_}>")
            objects.append(hydra.utils.instantiate(item))
    return objects


@hydra.main(version_base="1.3", config_path="hydra_configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    logging.getLogger(__name__).addHandler(_Collect())
    L.seed_everything(cfg.seed, workers=True)
    log.info(f"Instantiating datamodule <{cfg.data._target_}>")
    datamodule: LightningDataModule = hydra.utils.instantiate(cfg.data)
    model: LightningModule = hydra.utils.instantiate(cfg.model)
    callbacks: list[Callback] = instantiate_list(cfg.callbacks, "callback")
    loggers: list[Logger] = instantiate_list(cfg.logger, "logger")
    log.info(f"Instantiating trainer <{cfg.trainer._target_}>")
    trainer: Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg.model, resolve=True))
    log.info("Starting training!")
    trainer.fit(model=model, datamodule=datamodule)
    metrics: dict[str, Any] = dict(trainer.callback_metrics)

    out = cfg.paths.output_dir
    print(f"metric global_step {trainer.global_step}")
    print(f"metric val_acc {metrics['val/acc'].item():.10e}")
    print(f"metric val_loss {metrics['val/loss'].item():.10e}")
    print(f"metric lr {trainer.optimizers[0].param_groups[0]['lr']:.10e}")
    configured = {type(c).__name__ for c in callbacks}
    print(f"metric callbacks {' '.join(type(c).__name__ for c in trainer.callbacks if type(c).__name__ in configured)}")
    print(f"metric checkpoints {' '.join(sorted(os.listdir(os.path.join(out, 'checkpoints'))))}")
    print(f"metric best {os.path.basename(trainer.checkpoint_callback.best_model_path)}")
    print(f"metric csv_files {' '.join(sorted(os.listdir(trainer.logger.log_dir)))}")
    print(f"metric messages {' | '.join(MESSAGES)}")
    return metrics["val/acc"].item()


if __name__ == "__main__":
    main()
