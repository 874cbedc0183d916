"""Tests for the CheckpointIO interface, TorchCheckpointIO and WrappingCheckpointIO."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem

import fulmen.checkpoint as fc
from fulmen.checkpoint import (
    AsyncCheckpointIO,
    CheckpointIO,
    CheckpointLoadError,
    CheckpointNotFoundError,
    TorchCheckpointIO,
    WrappingCheckpointIO,
)
from fulmen.utilities import filesystem


def _checkpoint(step: int = 1) -> dict[str, Any]:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return {
        "epoch": 0,
        "global_step": step,
        "pytorch-lightning_version": "2.6.1",
        "state_dict": model.state_dict(),
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [],
        "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 1, "completed": 0}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_path": "", "best_model_score": None}},
    }


def test_public_api_is_listed() -> None:
    for name in fc.__all__:
        assert hasattr(fc, name), name
    assert {"CheckpointIO", "TorchCheckpointIO", "AsyncCheckpointIO", "add_safe_globals"} <= set(fc.__all__)


def test_checkpoint_io_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        CheckpointIO()  # type: ignore[abstract]


def test_torch_checkpoint_io_round_trip_of_a_full_checkpoint(tmp_path: Path) -> None:
    io = TorchCheckpointIO()
    checkpoint = _checkpoint(step=3)
    path = tmp_path / "nested" / "dirs" / "epoch=0-step=3.ckpt"
    io.save_checkpoint(checkpoint, path)
    loaded = io.load_checkpoint(path)  # weights_only=None: safe loading must handle a real checkpoint
    assert loaded.keys() == checkpoint.keys()
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(loaded["state_dict"][key], value)
    state = loaded["optimizer_states"][0]["state"][0]
    assert torch.equal(state["exp_avg"], checkpoint["optimizer_states"][0]["state"][0]["exp_avg"])
    assert loaded["loops"] == checkpoint["loops"]
    assert loaded["callbacks"] == checkpoint["callbacks"]


def test_load_puts_tensors_on_cpu_unless_told_otherwise(tmp_path: Path) -> None:
    io = TorchCheckpointIO()
    path = tmp_path / "a.ckpt"
    io.save_checkpoint({"w": torch.ones(2, dtype=torch.float64)}, path)
    assert io.load_checkpoint(path)["w"].device.type == "cpu"
    seen: list[str] = []

    def map_location(storage: Any, location: str) -> Any:
        seen.append(location)
        return storage

    io.load_checkpoint(path, map_location=map_location)
    assert seen == ["cpu"]


def test_save_rejects_non_dict_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"got a checkpoint of type Tensor; expected a dict"):
        TorchCheckpointIO().save_checkpoint(torch.ones(2), tmp_path / "a.ckpt")  # type: ignore[arg-type]
    assert not (tmp_path / "a.ckpt").exists()


def test_load_rejects_a_file_that_is_not_a_checkpoint_dict(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), path)
    with pytest.raises(CheckpointLoadError, match=r"holds a Tensor, expected a checkpoint dict"):
        TorchCheckpointIO().load_checkpoint(path)


def test_load_errors_propagate_with_context(tmp_path: Path) -> None:
    io = TorchCheckpointIO()
    with pytest.raises(CheckpointNotFoundError, match="missing.ckpt"):
        io.load_checkpoint(tmp_path / "missing.ckpt")
    path = tmp_path / "a.ckpt"
    io.save_checkpoint(_checkpoint(), path)
    path.write_bytes(path.read_bytes()[:-64])
    with pytest.raises(CheckpointLoadError, match="truncated or corrupted"):
        io.load_checkpoint(path)


def test_remove_checkpoint(tmp_path: Path) -> None:
    io = TorchCheckpointIO()
    path = tmp_path / "a.ckpt"
    io.save_checkpoint({"a": 1}, path)
    io.remove_checkpoint(path)
    assert not path.exists()
    io.remove_checkpoint(path)  # missing: no error
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "part0").write_bytes(b"x")
    io.remove_checkpoint(folder)
    assert not folder.exists()


def test_storage_options_are_passed_to_the_filesystem(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    real_url_to_fs = filesystem.url_to_fs

    def spy(url: str, **options: Any) -> Any:
        seen.append(options)
        return real_url_to_fs(url, **{k: v for k, v in options.items() if k != "token"})

    monkeypatch.setattr(filesystem, "url_to_fs", spy)
    root = f"memory://fulmen-io-{uuid.uuid4().hex}"
    io = TorchCheckpointIO(storage_options={"token": "default", "region": "x"})
    io.save_checkpoint({"a": 1}, f"{root}/a.ckpt", storage_options={"token": "per-call"})
    assert seen[-1] == {"token": "per-call", "region": "x"}
    assert io.load_checkpoint(f"{root}/a.ckpt") == {"a": 1}
    assert seen[-1] == {"token": "default", "region": "x"}
    io.remove_checkpoint(f"{root}/a.ckpt")
    assert not MemoryFileSystem().exists(f"{root}/a.ckpt")
    with pytest.raises(TypeError, match="storage_options: got"):
        TorchCheckpointIO(storage_options="anon")  # type: ignore[arg-type]


class _RecordingIO(CheckpointIO):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        self.calls.append(("save", path, storage_options))

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: Any = None
    ) -> dict[str, Any]:
        self.calls.append(("load", path, map_location, weights_only))
        return {"loaded": path}

    def remove_checkpoint(self, path: Any) -> None:
        self.calls.append(("remove", path))

    def teardown(self) -> None:
        self.calls.append(("teardown",))


def test_wrapping_io_forwards_every_call() -> None:
    inner = _RecordingIO()
    wrapper = WrappingCheckpointIO(inner)
    assert wrapper.checkpoint_io is inner
    wrapper.save_checkpoint({"a": 1}, "p", storage_options={"k": 1})
    assert wrapper.load_checkpoint("p", map_location="cpu", weights_only=False) == {"loaded": "p"}
    wrapper.remove_checkpoint("p")
    wrapper.teardown()
    assert inner.calls == [
        ("save", "p", {"k": 1}),
        ("load", "p", "cpu", False),
        ("remove", "p"),
        ("teardown",),
    ]


def test_wrapping_io_subclass_can_inject_storage_options() -> None:
    class WithCredentials(WrappingCheckpointIO):
        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            super().save_checkpoint(
                checkpoint, path, storage_options={"token": "secret", **(storage_options or {})}
            )

    inner = _RecordingIO()
    WithCredentials(inner).save_checkpoint({}, "p")
    assert inner.calls == [("save", "p", {"token": "secret"})]


def test_wrapping_io_validates_and_defaults(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="expected a CheckpointIO instance"):
        WrappingCheckpointIO("torch")  # type: ignore[arg-type]
    wrapper = WrappingCheckpointIO()
    with pytest.raises(ValueError, match="cannot wrap itself"):
        wrapper.checkpoint_io = wrapper
    assert wrapper.checkpoint_io is None
    wrapper.save_checkpoint({"a": 2}, tmp_path / "a.ckpt")  # falls back to TorchCheckpointIO
    assert isinstance(wrapper.checkpoint_io, TorchCheckpointIO)
    assert wrapper.load_checkpoint(tmp_path / "a.ckpt") == {"a": 2}
    assert not wrapper._restore_after_setup
    assert not AsyncCheckpointIO()._restore_after_setup


def test_torch_checkpoint_io_save_is_atomic(tmp_path: Path) -> None:
    io = TorchCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    class Unpicklable:
        def __reduce__(self) -> Any:
            raise RuntimeError("cannot pickle me")

    with pytest.raises(RuntimeError, match="cannot pickle me"):
        io.save_checkpoint({"step": 2, "bad": Unpicklable()}, path)
    assert io.load_checkpoint(path) == {"step": 1}
    assert os.listdir(tmp_path) == ["last.ckpt"]
