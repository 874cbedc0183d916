"""Tests for the safetensors export helpers."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
import torch

from fulmen.checkpoint import CheckpointLoadError, CheckpointNotFoundError, load_safetensors, save_safetensors

pytest.importorskip("safetensors")


def test_round_trip_of_a_model_state_dict(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    path = tmp_path / "out" / "model.safetensors"
    save_safetensors(model.state_dict(), path, metadata={"epoch": "3"})
    loaded = load_safetensors(path)
    assert loaded.keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded[name], tensor) and loaded[name].dtype == tensor.dtype
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    fresh.load_state_dict(loaded)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"epoch": "3"}
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]


def test_tied_and_non_contiguous_tensors_are_saved(tmp_path: Path) -> None:
    shared = torch.randn(4, 4)
    state = {"embed.weight": shared, "head.weight": shared, "t": torch.randn(3, 5).t()}
    path = tmp_path / "tied.safetensors"
    save_safetensors(state, path)
    loaded = load_safetensors(path)
    assert torch.equal(loaded["embed.weight"], shared) and torch.equal(loaded["head.weight"], shared)
    assert torch.equal(loaded["t"], state["t"])


def test_memory_filesystem_round_trip() -> None:
    path = f"memory://fulmen-st-{uuid.uuid4().hex}/w.safetensors"
    save_safetensors({"w": torch.arange(6.0)}, path)
    assert torch.equal(load_safetensors(path)["w"], torch.arange(6.0))


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"w": torch.ones(1), "epoch": 3}, r"the value of 'epoch' is a int; safetensors stores only tensors"),
        ({1: torch.ones(1)}, "names must be strings"),
        ({"s": torch.eye(2).to_sparse()}, "only dense tensors"),
        ({"state_dict": {"w": torch.ones(1)}}, "the value of 'state_dict' is a dict"),
        ([torch.ones(1)], "expected a mapping of names to tensors"),
    ],
)
def test_bad_state_dicts_are_rejected_clearly(tmp_path: Path, state: object, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        save_safetensors(state, tmp_path / "x.safetensors")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_bad_metadata_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="metadata must be a dict of str to str"):
        save_safetensors({"w": torch.ones(1)}, tmp_path / "x.safetensors", metadata={"epoch": 3})  # type: ignore[dict-item]


def test_damaged_or_missing_files_give_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_safetensors({"w": torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointLoadError, match="truncated or corrupted"):
        load_safetensors(path)
    with pytest.raises(CheckpointNotFoundError):
        load_safetensors(tmp_path / "missing.safetensors")


def test_missing_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match=r"pip install 'fulmen\[safetensors\]'"):
        save_safetensors({"w": torch.ones(1)}, tmp_path / "w.safetensors")
    with pytest.raises(ImportError, match=r"fulmen\[safetensors\]"):
        load_safetensors(tmp_path / "w.safetensors")
