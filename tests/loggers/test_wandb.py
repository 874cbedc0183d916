"""WandbLogger tests, run offline: what the logger wrote is read back from the run's ``.wandb`` log."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("wandb")

from fulmen.loggers import WandbLogger
from fulmen.loggers.logger import DummyExperiment
from fulmen.utilities.exceptions import MisconfigurationException

from .conftest import CheckpointCallbackRecord, read_wandb_records


def records_of(logger: WandbLogger) -> list[dict[str, Any]]:
    """Finish the logger's run and read its transaction log."""
    run_dir = Path(logger.experiment.dir).parent  # .../offline-run-<time>-<id>/files -> run folder
    logger.experiment.finish()
    return read_wandb_records(run_dir)


def of_type(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r[kind] for r in records if r["type"] == kind]


def test_offline_run_config_history_and_step_axis(tmp_path: Path, wandb_env: Any) -> None:
    class Encoder:  # a class as a hyperparameter is logged by name, not called
        pass

    logger = WandbLogger(
        name="baseline", project="fulmen-tests", save_dir=tmp_path, prefix="fit", offline=True
    )
    logger.log_hyperparams({"lr": 0.01, "optimizer": {"name": "adam"}, "encoder": Encoder})
    for step in range(3):
        logger.log_metrics({"loss": torch.tensor(1.0 / (step + 1)), "acc": step / 2}, step=step * 10)
    logger.log_table("samples", columns=["x", "y"], data=[[1, 2], [3, 4]], step=30)
    logger.log_image("pictures", [torch.zeros(3, 4, 4)], step=30, caption=["black"])
    assert logger.name == "fulmen-tests"
    assert logger.save_dir == str(tmp_path)
    run_id = logger.version
    assert run_id == logger.experiment.id
    assert Path(logger.experiment.dir).is_relative_to(tmp_path / "wandb")
    records = records_of(logger)

    run = of_type(records, "run")[0]
    assert run["project"] == "fulmen-tests"
    assert run["display_name"] == "baseline"
    assert run["run_id"] == run_id
    config: dict[str, Any] = {}
    for update in of_type(records, "config"):
        config.update(update.get("update", {}))
    config.update(run["config"]["update"])
    assert config["lr"] == 0.01
    assert config["optimizer"] == {"name": "adam"}
    assert config["encoder"].endswith("Encoder")

    history = [h["item"] for h in of_type(records, "history")]
    metric_rows = [h for h in history if "fit-loss" in h]
    assert [(h["trainer/global_step"], h["fit-loss"], h["fit-acc"]) for h in metric_rows] == [
        (0, 1.0, 0),
        (10, 0.5, 0.5),
        (20, pytest.approx(1 / 3), 1),
    ]
    # media are stored as files; the history row records their type (nested keys are flattened);
    # tables and images go through log_metrics, so they get the prefix too
    assert any(h.get("fit-samples._type") == "table-file" and h["trainer/global_step"] == 30 for h in history)
    images = [h for h in history if h.get("fit-pictures._type") == "images/separated"]
    assert [(h["fit-pictures.captions"], h["trainer/global_step"]) for h in images] == [(["black"], 30)]
    metric_defs = {m["name"]: m for m in of_type(records, "metric") if "name" in m}
    glob_defs = [m for m in of_type(records, "metric") if m.get("glob_name") == "*"]
    assert "trainer/global_step" in metric_defs
    assert glob_defs and glob_defs[0]["step_metric"] == "trainer/global_step"


def artifacts_of(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return of_type(records, "artifact")


def test_log_model_all_logs_each_checkpoint_offline(
    tmp_path: Path, wandb_env: Any, checkpoint_callback: CheckpointCallbackRecord
) -> None:
    logger = WandbLogger(save_dir=tmp_path, offline=True, log_model="all")
    checkpoint_callback.save("epoch=0.ckpt", score=0.5)
    logger.after_save_checkpoint(checkpoint_callback)
    checkpoint_callback.save("epoch=1.ckpt", score=0.75)  # worse: epoch=0 stays best
    logger.after_save_checkpoint(checkpoint_callback)
    logger.after_save_checkpoint(checkpoint_callback)  # nothing new: nothing logged
    run_id = logger.version
    artifacts = artifacts_of(records_of(logger))
    assert [a["name"] for a in artifacts] == [f"model-{run_id}", f"model-{run_id}"]
    assert all(a["type"] == "model" for a in artifacts)
    assert sorted(artifacts[0]["aliases"]) == ["best", "latest"]
    assert artifacts[1]["aliases"] == ["latest"]
    contents = artifacts[0]["manifest"]["contents"]
    assert [entry["path"] for entry in contents] == ["model.ckpt"]
    # the "mutable" policy staged a copy, inside the W&B data folder (here under tmp_path)
    assert Path(contents[0]["local_path"]).is_relative_to(tmp_path)
    metadata = [json.loads(a["metadata"]) for a in artifacts]
    assert [(m["score"], m["original_filename"]) for m in metadata] == [
        (0.5, "epoch=0.ckpt"),
        (0.75, "epoch=1.ckpt"),
    ]
    assert metadata[0]["CheckpointCallbackRecord"] == {
        "monitor": "val_loss",
        "mode": "min",
        "save_last": True,
        "save_top_k": 2,
    }


def test_log_model_true_logs_at_successful_finalize_only(
    tmp_path: Path, wandb_env: Any, checkpoint_callback: CheckpointCallbackRecord
) -> None:
    failed = WandbLogger(save_dir=tmp_path / "failed", log_model=True, checkpoint_name="my-model")
    failed.log_metrics({"x": 1.0}, step=0)
    checkpoint_callback.save("epoch=0.ckpt", score=0.5)
    failed.after_save_checkpoint(checkpoint_callback)
    failed.finalize("failed")
    assert artifacts_of(records_of(failed)) == []

    ok = WandbLogger(save_dir=tmp_path / "ok", log_model=True, checkpoint_name="my-model")
    ok.log_metrics({"x": 1.0}, step=0)
    ok.after_save_checkpoint(checkpoint_callback)
    ok.finalize("success")
    artifacts = artifacts_of(records_of(ok))
    assert [(a["name"], sorted(a["aliases"])) for a in artifacts] == [("my-model", ["best", "latest"])]


def test_given_version_existing_run_and_pickle(tmp_path: Path, wandb_env: Any) -> None:
    logger = WandbLogger(save_dir=tmp_path, version="fixedid123")
    assert logger.version == "fixedid123"  # known before the run starts
    logger.log_metrics({"x": 1.0}, step=0)
    assert logger.experiment.id == "fixedid123"
    state = pickle.loads(pickle.dumps(logger)).__dict__
    assert state["_experiment"] is None
    assert state["_id"] == "fixedid123"

    # a second logger in the same process logs into the active run (and says so)
    second = WandbLogger(save_dir=tmp_path)
    with pytest.warns(UserWarning, match="already in progress"):
        assert second.experiment is logger.experiment
    logger.experiment.finish()


def test_experiment_given_by_the_user(tmp_path: Path, wandb_env: Any) -> None:
    run = wandb_env.init(project="mine", dir=str(tmp_path), mode="offline")
    logger = WandbLogger(experiment=run)
    logger.log_metrics({"from_logger": 2.0}, step=5)
    assert logger.version == run.id
    history = [h["item"] for h in of_type(records_of(logger), "history")]
    assert [(h["from_logger"], h["trainer/global_step"]) for h in history if "from_logger" in h] == [(2.0, 5)]


def test_nonzero_rank_creates_no_run(tmp_path: Path, wandb_env: Any, nonzero_rank: None) -> None:
    logger = WandbLogger(save_dir=tmp_path / "rank1")
    assert isinstance(logger.experiment, DummyExperiment)
    logger.experiment.config.update({"a": 1})  # chains on the dummy are no-ops
    logger.log_hyperparams({"lr": 1})
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("success")
    assert wandb_env.run is None
    assert not (tmp_path / "rank1").exists()


def test_save_dir_and_dir(tmp_path: Path, wandb_env: Any) -> None:
    assert WandbLogger(dir=tmp_path / "a").save_dir == str(tmp_path / "a")
    with pytest.warns(UserWarning, match="both save_dir=.* and dir=.*using save_dir"):
        logger = WandbLogger(save_dir=tmp_path / "b", dir=tmp_path / "c")
    assert logger.save_dir == str(tmp_path / "b")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"log_model": "best"}, r"WandbLogger\(log_model=...\): got 'best'"),
        ({"version": "a", "id": "b"}, r"WandbLogger\(version=..., id=...\): got \('a', 'b'\)"),
        ({"offline": "yes"}, r"WandbLogger\(offline=...\): got 'yes'"),
        ({"offline": True, "mode": "online"}, r"offline=True, mode=...\): got 'online'"),
        ({"add_file_policy": "copy"}, r"add_file_policy=...\): got 'copy'"),
        ({"project": 3}, r"WandbLogger\(project=...\): got 3"),
        ({"save_dir": 3}, r"WandbLogger\(save_dir=...\): got 3"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        WandbLogger(**kwargs)


def test_bad_log_image_arguments(tmp_path: Path, wandb_env: Any) -> None:
    logger = WandbLogger(save_dir=tmp_path)
    with pytest.raises(
        MisconfigurationException, match=r"log_image\(images=...\): got 'Tensor'; expected a list"
    ):
        logger.log_image("k", torch.zeros(3, 2, 2))  # type: ignore[arg-type]
    with pytest.raises(
        MisconfigurationException,
        match=r"log_image\(caption=...\): got 1; expected a list with one entry per image \(2\)",
    ):
        logger.log_image("k", [torch.zeros(3, 2, 2)] * 2, caption=["only one"])
    assert wandb_env.run is None  # validation happens before a run is started


def test_missing_wandb_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(
        ModuleNotFoundError, match=r"WandbLogger requires wandb: pip install 'fulmen\[wandb\]'"
    ):
        WandbLogger()
