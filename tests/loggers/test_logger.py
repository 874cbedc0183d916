"""The Logger base class, DummyLogger, rank_zero_experiment, merge_dicts and the helpers in loggers/utilities.py."""

from __future__ import annotations

import dataclasses
import os
import pickle
import time
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fulmen.loggers import DummyExperiment, DummyLogger, Logger, merge_dicts, rank_zero_experiment
from fulmen.loggers.utilities import (
    _add_prefix,
    _checkpoint_aliases,
    _convert_params,
    _flatten_dict,
    _LogsCheckpoints,
    _metric_to_float,
    _sanitize_callable_params,
    _sanitize_params,
    _scan_checkpoints,
    _to_plain,
    _Unrepresentable,
)
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.parsing import AttributeDict

from .conftest import CheckpointCallbackRecord


class RecordingLogger(Logger):
    """The smallest complete logger: implements only the four abstract members."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.experiment_created = 0

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    @property
    @rank_zero_experiment
    def experiment(self) -> str:
        self.experiment_created += 1
        return "the real experiment"

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.calls.append(("log_metrics", (dict(metrics), step)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("log_hyperparams", params))

    def save(self) -> None:
        self.calls.append(("save", None))


def test_logger_is_abstract() -> None:
    class Incomplete(Logger):
        pass

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]


def test_logger_defaults() -> None:
    logger = RecordingLogger()
    assert logger.root_dir is None
    assert logger.log_dir is None
    assert logger.save_dir is None
    assert logger.group_separator == "/"
    logger.log_graph(torch.nn.Linear(1, 1))
    logger.after_save_checkpoint(object())
    logger.finalize("success")  # the default finalize saves
    assert logger.calls == [("save", None)]


def test_rank_zero_experiment(monkeypatch: pytest.MonkeyPatch) -> None:
    from fulmen.utilities.rank_zero import rank_zero_only

    logger = RecordingLogger()
    assert logger.experiment == "the real experiment"
    monkeypatch.setattr(rank_zero_only, "rank", 2)
    assert isinstance(logger.experiment, DummyExperiment)
    assert logger.experiment_created == 1  # the getter itself never ran on rank 2


def test_dummy_experiment_swallows_everything() -> None:
    exp = DummyExperiment()
    assert exp.add_scalar("x", 1.0, 0) is exp
    assert exp.config.update({"a": 1}, allow_val_change=True) is exp
    assert exp["anything"]["nested"] is exp
    exp["key"] = 3
    assert exp.nop(1, k=2) is exp
    with pytest.raises(AttributeError):
        _ = exp.__wrapped__
    assert isinstance(pickle.loads(pickle.dumps(exp)), DummyExperiment)


def test_dummy_logger() -> None:
    logger = DummyLogger()
    assert isinstance(logger, Logger)
    assert logger.name == ""
    assert logger.version == ""
    assert isinstance(logger.experiment, DummyExperiment)
    logger.log_metrics({"x": 1.0}, step=0)
    logger.log_hyperparams({"lr": 1})
    assert logger.log_image("k", images=[]) is None  # any tool-specific method is accepted
    assert logger[0] is logger
    assert list(logger) == [logger]
    logger.finalize("success")


def test_merge_dicts() -> None:
    dicts = [
        {"a": 1, "b": 2, "c": {"c1": 1, "c2": 10}, "d": None},
        {"a": 3, "b": 6, "c": {"c1": 3, "c2": 30}},
        {"a": 5, "c": {"c1": 5}},
    ]
    merged = merge_dicts(dicts, {"a": max, "c": {"c2": min}})
    assert merged == {"a": 5, "b": 4.0, "c": {"c1": 3.0, "c2": 10}}
    assert merge_dicts([{"x": None}]) == {}
    assert merge_dicts([{"c": {"v": 1}}, {"c": {"v": 4}}], {"c": max}) == {"c": {"v": 4}}


def test_convert_params() -> None:
    @dataclasses.dataclass
    class Config:
        lr: float = 0.1
        depth: int = 2

    assert _convert_params(None) == {}
    assert _convert_params(Namespace(a=1)) == {"a": 1}
    assert _convert_params(AttributeDict(a=1)) == {"a": 1}
    assert _convert_params(Config()) == {"lr": 0.1, "depth": 2}
    with pytest.raises(MisconfigurationException, match=r"got 'str'; expected a dict, an argparse.Namespace"):
        _convert_params("lr=0.1")


def test_flatten_dict() -> None:
    @dataclasses.dataclass
    class Opt:
        name: str = "adam"

    params = {"a": {"b": 1, "c": {"d": 2}}, "ns": Namespace(x=1), "opt": Opt(), "empty": {}, 3: "int key"}
    assert _flatten_dict(params) == {
        "a/b": 1,
        "a/c/d": 2,
        "ns/x": 1,
        "opt/name": "adam",
        "empty": {},
        "3": "int key",
    }
    assert _flatten_dict({"a": {"b": 1}}, delimiter=".") == {"a.b": 1}


def test_sanitize_params() -> None:
    sanitized = _sanitize_params(
        {
            "int": 1,
            "np": np.int32(4),
            "np_float": np.float64(0.5),
            "tensor": torch.tensor(2.0),
            "big_tensor": torch.zeros(2),
            "list": [1, 2],
            "none": None,
            "bool": False,
        }
    )
    assert sanitized == {
        "int": 1,
        "np": 4,
        "np_float": 0.5,
        "tensor": 2.0,
        "big_tensor": "tensor([0., 0.])",
        "list": "[1, 2]",
        "none": "None",
        "bool": False,
    }
    assert type(sanitized["np"]) is int


def test_sanitize_callable_params_logs_names_without_calling() -> None:
    called = []

    def make_optimizer() -> str:
        called.append(True)
        return "should not be logged"

    params = _sanitize_callable_params(
        {"fn": make_optimizer, "cls": torch.nn.ReLU, "nested": {"act": torch.relu}, "n": 3}
    )
    assert called == []
    assert params["fn"].endswith("make_optimizer")
    assert params["cls"] == "torch.nn.modules.activation.ReLU"
    assert params["nested"]["act"].endswith("relu")
    assert params["n"] == 3


def test_to_plain_rejects_objects_without_a_plain_form() -> None:
    assert _to_plain({"t": (1, {"n": np.int64(2)})}) == {"t": [1, {"n": 2}]}
    with pytest.raises(_Unrepresentable, match="torch.nn.modules.linear.Linear"):
        _to_plain(torch.nn.Linear(1, 1))
    with pytest.raises(_Unrepresentable):
        _to_plain(torch.relu)


def test_add_prefix_and_metric_to_float() -> None:
    assert _add_prefix({"a": 1}, "", "-") == {"a": 1}
    assert _add_prefix({"a": 1}, "train", "-") == {"train-a": 1}
    assert _metric_to_float("L", "x", torch.tensor([[3.0]])) == 3.0
    assert _metric_to_float("L", "x", np.float32(2.5)) == 2.5
    with pytest.raises(MisconfigurationException, match=r"L.log_metrics: metric 'x': got 'list'"):
        _metric_to_float("L", "x", [1.0])


def test_scan_checkpoints(checkpoint_callback: CheckpointCallbackRecord) -> None:
    first = checkpoint_callback.save("epoch=0.ckpt", score=0.5)
    second = checkpoint_callback.save("epoch=1.ckpt", score=0.25)
    os.utime(first, (time.time() - 100, time.time() - 100))
    records = _scan_checkpoints(checkpoint_callback, {})
    assert [(Path(r.path).name, r.score, r.tag) for r in records] == [
        ("epoch=0.ckpt", 0.5, "best_k"),
        ("epoch=1.ckpt", 0.25, "best_k"),
    ]
    logged = {r.path: r.mtime for r in records}
    assert _scan_checkpoints(checkpoint_callback, logged) == []
    os.remove(first)  # a replaced top-k file is skipped, not an error
    stat = os.stat(second)
    os.utime(second, (stat.st_atime, stat.st_mtime + 5))
    assert [Path(r.path).name for r in _scan_checkpoints(checkpoint_callback, logged)] == ["epoch=1.ckpt"]
    assert _checkpoint_aliases(checkpoint_callback, second) == ["latest", "best"]
    assert _checkpoint_aliases(checkpoint_callback, first) == ["latest"]


class _Uploader(_LogsCheckpoints):
    """A checkpoint-logging logger's upload step: records the files, failing on the names in ``fail``."""

    def __init__(self, log_model: Any) -> None:
        self._init_log_model("Uploader", log_model)
        self.uploaded: list[str] = []
        self.fail: set[str] = set()

    def _scan_and_log_checkpoints(self, checkpoint_callback: Any) -> None:
        for record in self._new_checkpoints(checkpoint_callback):
            if Path(record.path).name in self.fail:
                raise OSError("upload failed")
            self.uploaded.append(Path(record.path).name)


def test_logs_checkpoints_when_saved_and_retries_a_failed_upload(
    checkpoint_callback: CheckpointCallbackRecord,
) -> None:
    uploader = _Uploader("all")
    first = checkpoint_callback.save("epoch=0.ckpt", score=0.5)
    os.utime(first, (time.time() - 100, time.time() - 100))
    uploader.after_save_checkpoint(checkpoint_callback)
    checkpoint_callback.save("epoch=1.ckpt", score=0.25)
    uploader.fail = {"epoch=1.ckpt"}
    with pytest.raises(OSError, match="upload failed"):
        uploader.after_save_checkpoint(checkpoint_callback)
    uploader.fail = set()
    uploader.after_save_checkpoint(checkpoint_callback)  # only the file whose upload failed, again
    uploader.after_save_checkpoint(checkpoint_callback)  # nothing new
    assert uploader.uploaded == ["epoch=0.ckpt", "epoch=1.ckpt"]


def test_log_model_true_defers_to_finalize_unless_every_checkpoint_is_kept(
    checkpoint_callback: CheckpointCallbackRecord,
) -> None:
    checkpoint_callback.save("epoch=0.ckpt", score=0.5)
    deferred = _Uploader(True)
    deferred.after_save_checkpoint(checkpoint_callback)
    assert deferred.uploaded == [] and deferred._checkpoint_callback is checkpoint_callback
    checkpoint_callback.save_top_k = -1
    immediate = _Uploader(True)
    immediate.after_save_checkpoint(checkpoint_callback)
    assert immediate.uploaded == ["epoch=0.ckpt"] and immediate._checkpoint_callback is None
    off = _Uploader(False)
    off.after_save_checkpoint(checkpoint_callback)
    assert off.uploaded == [] and off._checkpoint_callback is None
    with pytest.raises(MisconfigurationException, match=r"Uploader\(log_model=...\): got 'best'"):
        _Uploader("best")
