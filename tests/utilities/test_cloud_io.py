"""Tests for fulmen.utilities.cloud_io: filesystems, atomic saving, and load error diagnosis."""

from __future__ import annotations

import errno
import io
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import pytest
import torch
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from fulmen.utilities import atomic_write, cloud_io
from fulmen.utilities.cloud_io import (
    CheckpointLoadError,
    CheckpointNotFoundError,
    atomic_save,
    get_filesystem,
    load,
    verify_checkpoint,
)


def _temp_files(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def _checkpoint(step: int, numel: int = 1000) -> dict[str, Any]:
    return {"step": step, "state_dict": {"w": torch.full((numel,), float(step))}}


# ------------------------------------------------------------------------------------------------
# Filesystems
# ------------------------------------------------------------------------------------------------


def test_get_filesystem_defaults_to_local_and_knows_urls(tmp_path: Path) -> None:
    assert isinstance(get_filesystem(tmp_path / "a.ckpt"), LocalFileSystem)
    assert isinstance(get_filesystem(f"file://{tmp_path}/a.ckpt"), LocalFileSystem)
    assert isinstance(get_filesystem("memory://run/a.ckpt"), MemoryFileSystem)


def test_get_filesystem_unknown_protocol_names_it() -> None:
    with pytest.raises(ValueError, match=r"'nosuchproto'.*fsspec does not know"):
        get_filesystem("nosuchproto://bucket/a.ckpt")


@pytest.mark.parametrize("bad", [None, 3, b"/tmp/a.ckpt", ""])
def test_bad_path_types_are_rejected_clearly(bad: Any) -> None:
    with pytest.raises(TypeError, match="expected a non-empty str or os.PathLike"):
        atomic_save({"a": 1}, bad)


def test_bad_storage_options_are_rejected_clearly(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="storage_options: got"):
        atomic_save({"a": 1}, tmp_path / "a.ckpt", storage_options=["anon"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/tmp/a.ckpt", True),
        ("relative/a.ckpt", True),
        ("file:///tmp/a.ckpt", True),
        ("s3://b/a.ckpt", False),
        ("memory://a.ckpt", False),
    ],
)
def test_is_local_file_protocol(path: str, expected: bool) -> None:
    assert cloud_io._is_local_file_protocol(path) is expected


# ------------------------------------------------------------------------------------------------
# Atomic saving, local
# ------------------------------------------------------------------------------------------------


def test_atomic_save_round_trip_creates_parents_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "last.ckpt"
    atomic_save(_checkpoint(1), path)
    atomic_save(_checkpoint(2), path)
    loaded = load(path)
    assert loaded["step"] == 2
    assert torch.equal(loaded["state_dict"]["w"], torch.full((1000,), 2.0))
    assert os.listdir(path.parent) == ["last.ckpt"]


def test_atomic_save_fsyncs_file_and_directory_before_and_after_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_save(_checkpoint(1), tmp_path / "a.ckpt")
    if os.path.isdir("/proc/self/fd"):
        assert events == ["fsync-file", "replace", "fsync-dir"]
    else:  # pragma: no cover - no /proc to tell files from directories
        assert events[1] == "replace" and len(events) == 3


class _ExplodesWhenPickled:
    def __reduce__(self) -> Any:
        raise RuntimeError("boom while pickling")


def _write_half_then_fail(obj: Any, f: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    f.write(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


def _interrupt_midway(obj: Any, f: Any) -> None:
    f.write(b"PK\x03\x04 partial bytes")
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    "failure",
    ["pickling raises", "disk full midway", "interrupted midway", "fsync fails", "rename fails"],
)
def test_failed_save_keeps_previous_file_intact_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    path = tmp_path / "last.ckpt"
    atomic_save(_checkpoint(1, numel=100_000), path)
    before = path.read_bytes()
    new: dict[str, Any] = _checkpoint(2, numel=100_000)
    expected: type[BaseException] = OSError
    if failure == "pickling raises":
        new["zzz"] = _ExplodesWhenPickled()
        expected = RuntimeError
    elif failure == "disk full midway":
        monkeypatch.setattr(atomic_write, "_torch_save", _write_half_then_fail)
    elif failure == "interrupted midway":
        monkeypatch.setattr(atomic_write, "_torch_save", _interrupt_midway)
        expected = KeyboardInterrupt
    elif failure == "fsync fails":
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    else:
        monkeypatch.setattr(
            os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(errno.EXDEV, "cross-device"))
        )

    with pytest.raises(expected):
        atomic_save(new, path)

    assert path.read_bytes() == before
    assert load(path)["step"] == 1
    assert _temp_files(tmp_path) == []


def test_unpicklable_value_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    bad = {"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"lr": 0.1, "loss_fn": lambda x: x}}
    with pytest.raises(TypeError, match=r"checkpoint\['hyper_parameters'\]\['loss_fn'\].*cannot be pickled"):
        atomic_save(bad, path)
    assert not path.exists()
    assert _temp_files(tmp_path) == []


def test_saving_onto_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="it is an existing directory"):
        atomic_save({"a": 1}, tmp_path)


def test_saving_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    target = tmp_path / "epoch=1.ckpt"
    atomic_save(_checkpoint(1), target)
    link = tmp_path / "last.ckpt"
    link.symlink_to(target.name)
    atomic_save(_checkpoint(2), link)
    assert not link.is_symlink()
    assert load(link)["step"] == 2
    assert load(target)["step"] == 1  # the top-k file the link pointed to is untouched


def test_long_file_names_still_fit_the_temp_name(tmp_path: Path) -> None:
    path = tmp_path / ("x" * 240 + ".ckpt")
    atomic_save(_checkpoint(3), path)
    assert load(path)["step"] == 3


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.skipif(os.name == "nt", reason="pid liveness via os.kill(pid, 0) is POSIX")
def test_a_later_save_removes_temp_files_of_dead_writers_only(tmp_path: Path) -> None:
    """A save killed mid-write leaves ``.<name>.<host>-<hash>.<pid>.<random>.tmp``; the next save into that
    directory removes it once its writer is dead, and keeps live writers' temp files and everything else."""
    from fulmen.utilities.atomic_write import _temp_name, _writer_token

    token = _writer_token()
    dead = _dead_pid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        def temp(name: str, pid: int) -> str:
            made = _temp_name(name).replace(f".{os.getpid()}.", f".{pid}.")
            (tmp_path / made).write_bytes(b"partial")
            return made

        stale = [temp("last.ckpt", dead), temp("epoch=3-step=9.ckpt", dead)]  # any target in the directory
        live = [temp("last.ckpt", os.getppid()), temp("last.ckpt", sleeper.pid), temp("last.ckpt", os.getpid())]
        others = [
            f".last.ckpt.{uuid.uuid4().hex[:12]}.tmp",  # the old scheme: no writer named, never guessed at
            f".last.ckpt.otherhost-0123abcd.{dead}.{uuid.uuid4().hex[:12]}.tmp",  # another host's
            f".last.ckpt.{token}.{dead}.{uuid.uuid4().hex[:11]}.tmp",  # not exactly the scheme
            f".last.ckpt.{token}.{dead}.{uuid.uuid4().hex[:12]}.tmp.keep",
            f"last.ckpt.{token}.{dead}.{uuid.uuid4().hex[:12]}.tmp",  # not hidden
            "notes.tmp",
        ]
        for name in others:
            (tmp_path / name).write_bytes(b"x")
        matching_dir = tmp_path / f".dir.{token}.{dead}.{uuid.uuid4().hex[:12]}.tmp"
        matching_dir.mkdir()

        atomic_save(_checkpoint(1), tmp_path / "last.ckpt")

        left = set(os.listdir(tmp_path))
        assert not left & set(stale)
        assert set(live) <= left
        assert set(others) <= left
        assert matching_dir.is_dir()
        assert load(tmp_path / "last.ckpt")["step"] == 1

        # the sleeping writer dies: the next save removes its temp file too
        sleeper.kill()
        sleeper.wait()
        atomic_save(_checkpoint(2), tmp_path / "other.ckpt")
        assert live[1] not in os.listdir(tmp_path)
        assert {live[0], live[2]} <= set(os.listdir(tmp_path))
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def test_temp_name_names_the_writer_and_fits_the_name_limit() -> None:
    from fulmen.utilities.atomic_write import _TEMP_RE, _temp_name, _writer_token

    for name in ("last.ckpt", "epoch=1.step=2.ckpt", "x" * 240 + ".ckpt", "\u00e9" * 200 + ".ckpt"):
        made = _temp_name(name)
        assert len(made.encode()) <= 255
        match = _TEMP_RE.fullmatch(made)
        assert match is not None and match["token"] == _writer_token() and int(match["pid"]) == os.getpid()


# ------------------------------------------------------------------------------------------------
# fsspec filesystems
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def memory_dir() -> Any:
    root = f"memory://fulmen-test-{uuid.uuid4().hex}"
    yield root
    fs = MemoryFileSystem()
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_memory_round_trip(memory_dir: str) -> None:
    path = f"{memory_dir}/run/last.ckpt"
    atomic_save(_checkpoint(1), path)
    atomic_save(_checkpoint(2), path)
    assert load(path)["step"] == 2
    assert load(path, map_location="cpu")["state_dict"]["w"].device.type == "cpu"
    verify_checkpoint(path)
    assert [
        p.rsplit("/", 1)[-1] for p in fsspec.filesystem("memory").ls(f"{memory_dir}/run", detail=False)
    ] == ["last.ckpt"]


def test_file_url_round_trip(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/sub/last.ckpt"
    atomic_save(_checkpoint(5), url)
    assert (tmp_path / "sub" / "last.ckpt").is_file()
    assert load(url)["step"] == 5
    assert load(tmp_path / "sub" / "last.ckpt")["step"] == 5


def test_memory_save_failure_keeps_previous_object(memory_dir: str) -> None:
    path = f"{memory_dir}/last.ckpt"
    atomic_save(_checkpoint(1), path)
    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"x": _ExplodesWhenPickled()}, path)
    assert load(path)["step"] == 1


class _RenameFileSystem(MemoryFileSystem):
    """A filesystem that is neither local nor a single-put object store: exercises temp-name + mv."""

    protocol = ("fulmenrenamefs",)
    store: ClassVar[dict[str, Any]] = {}
    pseudo_dirs: ClassVar[list[str]] = [""]
    moves: ClassVar[list[tuple[str, str]]] = []

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path.removeprefix("fulmenrenamefs://"))

    def mv(self, path1: str, path2: str, **kwargs: Any) -> None:
        type(self).moves.append((path1, path2))
        super().mv(path1, path2, **kwargs)


def test_rename_based_filesystem_writes_temp_then_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    fsspec.register_implementation("fulmenrenamefs", _RenameFileSystem, clobber=True)
    _RenameFileSystem.store.clear()
    _RenameFileSystem.moves.clear()
    path = "fulmenrenamefs://run/last.ckpt"
    atomic_save(_checkpoint(1), path)
    atomic_save(_checkpoint(2), path)
    assert load(path)["step"] == 2
    assert len(_RenameFileSystem.moves) == 2
    src, dst = _RenameFileSystem.moves[0]
    assert dst == "/run/last.ckpt" and src.startswith("/run/.last.ckpt.") and src.endswith(".tmp")

    monkeypatch.setattr(atomic_write, "_torch_save", _write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        atomic_save(_checkpoint(3), path)
    assert load(path)["step"] == 2
    assert sorted(_RenameFileSystem.store) == ["/run/last.ckpt"]  # the partial temp object was removed


# ------------------------------------------------------------------------------------------------
# Loading: clear errors
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "good.ckpt"
    atomic_save(_checkpoint(7, numel=10_000), path)
    return path


def _damaged_copy(saved: Path, name: str, data: bytes) -> Path:
    path = saved.parent / name
    path.write_bytes(data)
    return path


def test_missing_file_is_a_file_not_found_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match="nope.ckpt") as info:
        load(path)
    assert isinstance(info.value, CheckpointNotFoundError)
    assert isinstance(info.value, CheckpointLoadError)
    with pytest.raises(CheckpointNotFoundError, match="does not exist either"):
        load(tmp_path / "missing_dir" / "a.ckpt")


def test_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointLoadError, match="it is a directory, expected a single checkpoint file"):
        load(tmp_path)


def test_empty_file_is_a_clear_error(saved: Path) -> None:
    path = _damaged_copy(saved, "empty.ckpt", b"")
    with pytest.raises(CheckpointLoadError, match=r"truncated or corrupted: it is empty \(0 bytes\)"):
        load(path)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_file_names_the_file_the_problem_and_the_fix(saved: Path, keep: float) -> None:
    data = saved.read_bytes()
    path = _damaged_copy(saved, "trunc.ckpt", data[: int(len(data) * keep)])
    with pytest.raises(CheckpointLoadError) as info:
        load(path)
    message = str(info.value)
    assert repr(str(path)) in message
    assert "truncated or corrupted" in message
    assert "torch reported" in message
    assert "earlier checkpoint" in message and "`last`" in message
    assert "good.ckpt" in message  # an intact sibling is suggested
    assert info.value.path == str(path)
    assert isinstance(info.value.__cause__, Exception)


def test_garbage_file_is_corrupted_not_unsafe(saved: Path) -> None:
    path = _damaged_copy(saved, "garbage.ckpt", b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointLoadError, match="does not start like a torch checkpoint"):
        load(path)


def test_corrupted_pickle_record_is_detected_by_checksum(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    offset = data.index(b"data.pkl") + len(b"data.pkl") + 40  # inside the pickle record's bytes
    data[offset : offset + 8] = b"\xff" * 8
    path = _damaged_copy(saved, "flipped.ckpt", bytes(data))
    for weights_only in (True, False):
        with pytest.raises(CheckpointLoadError, match=r"record '.*data.pkl' is damaged.*CRC"):
            load(path, weights_only=weights_only)


def test_flipped_tensor_bytes_load_silently_but_verify_checkpoint_catches_them(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = b"\x7f" * 8
    path = _damaged_copy(saved, "bitrot.ckpt", bytes(data))
    assert not torch.equal(load(path)["state_dict"]["w"], torch.full((10_000,), 7.0))  # torch does not notice
    with pytest.raises(CheckpointLoadError, match=r"record '.*data/0' is damaged"):
        verify_checkpoint(path)
    verify_checkpoint(saved)


def test_verify_checkpoint_reports_missing_and_truncated_files(saved: Path) -> None:
    with pytest.raises(CheckpointNotFoundError):
        verify_checkpoint(saved.parent / "nope.ckpt")
    data = saved.read_bytes()
    with pytest.raises(CheckpointLoadError, match="ends early"):
        verify_checkpoint(_damaged_copy(saved, "t.ckpt", data[:-100]))


def test_load_from_file_object(saved: Path) -> None:
    buffer = io.BytesIO(saved.read_bytes())
    assert load(buffer)["step"] == 7
    truncated = io.BytesIO(saved.read_bytes()[:500])
    with pytest.raises(CheckpointLoadError, match="truncated or corrupted"):
        load(truncated)
    with pytest.raises(TypeError, match="expected a str, an os.PathLike or a seekable binary file object"):
        load(12345)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["False", 0, 1.0])
def test_weights_only_must_be_a_bool(saved: Path, bad: Any) -> None:
    with pytest.raises(TypeError, match="weights_only: got"):
        load(saved, weights_only=bad)


def test_weights_only_none_means_safe(saved: Path) -> None:
    assert load(saved, weights_only=None)["step"] == 7


def test_legacy_format_loads(tmp_path: Path) -> None:
    path = tmp_path / "legacy.ckpt"
    torch.save({"step": 4, "w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    assert load(path)["step"] == 4
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(CheckpointLoadError, match="truncated or corrupted"):
        load(path)


def test_non_corruption_errors_are_not_mislabelled(saved: Path) -> None:
    def exploding_map_location(storage: Any, location: str) -> Any:
        raise ValueError("map_location rejected this storage")

    with pytest.raises(ValueError, match="map_location rejected this storage"):
        load(saved, map_location=exploding_map_location)


def test_pickle_alias_names_match_lightning() -> None:
    assert cloud_io._load is load
    assert cloud_io._atomic_save is atomic_save
    assert issubclass(cloud_io.UnsafeCheckpointError, pickle.UnpicklingError)
