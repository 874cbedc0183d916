"""Safe checkpoint loading: :func:`load`, :func:`verify_checkpoint`, the ``weights_only`` allowlist and the
load errors (the *Safe loading* and *Clear errors* guarantees in :mod:`fulmen.utilities.cloud_io`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem

from fulmen.utilities.filesystem import _PATH, _resolve
from fulmen.utilities.parsing import AttributeDict

_MAP_LOCATION = str | torch.device | Callable[..., Any] | dict[str, str] | None
_SafeGlobal = Callable[..., Any] | tuple[Callable[..., Any], str]

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
