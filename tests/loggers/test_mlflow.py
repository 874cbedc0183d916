from __future__ import annotations

import os
import pickle
import shutil
import sys
import uuid
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient

from fulmen.loggers import MLFlowLogger
from fulmen.loggers.logger import DummyExperiment
from fulmen.utilities.exceptions import MisconfigurationException

from .conftest import CheckpointCallbackRecord


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)  # anything written relative to the cwd lands in tmp_path


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def make_logger(uri: str, tmp_path: Path, **kwargs: object) -> MLFlowLogger:
    kwargs.setdefault("experiment_name", unique("exp"))
    kwargs.setdefault("artifact_location", (tmp_path / "artifacts").as_uri())
    return MLFlowLogger(tracking_uri=uri, **kwargs)  # type: ignore[arg-type]


def metric_history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_params_metrics_tags_and_status(mlflow_sqlite_uri: str, tmp_path: Path) -> None:
    logger = make_logger(
        mlflow_sqlite_uri, tmp_path, run_name="baseline", tags={"team": "vision", "seed": 7}, prefix="fit"
    )
    logger.log_hyperparams(Namespace(lr=0.01, optimizer={"name": "adam", "betas": (0.9, 0.99)}, note=None))
    for step in range(3):
        logger.log_metrics({"loss": torch.tensor(1.0 / (step + 1)), "acc": step / 2}, step=step)
    logger.finalize("success")

    client = MlflowClient(tracking_uri=mlflow_sqlite_uri)
    run = client.get_run(logger.run_id)
    assert run.info.experiment_id == logger.experiment_id == logger.name
    assert run.info.run_id == logger.version
    assert run.info.status == "FINISHED"
    assert run.data.params == {
        "lr": "0.01",
        "optimizer/name": "adam",
        "optimizer/betas": "(0.9, 0.99)",
        "note": "None",
    }
    assert run.data.tags["team"] == "vision"
    assert run.data.tags["seed"] == "7"
    assert run.data.tags["mlflow.runName"] == "baseline"
    assert metric_history(client, logger.run_id, "fit-loss") == [
        (0, 1.0),
        (1, 0.5),
        (2, pytest.approx(1 / 3)),
    ]
    assert metric_history(client, logger.run_id, "fit-acc") == [(0, 0.0), (1, 0.5), (2, 1.0)]
    assert client.get_experiment(logger.experiment_id).artifact_location == (tmp_path / "artifacts").as_uri()
    assert logger.save_dir is None  # a database URI: nothing local to point at


def test_failed_status_and_bad_status(mlflow_sqlite_uri: str, tmp_path: Path) -> None:
    logger = make_logger(mlflow_sqlite_uri, tmp_path)
    logger.log_metrics({"x": 1.0}, step=0)
    with pytest.raises(MisconfigurationException, match=r"finalize\(status=...\): got 'done'"):
        logger.finalize("done")
    logger.finalize("failed")
    assert MlflowClient(tracking_uri=mlflow_sqlite_uri).get_run(logger.run_id).info.status == "FAILED"


def test_finalize_without_logging_creates_no_run(mlflow_sqlite_uri: str, tmp_path: Path) -> None:
    name = unique("unused")
    MLFlowLogger(experiment_name=name, tracking_uri=mlflow_sqlite_uri).finalize("success")
    assert MlflowClient(tracking_uri=mlflow_sqlite_uri).get_experiment_by_name(name) is None


def test_resume_into_run_id_and_pickle(mlflow_sqlite_uri: str, tmp_path: Path) -> None:
    first = make_logger(mlflow_sqlite_uri, tmp_path)
    first.log_metrics({"loss": 1.0}, step=0)
    first.finalize("success")
    resumed = MLFlowLogger(tracking_uri=mlflow_sqlite_uri, run_id=first.run_id)
    resumed.log_metrics({"loss": 0.5}, step=1)
    copy = pickle.loads(pickle.dumps(resumed))  # e.g. sent to a spawned process
    copy.log_metrics({"loss": 0.25}, step=2)
    copy.finalize("success")
    assert copy.run_id == first.run_id
    client = MlflowClient(tracking_uri=mlflow_sqlite_uri)
    assert metric_history(client, first.run_id, "loss") == [(0, 1.0), (1, 0.5), (2, 0.25)]
    with pytest.raises(MisconfigurationException, match=r"MLFlowLogger\(run_id=...\): got 'nope'"):
        _ = MLFlowLogger(tracking_uri=mlflow_sqlite_uri, run_id="nope").experiment


def test_existing_and_deleted_experiments(mlflow_sqlite_uri: str, tmp_path: Path) -> None:
    name = unique("shared")
    one = make_logger(mlflow_sqlite_uri, tmp_path, experiment_name=name)
    two = make_logger(mlflow_sqlite_uri, tmp_path, experiment_name=name)
    assert one.experiment_id == two.experiment_id
    assert one.run_id != two.run_id
    MlflowClient(tracking_uri=mlflow_sqlite_uri).delete_experiment(one.experiment_id)
    with pytest.raises(MisconfigurationException, match=r"is deleted in .*restore it"):
        _ = make_logger(mlflow_sqlite_uri, tmp_path, experiment_name=name).experiment


def test_params_cannot_change_and_long_values_are_truncated(mlflow_sqlite_uri: str, tmp_path: Path) -> None:
    logger = make_logger(mlflow_sqlite_uri, tmp_path)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_hyperparams({"lr": 0.1, "wd": 0.0})  # same value again: fine
    with pytest.raises(
        MisconfigurationException, match=r"param 'lr': got '0.2'; expected the value logged before.*'0.1'"
    ):
        logger.log_hyperparams({"lr": 0.2})
    with pytest.warns(UserWarning, match="characters long; MLflow keeps"):
        logger.log_hyperparams({"long": "x" * 10_000})
    params = MlflowClient(tracking_uri=mlflow_sqlite_uri).get_run(logger.run_id).data.params
    assert params["lr"] == "0.1"
    assert params["wd"] == "0.0"
    assert 0 < len(params["long"]) < 10_000


def test_metric_names_are_cleaned_and_strings_skipped(mlflow_sqlite_uri: str, tmp_path: Path) -> None:
    logger = make_logger(mlflow_sqlite_uri, tmp_path)
    with pytest.warns(RuntimeWarning, match=r"logging 'acc@1' as 'acc1'"):
        logger.log_metrics({"acc@1": 0.5, "val/loss": 0.1}, step=1)
    with pytest.warns(UserWarning, match="skipping metric 'stage'"):
        logger.log_metrics({"stage": "train", "x": 1.0}, step=1)
    metrics = MlflowClient(tracking_uri=mlflow_sqlite_uri).get_run(logger.run_id).data.metrics
    assert metrics == {"acc1": 0.5, "val/loss": 0.1, "x": 1.0}


def list_files(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            found |= list_files(client, run_id, info.path)
        else:
            found.add(info.path)
    return found


def download_text(client: MlflowClient, run_id: str, path: str, dst: Path) -> str:
    return Path(client.download_artifacts(run_id, path, str(dst))).read_text()


def test_log_model_all_logs_each_checkpoint_when_saved(
    mlflow_sqlite_uri: str, tmp_path: Path, checkpoint_callback: CheckpointCallbackRecord
) -> None:
    logger = make_logger(mlflow_sqlite_uri, tmp_path, log_model="all")
    client = MlflowClient(tracking_uri=mlflow_sqlite_uri)
    checkpoint_callback.save("epoch=0.ckpt", score=0.5)
    logger.after_save_checkpoint(checkpoint_callback)
    assert list_files(client, logger.run_id) == {
        "epoch=0/epoch=0.ckpt",
        "epoch=0/metadata.yaml",
        "epoch=0/aliases.txt",
    }

    checkpoint_callback.save("epoch=1.ckpt", score=0.25)
    checkpoint_callback.save("last.ckpt", score=0.25, content=b"v1")
    logger.after_save_checkpoint(checkpoint_callback)
    assert {p.split("/")[0] for p in list_files(client, logger.run_id)} == {"epoch=0", "epoch=1", "last"}
    dst = tmp_path / "downloads"
    dst.mkdir()
    metadata = yaml.safe_load(download_text(client, logger.run_id, "epoch=1/metadata.yaml", dst))
    assert metadata["score"] == 0.25
    assert metadata["original_filename"] == "epoch=1.ckpt"
    assert metadata["CheckpointCallbackRecord"]["monitor"] == "val_loss"
    assert download_text(client, logger.run_id, "epoch=1/aliases.txt", dst).split() == ["latest", "best"]
    assert download_text(client, logger.run_id, "last/aliases.txt", dst).split() == ["latest"]

    # only a changed file is uploaded again
    stat = os.stat(checkpoint_callback.last_model_path)
    Path(checkpoint_callback.last_model_path).write_bytes(b"v2")
    os.utime(checkpoint_callback.last_model_path, (stat.st_atime, stat.st_mtime + 10))
    logger.after_save_checkpoint(checkpoint_callback)
    assert download_text(client, logger.run_id, "last/last.ckpt", dst) == "v2"
    logger.finalize("success")


def test_log_model_true_logs_at_finalize(
    mlflow_sqlite_uri: str, tmp_path: Path, checkpoint_callback: CheckpointCallbackRecord
) -> None:
    logger = make_logger(mlflow_sqlite_uri, tmp_path, log_model=True)
    logger.log_metrics({"x": 1.0}, step=0)
    checkpoint_callback.save("epoch=0.ckpt", score=0.5)
    logger.after_save_checkpoint(checkpoint_callback)
    client = MlflowClient(tracking_uri=mlflow_sqlite_uri)
    assert list_files(client, logger.run_id) == set()
    logger.finalize("success")
    assert "epoch=0/epoch=0.ckpt" in list_files(client, logger.run_id)

    no_model = make_logger(mlflow_sqlite_uri, tmp_path, log_model=False)
    no_model.after_save_checkpoint(checkpoint_callback)
    no_model.finalize("success")
    assert list_files(client, no_model.run_id) == set()


def test_file_store_when_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    save_dir = tmp_path / "mlruns"
    logger = MLFlowLogger(experiment_name="files", save_dir=str(save_dir))
    assert logger.tracking_uri == f"file:{save_dir}"
    assert logger.save_dir == str(save_dir)
    logger.log_hyperparams({"lr": 0.5})
    logger.log_metrics({"loss": 2.0}, step=4)
    logger.finalize("success")
    run = MlflowClient(tracking_uri=f"file:{save_dir}").get_run(logger.run_id)
    assert run.data.params == {"lr": "0.5"}
    assert run.data.metrics == {"loss": 2.0}
    assert (save_dir / logger.experiment_id / logger.run_id).is_dir()


def test_default_store_is_sqlite_in_save_dir_when_file_store_is_refused(
    tmp_path: Path, mlflow_sqlite_uri: str
) -> None:
    from fulmen.loggers.mlflow import _file_store_allowed

    if _file_store_allowed():
        pytest.skip("this mlflow still accepts the file store by default")
    save_dir = tmp_path / "runs"
    save_dir.mkdir()
    # start from an initialized database: creating the tables takes seconds and is MLflow's business
    shutil.copyfile(mlflow_sqlite_uri.removeprefix("sqlite:///"), save_dir / "mlflow.db")
    logger = MLFlowLogger(experiment_name=unique("default"), save_dir=str(save_dir))
    assert logger.tracking_uri == f"sqlite:///{save_dir / 'mlflow.db'}"
    assert logger.save_dir == str(save_dir)
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.finalize("success")
    client = MlflowClient(tracking_uri=logger.tracking_uri)
    assert client.get_run(logger.run_id).data.metrics == {"loss": 1.0}
    assert client.get_experiment(logger.experiment_id).artifact_location == (save_dir / "artifacts").as_uri()
    assert sorted(os.listdir(tmp_path)) == ["runs"]  # nothing in the working directory


def test_tracking_uri_from_environment(mlflow_sqlite_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_sqlite_uri)
    assert MLFlowLogger().tracking_uri == mlflow_sqlite_uri


def test_unopenable_store_is_explained(tmp_path: Path) -> None:
    logger = MLFlowLogger(tracking_uri="nosuchscheme://x")
    with pytest.raises(MisconfigurationException, match="can't open the tracking store 'nosuchscheme://x'"):
        logger.log_metrics({"x": 1.0}, step=0)


def test_nonzero_rank_logs_nothing(tmp_path: Path, nonzero_rank: None, mlflow_sqlite_uri: str) -> None:
    name = unique("rank1")
    logger = MLFlowLogger(experiment_name=name, tracking_uri=mlflow_sqlite_uri)
    assert isinstance(logger.experiment, DummyExperiment)
    logger.log_hyperparams({"lr": 1})
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("success")
    assert logger.run_id is None
    assert MlflowClient(tracking_uri=mlflow_sqlite_uri).get_experiment_by_name(name) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"log_model": "best"}, r"MLFlowLogger\(log_model=...\): got 'best'; expected True"),
        ({"experiment_name": ""}, r"MLFlowLogger\(experiment_name=...\): got ''"),
        ({"run_id": 5}, r"MLFlowLogger\(run_id=...\): got 5"),
        ({"tags": ["a"]}, r"MLFlowLogger\(tags=...\): got \['a'\]; expected a dict"),
        ({"synchronous": "yes"}, r"MLFlowLogger\(synchronous=...\): got 'yes'"),
        ({"prefix": 1}, r"MLFlowLogger\(prefix=...\): got 1"),
        ({"tracking_uri": None, "save_dir": None}, r"MLFlowLogger\(save_dir=...\): got None"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        MLFlowLogger(**kwargs)  # type: ignore[arg-type]


def test_asynchronous_logging(mlflow_sqlite_uri: str, tmp_path: Path) -> None:
    logger = make_logger(mlflow_sqlite_uri, tmp_path, synchronous=False)
    logger.log_hyperparams({"lr": 0.1})
    for step in range(5):
        logger.log_metrics({"loss": float(step)}, step=step)
    logger.finalize("success")  # waits for queued writes
    client = MlflowClient(tracking_uri=mlflow_sqlite_uri)
    assert [v for _, v in metric_history(client, logger.run_id, "loss")] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_missing_mlflow_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(
        ModuleNotFoundError, match=r"MLFlowLogger requires mlflow: pip install 'fulmen\[mlflow\]'"
    ):
        MLFlowLogger()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("val/loss", "val/loss"),
        ("a b:c-d.e_f", "a b:c-d.e_f"),
        ("acc@1", "acc1"),
        ("a//b", "a/b"),
        ("/abs", "abs"),
        ("a/../b", "a/b"),
        ("trailing/", "trailing"),
        ("@@", "_"),
    ],
)
def test_mlflow_names(name: str, expected: str) -> None:
    from mlflow.utils.validation import _validate_metric_name

    from fulmen.loggers.mlflow import _mlflow_name

    assert _mlflow_name(name) == expected
    _validate_metric_name(_mlflow_name(name))  # MLflow's own check accepts the result
