"""Tests for AsyncCheckpointIO: background writes, snapshots, ordering, error reporting.

Every behaviour test runs with both snapshot modes: ``fork`` (a copy-on-write child process writes) and
``copy`` (the tensors are copied, a thread writes). The test doubles therefore signal through files, which
work across a fork, instead of threading events.
"""

from __future__ import annotations

import collections
import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from fulmen.checkpoint import AsyncCheckpointIO, AsyncCheckpointSaveError, CheckpointIO, TorchCheckpointIO
from fulmen.checkpoint.io import _snapshot
from fulmen.utilities.parsing import AttributeDict

_WAIT = 30.0  # generous upper bound for events that must happen; never hit when the code is right


MODES = ["fork", "copy"]
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")


@pytest.fixture(params=[pytest.param("fork", marks=needs_fork), "copy"])
def snapshot(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class _FileEvent:
    """A threading.Event-like flag stored as a file, so a forked writer process can set it too."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def set(self) -> None:
        self.path.touch()

    def is_set(self) -> bool:
        return self.path.exists()

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.is_set():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True


class _GatedIO(TorchCheckpointIO):
    """A TorchCheckpointIO whose writes wait for a gate to open, and report (in files) when they start and end,
    which paths they saved and which process/thread wrote."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        root.mkdir(parents=True, exist_ok=True)
        self.gate = _FileEvent(root / "gate")
        self.started = _FileEvent(root / "started")
        self.finished = _FileEvent(root / "finished")
        self._saved = root / "saved.txt"
        self._writers = root / "writers.txt"

    @property
    def saved(self) -> list[str]:
        return self._saved.read_text().splitlines() if self._saved.exists() else []

    @property
    def writers(self) -> list[tuple[int, str]]:
        text = self._writers.read_text() if self._writers.exists() else ""
        return [(int(pid), name) for pid, name in (line.split(" ", 1) for line in text.splitlines())]

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with self._writers.open("a") as f:
            f.write(f"{os.getpid()} {threading.current_thread().name}\n")
        self.started.set()
        assert self.gate.wait(_WAIT), "test gate never opened"
        super().save_checkpoint(checkpoint, path, storage_options)
        with self._saved.open("a") as f:
            f.write(os.fspath(path) + "\n")
        self.finished.set()


def test_round_trip(tmp_path: Path, snapshot: str) -> None:
    io = AsyncCheckpointIO(snapshot=snapshot)
    assert io.checkpoint_io is None  # left for the Trainer to set, like Lightning
    path = tmp_path / "sub" / "a.ckpt"
    model = torch.nn.Linear(4, 4)
    io.save_checkpoint({"state_dict": model.state_dict(), "step": 3, "hp": AttributeDict(lr=0.1)}, path)
    assert isinstance(io.checkpoint_io, TorchCheckpointIO)  # or defaults on first use
    loaded = io.load_checkpoint(path)  # waits for the write
    assert loaded["step"] == 3 and loaded["hp"].lr == 0.1
    assert torch.equal(loaded["state_dict"]["weight"], model.weight)
    io.teardown()
    assert os.listdir(path.parent) == ["a.ckpt"]


def test_save_returns_before_the_write_completes_and_runs_in_the_background(tmp_path: Path, snapshot: str) -> None:
    inner = _GatedIO(tmp_path / "gate")
    io = AsyncCheckpointIO(inner, snapshot=snapshot)
    path = tmp_path / "a.ckpt"
    io.save_checkpoint({"step": 1}, path)  # would block forever if the write ran on this thread
    assert inner.started.wait(_WAIT)
    assert not inner.finished.is_set()
    assert not path.exists()
    inner.gate.set()
    io.teardown()  # waits
    assert inner.finished.is_set()
    [(pid, thread)] = inner.writers
    if snapshot == "fork":
        assert pid != os.getpid()  # a child process wrote
    else:
        assert pid == os.getpid() and thread != threading.current_thread().name  # a thread of this process wrote
    assert TorchCheckpointIO().load_checkpoint(path) == {"step": 1}


def test_in_place_updates_after_save_do_not_reach_the_file(tmp_path: Path, snapshot: str) -> None:
    inner = _GatedIO(tmp_path / "gate")
    io = AsyncCheckpointIO(inner, snapshot=snapshot)
    model = torch.nn.Linear(3, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    model(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    expected_weight = model.weight.detach().clone()
    expected_momentum = optimizer.state[model.weight]["momentum_buffer"].clone()
    path = tmp_path / "a.ckpt"
    io.save_checkpoint(
        {"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()], "meta": {"n": [1]}},
        path,
    )
    # Training goes on while the write is still pending.
    model(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    with torch.no_grad():
        model.weight.add_(100.0)
    inner.gate.set()
    io.teardown()
    loaded = TorchCheckpointIO().load_checkpoint(path)
    assert torch.equal(loaded["state_dict"]["weight"], expected_weight)
    assert torch.equal(loaded["optimizer_states"][0]["state"][0]["momentum_buffer"], expected_momentum)


def test_one_write_in_flight_the_next_save_waits(tmp_path: Path, snapshot: str) -> None:
    inner = _GatedIO(tmp_path / "gate")
    io = AsyncCheckpointIO(inner, snapshot=snapshot)
    io.save_checkpoint({"step": 1}, tmp_path / "1.ckpt")
    assert inner.started.wait(_WAIT)
    second_returned = threading.Event()

    def second_save() -> None:
        io.save_checkpoint({"step": 2}, tmp_path / "2.ckpt")
        second_returned.set()

    thread = threading.Thread(target=second_save)
    thread.start()
    assert not second_returned.wait(0.2)  # blocked behind the first write
    assert inner.saved == []
    inner.gate.set()
    assert second_returned.wait(_WAIT)
    thread.join()
    io.teardown()
    assert inner.saved == [str(tmp_path / "1.ckpt"), str(tmp_path / "2.ckpt")]


class _FailingIO(TorchCheckpointIO):
    def __init__(self) -> None:
        super().__init__()
        self.fail = True

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if self.fail:
            raise OSError(28, "No space left on device")
        super().save_checkpoint(checkpoint, path, storage_options)


@pytest.mark.parametrize("next_call", ["save", "load", "remove", "teardown"])
def test_background_error_is_raised_on_the_next_call(tmp_path: Path, next_call: str, snapshot: str) -> None:
    inner = _FailingIO()
    io = AsyncCheckpointIO(inner, snapshot=snapshot)
    path = tmp_path / "a.ckpt"
    io.save_checkpoint({"step": 1}, path)
    with pytest.raises(AsyncCheckpointSaveError, match=r"a.ckpt.*OSError.*No space left on device") as info:
        if next_call == "save":
            io.save_checkpoint({"step": 2}, tmp_path / "b.ckpt")
        elif next_call == "load":
            io.load_checkpoint(path)
        elif next_call == "remove":
            io.remove_checkpoint(path)
        else:
            io.teardown()
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.path == str(path)
    assert not (tmp_path / "b.ckpt").exists()  # the save that raised did not start
    # The error is reported once; the plugin keeps working afterwards.
    inner.fail = False
    io.save_checkpoint({"step": 3}, path)
    io.teardown()
    assert TorchCheckpointIO().load_checkpoint(path) == {"step": 3}


def test_teardown_waits_and_the_plugin_is_reusable(tmp_path: Path, snapshot: str) -> None:
    inner = _GatedIO(tmp_path / "gate")
    io = AsyncCheckpointIO(inner, snapshot=snapshot)
    io.save_checkpoint({"step": 1}, tmp_path / "a.ckpt")
    writer = io._writer_pid
    assert (writer is not None) == (snapshot == "fork")
    done = threading.Event()

    def teardown() -> None:
        io.teardown()
        done.set()

    thread = threading.Thread(target=teardown)
    thread.start()
    assert not done.wait(0.2)
    inner.gate.set()
    assert done.wait(_WAIT)
    thread.join()
    assert io._executor is None
    if writer is not None:
        with pytest.raises(ChildProcessError):  # the writer process was reaped: no zombie left
            os.waitpid(writer, os.WNOHANG)
    io.save_checkpoint({"step": 2}, tmp_path / "a.ckpt")  # a new fit after teardown
    io.teardown()
    assert TorchCheckpointIO().load_checkpoint(tmp_path / "a.ckpt") == {"step": 2}


def test_remove_waits_for_a_pending_write_to_the_same_path(tmp_path: Path, snapshot: str) -> None:
    inner = _GatedIO(tmp_path / "gate")
    io = AsyncCheckpointIO(inner, snapshot=snapshot)
    path = tmp_path / "a.ckpt"
    io.save_checkpoint({"step": 1}, path)
    inner.gate.set()
    io.remove_checkpoint(path)
    io.teardown()
    assert not path.exists()  # the write did not land after the remove


def test_bad_input_is_rejected_before_anything_is_queued(tmp_path: Path, snapshot: str) -> None:
    io = AsyncCheckpointIO(snapshot=snapshot)
    with pytest.raises(TypeError, match="expected a dict"):
        io.save_checkpoint([1, 2], tmp_path / "a.ckpt")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected a non-empty str or os.PathLike"):
        io.save_checkpoint({"a": 1}, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected a CheckpointIO instance"):
        AsyncCheckpointIO(object())  # type: ignore[arg-type]
    assert io._pending is None
    io.teardown()


def test_async_io_can_be_pickled(tmp_path: Path, snapshot: str) -> None:
    io = AsyncCheckpointIO(snapshot=snapshot)
    io.save_checkpoint({"step": 1}, tmp_path / "a.ckpt")
    clone = pickle.loads(pickle.dumps(io))
    assert clone.snapshot == snapshot
    clone.save_checkpoint({"step": 2}, tmp_path / "b.ckpt")
    clone.teardown()
    io.teardown()
    assert TorchCheckpointIO().load_checkpoint(tmp_path / "b.ckpt") == {"step": 2}


def test_teardown_is_forwarded_to_the_wrapped_io() -> None:
    class Recorder(TorchCheckpointIO):
        torn_down = False

        def teardown(self) -> None:
            self.torn_down = True

    inner = Recorder()
    AsyncCheckpointIO(inner).teardown()
    assert inner.torn_down
    assert isinstance(inner, CheckpointIO)


def test_snapshot_copies_tensors_and_containers_and_keeps_types_and_aliasing() -> None:
    shared = torch.ones(3)
    Point = collections.namedtuple("Point", "x y")
    obj = {
        "a": shared,
        "b": [shared, Point(shared, 2)],
        "od": collections.OrderedDict(k=torch.zeros(1)),
        "dd": collections.defaultdict(list, {"x": [1]}),
        "hp": AttributeDict(lr=0.1),
        "param": torch.nn.Parameter(torch.ones(2)),
        "set": {1, 2},
        "s": "text",
        "dtype": torch.float16,
    }
    snap = _snapshot(obj, {})
    shared.add_(5)
    obj["b"].append("later")
    obj["dd"]["x"].append(2)
    assert torch.equal(snap["a"], torch.ones(3))
    assert snap["b"][0] is snap["a"]  # aliasing inside the checkpoint is preserved
    assert type(snap["b"][1]) is Point and snap["b"][1].x is snap["a"]
    assert len(snap["b"]) == 2
    assert type(snap["od"]) is collections.OrderedDict
    assert type(snap["dd"]) is collections.defaultdict and snap["dd"].default_factory is list
    assert snap["dd"]["x"] == [1]
    assert type(snap["hp"]) is AttributeDict and snap["hp"].lr == 0.1
    assert type(snap["param"]) is torch.nn.Parameter and snap["param"].data_ptr() != obj["param"].data_ptr()
    assert snap["set"] == {1, 2} and snap["s"] == "text" and snap["dtype"] is torch.float16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_snapshot_moves_cuda_tensors_to_cpu(tmp_path: Path) -> None:
    weight = torch.ones(4, device="cuda")
    snap = _snapshot({"w": weight}, {})
    weight.add_(1)
    assert snap["w"].device.type == "cpu" and torch.equal(snap["w"], torch.ones(4))
    io = AsyncCheckpointIO()
    io.save_checkpoint({"w": weight}, tmp_path / "a.ckpt")
    io.teardown()
    assert torch.equal(TorchCheckpointIO().load_checkpoint(tmp_path / "a.ckpt")["w"], torch.full((4,), 2.0))
