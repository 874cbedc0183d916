"""Checkpoint IO plugins: how a checkpoint dict becomes a file and back.

* :class:`CheckpointIO` is the interface the strategies (and through them ``Trainer`` and ``Fabric``)
  call. Implement it to store checkpoints somewhere else or in another format.
* :class:`TorchCheckpointIO` is the default: ``torch.save``/``torch.load`` through fsspec, atomic
  writes, parent directories created, safe (``weights_only=True``) loading by default.
* :class:`AsyncCheckpointIO` wraps another ``CheckpointIO`` and writes in the background: from a
  forked copy-on-write child process where that is safe (CPU tensors, POSIX), else from a thread
  after copying the tensors, so the training loop only pays for the fork (or the copy).
* :class:`WrappingCheckpointIO` is the base for plugins that wrap another one; it forwards every
  call, so a subclass overrides only what it changes (e.g. injecting ``storage_options``).
"""

from __future__ import annotations

import concurrent.futures
import copy
import enum
import gc
import os
import pickle
import signal
import sys
import threading
import traceback
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, NoReturn

import torch
from typing_extensions import override

from fulmen.utilities import cloud_io
from fulmen.utilities.cloud_io import _MAP_LOCATION, _PATH

__all__ = [
    "AsyncCheckpointIO",
    "AsyncCheckpointSaveError",
    "CheckpointIO",
    "TorchCheckpointIO",
    "WrappingCheckpointIO",
]


class CheckpointIO(ABC):
    """Interface for saving, loading and removing checkpoint files.

    Implementations must make :meth:`save_checkpoint` atomic or document otherwise: the Trainer
    relies on a crash mid-save leaving the previous checkpoint loadable.
    """

    @abstractmethod
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: dict[str, Any] | None = None
    ) -> None:
        """Save ``checkpoint`` to ``path``.

        Args:
            checkpoint: The checkpoint dict (see the checkpoint format in the docs).
            path: Where to write it: a local path or a URL the implementation understands.
            storage_options: Implementation-specific options (for fsspec-based IO: filesystem options).
        """

    @abstractmethod
    def load_checkpoint(
        self, path: _PATH, map_location: _MAP_LOCATION = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load the checkpoint at ``path``.

        Args:
            path: Where to read it from.
            map_location: Where to put the tensors, as for ``torch.load``.
            weights_only: ``True``/``None`` for safe loading, ``False`` only for trusted files.

        Returns:
            The checkpoint dict.
        """

    @abstractmethod
    def remove_checkpoint(self, path: _PATH) -> None:
        """Delete the checkpoint at ``path``; a missing path is not an error.

        Args:
            path: The checkpoint to delete.
        """

    def teardown(self) -> None:
        """Release resources and finish pending work. Called when training ends."""

    @property
    def _restore_after_setup(self) -> bool:
        # Lightning-compatible hook: IO plugins that need the strategy set up before loading say True.
        return False


def _check_checkpoint(checkpoint: object, path: _PATH) -> None:
    if not isinstance(checkpoint, Mapping):
        raise TypeError(
            f"save_checkpoint({os.fspath(path)!r}): got a checkpoint of type {type(checkpoint).__name__}; "
            "expected a dict such as {'state_dict': model.state_dict(), ...}. Fix: wrap what you save in a dict."
        )


class TorchCheckpointIO(CheckpointIO):
    """Saves with ``torch.save`` and loads with ``torch.load``, on any fsspec filesystem.

    * Saves are atomic (see :func:`fulmen.utilities.cloud_io.atomic_save` for the guarantee on each
      filesystem) and create missing parent directories.
    * Loads are safe by default: ``weights_only=None`` means ``True``. Tensors are loaded onto the
      CPU unless ``map_location`` says otherwise (the Trainer moves them where they belong).

    Args:
        storage_options: Default fsspec filesystem options (credentials, endpoint) used for every
            save, load and remove; options passed to :meth:`save_checkpoint` override them per key.

    Raises:
        TypeError: If ``storage_options`` is not a dict or None.
    """

    def __init__(self, storage_options: dict[str, Any] | None = None) -> None:
        self.storage_options: dict[str, Any] = dict(cloud_io._check_storage_options(storage_options))

    def _options(self, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
        return {**self.storage_options, **cloud_io._check_storage_options(storage_options)}

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: dict[str, Any] | None = None
    ) -> None:
        """Atomically write ``checkpoint`` to ``path`` (see :class:`TorchCheckpointIO`).

        Raises:
            TypeError: If ``checkpoint`` is not a dict, ``path`` is not a path, or a value in the
                checkpoint cannot be pickled (the message names it).
            OSError: If the filesystem refuses the write; the previous file is kept.
        """
        _check_checkpoint(checkpoint, path)
        cloud_io.atomic_save(checkpoint, path, storage_options=self._options(storage_options))

    @override
    def load_checkpoint(
        self, path: _PATH, map_location: _MAP_LOCATION = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load a checkpoint dict; tensors go to the CPU unless ``map_location`` is given.

        A sharded checkpoint directory (``FSDPStrategy(state_dict_type="sharded")``) is consolidated on the fly
        into the full checkpoint (every tensor whole, on the CPU), so it loads without FSDP too.

        Raises:
            CheckpointNotFoundError: If ``path`` does not exist.
            CheckpointLoadError: If ``path`` is a directory (other than a sharded checkpoint), empty, truncated,
                corrupted, or holds something other than a checkpoint dict.
            UnsafeCheckpointError: If safe loading refuses the file (the message says how to opt in).
        """
        from fulmen.checkpoint.sharded import consolidate_checkpoint, is_sharded_checkpoint

        if is_sharded_checkpoint(path):
            return consolidate_checkpoint(path, weights_only=weights_only)  # type: ignore[arg-type]
        checkpoint = cloud_io.load(
            path,
            map_location="cpu" if map_location is None else map_location,
            weights_only=weights_only,
            storage_options=self.storage_options,
        )
        if not isinstance(checkpoint, dict):
            display = os.fspath(path)
            raise cloud_io.CheckpointLoadError(
                f"Cannot load checkpoint {display!r}: it holds a {type(checkpoint).__name__}, expected a checkpoint "
                "dict. It was probably written with torch.save(obj) directly rather than by Trainer, "
                "ModelCheckpoint or Fabric.save. Fix: load it with torch.load, or save a dict.",
                path=display,
                reason=f"holds a {type(checkpoint).__name__}, not a dict",
            )
        return checkpoint

    @override
    def remove_checkpoint(self, path: _PATH) -> None:
        """Delete ``path`` (a file, or a directory recursively); a missing path is ignored."""
        fs, fs_path = cloud_io._resolve(path, self.storage_options)
        if fs.exists(fs_path):
            fs.rm(fs_path, recursive=True)


class WrappingCheckpointIO(CheckpointIO):
    """A ``CheckpointIO`` that delegates to another one; subclasses override the calls they change.

    Args:
        checkpoint_io: The plugin to delegate to. ``None`` leaves it to be set later (the Trainer sets
            its default ``TorchCheckpointIO``); until then any call raises a clear error.

    Raises:
        TypeError: If ``checkpoint_io`` is not a ``CheckpointIO``.
    """

    def __init__(self, checkpoint_io: CheckpointIO | None = None) -> None:
        self._checkpoint_io: CheckpointIO | None = None
        if checkpoint_io is not None:
            self.checkpoint_io = checkpoint_io

    @property
    def checkpoint_io(self) -> CheckpointIO | None:
        """The wrapped plugin."""
        return self._checkpoint_io

    @checkpoint_io.setter
    def checkpoint_io(self, checkpoint_io: CheckpointIO) -> None:
        if not isinstance(checkpoint_io, CheckpointIO):
            raise TypeError(
                f"{type(self).__name__}(checkpoint_io=...): got {checkpoint_io!r} of type "
                f"{type(checkpoint_io).__name__}; expected a CheckpointIO instance such as TorchCheckpointIO()."
            )
        if checkpoint_io is self:
            raise ValueError(f"{type(self).__name__} cannot wrap itself.")
        self._checkpoint_io = checkpoint_io

    def _wrapped(self) -> CheckpointIO:
        if self._checkpoint_io is None:
            # A wrapper used outside a Trainer gets the default, as the Trainer would give it.
            self._checkpoint_io = TorchCheckpointIO()
        return self._checkpoint_io

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: dict[str, Any] | None = None
    ) -> None:
        """Forward to the wrapped plugin."""
        self._wrapped().save_checkpoint(checkpoint, path, storage_options=storage_options)

    @override
    def load_checkpoint(
        self, path: _PATH, map_location: _MAP_LOCATION = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Forward to the wrapped plugin."""
        return self._wrapped().load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    @override
    def remove_checkpoint(self, path: _PATH) -> None:
        """Forward to the wrapped plugin."""
        self._wrapped().remove_checkpoint(path)

    @override
    def teardown(self) -> None:
        """Forward to the wrapped plugin."""
        if self._checkpoint_io is not None:
            self._checkpoint_io.teardown()

    @property
    def _restore_after_setup(self) -> bool:
        return self._checkpoint_io is not None and self._checkpoint_io._restore_after_setup


# Lightning's name for the wrapper base.
_WrappingCheckpointIO = WrappingCheckpointIO


class AsyncCheckpointSaveError(RuntimeError):
    """A checkpoint write that ran in the background failed; raised on the next call to the plugin.

    Attributes:
        path: The checkpoint whose write failed. Saves are atomic, so that path was left unchanged.
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


_IMMUTABLE = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device, enum.Enum, type)


def _snapshot(obj: Any, memo: dict[int, Any]) -> Any:
    """A copy of ``obj`` that later in-place updates during training cannot change.

    Tensors are copied to the CPU (a tensor appearing twice is copied once, keeping the aliasing);
    dicts, lists and tuples are rebuilt with their types; other objects are deep-copied, falling back
    to the object itself when it cannot be copied (it is then pickled as it is at write time).
    """
    if isinstance(obj, _IMMUTABLE):
        return obj
    key = id(obj)
    if key in memo:
        return memo[key]
    result: Any
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach()
        result = tensor.clone() if tensor.device.type == "cpu" else tensor.to("cpu")
        if isinstance(obj, torch.nn.Parameter):
            result = torch.nn.Parameter(result, requires_grad=obj.requires_grad)
    elif isinstance(obj, dict):
        result = copy.copy(obj)  # keeps the type and attributes (OrderedDict, defaultdict, AttributeDict)
        dict.clear(result)
        for k, v in obj.items():
            dict.__setitem__(result, k, _snapshot(v, memo))
    elif isinstance(obj, list):
        result = copy.copy(obj)
        list.__setitem__(result, slice(None), [_snapshot(v, memo) for v in obj])
    elif isinstance(obj, tuple):
        items = [_snapshot(v, memo) for v in obj]
        result = type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    else:
        try:
            result = copy.deepcopy(obj)
        except Exception:  # noqa: BLE001 - not copyable: pickled as it is at write time (documented)
            result = obj
    memo[key] = result
    return result


# --------------------------------------------------------------------------------------------------
# Copy-on-write snapshots: the checkpoint is written by a forked child process
# --------------------------------------------------------------------------------------------------

_SNAPSHOT_MODES = ("auto", "fork", "copy")
# The child's report must fit in a pipe buffer (16 KiB or more everywhere) so writing it never blocks.
_RECORD_LIMIT = 16 * 1024
_FORK_WARNING = r".*use of fork\(\) may lead to deadlocks in the child"


def _fork_available() -> bool:
    return hasattr(os, "fork") and hasattr(os, "waitpid")


def _fork_by_default() -> bool:
    # macOS: forking a process that has used system frameworks (Accelerate, Objective-C) is unsafe; CPython's
    # multiprocessing stopped forking there for that reason. Other POSIX systems fork by default.
    return _fork_available() and sys.platform != "darwin"


def _fork_blocker(obj: Any) -> str | None:
    """Why ``obj`` cannot be written from a forked child, or None when it can (only CPU tensors inside).

    Containers (dict, list, tuple, set) are walked; other objects are opaque (pickled as they are). A tensor on
    an accelerator, or a tensor subclass (DTensor, ...) whose pickling may need the device or a process group,
    is written through the copy snapshot instead: CUDA cannot be used in a forked child. So is a tensor in shared
    memory, which a fork does not copy on write, and one in CUDA-pinned host memory.
    """
    cuda_initialized = torch.cuda.is_initialized()  # pinned memory needs a CUDA context; do not create one
    stack = [obj]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if isinstance(item, _IMMUTABLE):
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            if type(item) is not torch.Tensor and not isinstance(item, torch.nn.Parameter):
                return f"a {type(item).__name__} (tensor subclass)"
            if item.device.type not in ("cpu", "meta"):
                return f"a tensor on {item.device}"
            if item.device.type == "cpu" and cuda_initialized and item.is_pinned():
                # page-locked host memory belongs to the CUDA driver, which may keep it out of a forked child
                return "a tensor in pinned (page-locked) memory"
            if item.device.type == "cpu" and item.untyped_storage().is_shared():
                # shared memory (share_memory_(), a shared file mapping) is not copied on write: the training
                # process's in-place updates after the fork would reach the writer
                return "a tensor in shared memory"
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return None


def _flush_std_streams() -> None:
    # Buffered output not yet written would otherwise be written twice if the child ever flushed it.
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # noqa: BLE001, S110 - a closed or odd stream must not stop the save
            pass


def _error_record(error: BaseException) -> bytes:
    """What the child reports about its failure: the exception pickled, or its type, text and traceback."""
    name = f"{type(error).__module__}.{type(error).__qualname__}"
    text = str(error)[:4000]
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))[-6000:]
    try:
        payload: bytes | None = pickle.dumps(error)
        if payload is not None and len(payload) > _RECORD_LIMIT // 2:
            payload = None
    except Exception:  # noqa: BLE001 - an exception that cannot be pickled is described by its text
        payload = None
    record = pickle.dumps(("error", name, text, trace, payload))
    if len(record) > _RECORD_LIMIT:
        record = pickle.dumps(("error", name, text[:1000], trace[-2000:], None))
    return record


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _writer_child(
    wrapped: CheckpointIO,
    checkpoint: Any,
    path: _PATH,
    storage_options: dict[str, Any] | None,
    report_fd: int,
) -> NoReturn:
    """The forked child: write the checkpoint, report on ``report_fd``, and leave with ``os._exit``.

    The child is a copy-on-write image of the training process taken at the fork, so the checkpoint it
    pickles is the one of the moment of the call whatever the parent does next. It only pickles and writes
    files: it never returns into the caller's code, never runs atexit handlers or finalizers (``os._exit``),
    and never touches the parent's sockets, loggers or process group.
    """
    code = 1
    try:
        try:
            # Signal handlers installed in Python (preemption, SLURM requeue, KeyboardInterrupt) belong to the
            # training process and must not run here. The writer ignores them: a SIGTERM/SIGUSR1/SIGINT sent to
            # the whole job makes the training process save once more, and that save waits for this write.
            # SIGKILL still ends the writer; the atomic write then leaves the previous file in place.
            for signum in signal.valid_signals():
                try:
                    if callable(signal.getsignal(signum)):
                        signal.signal(signum, signal.SIG_IGN)
                except (OSError, ValueError, TypeError):
                    pass
            gc.disable()  # no finalizers of the parent's objects, and no gc writes to shared pages
            # Like torch's DataLoader workers: the parent's OpenMP pool does not exist in a forked child.
            torch.set_num_threads(1)
            # Another thread may have held the stream locks at the fork; use fresh stream objects.
            for fd, name in ((1, "stdout"), (2, "stderr")):
                try:
                    stream = open(fd, "w", closefd=False, buffering=1)  # noqa: SIM115 - lives until os._exit
                except OSError:
                    continue
                setattr(sys, name, stream)
            wrapped.save_checkpoint(checkpoint, path, storage_options)
            times = os.times()
            record = pickle.dumps(("ok", times.user + times.system))  # the write's CPU time, for diagnostics
            code = 0
        except BaseException as error:  # noqa: BLE001 - every failure is reported to the parent
            record = _error_record(error)
        _write_all(report_fd, record)
    except BaseException:  # noqa: BLE001 - nothing may escape into the parent's code path
        code = code or 1
    finally:
        os._exit(code)


def _read_report(fd: int) -> bytes:
    """Everything the child wrote; never blocks (other forked processes may still hold the write end)."""
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _describe_status(status: int | None) -> str:
    if status is None:
        return "its exit status was collected elsewhere (SIGCHLD ignored?)"
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        hint = " (the out-of-memory killer?)" if signum == signal.SIGKILL else ""
        return f"it was killed by {name}{hint}"
    return f"it exited with code {os.WEXITSTATUS(status) if os.WIFEXITED(status) else status}"


def _reap_writer(pid: int, report_fd: int) -> float | None:
    """Wait for the writer child (on the plugin's background thread) and raise what it reported.

    Returns the CPU time (user + system) the child spent, when it succeeded.
    """
    try:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:  # reaped by someone else (SIGCHLD set to SIG_IGN): the report decides
            status = None
        data = _read_report(report_fd)
    finally:
        os.close(report_fd)
    record: Any = None
    try:
        record = pickle.loads(data) if data else None
    except Exception:  # noqa: BLE001 - a truncated report counts as no report
        record = None
    succeeded = status is None or (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
    if isinstance(record, tuple) and record[:1] == ("ok",) and succeeded:
        return float(record[1]) if len(record) > 1 else None
    if isinstance(record, tuple) and len(record) == 5 and record[0] == "error":
        _, name, text, trace, payload = record
        error: BaseException | None = None
        if payload is not None:
            try:
                loaded = pickle.loads(payload)
                error = loaded if isinstance(loaded, BaseException) else None
            except Exception:  # noqa: BLE001 - e.g. the exception type cannot be imported here
                error = None
        if error is None:
            error = RuntimeError(f"{name}: {text}")
        add_note = getattr(error, "add_note", None)  # Python 3.11+ (fulmen supports 3.10)
        if add_note is not None:
            add_note(f"Raised in the checkpoint writer process (pid {pid}):\n{trace.rstrip()}")
        raise error
    raise RuntimeError(
        f"the checkpoint writer process (pid {pid}) ended without reporting a result: {_describe_status(status)}"
    )


class AsyncCheckpointIO(WrappingCheckpointIO):
    """Writes checkpoints in the background so training continues during the write.

    Two ways to take the snapshot that the background write serializes (``snapshot``):

    * ``"fork"``: ``save_checkpoint`` forks the process (as Redis' ``BGSAVE`` does). The child is an instant
      copy-on-write image of the training process: it pickles the checkpoint as it was at the call, writes it
      with the wrapped plugin (atomic and durable with :class:`TorchCheckpointIO`) and exits; the training
      process returns at once and its later in-place updates (optimizer steps) cannot reach the child's
      pages. The call costs the fork (copying page tables: milliseconds per GiB), not a copy of the tensors.
      The price is memory: every page the training process modifies while the child writes is duplicated,
      so peak memory can grow by up to the size of the state updated during the write (at most the
      checkpointed tensors plus whatever else the loop touches). Needs ``os.fork`` and every tensor of the
      checkpoint on the CPU (a forked child cannot use CUDA). The wrapped plugin's ``save_checkpoint`` runs in
      the child: side effects on Python objects stay there.
    * ``"copy"``: ``save_checkpoint`` copies every tensor to the CPU (so optimizer steps that update
      parameters in place cannot race with the write) and hands the copy to a background thread. Works
      everywhere, with any tensors; the call costs a memory copy of the checkpoint.
    * ``"auto"`` (default): ``"fork"`` where it is safe -- a POSIX system other than macOS, a local target path,
      and only plain CPU tensors in the checkpoint (dicts, lists and tuples are looked into) -- else ``"copy"``.
      Decided at every save, so a checkpoint holding CUDA tensors falls back to the copy.

    One write is in flight at a time: the next save, a load or a remove first waits for the previous
    write. A write that failed is reported, as :class:`AsyncCheckpointSaveError`, on the next call or at
    :meth:`teardown`, which also waits for the last write. Atomicity is the wrapped plugin's: with the
    default :class:`TorchCheckpointIO`, a failed or killed write leaves the previous file intact.

    Args:
        checkpoint_io: The plugin that does the writing. ``None`` lets the Trainer set it, or
            :class:`TorchCheckpointIO` on first use.
        snapshot: ``"auto"``, ``"fork"`` or ``"copy"`` (see above).

    Raises:
        TypeError: If ``checkpoint_io`` is not a ``CheckpointIO``.
        ValueError: If ``snapshot`` is not one of the three values, or is ``"fork"`` on a platform without
            ``os.fork``.
    """

    def __init__(self, checkpoint_io: CheckpointIO | None = None, snapshot: str = "auto") -> None:
        super().__init__(checkpoint_io)
        if not isinstance(snapshot, str) or snapshot not in _SNAPSHOT_MODES:
            raise ValueError(
                f"AsyncCheckpointIO(snapshot=...): got {snapshot!r}; expected one of {', '.join(map(repr, _SNAPSHOT_MODES))}. "
                "Fix: use 'auto' (fork where safe, else copy), 'fork' (copy-on-write child process) or 'copy' "
                "(copy the tensors, write on a thread)."
            )
        if snapshot == "fork" and not _fork_available():
            raise ValueError(
                f"AsyncCheckpointIO(snapshot='fork'): this platform ({sys.platform}) has no os.fork, so checkpoints "
                "cannot be written from a copy-on-write child process. Fix: use snapshot='auto' or 'copy'."
            )
        self.snapshot = snapshot
        self._lock = threading.Lock()  # guards _pending
        self._save_lock = threading.Lock()  # one save at a time, even when called from several threads
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: tuple[str, concurrent.futures.Future[Any]] | None = None
        self._writer_pid: int | None = None  # the forked writer in flight, if any (for tests and diagnostics)
        self._last_writer_cpu_s: float | None = None  # CPU time of the last forked writer (benchmarks)

    def _wait_for_pending(self) -> None:
        """Block until the in-flight write (if any) finishes; raise if it failed."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        path, future = pending
        error = future.exception()
        self._writer_pid = None
        if error is None:
            result = future.result()
            self._last_writer_cpu_s = result if isinstance(result, float) else None
        else:
            raise AsyncCheckpointSaveError(
                f"The background save of checkpoint {path!r} failed with {type(error).__name__}: {error}. "
                "The file at that path was not replaced, so it still holds its previous checkpoint, if any. "
                "Fix the cause above (disk space, permissions, a value that cannot be pickled) and save again.",
                path=path,
            ) from error

    def _use_fork(self, checkpoint: Mapping[str, Any], path: _PATH, display: str) -> bool:
        if self.snapshot == "copy":
            return False
        if self.snapshot == "auto":
            return (
                _fork_by_default()
                and cloud_io._is_local_file_protocol(path)
                and _fork_blocker(checkpoint) is None
            )
        if display.split("::")[0].split("://")[0] == "memory":
            raise ValueError(
                f"AsyncCheckpointIO(snapshot='fork') cannot save to {display!r}: a memory:// file written by the "
                "forked writer process would exist only in that process. Fix: use snapshot='auto' or 'copy'."
            )
        blocker = _fork_blocker(checkpoint)
        if blocker is not None:
            raise ValueError(
                f"AsyncCheckpointIO(snapshot='fork') cannot save checkpoint {display!r}: it holds {blocker}, which a "
                "forked writer cannot snapshot (a forked child cannot use CUDA or other accelerators, tensor "
                "subclasses may need them to pickle, and shared or pinned memory is not copied on write). Fix: use "
                "snapshot='auto' (falls back to copying such checkpoints) or 'copy'."
            )
        return True

    def _fork_writer(
        self,
        wrapped: CheckpointIO,
        checkpoint: dict[str, Any],
        path: _PATH,
        storage_options: dict[str, Any] | None,
    ) -> tuple[int, int]:
        read_fd, write_fd = os.pipe()
        _flush_std_streams()
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns on fork in a multi-threaded process; the child only pickles and writes files.
                warnings.filterwarnings("ignore", message=_FORK_WARNING, category=DeprecationWarning)
                pid = os.fork()
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        if pid == 0:  # pragma: no cover - the child (coverage is not collected there)
            os.close(read_fd)
            _writer_child(wrapped, checkpoint, path, storage_options, write_fd)
        os.close(write_fd)
        return pid, read_fd

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: dict[str, Any] | None = None
    ) -> None:
        """Snapshot ``checkpoint`` (fork or copy) and write it in the background; returns before the write finishes.

        Raises:
            AsyncCheckpointSaveError: If the previous background write failed (this save is then not
                started).
            TypeError: If ``checkpoint`` is not a dict or ``path`` is not a path.
            ValueError: With ``snapshot='fork'``, if the checkpoint holds non-CPU tensors or ``path`` is
                ``memory://``.
            OSError: With ``snapshot='fork'``, if the fork fails (e.g. ``ENOMEM`` under strict overcommit);
                ``'auto'`` then falls back to the copy.
        """
        _check_checkpoint(checkpoint, path)
        display = cloud_io._check_path(path)
        with self._save_lock:
            self._wait_for_pending()
            wrapped = self._wrapped()
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="fulmen-async-checkpoint"
                )
            future: concurrent.futures.Future[Any] | None = None
            if self._use_fork(checkpoint, path, display):
                try:
                    pid, report_fd = self._fork_writer(wrapped, checkpoint, path, storage_options)
                except OSError as err:
                    if self.snapshot == "fork":
                        raise OSError(
                            err.errno,
                            f"AsyncCheckpointIO(snapshot='fork') could not fork a writer for {display!r}: {err}. "
                            "Fix: free memory, allow overcommit (vm.overcommit_memory), or use snapshot='auto' or "
                            "'copy'.",
                        ) from err
                    warnings.warn(
                        f"AsyncCheckpointIO: fork failed ({err}); copying the checkpoint instead.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                else:
                    self._writer_pid = pid
                    future = self._executor.submit(_reap_writer, pid, report_fd)
            if future is None:
                snapshot = _snapshot(checkpoint, {})
                future = self._executor.submit(wrapped.save_checkpoint, snapshot, path, storage_options)
            with self._lock:
                self._pending = (display, future)

    @override
    def load_checkpoint(
        self, path: _PATH, map_location: _MAP_LOCATION = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Wait for the in-flight write, then load through the wrapped plugin."""
        self._wait_for_pending()
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    @override
    def remove_checkpoint(self, path: _PATH) -> None:
        """Wait for the in-flight write (it may target ``path``), then remove through the wrapped plugin."""
        self._wait_for_pending()
        super().remove_checkpoint(path)

    @override
    def teardown(self) -> None:
        """Wait for the last write (and its writer process), stop the background thread and tear down the
        wrapped plugin.

        Raises:
            AsyncCheckpointSaveError: If the last background write failed.
        """
        try:
            self._wait_for_pending()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            super().teardown()

    def __getstate__(self) -> dict[str, Any]:
        # Threads and locks cannot be pickled (spawn-based launchers pickle the strategy).
        self._wait_for_pending()
        state = self.__dict__.copy()
        state.update(_lock=None, _save_lock=None, _executor=None, _pending=None, _writer_pid=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("snapshot", "auto")
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
