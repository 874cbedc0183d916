"""The ``fulmen`` console script: the dispatcher and ``fulmen fit`` in subclass mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fulmen.__main__ import SUBCOMMANDS, main

MODULE = """
import torch
from torch.utils.data import DataLoader, TensorDataset
import fulmen as L


class Net(L.LightningModule):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        x = torch.randn(16, 4)
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
"""


def test_dispatcher_help_version_and_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: fulmen <command>" in out and all(
        name in out for name in ("fit", "validate", "test", "predict")
    )
    assert main(["--version"]) == 0 and "fulmen " in capsys.readouterr().out
    assert main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
    assert set(SUBCOMMANDS) >= {"fit", "validate", "test", "predict"}


def test_fulmen_fit_runs_an_allowed_module(tmp_path: Path) -> None:
    (tmp_path / "mymodels.py").write_text(MODULE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    common = [
        sys.executable,
        "-m",
        "fulmen",
        "fit",
        "--model",
        "mymodels.Net",
        "--model.hidden",
        "4",
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]
    refused = subprocess.run(
        common, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2 and "fulmen fit --allow" in refused.stderr
    ok = subprocess.run(
        [*common, "--allow", "mymodels"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    config = yaml.safe_load((tmp_path / "lightning_logs" / "version_0" / "config.yaml").read_text())
    assert config["model"] == {"class_path": "mymodels.Net", "init_args": {"hidden": 4}}
