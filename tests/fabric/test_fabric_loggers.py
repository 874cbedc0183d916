"""Fabric's loggers (``lightning.fabric.loggers`` = ``fulmen.fabric.loggers``): ``root_dir`` instead of
``save_dir``, ``root_dir`` is the directory given, files under ``root_dir/name/version_N``; compared file by file
with Lightning 2.6's Fabric loggers. Also ``DummyLogger`` swallowing any call, as Lightning's does."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from fulmen import Fabric
from fulmen.compat import lightning_imports
from fulmen.fabric.loggers import CSVLogger, TensorBoardLogger
from fulmen.loggers import DummyLogger
from fulmen.utilities.exceptions import MisconfigurationException


def _csv_session(cls: Any, root: Path) -> dict[str, Any]:
    first = cls(root)
    first.log_metrics({"loss": 1.0, "acc": torch.tensor(0.5)}, step=5)
    first.log_metrics({"loss": 0.5})  # step=None: the row count
    first.finalize("success")
    named = cls(root, name="exp", version="v", prefix="p", flush_logs_every_n_steps=1)
    named.log_metrics({"x": 1})
    flat = cls(root, name=None)
    return {
        "first": (first.name, first.version, first.root_dir, first.log_dir),
        "first_csv": Path(first.log_dir, "metrics.csv").read_text(),
        "named": (named.name, named.version, named.log_dir),
        "named_csv": Path(named.log_dir, "metrics.csv").read_text(),
        "second_version": cls(root).version,
        "flat": (flat.name, flat.root_dir, flat.log_dir),
    }


def _relative(value: Any, root: Path) -> Any:
    if isinstance(value, tuple):
        return tuple(_relative(v, root) for v in value)
    return value.replace(str(root), "<root>") if isinstance(value, str) else value


def test_csv_logger_layout(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    assert logger.root_dir == str(tmp_path)  # the directory given, not root_dir/name as the Trainer's logger
    assert logger.name == "lightning_logs" and logger.version == 0
    assert logger.log_dir == os.path.join(str(tmp_path), "lightning_logs", "version_0")
    with pytest.raises(TypeError, match="save_dir"):
        CSVLogger(save_dir=tmp_path)  # type: ignore[call-arg]
    (tmp_path / "file").write_text("")
    with pytest.raises(MisconfigurationException, match=r"CSVLogger\(root_dir=\.\.\.\)"):
        CSVLogger(tmp_path / "file")


def test_csv_logger_matches_lightning(tmp_path: Path) -> None:
    lf_loggers = pytest.importorskip("lightning_fabric.loggers")
    ours = _csv_session(CSVLogger, tmp_path / "ours")
    theirs = _csv_session(lf_loggers.CSVLogger, tmp_path / "theirs")
    assert {k: _relative(v, tmp_path / "ours") for k, v in ours.items()} == {
        k: _relative(v, tmp_path / "theirs") for k, v in theirs.items()
    }


def test_tensorboard_logger_matches_lightning(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    lf_loggers = pytest.importorskip("lightning_fabric.loggers")
    seen = []
    for cls, root in ((TensorBoardLogger, tmp_path / "ours"), (lf_loggers.TensorBoardLogger, tmp_path / "theirs")):
        logger = cls(root, name="tb", sub_dir="s")
        logger.log_hyperparams({"lr": 0.1})
        logger.log_metrics({"loss": 1.0}, step=0)
        logger.finalize("success")
        events = [f for f in os.listdir(logger.log_dir) if f.startswith("events.out.tfevents")]
        seen.append((_relative((logger.name, logger.version, logger.root_dir, logger.log_dir, logger.sub_dir), root), len(events)))
    assert seen[0] == seen[1]


def test_fabric_logs_through_its_loggers(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    fabric = Fabric(accelerator="cpu", devices=1, loggers=logger)
    fabric.log("loss", torch.tensor(0.25), step=3)
    fabric.log_dict({"a": 1.0, "b": 2.0}, step=4)
    logger.finalize("success")
    rows = Path(logger.log_dir, "metrics.csv").read_text().splitlines()
    assert rows == ["a,b,loss,step", ",,0.25,3", "1.0,2.0,,4"]


def test_lightning_fabric_loggers_resolve_to_fabrics_classes() -> None:
    with lightning_imports():
        from lightning.fabric.loggers import CSVLogger as LCSV
        from lightning.fabric.loggers import Logger as LLogger
        from lightning.fabric.loggers import TensorBoardLogger as LTB
        from lightning.fabric.loggers.csv_logs import CSVLogger as LCSV2
        from lightning.pytorch.loggers import CSVLogger as PCSV
    assert LCSV is CSVLogger is LCSV2 and LTB is TensorBoardLogger
    assert PCSV is not CSVLogger and issubclass(CSVLogger, PCSV) and issubclass(CSVLogger, LLogger)


def test_dummy_logger_accepts_anything() -> None:
    logger = DummyLogger()
    assert logger.log_anything(1, k=2) is None
    logger.experiment.add_image("x", torch.zeros(1)).whatever.deeper(3)
    assert logger[0] is logger and logger[0].experiment is logger.experiment
    pl = pytest.importorskip("pytorch_lightning")
    theirs = pl.loggers.logger.DummyLogger()
    assert theirs.log_anything(1, k=2) is None and theirs[0] is theirs
    assert (theirs.name, theirs.version) == (logger.name, logger.version) == ("", "")
