"""Tests for AsyncCheckpointIO: background writes, snapshots, ordering, error reporting.

Every behaviour test runs with both snapshot modes: ``fork`` (a copy-on-write child process writes) and
``copy`` (the tensors are copied, a thread writes). The test doubles therefore signal through files, which
work across a fork, instead of threading events.
"""

from __future__ import annotations

import collections
import os
import pickle
import signal
import sys
import threading
import time
import warnings
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


def test_save_returns_before_the_write_completes_and_runs_in_the_background(
    tmp_path: Path, snapshot: str
) -> None:
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
        # a thread of this process wrote
        assert pid == os.getpid() and thread != threading.current_thread().name
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
    io = AsyncCheckpointIO()  # auto: a CUDA tensor cannot be read in a forked child, so it is copied
    io.save_checkpoint({"w": weight}, tmp_path / "a.ckpt")
    assert io._writer_pid is None
    io.teardown()
    assert torch.equal(TorchCheckpointIO().load_checkpoint(tmp_path / "a.ckpt")["w"], torch.full((4,), 2.0))
    pinned = torch.ones(4).pin_memory()  # page-locked host memory belongs to the driver: copied too
    io.save_checkpoint({"w": pinned}, tmp_path / "b.ckpt")
    assert io._writer_pid is None
    io.teardown()
    with pytest.raises(ValueError, match="holds a tensor on cuda"):
        AsyncCheckpointIO(snapshot="fork").save_checkpoint({"w": weight}, tmp_path / "c.ckpt")


# --------------------------------------------------------------------------------------------------
# The fork snapshot: what the training loop does after the call never reaches the file
# --------------------------------------------------------------------------------------------------


def _assert_bitwise_equal(a: Any, b: Any, where: str = "checkpoint") -> None:
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _assert_bitwise_equal(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_bitwise_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _trained() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.BatchNorm1d(128), torch.nn.Linear(128, 8))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(2):
        model(torch.randn(16, 64)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def _checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    # state_dict() values alias the live parameters and optimizer state: exactly what a snapshot must protect
    return {"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()], "global_step": 2}


def test_the_file_equals_a_synchronous_save_taken_at_the_call(tmp_path: Path, snapshot: str) -> None:
    model, optimizer = _trained()
    TorchCheckpointIO().save_checkpoint(_checkpoint(model, optimizer), tmp_path / "sync.ckpt")
    inner = _GatedIO(tmp_path / "gate")
    io = AsyncCheckpointIO(inner, snapshot=snapshot)
    io.save_checkpoint(_checkpoint(model, optimizer), tmp_path / "async.ckpt")
    assert inner.started.wait(_WAIT)  # the write is in flight while the loop goes on
    with torch.no_grad():  # every parameter, buffer and optimizer state tensor changes in place...
        for tensor in model.state_dict().values():
            tensor.add_(1) if tensor.is_floating_point() else tensor.add_(7)
        for state in optimizer.state.values():
            for value in state.values():
                value.mul_(3).add_(1)
    for _ in range(3):  # ...and training continues
        model(torch.randn(16, 64)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    inner.gate.set()
    io.teardown()
    sync = torch.load(tmp_path / "sync.ckpt", weights_only=True)
    written = torch.load(tmp_path / "async.ckpt", weights_only=True)
    assert not torch.equal(model.state_dict()["0.weight"], sync["state_dict"]["0.weight"])  # not vacuous
    _assert_bitwise_equal(written, sync)


def test_a_writer_that_fails_is_reported_with_path_and_cause_and_the_previous_file_is_kept(
    tmp_path: Path, snapshot: str
) -> None:
    path = tmp_path / "a.ckpt"
    io = AsyncCheckpointIO(snapshot=snapshot)
    io.save_checkpoint({"step": 1}, path)
    io.save_checkpoint({"step": 2, "callback": lambda: None}, path)  # cannot be pickled
    with pytest.raises(
        AsyncCheckpointSaveError, match=r"a\.ckpt.*TypeError.*checkpoint\['callback'\]"
    ) as info:
        io.save_checkpoint({"step": 3}, tmp_path / "b.ckpt")
    assert info.value.path == str(path) and isinstance(info.value.__cause__, TypeError)
    assert TorchCheckpointIO().load_checkpoint(path) == {"step": 1}  # the previous file is intact
    assert not (tmp_path / "b.ckpt").exists()
    # A target directory that cannot be created (its parent is a file).
    (tmp_path / "blocker").write_text("a file, not a directory")
    bad = tmp_path / "blocker" / "sub" / "c.ckpt"
    io.save_checkpoint({"step": 4}, bad)
    with pytest.raises(
        AsyncCheckpointSaveError, match=r"blocker/sub/c\.ckpt.*(NotADirectoryError|FileExistsError)"
    ):
        io.teardown()
    if snapshot == "fork":
        assert "checkpoint writer process" in "".join(getattr(info.value.__cause__, "__notes__", []))
    assert sorted(os.listdir(tmp_path)) == ["a.ckpt", "blocker"]  # no temporary files left behind


class _UnpicklableError(Exception):
    def __init__(self) -> None:
        super().__init__("custom failure in the writer")
        self.lock = threading.Lock()  # the exception itself cannot be pickled back to the parent


class _RaisingIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        raise _UnpicklableError()


@needs_fork
def test_an_exception_that_cannot_travel_back_is_described_by_type_and_text(tmp_path: Path) -> None:
    io = AsyncCheckpointIO(_RaisingIO(), snapshot="fork")
    io.save_checkpoint({"step": 1}, tmp_path / "a.ckpt")
    with pytest.raises(
        AsyncCheckpointSaveError, match=r"_UnpicklableError: custom failure in the writer"
    ) as info:
        io.teardown()
    notes = "".join(info.value.__cause__.__notes__)  # the writer's traceback travels as a note
    assert "raise _UnpicklableError()" in notes


@needs_fork
def test_a_killed_writer_is_reported_and_the_previous_file_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    TorchCheckpointIO().save_checkpoint({"step": 1}, path)
    inner = _GatedIO(tmp_path / "gate")
    io = AsyncCheckpointIO(inner, snapshot="fork")
    io.save_checkpoint({"step": 2}, path)
    assert inner.started.wait(_WAIT)
    writer = io._writer_pid
    assert writer is not None
    os.kill(writer, signal.SIGKILL)
    with pytest.raises(AsyncCheckpointSaveError, match=r"a\.ckpt.*killed by SIGKILL"):
        io.save_checkpoint({"step": 3}, tmp_path / "b.ckpt")
    assert TorchCheckpointIO().load_checkpoint(path) == {"step": 1}
    with pytest.raises(ChildProcessError):
        os.waitpid(writer, os.WNOHANG)  # reaped


@needs_fork
@pytest.mark.parametrize("from_thread", [False, True], ids=["main_thread", "worker_thread"])
def test_the_writer_ignores_preemption_signals_and_never_runs_the_parents_handlers(
    tmp_path: Path, from_thread: bool
) -> None:
    ran = tmp_path / "handler-ran"

    def handler(signum: int, frame: Any) -> None:
        ran.write_text(str(os.getpid()))

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        inner = _GatedIO(tmp_path / "gate")
        io = AsyncCheckpointIO(inner, snapshot="fork")
        if from_thread:  # the forked child's only thread is then a non-main thread of the parent
            thread = threading.Thread(target=io.save_checkpoint, args=({"step": 1}, tmp_path / "a.ckpt"))
            thread.start()
            thread.join()
        else:
            io.save_checkpoint({"step": 1}, tmp_path / "a.ckpt")
        assert inner.started.wait(_WAIT)
        writer = io._writer_pid
        assert writer is not None
        # e.g. a scheduler signalling the whole job, or Ctrl-C in the terminal
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            os.kill(writer, sig)
        inner.gate.set()
        io.teardown()  # the write completed: no error
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)
    assert TorchCheckpointIO().load_checkpoint(tmp_path / "a.ckpt") == {"step": 1}
    assert not ran.exists()


# --------------------------------------------------------------------------------------------------
# Choosing the snapshot
# --------------------------------------------------------------------------------------------------


class _TaggedTensor(torch.Tensor):
    pass


@pytest.mark.parametrize("bad", ["forks", "", None, 1, "FORK"])
def test_an_invalid_snapshot_value_is_rejected(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"snapshot=.*expected one of 'auto', 'fork', 'copy'"):
        AsyncCheckpointIO(snapshot=bad)


def test_fork_where_there_is_no_fork_is_rejected_and_auto_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "fork", raising=False)
    with pytest.raises(ValueError, match=r"has no os.fork.*snapshot='auto' or 'copy'"):
        AsyncCheckpointIO(snapshot="fork")
    io = AsyncCheckpointIO()
    io.save_checkpoint({"w": torch.ones(2)}, tmp_path / "a.ckpt")
    assert io._writer_pid is None
    io.teardown()
    assert torch.equal(TorchCheckpointIO().load_checkpoint(tmp_path / "a.ckpt")["w"], torch.ones(2))


@needs_fork
def test_auto_forks_only_where_it_is_safe(tmp_path: Path) -> None:
    io = AsyncCheckpointIO()
    assert io.snapshot == "auto"
    io.save_checkpoint({"w": torch.ones(2), "meta": torch.empty(3, device="meta")}, tmp_path / "a.ckpt")
    forked = io._writer_pid is not None
    io.teardown()
    assert forked == (sys.platform != "darwin")
    # a tensor subclass (e.g. DTensor) may need a device or a process group to pickle: copied on a thread
    tagged = torch.ones(2).as_subclass(_TaggedTensor)
    io.save_checkpoint({"nested": [{"w": tagged}]}, tmp_path / "b.ckpt")
    assert io._writer_pid is None
    io.teardown()
    # shared memory is not copied on write: an update after the call would reach a forked writer
    shared = torch.ones(2).share_memory_()
    io.save_checkpoint({"w": shared}, tmp_path / "s.ckpt")
    assert io._writer_pid is None
    shared.add_(1)
    io.teardown()
    assert torch.equal(TorchCheckpointIO().load_checkpoint(tmp_path / "s.ckpt")["w"], torch.ones(2))
    # an in-process memory:// file written by a child process would never reach this process
    io.save_checkpoint({"w": torch.ones(2)}, "memory://fulmen-async/c.ckpt")
    assert io._writer_pid is None
    io.teardown()
    assert torch.equal(
        TorchCheckpointIO().load_checkpoint("memory://fulmen-async/c.ckpt")["w"], torch.ones(2)
    )


@needs_fork
def test_fork_refuses_what_a_child_process_cannot_write(tmp_path: Path) -> None:
    io = AsyncCheckpointIO(snapshot="fork")
    with pytest.raises(ValueError, match=r"memory://.*only in that process.*snapshot='auto' or 'copy'"):
        io.save_checkpoint({"w": torch.ones(2)}, "memory://fulmen-async/d.ckpt")
    with pytest.raises(ValueError, match=r"holds a _TaggedTensor.*snapshot='auto'"):
        io.save_checkpoint({"w": torch.ones(2).as_subclass(_TaggedTensor)}, tmp_path / "d.ckpt")
    with pytest.raises(ValueError, match=r"holds a tensor in shared memory.*snapshot='auto'"):
        io.save_checkpoint({"w": [torch.ones(2).share_memory_()]}, tmp_path / "d.ckpt")
    assert io._pending is None
    io.teardown()


@needs_fork
@pytest.mark.skipif(
    sys.version_info < (3, 12), reason="Python 3.12+ warns on fork in a multi-threaded process"
)
def test_no_fork_deprecation_warning_from_a_multi_threaded_process(tmp_path: Path) -> None:
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait)  # the process is multi-threaded, as a training process is
    busy.start()
    try:
        io = AsyncCheckpointIO(snapshot="fork")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            io.save_checkpoint({"step": 1}, tmp_path / "a.ckpt")
        io.teardown()
    finally:
        stop.set()
        busy.join()
    assert [w for w in caught if "fork" in str(w.message)] == []
    assert TorchCheckpointIO().load_checkpoint(tmp_path / "a.ckpt") == {"step": 1}


@needs_fork
def test_a_process_that_ignores_sigchld_still_gets_the_writers_result(tmp_path: Path) -> None:
    # With SIGCHLD ignored the kernel reaps children itself and waitpid cannot report their status:
    # the writer's report on the pipe decides.
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        io = AsyncCheckpointIO(snapshot="fork")
        io.save_checkpoint({"step": 1}, tmp_path / "a.ckpt")
        io.save_checkpoint({"step": 2, "bad": lambda: None}, tmp_path / "a.ckpt")  # waits for the first write
        with pytest.raises(AsyncCheckpointSaveError, match=r"a\.ckpt.*TypeError.*checkpoint\['bad'\]"):
            io.teardown()
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert TorchCheckpointIO().load_checkpoint(tmp_path / "a.ckpt") == {"step": 1}
