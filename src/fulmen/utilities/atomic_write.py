"""Atomic checkpoint writes: :func:`atomic_save` (the *Atomic saves* guarantee in :mod:`fulmen.utilities.cloud_io`).

A reader of the target path sees the complete previous file or the complete new one: local files go through a
fsync-ed temporary file renamed over the target, object stores get one put, other filesystems a move.
"""

from __future__ import annotations

import collections
import contextlib
import copyreg
import io
import os
import pickle
import re
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem

from fulmen.utilities.filesystem import _PATH, _SINGLE_PUT_PROTOCOLS, _protocol, _resolve
from fulmen.utilities.parsing import AttributeDict

# --------------------------------------------------------------------------------------------------


_writer_token_cache: str | None = None


def _writer_token() -> str:
    """This machine (and PID namespace) as one dot-free name part: the host name, then a hash of it.

    The hash also covers the PID namespace (Linux), so two containers sharing a host name and a directory
    never take each other's PIDs for their own: a temp file is only ever judged by a process that can see
    its writer's PID.
    """
    global _writer_token_cache
    if _writer_token_cache is None:
        import hashlib
        import socket

        host = socket.gethostname() or "localhost"
        namespace = ""
        with contextlib.suppress(OSError):
            namespace = os.readlink("/proc/self/ns/pid")
        digest = hashlib.sha1(f"{host}\0{namespace}".encode(errors="replace")).hexdigest()[:8]
        readable = re.sub(r"[^A-Za-z0-9-]", "-", host)[:32]
        _writer_token_cache = f"{readable}-{digest}"
    return _writer_token_cache


def _temp_name(name: str) -> str:
    """``.<name>.<host>-<hash>.<pid>.<random>.tmp``: hidden, unique, short enough that a long checkpoint name
    still fits the 255-byte limit, and naming its writer so a later save can remove it once that writer is
    dead (see :func:`_remove_stale_temps`)."""
    short = name.encode("utf-8", "surrogateescape")[:150].decode("utf-8", "ignore")
    return f".{short}.{_writer_token()}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"


# the writer-token part is dot-free, so the name (which may hold dots) is whatever comes before it
_TEMP_RE = re.compile(r"\.(?P<name>.+)\.(?P<token>[A-Za-z0-9-]{1,32}-[0-9a-f]{8})\.(?P<pid>[1-9][0-9]{0,9})"
                      r"\.[0-9a-f]{12}\.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError included
        return True  # someone else's process (or unknown): treat as alive, never remove its file
    return True


def _remove_stale_temps(directory: str) -> None:
    """Remove temp files that a killed save left in ``directory``: only names of exactly this module's
    scheme, written on this host (and PID namespace) by a process that no longer exists. Another live
    process's temp file (a concurrent save) and every other file are left alone. Best effort: errors are
    ignored, the save that called this has already succeeded."""
    if os.name == "nt":
        return  # os.kill(pid, 0) would terminate the process on Windows
    token = _writer_token()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not name.endswith(".tmp") or token not in name:
            continue
        match = _TEMP_RE.fullmatch(name)
        if match is None or match["token"] != token:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)


def _fsync_dir(directory: str) -> None:
    if os.name == "nt":  # Windows cannot open directories; NTFS journals the rename itself.
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (e.g. certain network mounts) do not support it
        pass
    finally:
        os.close(fd)


_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range: Any = None  # libc's sync_file_range (Linux), looked up on the first save; False if absent


@contextlib.contextmanager
def _writeback(fd: int, interval: float = 0.02) -> Iterator[None]:
    """Start writing the file's dirty pages to disk while it is still being written.

    A checkpoint is only safe on disk after ``fsync``; done at the end, the fsync waits for the whole file.
    Linux's ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` starts writeback without waiting, so calling it
    every ``interval`` seconds from a helper thread overlaps the disk writes with serialization and leaves
    the final fsync only the tail. Elsewhere (no ``sync_file_range``) this does nothing.
    """
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                fn = ctypes.CDLL(None, use_errno=True).sync_file_range
                fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                _sync_file_range = fn
            except (OSError, AttributeError):
                pass
    if not _sync_file_range:
        yield
        return
    kick = _sync_file_range
    done = threading.Event()

    def run() -> None:
        while not done.wait(interval):
            kick(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # errors are harmless: the final fsync decides

    helper = threading.Thread(target=run, name="fulmen-checkpoint-writeback", daemon=True)
    helper.start()
    try:
        yield
    finally:
        done.set()
        helper.join()


def _atomic_write_local(target: str, write: Callable[[IO[bytes]], None]) -> None:
    target = os.path.abspath(target)
    if os.path.isdir(target):
        raise IsADirectoryError(
            f"Cannot save a checkpoint to {target!r}: it is an existing directory. "
            "Fix: pass a file path, e.g. os.path.join(dirpath, 'last.ckpt')."
        )
    directory, name = os.path.split(target)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, _temp_name(name))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            with _writeback(f.fileno()):
                write(f)
                f.flush()
            os.fsync(f.fileno())
        # Replaces a symlink at `target` with the file instead of writing through it, which is what
        # a `last.ckpt -> epoch=3.ckpt` link needs: the top-k file it points to must stay intact.
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    _remove_stale_temps(directory)


def _atomic_write_remote(
    fs: fsspec.AbstractFileSystem, target: str, write: Callable[[IO[bytes]], None]
) -> None:
    if _protocol(fs) in _SINGLE_PUT_PROTOCOLS:
        buffer = io.BytesIO()
        write(buffer)
        fs.pipe_file(target, buffer.getvalue())
        return
    parent = fs._parent(target)
    with contextlib.suppress(Exception):  # stores without real directories may refuse; the write will tell
        fs.makedirs(parent, exist_ok=True)
    name = target.rstrip("/").rsplit("/", 1)[-1]
    tmp = f"{parent.rstrip('/')}/{_temp_name(name)}"
    try:
        with fs.open(tmp, "wb") as f:
            write(f)
        fs.mv(tmp, target)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise


def _atomic_write(fs: fsspec.AbstractFileSystem, fs_path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Run ``write(file)`` so that ``fs_path`` ends up with its full output or unchanged (see module docs)."""
    if isinstance(fs, LocalFileSystem):
        _atomic_write_local(fs_path, write)
    else:
        _atomic_write_remote(fs, fs_path, write)


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


class _ProbePickler(pickle.Pickler):
    """Pickles like ``torch.save`` would, but never serializes tensor data (only structure matters)."""

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, (torch.Tensor, torch.UntypedStorage, torch.TypedStorage)):
            return "tensor"
        return None


def _picklable(obj: Any) -> bool:
    try:
        _ProbePickler(_Discard(), protocol=2).dump(obj)
    except Exception:  # noqa: BLE001 - any failure means "cannot be pickled"; we only locate it
        return False
    return True


def _find_unpicklable(obj: Any, where: str = "checkpoint", depth: int = 8) -> str | None:
    """Return the deepest ``checkpoint[...]`` location whose value cannot be pickled, if any."""
    if depth == 0 or _picklable(obj):
        return None
    children: Iterable[tuple[str, Any]] = ()
    if isinstance(obj, dict):
        children = ((f"{where}[{key!r}]", value) for key, value in obj.items())
    elif isinstance(obj, (list, tuple)):
        children = ((f"{where}[{i}]", value) for i, value in enumerate(obj))
    for child_where, child in children:
        found = _find_unpicklable(child, child_where, depth - 1)
        if found is not None:
            return found
    return f"{where} (a {type(obj).__module__}.{type(obj).__qualname__})"


def _reduce_attribute_dict(obj: AttributeDict) -> tuple[Any, ...]:
    return (AttributeDict, (dict(obj),))


class _Pickler(pickle.Pickler):
    """The pickler fulmen's saves use: plain ``pickle`` plus reducers that keep fulmen's types loadable
    with ``weights_only=True``.

    A dict subclass pickles by default as "make an empty instance, then SETITEMS", which torch's safe
    unpickler refuses for anything but ``dict``/``OrderedDict``. ``AttributeDict`` is instead written as
    ``AttributeDict({...})``, a call safe loading allows because the class is allowlisted.
    """

    # A live view over copyreg's table, so later copyreg registrations still apply.
    dispatch_table = collections.ChainMap(  # noqa: RUF012 - pickle reads this attribute by name
        {AttributeDict: _reduce_attribute_dict},
        copyreg.dispatch_table,  # type: ignore[arg-type]
    )


class _PickleModule:
    """What ``torch.save(pickle_module=...)`` needs: a module-like object with a ``Pickler``."""

    Pickler = _Pickler
    Unpickler = pickle.Unpickler
    load = staticmethod(pickle.load)


def _torch_save(obj: Any, f: IO[bytes]) -> None:
    torch.save(obj, f, pickle_module=_PickleModule)


def atomic_save(obj: Any, path: _PATH, storage_options: dict[str, Any] | None = None) -> None:
    """Serialize ``obj`` with ``torch.save`` to ``path`` atomically.

    Readers of ``path`` see the previous complete file until the new one is complete; a failure or
    a kill mid-save leaves the previous file untouched (see the module docstring for what each
    filesystem guarantees). Missing parent directories are created.

    Args:
        obj: What to save, typically a checkpoint dict.
        path: A local path or an fsspec URL.
        storage_options: Keyword arguments for the fsspec filesystem (credentials, endpoint).

    Raises:
        TypeError: If ``path`` or ``storage_options`` has the wrong type, or if part of ``obj`` cannot
            be pickled (the message names the offending entry, e.g. ``checkpoint['hyper_parameters']``).
        IsADirectoryError: If ``path`` is an existing local directory.
        OSError: If the filesystem refuses the write (permissions, disk full); the previous file is kept.
    """
    fs, fs_path = _resolve(path, storage_options)
    try:
        _atomic_write(fs, fs_path, lambda f: _torch_save(obj, f))
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        location = _find_unpicklable(obj)
        if location is None:
            raise
        raise TypeError(
            f"Cannot save a checkpoint to {os.fspath(path)!r}: {location} cannot be pickled ({err}). "
            "Nothing was written; the previous file at that path, if any, is unchanged. Fix: store plain "
            "data there (numbers, strings, tensors, dicts/lists of them) instead of live objects such as "
            "lambdas, locks, open files or generators."
        ) from err
    except Exception as err:
        add_note = getattr(err, "add_note", None)  # Python 3.11+
        if add_note is not None:
            add_note(f"While saving a checkpoint to {os.fspath(path)!r}; the previous file there, if any, is unchanged.")
        raise
