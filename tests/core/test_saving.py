"""``LightningDataModule.load_from_checkpoint`` (core/saving.py), pinned against pytorch-lightning 2.6.1.

Lightning rebuilds the datamodule from ``datamodule_hyper_parameters`` (keyword arguments override them) and
then loads its state from the checkpoint entry named by the class's ``__qualname__``.
"""

from __future__ import annotations

from pathlib import Path

import torch

import fulmen as L


class DM(L.LightningDataModule):
    def __init__(self, batch_size: int = 4, root: str = "x") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.seen = 0

    def state_dict(self) -> dict[str, int]:
        return {"seen": self.seen}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.seen = state_dict["seen"]


def _checkpoint(path: Path, with_state: bool) -> Path:
    ckpt = {"datamodule_hyper_parameters": {"batch_size": 16, "root": "y"}, "state_dict": {}}
    if with_state:
        ckpt["DM"] = {"seen": 7}
    torch.save(ckpt, path)
    return path


def test_datamodule_load_from_checkpoint_restores_hparams_and_state(tmp_path: Path) -> None:
    dm = DM.load_from_checkpoint(_checkpoint(tmp_path / "a.ckpt", with_state=True), root="z")
    # real Lightning 2.6.1 on the same file: {'batch_size': 16, 'root': 'z'} 7
    assert dict(dm.hparams) == {"batch_size": 16, "root": "z"}
    assert dm.seen == 7


def test_datamodule_load_from_checkpoint_without_its_state_entry(tmp_path: Path) -> None:
    dm = DM.load_from_checkpoint(_checkpoint(tmp_path / "b.ckpt", with_state=False))
    assert dict(dm.hparams) == {"batch_size": 16, "root": "y"}
    assert dm.seen == 0
