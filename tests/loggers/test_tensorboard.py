from __future__ import annotations

import os
import pickle
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from fulmen.loggers import TensorBoardLogger
from fulmen.loggers.logger import DummyExperiment
from fulmen.utilities.exceptions import MisconfigurationException


def load_events(log_dir: str) -> EventAccumulator:
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, pytest.approx(event.value)) for event in acc.Scalars(tag)]


def hparams_of(acc: EventAccumulator) -> tuple[dict[str, Any], list[str]]:
    """The hparams values (session start info) and metric names (experiment) the plugin recorded."""
    values: dict[str, Any] = {}
    metric_names: list[str] = []
    for content in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            for key, value in data.session_start_info.hparams.items():
                values[key] = getattr(value, value.WhichOneof("kind"))
        if data.HasField("experiment"):
            metric_names = [m.name.tag for m in data.experiment.metric_infos]
    return values, metric_names


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)
        self.example_input_array = torch.zeros(1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x).relu()


def test_layout_versions_and_sub_dir(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="tb", sub_dir="fit")
    assert logger.version == 0
    assert logger.root_dir == os.path.join(tmp_path, "tb")
    assert logger.log_dir == os.path.join(tmp_path, "tb", "version_0", "fit")
    assert logger.sub_dir == "fit"
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("success")
    assert TensorBoardLogger(tmp_path, name="tb").version == 1
    assert TensorBoardLogger(tmp_path, name="", version="run").log_dir == os.path.join(tmp_path, "run")


def test_log_dir_expands_user_and_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FULMEN_TB_ROOT", str(tmp_path))
    logger = TensorBoardLogger("$FULMEN_TB_ROOT/logs", version=0)
    assert logger.log_dir == os.path.join(tmp_path, "logs", "lightning_logs", "version_0")


def test_scalars_are_read_back(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, prefix="train")
    for step in range(3):
        logger.log_metrics({"loss": torch.tensor(1.0 / (step + 1)), "lr": 0.1}, step=step)
    logger.log_metrics({"acc": {"top1": 0.5, "top5": torch.tensor(0.75)}}, step=2)
    logger.finalize("success")
    acc = load_events(logger.log_dir)
    assert scalars(acc, "train-loss") == [(0, 1.0), (1, 0.5), (2, 1 / 3)]
    assert scalars(acc, "train-lr") == [(0, 0.1), (1, 0.1), (2, 0.1)]
    # add_scalars writes one run per key next to the main one
    top5 = load_events(os.path.join(logger.log_dir, "train-acc_top5"))
    assert scalars(top5, "train-acc") == [(2, 0.75)]


def test_hparams_plugin_records_and_default_hp_metric(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    logger.log_hyperparams(
        Namespace(
            lr=0.01, optimizer={"name": "sgd", "momentum": 0.9}, layers=[4, 2], use_bias=True, note=None
        )
    )
    logger.finalize("success")
    acc = load_events(logger.log_dir)
    values, metric_names = hparams_of(acc)
    assert values == {
        "lr": pytest.approx(0.01),
        "optimizer/name": "sgd",
        "optimizer/momentum": pytest.approx(0.9),
        "layers": "[4, 2]",
        "use_bias": True,
        "note": "None",
    }
    assert metric_names == ["hp_metric"]
    assert scalars(acc, "hp_metric") == [(0, -1.0)]
    # hparams.yaml keeps the nested structure
    saved = yaml.safe_load(Path(logger.log_dir, "hparams.yaml").read_text())
    assert saved == {
        "lr": 0.01,
        "optimizer": {"name": "sgd", "momentum": 0.9},
        "layers": [4, 2],
        "use_bias": True,
        "note": None,
    }


def test_hparams_with_given_metrics_or_no_hp_metric(tmp_path: Path) -> None:
    given = TensorBoardLogger(tmp_path, name="given")
    given.log_hyperparams({"lr": 0.1}, metrics={"val_loss": 0.3}, step=5)
    given.finalize("success")
    acc = load_events(given.log_dir)
    assert hparams_of(acc)[1] == ["val_loss"]
    assert scalars(acc, "val_loss") == [(5, 0.3)]
    assert "hp_metric" not in acc.Tags()["scalars"]

    number = TensorBoardLogger(tmp_path, name="number")
    number.log_hyperparams({"lr": 0.1}, metrics=0.25)
    number.finalize("success")
    assert scalars(load_events(number.log_dir), "hp_metric") == [(0, 0.25)]

    none = TensorBoardLogger(tmp_path, name="none", default_hp_metric=False)
    none.log_hyperparams({"lr": 0.1})
    none.finalize("success")
    acc = load_events(none.log_dir)
    assert acc.Tags()["scalars"] == []
    assert hparams_of(acc) == ({"lr": pytest.approx(0.1)}, [])


def test_hparams_yaml_is_rewritten_when_hparams_change(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    logger.log_hyperparams({"lr": 0.1})
    logger.save()
    hparams_file = Path(logger.log_dir, "hparams.yaml")
    assert yaml.safe_load(hparams_file.read_text()) == {"lr": 0.1}
    logger.log_hyperparams({"batch_size": 4})
    logger.save()
    assert yaml.safe_load(hparams_file.read_text()) == {"lr": 0.1, "batch_size": 4}


def test_log_graph(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, log_graph=True)
    logger.log_graph(TinyModel())
    logger.finalize("success")
    graph = load_events(logger.log_dir).Graph()
    assert any(node.op == "aten::linear" for node in graph.node)


def test_log_graph_disabled_missing_input_and_failing_trace(tmp_path: Path) -> None:
    disabled = TensorBoardLogger(tmp_path, name="off")
    disabled.log_graph(TinyModel())
    assert not Path(tmp_path, "off").exists()

    enabled = TensorBoardLogger(tmp_path, name="on", log_graph=True)
    model = TinyModel()
    model.example_input_array = None  # type: ignore[assignment]
    with pytest.warns(UserWarning, match="example_input_array` is not set"):
        enabled.log_graph(model)
    with pytest.raises(RuntimeError, match=r"tracing TinyModel .* failed: .*Fix: .*log_graph=False"):
        enabled.log_graph(model, input_array=torch.zeros(1, 7))  # wrong width


def test_log_graph_uses_lightning_style_transfer_hooks(tmp_path: Path) -> None:
    calls: list[str] = []

    class HookedModel(TinyModel):
        def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            calls.append("before")
            return batch["x"]

        def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
            calls.append("transfer")
            return batch.to(device)

        def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            calls.append("after")
            return batch

    logger = TensorBoardLogger(tmp_path, log_graph=True)
    logger.log_graph(HookedModel(), input_array={"x": torch.zeros(1, 4)})
    assert calls == ["before", "transfer", "after"]


def test_writer_kwargs_are_passed_and_checked(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, filename_suffix=".fulmen", flush_secs=5)
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("success")
    assert any(name.endswith(".fulmen") for name in os.listdir(logger.log_dir))
    with pytest.raises(
        MisconfigurationException, match=r"got \['flush_sec'\]; expected keyword arguments of SummaryWriter"
    ):
        TensorBoardLogger(tmp_path, flush_sec=5)
    with pytest.raises(
        MisconfigurationException, match="use save_dir=, name=, version= and sub_dir= instead"
    ):
        TensorBoardLogger(tmp_path, log_dir=str(tmp_path))


def test_logging_after_finalize_reopens_the_writer(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"fit_loss": 1.0}, step=0)
    logger.finalize("success")
    logger.log_metrics({"test_loss": 2.0}, step=0)  # e.g. trainer.test after trainer.fit
    logger.finalize("success")
    tags = load_events(logger.log_dir).Tags()["scalars"]
    assert sorted(tags) == ["fit_loss", "test_loss"]


def test_pickle_drops_the_writer(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"a": 1.0}, step=0)
    copy = pickle.loads(pickle.dumps(logger))
    assert copy._experiment is None
    assert copy.log_dir == logger.log_dir
    copy.log_metrics({"b": 2.0}, step=1)
    copy.finalize("success")
    logger.finalize("success")
    assert sorted(load_events(logger.log_dir).Tags()["scalars"]) == ["a", "b"]


def test_nonzero_rank_writes_nothing(tmp_path: Path, nonzero_rank: None) -> None:
    logger = TensorBoardLogger(tmp_path / "logs", log_graph=True)
    assert isinstance(logger.experiment, DummyExperiment)
    logger.experiment.add_image("x", torch.zeros(3, 2, 2))  # user code runs unchanged on other ranks
    logger.log_hyperparams({"lr": 1})
    logger.log_metrics({"x": 1.0}, step=0)
    logger.log_graph(TinyModel())
    logger.finalize("success")
    assert not (tmp_path / "logs").exists()


def test_bad_arguments_and_values(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match=r"TensorBoardLogger\(log_graph=...\): got 'yes'"):
        TensorBoardLogger(tmp_path, log_graph="yes")  # type: ignore[arg-type]
    with pytest.raises(MisconfigurationException, match=r"TensorBoardLogger\(version=...\): got \[1\]"):
        TensorBoardLogger(tmp_path, version=[1])  # type: ignore[arg-type]
    with pytest.raises(MisconfigurationException, match=r"TensorBoardLogger\(sub_dir=...\): got 3"):
        TensorBoardLogger(tmp_path, sub_dir=3)  # type: ignore[arg-type]
    logger = TensorBoardLogger(tmp_path)
    with pytest.raises(MisconfigurationException, match=r"metric 'img': got 'Tensor of shape \(2, 2\)'"):
        logger.log_metrics({"img": torch.zeros(2, 2)}, step=0)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file")
    with pytest.raises(MisconfigurationException, match="can't create its log directory"):
        TensorBoardLogger(blocked / "below").log_metrics({"x": 1.0}, step=0)


def test_missing_tensorboard_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(
        ModuleNotFoundError,
        match=r"TensorBoardLogger requires tensorboard: pip install 'fulmen\[tensorboard\]'",
    ):
        TensorBoardLogger(tmp_path)
