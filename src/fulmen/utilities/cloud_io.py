"""Filesystem-aware, crash-safe and safe-by-default checkpoint file IO.

This module owns three guarantees that the rest of fulmen relies on:

* **Atomic saves** (:func:`atomic_save`). A reader of ``path`` sees either the complete previous file
  or the complete new one, never a partial write, even if the process is killed mid-save. What
  that rests on depends on the filesystem:

  - *Local paths* (plain paths, ``file://``): the object is written to a uniquely named hidden
    temporary file in the same directory, flushed and ``fsync``-ed, renamed over ``path`` with
    ``os.replace`` (atomic on POSIX and Windows within one filesystem), then the directory is
    ``fsync``-ed so the rename itself survives a power loss. A ``SIGKILL`` mid-write leaves the old
    file intact and, at worst, an orphaned ``.<name>.<host>-<hash>.<pid>.<random>.tmp`` file next to
    it, which the next save into that directory removes once no process with that pid runs on this
    host (temp files of live writers, of other hosts and every other file are left alone).
  - *Object stores* (``s3://``, ``gs://``, ``az://``, ...) and ``memory://``: the object is serialized
    into memory and uploaded with a single put; these stores never expose a partially uploaded
    object. This needs memory for one serialized copy of the checkpoint.
  - *Other fsspec filesystems* (``sftp://``, ``hdfs://``, ...): the object is streamed to a temporary
    name in the same directory and then moved over ``path`` with ``fs.mv``. This is atomic where
    the filesystem's move is a rename (SFTP, HDFS); where ``mv`` is implemented as copy-then-delete
    a crash during the move can leave a partial ``path``.

* **Safe loading** (:func:`load`). ``torch.load(weights_only=True)`` is the default: only tensors,
  primitive containers and an allowlist of types can be created, so a malicious file cannot run
  code. fulmen's own data types (:class:`~fulmen.utilities.parsing.AttributeDict`) and a few
  plain-data standard-library types (``argparse.Namespace``, ``pathlib`` paths, common in saved
  hyperparameters) are allowlisted; other fulmen modules and users register more with
  :func:`add_safe_globals` (re-exported as ``fulmen.checkpoint.add_safe_globals``). The allowlist is
  applied only for the duration of fulmen's own loads; torch's global allowlist is left as it was.
  Unlike Lightning, ``http(s)://`` URLs get the same safe default.

* **Clear errors.** A file that is missing, empty, a directory, truncated or corrupted raises
  :class:`CheckpointLoadError` (or :class:`CheckpointNotFoundError`) naming the file, what is wrong
  and what to do; a file that safe loading refuses raises :class:`UnsafeCheckpointError` naming the
  offending globals and how to opt in for a trusted file. Corruption is diagnosed by checking the
  checkpoint's zip structure and CRC-32 checksums, so a refusal is never mislabelled as damage.
"""

from __future__ import annotations

import collections
import contextlib
import copyreg
import io
import os
import pickle
import re
import struct
import sys
import threading
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import fsspec
import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from fulmen.utilities.parsing import AttributeDict

__all__ = [
    "CheckpointLoadError",
    "CheckpointNotFoundError",
    "UnsafeCheckpointError",
    "add_safe_globals",
    "atomic_save",
    "get_filesystem",
    "get_safe_globals",
    "load",
    "verify_checkpoint",
]

_PATH = str | os.PathLike[str]
_MAP_LOCATION = str | torch.device | Callable[..., Any] | dict[str, str] | None
_SafeGlobal = Callable[..., Any] | tuple[Callable[..., Any], str]

# Protocols whose single put is atomic (the object appears whole or not at all).
_SINGLE_PUT_PROTOCOLS = frozenset(
    {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci", "oss", "r2", "memory"}
)
_ZIP_MAGIC = b"PK\x03\x04"
_WEIGHTS_ONLY_FAILED = "Weights only load failed"
_CHUNK = 1 << 24


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class CheckpointLoadError(RuntimeError):
    """A checkpoint file exists (or was expected) but cannot be read as a checkpoint.

    Attributes:
        path: The file that failed to load.
        reason: What is wrong with it, in a few words.
    """

    def __init__(self, message: str, *, path: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


class CheckpointNotFoundError(FileNotFoundError, CheckpointLoadError):
    """The checkpoint path does not exist. Both a ``FileNotFoundError`` and a ``CheckpointLoadError``."""

    def __init__(self, message: str, *, path: str = "") -> None:
        FileNotFoundError.__init__(self, message)
        self.path = path
        self.reason = "not found"


class UnsafeCheckpointError(pickle.UnpicklingError):
    """Safe loading (``weights_only=True``) refused a checkpoint that references non-allowlisted globals.

    Attributes:
        path: The file that was refused.
        globals: The fully qualified names of the offending globals (may be empty if torch refused
            the file for another reason, such as an unsupported pickle opcode).
    """

    def __init__(self, message: str, *, path: str = "", globals: list[str] | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.globals = list(globals or [])


# --------------------------------------------------------------------------------------------------
# Filesystems
# --------------------------------------------------------------------------------------------------


def _check_path(path: object, what: str = "path") -> str:
    if isinstance(path, (str, os.PathLike)):
        text = os.fspath(path)
        if isinstance(text, str) and text:
            return text
    raise TypeError(
        f"Checkpoint {what}: got {path!r} of type {type(path).__name__}; expected a non-empty str or "
        "os.PathLike (a local path or an fsspec URL such as 's3://bucket/run/last.ckpt'). "
        "Fix: pass the file's path as a string or pathlib.Path."
    )


def _check_storage_options(storage_options: object) -> dict[str, Any]:
    if storage_options is None:
        return {}
    if not isinstance(storage_options, dict):
        raise TypeError(
            f"storage_options: got {storage_options!r} of type {type(storage_options).__name__}; expected a "
            "dict of keyword arguments for the fsspec filesystem (e.g. {'anon': False}) or None."
        )
    return storage_options


def get_filesystem(path: _PATH, **storage_options: Any) -> fsspec.AbstractFileSystem:
    """Return the fsspec filesystem that serves ``path`` (the local filesystem for plain paths).

    Args:
        path: A local path or an fsspec URL (``file://``, ``memory://``, ``s3://``, ...).
        **storage_options: Keyword arguments for the filesystem's constructor (credentials, endpoint).

    Returns:
        The filesystem instance.

    Raises:
        TypeError: If ``path`` is not a string or path-like object.
        ValueError: If fsspec knows no filesystem for the URL's protocol.
        ImportError: If the protocol needs a package that is not installed (e.g. ``s3fs``).
    """
    return _resolve(path, storage_options)[0]


def _resolve(
    path: _PATH, storage_options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path as that filesystem names it)``."""
    text = _check_path(path)
    options = _check_storage_options(storage_options)
    try:
        fs, fs_path = url_to_fs(text, **options)
    except ValueError as err:
        if "Protocol not known" not in str(err):
            raise
        protocol = fsspec.utils.get_protocol(text)
        raise ValueError(
            f"Checkpoint path {text!r} uses the protocol {protocol!r}, which fsspec does not know. Expected a "
            "local path or a URL whose protocol fsspec supports (file://, memory://, s3://, gs://, ...). "
            "Fix: check the spelling, or install and register the fsspec implementation for it."
        ) from err
    except ImportError as err:
        raise ImportError(f"Cannot open checkpoint path {text!r}: {err}") from err
    return fs, fs_path


def _is_local_file_protocol(path: _PATH) -> bool:
    """Whether ``path`` is on the local filesystem (a plain path or a ``file://``/``local://`` URL)."""
    return fsspec.utils.get_protocol(os.fspath(path)) in ("file", "local")


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    protocol = fs.protocol
    return protocol if isinstance(protocol, str) else protocol[0]


# --------------------------------------------------------------------------------------------------
# Atomic saving
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
        err.add_note(
            f"While saving a checkpoint to {os.fspath(path)!r}; the previous file there, if any, is unchanged."
        )
        raise


# --------------------------------------------------------------------------------------------------
# Safe-loading allowlist
# --------------------------------------------------------------------------------------------------


def _qualified_name(item: _SafeGlobal) -> str:
    if isinstance(item, tuple):
        return item[1]
    return f"{item.__module__}.{item.__qualname__}"


def _default_safe_globals() -> list[_SafeGlobal]:
    import argparse
    import pathlib

    # Plain-data types: unpickling them sets attributes or builds a path, nothing more.
    return [
        AttributeDict,
        argparse.Namespace,
        pathlib.PosixPath,
        pathlib.WindowsPath,
        pathlib.PurePosixPath,
        pathlib.PureWindowsPath,
    ]


_registry_lock = threading.Lock()
_SAFE_GLOBALS: dict[str, _SafeGlobal] = {_qualified_name(g): g for g in _default_safe_globals()}


def add_safe_globals(safe_globals: Iterable[_SafeGlobal]) -> None:
    """Allowlist classes or functions for fulmen's safe (``weights_only=True``) checkpoint loading.

    Register only plain-data types whose unpickling cannot have side effects: dataclasses, Enums,
    config objects. The allowlist applies to fulmen's loads (Trainer, ``load_from_checkpoint``,
    ``Fabric.load``, :class:`~fulmen.checkpoint.TorchCheckpointIO`); torch's own global allowlist is
    not modified.

    Args:
        safe_globals: Classes/functions, or ``(obj, "module.QualName")`` tuples when the name in the
            file differs from the object's current location (e.g. after a rename).

    Raises:
        TypeError: If ``safe_globals`` is a single class instead of a list, or an item is neither a
            class/function nor an ``(obj, str)`` tuple.

    Example::

        @dataclasses.dataclass
        class OptimConfig:
            lr: float = 1e-3

        fulmen.checkpoint.add_safe_globals([OptimConfig])
    """
    if isinstance(safe_globals, (type, str)) or callable(safe_globals):
        raise TypeError(
            f"add_safe_globals: got {safe_globals!r}; expected a list of classes or functions. "
            f"Fix: wrap it in a list, e.g. add_safe_globals([{getattr(safe_globals, '__name__', 'MyType')}])."
        )
    items = list(safe_globals)
    for item in items:
        if isinstance(item, tuple):
            valid = len(item) == 2 and callable(item[0]) and isinstance(item[1], str) and bool(item[1])
        else:
            valid = callable(item) and hasattr(item, "__module__") and hasattr(item, "__qualname__")
        if not valid:
            raise TypeError(
                f"add_safe_globals: got the item {item!r} of type {type(item).__name__}; expected a class, a "
                "function, or an (obj, 'module.QualName') tuple. Fix: pass the class itself, not an instance."
            )
    with _registry_lock:
        for item in items:
            _SAFE_GLOBALS[_qualified_name(item)] = item


def get_safe_globals() -> list[_SafeGlobal]:
    """Return everything on fulmen's safe-loading allowlist (built-in entries and registered ones)."""
    with _registry_lock:
        return list(_SAFE_GLOBALS.values())


_active_lock = threading.Lock()
_active_count = 0
_active_context: Any = None


class _FallbackSafeGlobals:
    """``torch.serialization.safe_globals`` for torch < 2.5, which only has the global list."""

    def __init__(self, items: list[_SafeGlobal]) -> None:
        self.items = items
        self.previous: list[_SafeGlobal] = []

    def __enter__(self) -> None:
        self.previous = torch.serialization.get_safe_globals()
        torch.serialization.add_safe_globals(self.items)

    def __exit__(self, *exc: object) -> None:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(self.previous)


@contextlib.contextmanager
def _safe_globals_active() -> Iterator[None]:
    """Make fulmen's allowlist visible to ``torch.load`` while any fulmen load runs.

    Reference-counted so that concurrent loads in several threads share one activation (torch's
    context manager edits a process-wide set and would otherwise remove entries another thread still
    needs). Entries the user already added to torch's global list are left out, so leaving the
    context never removes them.
    """
    global _active_count, _active_context
    with _active_lock:
        if _active_count == 0:
            already = set(torch.serialization.get_safe_globals())
            items = [g for g in get_safe_globals() if g not in already]
            context_type = getattr(torch.serialization, "safe_globals", _FallbackSafeGlobals)
            context = context_type(items)
            context.__enter__()
            _active_context = context
        _active_count += 1
    try:
        yield
    finally:
        with _active_lock:
            _active_count -= 1
            if _active_count == 0:
                _active_context.__exit__(None, None, None)
                _active_context = None


# --------------------------------------------------------------------------------------------------
# Integrity checks
# --------------------------------------------------------------------------------------------------


def _check_zip(f: IO[bytes], size: int, only: Callable[[str], bool] | None = None) -> tuple[str, str]:
    """Check a torch checkpoint's structure and CRC-32 checksums without unpickling anything.

    Returns:
        ``("ok", "")``, ``("damaged", what is wrong)`` or ``("legacy", "")`` for the pre-1.6 non-zip
        format, which carries no checksums.
    """
    if size == 0:
        return "damaged", "it is empty (0 bytes)"
    start = f.tell()
    head = f.read(4)
    f.seek(start)
    if head != _ZIP_MAGIC:
        if head[:1] == b"\x80":  # a pickle protocol header: torch's legacy (pre-1.6) format
            return "legacy", ""
        return "damaged", (
            f"it does not start like a torch checkpoint (first bytes {head!r}; a torch.save file is a zip "
            f"archive starting with {_ZIP_MAGIC!r})"
        )
    try:
        archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, struct.error) as err:
        return "damaged", (
            f"its zip directory is missing or unreadable ({err}), which means the file ends early "
            f"({size} bytes): a write or a copy was cut short"
        )
    with archive:
        infos = archive.infolist()
        if not any(info.filename.endswith("data.pkl") for info in infos):
            return (
                "damaged",
                "its zip archive has no data.pkl record, so it is not a complete torch.save file",
            )
        for info in infos:
            if only is not None and not only(info.filename):
                continue
            try:
                with archive.open(info) as member:
                    while member.read(_CHUNK):
                        pass
            except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error, struct.error) as err:
                if info.CRC == 0 and "CRC" in str(err):  # saved with torch's compute_crc32 disabled
                    continue
                return "damaged", f"the record {info.filename!r} is damaged ({err})"
    return "ok", ""


@contextlib.contextmanager
def _open_for_check(source: Any, fs: fsspec.AbstractFileSystem | None, fs_path: str) -> Iterator[IO[bytes]]:
    if fs is None:  # a caller-provided file object: rewind to where the caller left it
        start = source.tell()
        try:
            yield source
        finally:
            source.seek(start)
    else:
        with fs.open(fs_path, "rb") as f:
            yield f


def _size_of(source: Any, fs: fsspec.AbstractFileSystem | None, fs_path: str) -> int:
    if fs is not None:
        return int(fs.size(fs_path))
    start = source.tell()
    end = source.seek(0, os.SEEK_END)
    source.seek(start)
    return int(end - start)


def verify_checkpoint(path: _PATH, storage_options: dict[str, Any] | None = None) -> None:
    """Check that a checkpoint file is complete and undamaged, without unpickling it.

    Reads the whole file and checks its zip structure and every record's CRC-32 checksum, so it also
    catches damage that ``torch.load`` would not notice (a flipped byte inside tensor data loads
    silently with wrong values). Use it to pick the newest intact checkpoint after a crash. Files in
    torch's legacy (pre-1.6, non-zip) format carry no checksums and pass if they start correctly.

    Args:
        path: A local path or an fsspec URL.
        storage_options: Keyword arguments for the fsspec filesystem.

    Raises:
        CheckpointNotFoundError: If ``path`` does not exist.
        CheckpointLoadError: If ``path`` is a directory, empty, truncated or corrupted.
    """
    fs, fs_path = _resolve(path, storage_options)
    display = os.fspath(path)
    _check_is_file(fs, fs_path, display)
    with _open_for_check(None, fs, fs_path) as f:
        status, problem = _check_zip(f, _size_of(None, fs, fs_path))
    if status == "damaged":
        raise _damaged_error(display, problem, None, fs, fs_path)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _check_weights_only(weights_only: object) -> bool:
    if weights_only is None:
        return True
    if isinstance(weights_only, bool):
        return weights_only
    raise TypeError(
        f"weights_only: got {weights_only!r} of type {type(weights_only).__name__}; expected True, False or "
        "None (None means True: safe loading). Fix: pass a bool, e.g. weights_only=False for a trusted file."
    )


def _other_checkpoints(fs: fsspec.AbstractFileSystem | None, fs_path: str, limit: int = 5) -> list[str]:
    """Up to ``limit`` sibling checkpoint files, newest first, to suggest as a fallback."""
    if not isinstance(fs, LocalFileSystem):
        return []
    directory, name = os.path.split(fs_path)
    suffix = os.path.splitext(name)[1] or ".ckpt"
    try:
        candidates = [
            entry
            for entry in os.scandir(directory)
            if entry.name != name
            and not entry.name.startswith(".")
            and entry.name.endswith(suffix)
            and entry.is_file()
        ]
        candidates.sort(key=lambda entry: entry.stat().st_mtime, reverse=True)
    except OSError:
        return []
    return [entry.name for entry in candidates[:limit]]


def _torch_reason(err: BaseException) -> str:
    text = str(err)
    match = re.search(r"WeightsUnpickler error:\s*(.*)", text, re.DOTALL)
    if match:
        text = match.group(1)
    # torch appends long generic advice after the specific reason; keep the specific part.
    for marker in (" This is an internal miniz error", "Check the documentation of torch.load"):
        text = text.split(marker, 1)[0]
    text = " ".join(text.split()) or "no details"
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(err).__name__}: {text}"


def _damaged_error(
    display: str,
    problem: str,
    err: BaseException | None,
    fs: fsspec.AbstractFileSystem | None,
    fs_path: str,
) -> CheckpointLoadError:
    torch_part = f" (torch reported {_torch_reason(err)})" if err is not None else ""
    others = _other_checkpoints(fs, fs_path)
    hint = f" Checkpoints next to it, newest first: {', '.join(others)}." if others else ""
    return CheckpointLoadError(
        f"Cannot load checkpoint {display!r}: the file is truncated or corrupted: {problem}{torch_part}. "
        "This happens when a save or a copy was interrupted, or the storage is damaged. Fix: load an "
        "earlier checkpoint instead, e.g. the `last` checkpoint or a previous top-k checkpoint from the "
        f"same run, or copy the file again if it was transferred.{hint}",
        path=display,
        reason=f"truncated or corrupted: {problem}",
    )


def _check_is_file(fs: fsspec.AbstractFileSystem, fs_path: str, display: str) -> None:
    if not fs.exists(fs_path):
        parent = fs._parent(fs_path)
        where = "" if fs.exists(parent) else f" (its directory {parent!r} does not exist either)"
        raise CheckpointNotFoundError(
            f"Checkpoint file not found: {display!r}{where}. Fix: check the path; ckpt_path must point to a "
            "file written by Trainer.save_checkpoint, ModelCheckpoint or Fabric.save.",
            path=display,
        )
    if fs.isdir(fs_path):
        raise CheckpointLoadError(
            f"Cannot load checkpoint {display!r}: it is a directory, expected a single checkpoint file. If it "
            "holds a sharded (distributed) checkpoint, load it through the strategy that wrote it; otherwise "
            "pass the path of a .ckpt file inside it.",
            path=display,
            reason="is a directory",
        )


def _unsafe_globals(
    source: Any, fs: fsspec.AbstractFileSystem | None, fs_path: str, err: BaseException
) -> list[str]:
    names: list[str] = []
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if finder is not None:
        with (
            contextlib.suppress(Exception),
            _safe_globals_active(),
            _open_for_check(source, fs, fs_path) as f,
        ):
            names = sorted(finder(f))
    if not names:
        names = list(dict.fromkeys(re.findall(r"GLOBAL ([\w.]+)", str(err))))
    return names


def _unsafe_error(display: str, names: list[str], err: BaseException) -> UnsafeCheckpointError:
    if names:
        listed = ", ".join(names)
        what = (
            f"it references {listed}, which {'is' if len(names) == 1 else 'are'} not on the safe-loading "
            "allowlist. Unpickling a global like that can run arbitrary code"
        )
    else:
        what = (
            f"it contains content that safe loading does not support ({_torch_reason(err)}). Loading it with "
            "full unpickling can run arbitrary code"
        )
    return UnsafeCheckpointError(
        f"Refusing to load checkpoint {display!r} with weights_only=True (safe loading): {what}, so a file "
        "from an untrusted source could execute code on this machine.\n"
        "If you trust this file (you or your team wrote it), opt in explicitly with weights_only=False: "
        "`trainer.fit(model, ckpt_path=..., weights_only=False)` (likewise trainer.validate/test/predict), "
        "`MyModel.load_from_checkpoint(path, weights_only=False)` or "
        "`fabric.load(path, state, weights_only=False)`.\n"
        "If these are your own plain-data types (a config dataclass, an Enum), keep safe loading and "
        "allowlist them instead: `fulmen.checkpoint.add_safe_globals([MyConfig])`.",
        path=display,
        globals=names,
    )


# Exceptions that mean "these bytes are not a valid pickle stream" for the legacy (non-zip) format,
# which has no checksums to consult.
_LEGACY_CORRUPTION = (
    EOFError,
    UnicodeDecodeError,
    struct.error,
    pickle.UnpicklingError,
    ValueError,
    OverflowError,
)


def load(
    path_or_url: _PATH | IO[bytes],
    map_location: _MAP_LOCATION = None,
    weights_only: bool | None = True,
    storage_options: dict[str, Any] | None = None,
) -> Any:
    """Load an object saved with ``torch.save`` from a local path, an fsspec URL or a file object.

    Safe by default: ``weights_only=True`` only creates tensors, primitive containers and allowlisted
    types (see :func:`add_safe_globals`), so a malicious file cannot run code.

    Args:
        path_or_url: A local path, an fsspec URL (``s3://``, ``memory://``, ...) or a binary file object.
        map_location: Where to put tensors, as for ``torch.load`` (``"cpu"``, a device, a dict or a
            callable). ``None`` keeps the devices they were saved from.
        weights_only: ``True`` (or ``None``) for safe loading; ``False`` to allow arbitrary pickled
            objects, which can run arbitrary code. Use ``False`` only for files you trust.
        storage_options: Keyword arguments for the fsspec filesystem.

    Returns:
        The loaded object.

    Raises:
        CheckpointNotFoundError: If the path does not exist (also a ``FileNotFoundError``).
        CheckpointLoadError: If the path is a directory, or the file is empty, truncated or corrupted.
        UnsafeCheckpointError: If safe loading refuses the file; the message names the offending
            globals and how to opt in with ``weights_only=False`` for a trusted file.
        TypeError: If an argument has the wrong type.
    """
    safe = _check_weights_only(weights_only)
    fs: fsspec.AbstractFileSystem | None
    if isinstance(path_or_url, (str, os.PathLike)):
        fs, fs_path = _resolve(path_or_url, storage_options)
        display = os.fspath(path_or_url)
        _check_is_file(fs, fs_path, display)
    elif hasattr(path_or_url, "read") and hasattr(path_or_url, "seek"):
        fs, fs_path, display = None, "", f"<file object {type(path_or_url).__name__}>"
    else:
        raise TypeError(
            f"Checkpoint path: got {path_or_url!r} of type {type(path_or_url).__name__}; expected a str, an "
            "os.PathLike or a seekable binary file object. Fix: pass the checkpoint's path."
        )
    source = path_or_url
    try:
        size = _size_of(source, fs, fs_path)
        if size == 0:
            raise _damaged_error(display, "it is empty (0 bytes)", None, fs, fs_path)
        with _safe_globals_active():
            if fs is None:
                return torch.load(source, map_location=map_location, weights_only=safe)
            if isinstance(fs, LocalFileSystem):
                return torch.load(fs_path, map_location=map_location, weights_only=safe)
            with fs.open(fs_path, "rb") as f:
                return torch.load(f, map_location=map_location, weights_only=safe)
    except CheckpointLoadError:
        raise
    except FileNotFoundError as err:  # removed between the existence check and the read
        raise CheckpointNotFoundError(f"Checkpoint file not found: {display!r}.", path=display) from err
    except Exception as err:
        refused = safe and isinstance(err, pickle.UnpicklingError) and _WEIGHTS_ONLY_FAILED in str(err)
        try:
            with _open_for_check(source, fs, fs_path) as f:
                # The names in a refusal come from data.pkl alone, so checking that record suffices.
                only = (lambda name: name.endswith(".pkl")) if refused else None
                status, problem = _check_zip(f, size, only)
        except Exception:  # noqa: BLE001 - the check itself failed (file vanished): report torch's error
            status, problem = "unknown", ""
        if status == "damaged":
            raise _damaged_error(display, problem, err, fs, fs_path) from err
        names = _unsafe_globals(source, fs, fs_path, err) if refused else []
        if status == "legacy" and (isinstance(err, _LEGACY_CORRUPTION) and not names):
            raise _damaged_error(display, "its pickle stream is invalid", err, fs, fs_path) from err
        if refused:
            raise _unsafe_error(display, names, err) from err
        raise


# Lightning-compatible private aliases (``lightning.fabric.utilities.cloud_io``).
_load = load
_atomic_save = atomic_save
