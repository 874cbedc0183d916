"""LightningCLI(load_from_checkpoint_support=True): save_hyperparameters records the parsed config (nested class
specs included) and the instantiator, so load_from_checkpoint rebuilds objects given as class specs, under the
CLI's import allowlist: a checkpoint cannot make fulmen import or run arbitrary code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import fulmen as L
from fulmen import cli as cli_module
from fulmen.cli import LightningCLI
from fulmen.utilities.exceptions import MisconfigurationException

from .cli_models import QUIET, Data


class BackboneModel(L.LightningModule):
    """Dependency injection: the backbone is an object the config describes with a class spec."""

    def __init__(self, backbone: torch.nn.Module, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        self.backbone = backbone
        self.head = torch.nn.Linear(backbone.out_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.backbone(x)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", torch.nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class DeeperBackboneModel(BackboneModel):
    def __init__(self, backbone: torch.nn.Module, lr: float = 0.1, depth: int = 2) -> None:
        super().__init__(backbone=backbone, lr=lr)
        self.depth = depth


BACKBONE = ["--model.backbone=torch.nn.Linear", "--model.backbone.in_features=4", "--model.backbone.out_features=6"]


def _fit(tmp_path: Path, *extra: str, **kw: Any) -> LightningCLI:
    args = ["fit", f"--trainer.default_root_dir={tmp_path}", "--trainer.max_epochs=1", "--trainer.logger=false",
            *QUIET, *extra]
    kw.setdefault("allowed_import_paths", ["torch.nn"])
    return LightningCLI(BackboneModel, Data, save_config_callback=None, args=args, **kw)


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a new process that built no LightningCLI: nothing is allowed beyond the defaults."""
    monkeypatch.setattr(cli_module, "_SESSION_ALLOWED", set())
    monkeypatch.delenv("FULMEN_CLI_ALLOWED_IMPORTS", raising=False)


def _saved(tmp_path: Path, *extra: str, **kw: Any) -> tuple[LightningCLI, Path]:
    cli = _fit(tmp_path, *BACKBONE, "--model.lr=0.05", *extra, **kw)
    ckpt = tmp_path / "model.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    return cli, ckpt


def test_hparams_hold_the_parsed_config_and_load_from_checkpoint_rebuilds_it(tmp_path: Path) -> None:
    cli, ckpt = _saved(tmp_path)
    hp = dict(cli.model.hparams)
    assert hp["_instantiator"].endswith(".cli.instantiate_module")  # Lightning's name (see below)
    assert hp["backbone"]["class_path"] == "torch.nn.Linear"
    assert hp["backbone"]["init_args"]["in_features"] == 4 and hp["backbone"]["init_args"]["out_features"] == 6
    assert hp["lr"] == 0.05
    saved = torch.load(ckpt, weights_only=True)["hyper_parameters"]  # plain data: loads with weights_only
    assert saved["backbone"]["class_path"] == "torch.nn.Linear"

    loaded = BackboneModel.load_from_checkpoint(ckpt)
    assert isinstance(loaded.backbone, torch.nn.Linear) and loaded.backbone.out_features == 6
    assert loaded.lr == 0.05
    for (name, a), b in zip(cli.model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    # the rebuilt model saves the same hyperparameters (it can be saved and loaded again)
    assert dict(loaded.hparams)["backbone"] == hp["backbone"]


def test_without_support_the_init_arguments_are_saved(tmp_path: Path) -> None:
    cli, ckpt = _saved(tmp_path, load_from_checkpoint_support=False)
    assert "_instantiator" not in cli.model.hparams
    assert isinstance(cli.model.hparams["backbone"], torch.nn.Linear)
    # the backbone was saved as its repr (not a spec), so it must be passed again
    assert isinstance(torch.load(ckpt, weights_only=True)["hyper_parameters"]["backbone"], str)
    loaded = BackboneModel.load_from_checkpoint(ckpt, backbone=torch.nn.Linear(4, 6))
    assert loaded.lr == 0.05


def test_subclass_mode_saves_the_class_path(tmp_path: Path) -> None:
    args = ["fit", f"--trainer.default_root_dir={tmp_path}", "--trainer.max_epochs=1", "--trainer.logger=false",
            *QUIET, f"--model={DeeperBackboneModel.__module__}.DeeperBackboneModel", *BACKBONE, "--model.depth=3"]
    cli = LightningCLI(BackboneModel, Data, subclass_mode_model=True, save_config_callback=None, args=args,
                       allowed_import_paths=["torch.nn"])
    assert type(cli.model) is DeeperBackboneModel
    hp = dict(cli.model.hparams)
    assert hp["_class_path"].endswith("DeeperBackboneModel") and hp["depth"] == 3
    ckpt = tmp_path / "deeper.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    loaded = DeeperBackboneModel.load_from_checkpoint(ckpt)
    assert loaded.depth == 3 and loaded.backbone.out_features == 6


def test_ckpt_path_hparams_become_defaults_with_support_on(tmp_path: Path) -> None:
    _, ckpt = _saved(tmp_path)
    # a required argument is still required on the command line (as in Lightning: it is parsed first);
    # lr is not given: the checkpoint's value (0.05) is the default
    args = ["test", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", *QUIET, *BACKBONE,
            f"--ckpt_path={ckpt}"]
    tested = LightningCLI(BackboneModel, Data, save_config_callback=None, args=args, allowed_import_paths=["torch.nn"])
    assert isinstance(tested.model.backbone, torch.nn.Linear) and tested.model.backbone.out_features == 6
    assert tested.model.lr == 0.05 and "test_loss" in tested.trainer.callback_metrics


def test_a_class_outside_the_allowlist_is_not_rebuilt(
    tmp_path: Path, fresh_process: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, ckpt = _saved(tmp_path)
    cli_module._SESSION_ALLOWED.clear()  # what the CLI above allowed is gone, as in a new process
    # the type the model's signature names (torch.nn.Module) and its imported subclasses are trusted, as in
    # Lightning: torch.nn.Linear is rebuilt with nothing allowed
    assert isinstance(BackboneModel.load_from_checkpoint(ckpt).backbone, torch.nn.Linear)
    # a module the program never imported, outside the user's code, is not even imported
    marker = tmp_path / "imported"
    pkg = tmp_path / "site" / "plugin_nets.py"
    pkg.parent.mkdir()
    pkg.write_text(f"open({str(marker)!r}, 'w').write('x')\nimport torch\nclass Net(torch.nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(pkg.parent))
    spec = {"class_path": "plugin_nets.Net", "init_args": {"in_features": 4, "out_features": 6}}
    with pytest.raises(MisconfigurationException) as info:
        BackboneModel.load_from_checkpoint(_tamper(ckpt, backbone=spec))
    msg = str(info.value)
    assert "plugin_nets.Net" in msg and "FULMEN_CLI_ALLOWED_IMPORTS" in msg
    assert not marker.exists()
    monkeypatch.setenv("FULMEN_CLI_ALLOWED_IMPORTS", "plugin_nets")  # the user trusts it
    assert type(BackboneModel.load_from_checkpoint(_tamper(ckpt, backbone=spec)).backbone).__name__ == "Net"
    __import__("sys").modules.pop("plugin_nets", None)


def _tamper(ckpt: Path, **changes: Any) -> Path:
    data = torch.load(ckpt, weights_only=True)
    data["hyper_parameters"].update(changes)
    out = ckpt.with_name("tampered.ckpt")
    torch.save(data, out)
    return out


def test_a_tampered_checkpoint_cannot_run_code(tmp_path: Path, fresh_process: None) -> None:
    _, ckpt = _saved(tmp_path)
    cli_module._SESSION_ALLOWED.clear()
    marker = tmp_path / "pwned"
    evil = {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", str(marker)]}}
    with pytest.raises(MisconfigurationException, match="subprocess.Popen"):
        BackboneModel.load_from_checkpoint(_tamper(ckpt, backbone=evil))
    # a class path is used only by a class that takes **kwargs (as Lightning); here it is dropped
    assert type(BackboneModel.load_from_checkpoint(
        _tamper(ckpt, _class_path="subprocess.Popen"), backbone=torch.nn.Linear(4, 6)
    )) is BackboneModel
    with pytest.raises(MisconfigurationException, match="os.system"):
        BackboneModel.load_from_checkpoint(_tamper(ckpt, _instantiator="os.system"))
    assert not marker.exists()


def test_lightning_instantiator_names_are_understood(tmp_path: Path) -> None:
    _, ckpt = _saved(tmp_path)
    for name in ("lightning.pytorch.cli.instantiate_module", "pytorch_lightning.cli.instantiate_module"):
        loaded = BackboneModel.load_from_checkpoint(_tamper(ckpt, _instantiator=name))
        assert isinstance(loaded.backbone, torch.nn.Linear) and loaded.backbone.out_features == 6


# Interop both ways with the real Lightning (a subprocess: pytorch_lightning must not share this process).
PL_SIDE = """
import sys, torch
sys.modules["fulmen"] = None  # a machine with Lightning only: the checkpoint must not need fulmen
import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI
from torch.utils.data import DataLoader, TensorDataset

class BackboneModel(pl.LightningModule):
    def __init__(self, backbone: torch.nn.Module, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        self.backbone = backbone
        self.head = torch.nn.Linear(backbone.out_features, 1)
    def forward(self, x):
        return self.head(torch.relu(self.backbone(x)))
    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)
    def train_dataloader(self):
        x = torch.randn(16, 4)
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

fulmen_ckpt, expected, out = sys.argv[1:4]
loaded = BackboneModel.load_from_checkpoint(fulmen_ckpt)  # Lightning imports the saved _instantiator
want = torch.load(expected)
assert type(loaded.backbone) is torch.nn.Linear and loaded.backbone.out_features == 6, loaded.backbone
assert loaded.lr == 0.05, loaded.lr
for k, v in want.items():
    assert torch.equal(loaded.state_dict()[k], v), k
print("LIGHTNING LOADED", flush=True)

cli = LightningCLI(BackboneModel, run=False, save_config_callback=None, args=[
    "--trainer.max_epochs=1", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false", "--trainer.enable_checkpointing=false",
    "--model.backbone=torch.nn.Linear", "--model.backbone.in_features=4", "--model.backbone.out_features=5",
    "--model.lr=0.02"])
cli.trainer.fit(cli.model)
cli.trainer.save_checkpoint(out)
torch.save(cli.model.state_dict(), out + ".state")
"""


def test_checkpoints_of_cli_runs_load_in_real_lightning_and_back(tmp_path: Path, fresh_process: None) -> None:
    pytest.importorskip("pytorch_lightning")
    import subprocess
    import sys

    cli, ckpt = _saved(tmp_path)
    # Lightning's name for its instantiator (what Lightning imports when it loads the checkpoint)
    saved = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert saved["_instantiator"] in {
        "lightning.pytorch.cli.instantiate_module",
        "pytorch_lightning.cli.instantiate_module",
    }
    torch.save(cli.model.state_dict(), tmp_path / "expected.pt")
    script = tmp_path / "pl_side.py"
    script.write_text(PL_SIDE)
    out = tmp_path / "lightning.ckpt"
    proc = subprocess.run(
        [sys.executable, str(script), str(ckpt), str(tmp_path / "expected.pt"), str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0 and "LIGHTNING LOADED" in proc.stdout, proc.stderr[-4000:]

    # and the reverse: a checkpoint of Lightning's CLI (its own _instantiator name) loads in fulmen
    assert torch.load(out, weights_only=True)["hyper_parameters"]["_instantiator"].endswith(".cli.instantiate_module")
    loaded = BackboneModel.load_from_checkpoint(out)
    assert type(loaded.backbone) is torch.nn.Linear and loaded.backbone.out_features == 5 and loaded.lr == 0.02
    for k, v in torch.load(str(out) + ".state").items():
        assert torch.equal(loaded.state_dict()[k], v), k
