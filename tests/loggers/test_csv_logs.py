from __future__ import annotations

import csv
import enum
import os
import pickle
from argparse import Namespace
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
import yaml

from fulmen.loggers import CSVLogger
from fulmen.loggers.logger import DummyExperiment
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.parsing import AttributeDict


def read_csv(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def test_layout_and_automatic_versions(tmp_path: Path) -> None:
    first = CSVLogger(tmp_path, name="exp")
    assert first.version == 0
    assert first.save_dir == str(tmp_path)
    assert first.root_dir == os.path.join(tmp_path, "exp")
    assert first.log_dir == os.path.join(tmp_path, "exp", "version_0")
    first.log_metrics({"loss": 1.0}, step=0)
    first.finalize("success")

    second = CSVLogger(tmp_path, name="exp")
    assert second.version == 1
    (tmp_path / "exp" / "version_7").mkdir()
    (tmp_path / "exp" / "version_x").mkdir()  # not a version folder
    (tmp_path / "exp" / "version_9").write_text("a file, not a version folder")
    assert CSVLogger(tmp_path, name="exp").version == 8
    # the version is resolved once: creating more folders later does not move an existing logger
    assert second.version == 1


def test_explicit_versions_and_empty_name(tmp_path: Path) -> None:
    assert CSVLogger(tmp_path, version=3).log_dir == os.path.join(tmp_path, "lightning_logs", "version_3")
    assert CSVLogger(tmp_path, version="baseline").log_dir == os.path.join(
        tmp_path, "lightning_logs", "baseline"
    )
    for name in (None, ""):
        logger = CSVLogger(tmp_path, name=name)
        assert logger.name == ""
        assert logger.root_dir == str(tmp_path)
        assert logger.log_dir == os.path.join(tmp_path, "version_0")


def test_constructing_has_no_side_effects(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path / "new")
    _ = logger.log_dir
    assert not (tmp_path / "new").exists()
    logger.finalize("success")  # nothing logged: still nothing written
    assert not (tmp_path / "new").exists()


def test_metrics_csv_columns_rows_and_tensor_values(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"train_loss": torch.tensor(0.5), "epoch": 0}, step=0)
    logger.log_metrics({"train_loss": np.float32(0.25), "epoch": 0}, step=1)
    logger.log_metrics({"val_acc": torch.tensor([0.75]), "epoch": 0}, step=1)
    logger.save()
    header, rows = read_csv(os.path.join(logger.log_dir, "metrics.csv"))
    assert header == ["epoch", "step", "train_loss", "val_acc"]
    assert rows == [
        {"epoch": "0", "step": "0", "train_loss": "0.5", "val_acc": ""},
        {"epoch": "0", "step": "1", "train_loss": "0.25", "val_acc": ""},
        {"epoch": "0", "step": "1", "train_loss": "", "val_acc": "0.75"},
    ]


def test_new_metric_names_rewrite_the_header_and_keep_old_rows(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"a": 1.0}, step=0)
    logger.save()
    logger.log_metrics({"a": 2.0}, step=1)  # same columns: appended
    logger.save()
    logger.log_metrics({"b": 3.0}, step=2)  # a new column: the file is rewritten
    logger.save()
    header, rows = read_csv(os.path.join(logger.log_dir, "metrics.csv"))
    assert header == ["a", "b", "step"]
    assert [(r["a"], r["b"], r["step"]) for r in rows] == [
        ("1.0", "", "0"),
        ("2.0", "", "1"),
        ("", "3.0", "2"),
    ]
    leftovers = [p for p in os.listdir(logger.log_dir) if ".tmp" in p]
    assert leftovers == []


def test_rows_are_buffered_and_flushed_every_n_steps(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=3)
    metrics_file = Path(tmp_path, "lightning_logs", "version_0", "metrics.csv")
    logger.log_metrics({"x": 0.0}, step=0)
    logger.log_metrics({"x": 1.0}, step=1)
    assert not metrics_file.exists()
    logger.log_metrics({"x": 2.0}, step=2)  # step + 1 == 3: flush
    assert len(read_csv(metrics_file)[1]) == 3
    # sparse steps that never hit a multiple of n exactly still flush once one is crossed
    logger.log_metrics({"x": 4.0}, step=4)
    assert len(read_csv(metrics_file)[1]) == 3
    logger.log_metrics({"x": 7.0}, step=7)  # crossed 6
    assert len(read_csv(metrics_file)[1]) == 5
    logger.log_metrics({"x": 8.0}, step=8)  # step + 1 == 9: flush
    assert len(read_csv(metrics_file)[1]) == 6
    logger.log_metrics({"x": 9.0}, step=9)  # 12 is next
    assert len(read_csv(metrics_file)[1]) == 6
    logger.finalize("success")
    assert [r["step"] for r in read_csv(metrics_file)[1]] == ["0", "1", "2", "4", "7", "8", "9"]


def test_buffer_is_flushed_when_full_even_without_steps(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=2)
    metrics_file = Path(tmp_path, "lightning_logs", "version_0", "metrics.csv")
    for value in range(4):
        logger.log_metrics({"x": float(value)}, step=0)  # the same step again and again
    assert len(read_csv(metrics_file)[1]) == 4


def test_step_none_counts_rows(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"x": 1.0})
    logger.log_metrics({"x": 2.0})
    logger.log_metrics({"x": 3.0}, step=np.int64(10))  # type: ignore[arg-type]
    logger.save()
    assert [r["step"] for r in read_csv(os.path.join(logger.log_dir, "metrics.csv"))[1]] == ["0", "1", "10"]


def test_prefix(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, prefix="train")
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.save()
    assert read_csv(os.path.join(logger.log_dir, "metrics.csv"))[0] == ["step", "train-loss"]


class Color(enum.Enum):
    RED = "red"


def test_hparams_yaml_round_trips_plain_data(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    logger.log_hyperparams(
        {
            "lr": 1e-3,
            "optim": {"name": "adam", "betas": (0.9, 0.999)},
            "ns": Namespace(depth=4, act="relu"),
            "attr": AttributeDict(units=32),
            "np_int": np.int64(3),
            "np_float": np.float64(0.5),
            "tensor": torch.tensor(2.5),
            "small_tensor": torch.tensor([1, 2]),
            "path": Path("/data/train"),
            "color": Color.RED,
            "dtype": torch.float16,
            "none": None,
            "tags": {"b", "a"},
        }
    )
    hparams_file = Path(logger.log_dir, "hparams.yaml")
    assert hparams_file.is_file()  # written at once, not only at save()
    loaded = yaml.safe_load(hparams_file.read_text())
    assert loaded == {
        "lr": 1e-3,
        "optim": {"name": "adam", "betas": [0.9, 0.999]},
        "ns": {"depth": 4, "act": "relu"},
        "attr": {"units": 32},
        "np_int": 3,
        "np_float": 0.5,
        "tensor": 2.5,
        "small_tensor": [1, 2],
        "path": "/data/train",
        "color": "red",
        "dtype": "torch.float16",
        "none": None,
        "tags": ["a", "b"],
    }
    logger.log_hyperparams(Namespace(batch_size=8))  # merged into the same file
    assert yaml.safe_load(hparams_file.read_text())["batch_size"] == 8
    assert yaml.safe_load(hparams_file.read_text())["lr"] == 1e-3


def test_hparams_without_plain_form_are_skipped_with_a_warning(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    with pytest.warns(UserWarning, match=r"skipping hyperparameter 'activation'.*type"):
        logger.log_hyperparams({"activation": torch.nn.ReLU, "units": 4})
    assert yaml.safe_load(Path(logger.log_dir, "hparams.yaml").read_text()) == {"units": 4}


def test_existing_metrics_file_is_appended_to(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, version=0)
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.finalize("success")
    resumed = CSVLogger(tmp_path, version=0)
    with pytest.warns(UserWarning, match="already exists.*appended"):
        resumed.log_metrics({"loss": 0.5}, step=1)
    resumed.log_metrics({"loss": 0.25, "acc": 0.9}, step=2)
    resumed.finalize("success")
    header, rows = read_csv(os.path.join(logger.log_dir, "metrics.csv"))
    assert header == ["acc", "loss", "step"]
    assert [(r["step"], r["loss"], r["acc"]) for r in rows] == [
        ("0", "1.0", ""),
        ("1", "0.5", ""),
        ("2", "0.25", "0.9"),
    ]


def test_fsspec_url(tmp_path: Path) -> None:
    root = f"memory://fulmen-csv-test-{os.getpid()}"
    logger = CSVLogger(root, name="exp", flush_logs_every_n_steps=1)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.log_metrics({"loss": 0.5, "acc": 1.0}, step=1)
    fs = fsspec.filesystem("memory")
    with fs.open(f"{root}/exp/version_0/metrics.csv", "r") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["loss"], r["acc"]) for r in rows] == [("0", "1.0", ""), ("1", "0.5", "1.0")]
    assert CSVLogger(root, name="exp").version == 1
    fs.rm(root, recursive=True)


def test_pickle_keeps_buffered_rows(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"x": 1.0}, step=0)
    copy = pickle.loads(pickle.dumps(logger))
    copy.log_metrics({"x": 2.0}, step=1)
    copy.save()
    assert [r["x"] for r in read_csv(os.path.join(copy.log_dir, "metrics.csv"))[1]] == ["1.0", "2.0"]


def test_nonzero_rank_writes_nothing(tmp_path: Path, nonzero_rank: None) -> None:
    logger = CSVLogger(tmp_path / "logs")
    assert isinstance(logger.experiment, DummyExperiment)
    logger.log_hyperparams({"lr": 1})
    logger.log_metrics({"x": 1.0}, step=99)
    logger.save()
    logger.finalize("success")
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"version": 1.5}, r"CSVLogger\(version=...\): got 1.5; expected None .* int >= 0"),
        ({"version": -1}, r"version=...\): got -1"),
        ({"version": True}, r"version=...\): got True"),
        ({"version": "  "}, r"version=...\): got '  '"),
        ({"name": 3}, r"CSVLogger\(name=...\): got 3"),
        ({"prefix": None}, r"CSVLogger\(prefix=...\): got None; expected a str"),
        ({"flush_logs_every_n_steps": 0}, r"flush_logs_every_n_steps=...\): got 0; expected an int >= 1"),
        ({"flush_logs_every_n_steps": 2.0}, r"flush_logs_every_n_steps=...\): got 2.0"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        CSVLogger(tmp_path, **kwargs)  # type: ignore[arg-type]


def test_bad_save_dir(tmp_path: Path) -> None:
    with pytest.raises(
        MisconfigurationException, match=r"save_dir=...\): got None; expected a non-empty path"
    ):
        CSVLogger(None)  # type: ignore[arg-type]
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(MisconfigurationException, match="it is an existing file"):
        CSVLogger(a_file)
    # a directory that can't be created (a file is in the way) fails when the logger first writes
    logger = CSVLogger(a_file / "sub")
    with pytest.raises(
        MisconfigurationException, match=r"can't create its log directory .*Fix: pass a save_dir"
    ):
        logger.log_metrics({"x": 1.0}, step=0)


def test_bad_metric_values(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    with pytest.raises(MisconfigurationException, match=r"metric 'x': got 'Tensor of shape \(2,\)'"):
        logger.log_metrics({"x": torch.zeros(2)}, step=0)
    with pytest.raises(MisconfigurationException, match=r"metric 'name': got 'str'"):
        logger.log_metrics({"name": "abc"}, step=0)
    with pytest.raises(MisconfigurationException, match=r"log_metrics\(step=...\): got 'one'"):
        logger.log_metrics({"x": 1.0}, step="one")  # type: ignore[arg-type]
    with pytest.raises(MisconfigurationException, match=r"log_hyperparams\(params\): got 'list'"):
        logger.log_hyperparams([1, 2])  # type: ignore[arg-type]
