"""Shared test settings: small thread count, and every test runs in its own temporary directory."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):  # noqa: ANN001
    """Default log/checkpoint dirs (cwd) land in the test's tmp dir, never in the repository."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FULMEN_AUTO_RESUME", raising=False)
    saved = dict(os.environ)
    yield
    # a test (or code under test, e.g. a cluster environment deriving MASTER_PORT) must not leak variables
    # into the next test: a leaked MASTER_PORT makes every later DDP test rendezvous on the same port
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)
