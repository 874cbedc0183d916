"""ModelCheckpoint with a validation metric as monitor and a step/time trigger, compared with pytorch_lightning 2.6.1:
which files are written, at which step and with which score, and what is raised or warned when the key is missing
(step/time triggers defer silently; an epoch-end save warns before any validation and raises after one)."""

from __future__ import annotations

import importlib
import os
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

CASES = {
    # name: (ModelCheckpoint kwargs, Trainer kwargs)
    "steps_and_last": ({"every_n_train_steps": 1, "save_last": True}, {}),
    "time": ({"train_time_interval": timedelta(seconds=0)}, {}),
    "twice_per_epoch": ({"every_n_train_steps": 1, "save_last": True}, {"val_check_interval": 0.5}),
    "typo_steps": ({"every_n_train_steps": 1, "monitor": "val_los"}, {}),
    "typo_epoch": ({"monitor": "val_los"}, {}),
    "no_validation_epoch": ({}, {"limit_val_batches": 0}),
    "no_validation_steps": ({"every_n_train_steps": 1}, {"limit_val_batches": 0}),
}


def _run(lib_name: str, case: str, root: Path) -> dict[str, Any]:
    lib = importlib.import_module(lib_name)
    callbacks = importlib.import_module(f"{lib_name}.callbacks")
    ckpt_kw, trainer_kw = CASES[case]

    class M(lib.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return self.layer(batch[0]).sum()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", float(self.global_step))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dirpath = root / lib_name
    mc = callbacks.ModelCheckpoint(**{"monitor": "val_loss", "dirpath": dirpath, "filename": "{epoch}-{step}",
                                      "save_top_k": -1, **ckpt_kw})
    kw: dict[str, Any] = {"max_epochs": 2, "logger": False, "callbacks": [mc], "enable_progress_bar": False,
                          "enable_model_summary": False, "num_sanity_val_steps": 0, "limit_val_batches": 1,
                          "default_root_dir": root}
    kw.update(trainer_kw)
    loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)
    out: dict[str, Any] = {"raised": None}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            lib.Trainer(**kw).fit(M(), loader, loader)
        except Exception as exc:  # noqa: BLE001 - the type is compared
            out["raised"] = type(exc).__name__
    out["warned"] = sum("could not find the monitored key" in str(w.message) for w in record)
    saved = {}
    if dirpath.is_dir():
        for name in sorted(os.listdir(dirpath)):
            ckpt = torch.load(dirpath / name, weights_only=False)
            (state,) = [v for k, v in ckpt["callbacks"].items() if "ModelCheckpoint" in k]
            score = state["current_score"]
            saved[name] = (ckpt["global_step"], None if score is None else float(score))
    out["saved"] = saved
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_missing_monitor_per_trigger_matches_lightning(case: str, tmp_path: Path) -> None:
    pytest.importorskip("pytorch_lightning")
    warnings.filterwarnings("ignore")
    ours = _run("fulmen", case, tmp_path)
    theirs = _run("pytorch_lightning", case, tmp_path)
    assert ours == theirs
    if case in ("steps_and_last", "time"):  # nothing before the first validation (steps 1-4 of epoch 0)
        assert min(step for step, _ in ours["saved"].values()) == 5 and ours["warned"] == 0
    if case == "twice_per_epoch":  # the deferred saves happen at the validation that follows
        assert ours["saved"]["epoch=0-step=2.ckpt"] == (2, 2.0)
