"""Trainer defaults and output details users diff, as real Lightning 2.6 has them.

* the default logger: TensorBoardLogger when tensorboard is installed (else CSVLogger), imported lazily;
* the default progress bar and model summary: the rich ones when rich is installed;
* ``logger=`` / ``callbacks=`` take any sequence (omegaconf's ``ListConfig`` from Hydra configs);
* ``PL_TRAINER_*`` environment variables are defaults of the Trainer's arguments;
* the test/validate results table, character for character (with and without rich);
* ``hparams.yaml`` as Lightning writes it (``{}`` for TensorBoard, none for CSV without saved hyperparameters).

The expected outputs come from running the same script under the real pytorch-lightning 2.6.1 (subprocess).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import ModelCheckpoint
from fulmen.loggers import CSVLogger
from fulmen.utilities.exceptions import MisconfigurationException


class Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.l = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.l(batch[0]).pow(2).mean()
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)


# ------------------------------------------------------------------ default logger, progress bar, summary


def test_default_logger_bar_and_summary_follow_what_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("rich")
    from fulmen.callbacks import RichModelSummary, RichProgressBar
    from fulmen.loggers import TensorBoardLogger

    t = L.Trainer(default_root_dir=tmp_path)
    assert type(t.logger) is TensorBoardLogger and t.log_dir == str(tmp_path / "lightning_logs" / "version_0")
    assert type(t.progress_bar_callback) is RichProgressBar
    assert [type(c) for c in t.callbacks] == [RichProgressBar, RichModelSummary, ModelCheckpoint]
    # tutorials draw on the experiment: a SummaryWriter
    from torch.utils.tensorboard import SummaryWriter

    assert isinstance(t.logger.experiment, SummaryWriter)


def test_building_the_default_trainer_imports_neither_tensorboard_nor_rich(tmp_path: Path) -> None:
    code = (
        "import sys, fulmen as L\n"
        f"t = L.Trainer(default_root_dir={str(tmp_path)!r})\n"
        "print(type(t.logger).__name__, 'tensorboard' in sys.modules, 'rich' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split()[1:] == ["False", "False"], out.stdout


def test_without_tensorboard_the_default_logger_is_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fulmen.trainer import lifecycle

    monkeypatch.setattr(lifecycle, "_tensorboard_available", lambda: False)
    with pytest.warns(UserWarning, match="CSVLogger"):
        t = L.Trainer(default_root_dir=tmp_path)
    assert type(t.logger) is CSVLogger


def test_the_default_logger_version_is_the_slurm_job_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    assert L.Trainer(default_root_dir=tmp_path).logger.version == 4242


# ------------------------------------------------------------------ any sequence for logger= / callbacks=


def test_omegaconf_list_configs_are_accepted(tmp_path: Path) -> None:
    omegaconf = pytest.importorskip("omegaconf")
    cb = ModelCheckpoint(dirpath=tmp_path)
    lg = CSVLogger(tmp_path)
    callbacks = omegaconf.ListConfig([], flags={"allow_objects": True})
    callbacks.append(cb)
    loggers = omegaconf.ListConfig([], flags={"allow_objects": True})
    loggers.append(lg)
    assert not isinstance(callbacks, list)
    t = L.Trainer(callbacks=callbacks, logger=loggers, enable_progress_bar=False, enable_model_summary=False)
    assert t.checkpoint_callback is cb and t.loggers == [lg]
    t = L.Trainer(callbacks=(cb,), logger=(lg,), enable_progress_bar=False, enable_model_summary=False)
    assert t.checkpoint_callback is cb and t.loggers == [lg]


def test_a_bad_element_is_named_with_its_type(tmp_path: Path) -> None:
    lg = CSVLogger(tmp_path)
    with pytest.raises(MisconfigurationException) as info:
        L.Trainer(logger=[lg, "tensorboard"])
    msg = str(info.value)
    assert "element 1" in msg and "'tensorboard'" in msg and "str" in msg and "CSVLogger object" not in msg
    with pytest.raises(MisconfigurationException, match=r"\[1\] is 3 of type int"):
        L.Trainer(callbacks=[ModelCheckpoint(dirpath=tmp_path), 3])
    with pytest.raises(MisconfigurationException, match="of type str"):
        L.Trainer(callbacks="EarlyStopping")


# ------------------------------------------------------------------ PL_TRAINER_* environment variables


def test_pl_trainer_environment_variables_are_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_TRAINER_MAX_EPOCHS", "3")
    monkeypatch.setenv("PL_TRAINER_ACCELERATOR", "cpu")  # not a literal: kept as the string
    monkeypatch.setenv("PL_TRAINER_LOGGER", "False")
    monkeypatch.setenv("PL_TRAINER_LIMIT_TRAIN_BATCHES", "0.5")
    monkeypatch.setenv("PL_TRAINER_CHECK_VAL_EVERY_N_EPOCH", "")  # empty: unset
    t = L.Trainer(enable_progress_bar=False, default_root_dir=tmp_path)
    assert (t.max_epochs, type(t.accelerator).__name__, t.loggers) == (3, "CPUAccelerator", [])
    assert t.limit_train_batches == 0.5 and t.check_val_every_n_epoch == 1
    # an argument given explicitly wins
    assert L.Trainer(max_epochs=5, default_root_dir=tmp_path).max_epochs == 5

    class MyTrainer(L.Trainer):  # a subclass reads PL_MYTRAINER_*, as Lightning
        pass

    monkeypatch.setenv("PL_MYTRAINER_MAX_EPOCHS", "7")
    assert MyTrainer(default_root_dir=tmp_path).max_epochs == 7


# ------------------------------------------------------------------ hparams.yaml


class SavingModel(Model):
    def __init__(self, save: bool = False) -> None:
        super().__init__()
        if save:
            self.save_hyperparameters()


@pytest.mark.parametrize("save", [False, True])
def test_hparams_yaml_as_lightning_writes_it(tmp_path: Path, save: bool) -> None:
    pytest.importorskip("tensorboard")
    from fulmen.loggers import TensorBoardLogger

    seen = {}
    for logger in (CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")):
        L.Trainer(max_epochs=1, log_every_n_steps=1, logger=logger, enable_progress_bar=False,
                  enable_model_summary=False, enable_checkpointing=False).fit(SavingModel(save), loader())
        path = Path(logger.log_dir) / "hparams.yaml"
        seen[type(logger).__name__] = path.read_text() if path.exists() else None
    # what Lightning 2.6.1 writes for the same runs
    expected = {"CSVLogger": "save: true\n", "TensorBoardLogger": "save: true\n"} if save else {
        "CSVLogger": None, "TensorBoardLogger": "{}\n"}
    assert seen == expected


# ------------------------------------------------------------------ the results table, against real Lightning

TABLE_SCRIPT = """
import sys
root, rich = sys.argv[1], sys.argv[2] == "rich"
if root == "pytorch_lightning":
    import pytorch_lightning as L
    if not rich:
        import pytorch_lightning.loops.evaluation_loop as ev
        ev._RICH_AVAILABLE = False
else:
    if not rich:
        sys.modules["rich"] = None  # as if rich were not installed
    import fulmen as L
import torch
from torch.utils.data import DataLoader, TensorDataset

class M(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.l = torch.nn.Linear(4, 1)
    def test_step(self, b, i, dataloader_idx=0):
        self.log("test_loss", self.l(b[0]).pow(2).mean() * 1234.5678)
        self.log("acc", torch.tensor(0.1234567891))
        self.log("big", 123456789.0)
        self.log("small", 1.23e-7)
        self.log("count", 3)
        self.log("a_really_long_metric_name_that_goes_on_and_on_and_on_and_on_beyond_half_of_the_terminal", 1.5)
    def validation_step(self, b, i):
        self.log("val_loss", self.l(b[0]).pow(2).mean())

torch.manual_seed(0)
m = M()
dl = DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)
t = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
print("RESULTS", t.test(m, dl))
t.validate(m, dl)
t.test(m, [dl, dl])
"""


def _table(tmp_path: Path, root: str, rich: bool, columns: int) -> str:
    script = tmp_path / "table.py"
    script.write_text(TABLE_SCRIPT)
    env = {**os.environ, "COLUMNS": str(columns)}
    proc = subprocess.run([sys.executable, str(script), root, "rich" if rich else "plain"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize(("rich", "columns"), [(True, 120), (False, 80)])
def test_results_table_matches_lightning_character_for_character(tmp_path: Path, rich: bool, columns: int) -> None:
    pytest.importorskip("pytorch_lightning")
    if rich:
        pytest.importorskip("rich")
    ours = _table(tmp_path, "fulmen", rich, columns)
    theirs = _table(tmp_path, "pytorch_lightning", rich, columns)
    assert ours == theirs
    assert "0.12345679104328156" in ours and ("Test metric" in ours) and "DataLoader 1" in ours


def test_rich_model_summary_totals_read_as_lightnings(capsys: pytest.CaptureFixture[str]) -> None:
    """The totals under the rich summary (the default with rich installed), as Lightning 2.6.1 prints them for
    this model (its 'Total FLOPs' line aside: fulmen counts no FLOPs)."""
    pytest.importorskip("rich")
    from fulmen.callbacks import RichModelSummary

    RichModelSummary.summarize([(" ", ["0"]), ("Name", ["enc"]), ("Type", ["Linear"]), ("Params", ["302 K"]),
                                ("Mode", ["train"])], 303_300, 302_300, 1.21, {"train": 5, "eval": 0})
    lines = [ln.rstrip() for ln in capsys.readouterr().out.splitlines()]
    assert lines[-6:] == [
        "Trainable params: 302 K",
        "Non-trainable params: 1.0 K",
        "Total params: 303 K",
        "Total estimated model params size (MB): 1",
        "Modules in train mode: 5",
        "Modules in eval mode: 0",
    ]
