"""Automatic logger versions under DDP (2 CPU processes, gloo, fork launcher): every rank uses rank 0's number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import fulmen as L
from fulmen.callbacks import Callback
from fulmen.loggers import CSVLogger, TensorBoardLogger

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)


class Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = self.net(batch).pow(2).mean()
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class RankZeroFirst(Callback):
    """Rank 0 resolves its logger versions and creates the folders (as its first log write would) before the
    other ranks look: a per-rank directory listing would then give rank 1 the next number."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def setup(self, trainer, pl_module, stage) -> None:
        if trainer.global_rank == 0:
            for lg in trainer.loggers:
                Path(lg.log_dir).mkdir(parents=True, exist_ok=True)
        trainer.strategy.barrier("rank 0 made its version folders")
        seen = {
            "versions": [lg.version for lg in trainer.loggers],
            "log_dirs": [lg.log_dir for lg in trainer.loggers],
            "trainer_log_dir": trainer.log_dir,
        }
        (self.out / f"setup_rank{trainer.global_rank}.json").write_text(json.dumps(seen))

    def on_train_end(self, trainer, pl_module) -> None:
        seen = {
            "version": trainer.logger.version,
            "log_dir": trainer.logger.log_dir,
            "ckpt_dir": trainer.checkpoint_callback.dirpath,
        }
        (self.out / f"end_rank{trainer.global_rank}.json").write_text(json.dumps(seen))


def test_every_rank_uses_rank_zeros_logger_version(tmp_path: Path) -> None:
    save_dir = tmp_path / "logs"
    (save_dir / "exp" / "version_0").mkdir(parents=True)  # an earlier run
    (save_dir / "tb" / "version_0").mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    loggers = [CSVLogger(save_dir, name="exp"), TensorBoardLogger(save_dir, name="tb")]
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_fork", max_epochs=1, logger=loggers,
        callbacks=[RankZeroFirst(out)], enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(Model(), DataLoader(torch.randn(16, 4), batch_size=4))

    setup = [json.loads((out / f"setup_rank{r}.json").read_text()) for r in (0, 1)]
    assert setup[0] == setup[1]
    assert setup[0]["versions"] == [1, 1]  # the next free number after the earlier run's version_0
    assert setup[0]["log_dirs"] == [str(save_dir / "exp" / "version_1"), str(save_dir / "tb" / "version_1")]
    assert setup[0]["trainer_log_dir"] == str(save_dir / "exp" / "version_1")
    end = [json.loads((out / f"end_rank{r}.json").read_text()) for r in (0, 1)]
    assert end[0] == end[1]
    assert end[0]["ckpt_dir"] == str(save_dir / "exp" / "version_1" / "checkpoints")
    assert sorted(p.name for p in (save_dir / "exp").iterdir()) == ["version_0", "version_1"]
    assert (save_dir / "exp" / "version_1" / "metrics.csv").is_file()
