"""Classes the program itself defines or names are trusted by LightningCLI, as in Lightning 2.6.

A Lightning script defines its model in ``__main__`` and types its ``__init__`` arguments with its own classes
(``encoder: nn.Module``, ``encoder: MyEncoder``); its configs name them ``__main__.MyEncoder``, ``script.Model``
(the script imported by name), ``torch.nn.Linear`` or ``mypkg.nets.Net`` (a package beside the script). Real
Lightning runs all of these; so must ``python script.py fit --config cfg.yaml`` and ``fulmen run``. What a config
names outside the program (``subprocess.Popen``, ``os.system``) stays refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SCRIPT = """
import os, sys
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
try:
    import {root} as L
    from {root}.cli import LightningCLI
except ImportError:  # pragma: no cover
    raise

class MyEncoder(nn.Module):
    def __init__(self, hidden: int = 4):
        super().__init__()
        self.l = nn.Linear(2, hidden)
    def forward(self, x):
        return self.l(x)

class Model(L.LightningModule):
    def __init__(self, encoder: nn.Module = None, lr: float = 0.1):
        super().__init__()
        self.encoder = encoder or MyEncoder()
        self.head = nn.LazyLinear(1)
    def training_step(self, batch, i):
        x, y = batch
        return ((self.head(self.encoder(x)) - y) ** 2).mean()
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 2), torch.randn(8, 1)), batch_size=4)

class Typed(Model):
    def __init__(self, encoder: MyEncoder = None):
        super().__init__(encoder)

QUIET = dict(enable_progress_bar=False, enable_model_summary=False, logger=False, enable_checkpointing=False,
             max_epochs=1)

def show(cli, tag):
    print("RESULT", tag, type(cli.model).__module__ + "." + type(cli.model).__name__,
          type(cli.model.encoder).__module__ + "." + type(cli.model.encoder).__name__, flush=True)

if __name__ == "__main__":
    # the command line: python script.py fit --config cfg.yaml
    show(LightningCLI(Model, save_config_callback=None, trainer_defaults=QUIET), "argv")
    # subclass mode: the model itself is named in the config
    for name in ("sub_main.yaml", "sub_script.yaml"):
        show(LightningCLI(save_config_callback=None, trainer_defaults=QUIET, args=["fit", "--config", name]), name)
    # an encoder typed with the script's own class
    show(LightningCLI(Typed, save_config_callback=None, trainer_defaults=QUIET,
                      args=["fit", "--model.encoder=__main__.MyEncoder", "--model.encoder.hidden=5"]), "typed")
    # what the program does not name stays refused
    try:
        LightningCLI(Model, save_config_callback=None, trainer_defaults=QUIET, run=False, args=["--config", "evil.yaml"])
    except SystemExit as err:
        print("REFUSED", err.code, flush=True)
"""

NETS = """
import torch
class Net(torch.nn.Module):
    def __init__(self, width: int = 3):
        super().__init__()
        self.l = torch.nn.Linear(2, width)
    def forward(self, x):
        return self.l(x)
"""


def _project(tmp_path: Path, root: str) -> Path:
    (tmp_path / "train_script.py").write_text(SCRIPT.format(root=root))
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "nets.py").write_text(NETS)
    configs = {
        "cfg.yaml": {"model": {"encoder": {"class_path": "__main__.MyEncoder", "init_args": {"hidden": 3}}}},
        "sub_main.yaml": {
            "model": {"class_path": "__main__.Model", "init_args": {"encoder": {"class_path": "mypkg.nets.Net"}}}
        },
        "sub_script.yaml": {
            "model": {
                "class_path": "train_script.Model",
                "init_args": {
                    "encoder": {"class_path": "torch.nn.Linear", "init_args": {"in_features": 2, "out_features": 3}}
                },
            }
        },
        "evil.yaml": {
            "model": {
                "encoder": {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", str(tmp_path / "pwned")]}}
            }
        },
    }
    for name, cfg in configs.items():
        (tmp_path / name).write_text(yaml.safe_dump(cfg))
    return tmp_path


EXPECTED = [
    "RESULT argv __main__.Model __main__.MyEncoder",
    "RESULT sub_main.yaml __main__.Model mypkg.nets.Net",
    "RESULT sub_script.yaml train_script.Model torch.nn.modules.linear.Linear",
    "RESULT typed __main__.Typed __main__.MyEncoder",
    "REFUSED 2",
]


def _run(cmd: list[str], cwd: Path, fulmen: bool = True) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "FULMEN_CLI_ALLOWED_IMPORTS"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("RESULT", "REFUSED"))]
    assert proc.returncode == 0 and lines == EXPECTED, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (cwd / "pwned").exists()
    assert "subprocess.Popen" in proc.stderr
    if fulmen:  # fulmen's refusal says how to allow a trusted module
        assert "not allowed" in proc.stderr and "allowed_import_paths" in proc.stderr
    return lines


def test_python_script_with_fulmen_imports(tmp_path: Path) -> None:
    project = _project(tmp_path, "fulmen")
    _run([sys.executable, "train_script.py", "fit", "--config", "cfg.yaml"], project)


def test_fulmen_run_of_a_lightning_script(tmp_path: Path) -> None:
    project = _project(tmp_path, "lightning.pytorch")
    _run([sys.executable, "-m", "fulmen", "run", "train_script.py", "fit", "--config", "cfg.yaml"], project)


@pytest.mark.slow
def test_the_same_script_under_real_lightning(tmp_path: Path) -> None:
    """The expected output is real Lightning's (run only where pytorch_lightning is installed)."""
    pytest.importorskip("pytorch_lightning")
    project = _project(tmp_path, "pytorch_lightning")
    _run([sys.executable, "train_script.py", "fit", "--config", "cfg.yaml"], project, fulmen=False)
