"""Fixtures for the logger tests: isolated W&B/MLflow environments and a ModelCheckpoint stand-in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fulmen.utilities.rank_zero import rank_zero_only

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # MLflow's SQL store uses a loader option SQLAlchemy 2.1 deprecates; nothing fulmen can act on.
    ignore = pytest.mark.filterwarnings(
        "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning"
    )
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(ignore)


@pytest.fixture
def nonzero_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this process is global rank 1."""
    monkeypatch.setattr(rank_zero_only, "rank", 1)


@dataclass
class CheckpointCallbackRecord:
    """The attributes of ``ModelCheckpoint`` that loggers read in ``after_save_checkpoint``.

    The real callback is built elsewhere; loggers only read these public attributes, so a plain
    record with the same names lets the logger tests run without a Trainer.
    """

    dirpath: str
    monitor: str | None = "val_loss"
    mode: str = "min"
    save_top_k: int = 2
    save_last: bool | None = True
    best_k_models: dict[str, Any] = field(default_factory=dict)
    best_model_path: str = ""
    best_model_score: Any = None
    last_model_path: str = ""
    current_score: Any = None

    def save(self, name: str, score: float, content: bytes = b"weights") -> str:
        """Write a checkpoint file and update the bookkeeping like ModelCheckpoint (mode='min')."""
        path = os.path.join(self.dirpath, name)
        Path(path).write_bytes(content)
        if name == "last.ckpt":
            self.last_model_path = path
            self.current_score = score
            return path
        self.best_k_models[path] = score
        self.current_score = score
        best = min(self.best_k_models, key=self.best_k_models.__getitem__)
        self.best_model_path, self.best_model_score = best, self.best_k_models[best]
        return path


@pytest.fixture
def checkpoint_callback(tmp_path: Path) -> CheckpointCallbackRecord:
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    return CheckpointCallbackRecord(dirpath=str(ckpt_dir))


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """W&B offline, silent, with every W&B folder (cache, staging, config) under tmp_path."""
    wandb = pytest.importorskip("wandb")
    home = tmp_path / "wandb_home"
    for var, sub in (
        ("WANDB_DIR", "dir"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_ARTIFACT_DIR", "artifacts"),
        ("WANDB_CONFIG_DIR", "config"),
    ):
        (home / sub).mkdir(parents=True)
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    if wandb.run is not None:
        wandb.finish()
    yield wandb
    if wandb.run is not None:
        wandb.finish()


def read_wandb_records(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read an offline run's ``.wandb`` transaction log with W&B's own reader (``wandb leet inspect --json``)."""
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", os.fspath(run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0 and "No such command" in proc.stderr:
        pytest.skip("this wandb has no `wandb leet inspect` reader for .wandb files")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def mlflow_sqlite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite tracking store for the session: creating its tables takes seconds.

    Tests share it by using a unique experiment name each.
    """
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("alembic")
    db = tmp_path_factory.mktemp("mlflow_db") / "mlflow.db"
    return f"sqlite:///{db}"
