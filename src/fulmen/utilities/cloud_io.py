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

The code lives in three modules, each importable on its own; every name is importable from here as before:

* :mod:`fulmen.utilities.filesystem`: which fsspec filesystem serves a path (:func:`get_filesystem`).
* :mod:`fulmen.utilities.atomic_write`: :func:`atomic_save`.
* :mod:`fulmen.utilities.safe_loading`: :func:`load`, :func:`verify_checkpoint`, the allowlist
  (:func:`add_safe_globals`, :func:`get_safe_globals`) and the load errors.
"""

from __future__ import annotations

from fsspec.core import url_to_fs  # noqa: F401 - the name tests and callers know from here

from fulmen.utilities.atomic_write import (  # noqa: F401 - re-exported (private names: used across fulmen)
    _atomic_write,
    _torch_save,
    atomic_save,
)
from fulmen.utilities.filesystem import (  # noqa: F401
    _PATH,
    _check_path,
    _check_storage_options,
    _is_local_file_protocol,
    _protocol,
    _resolve,
    get_filesystem,
)
from fulmen.utilities.safe_loading import (  # noqa: F401
    _MAP_LOCATION,
    _SAFE_GLOBALS,
    CheckpointLoadError,
    CheckpointNotFoundError,
    UnsafeCheckpointError,
    _check_is_file,
    _check_weights_only,
    add_safe_globals,
    get_safe_globals,
    load,
    verify_checkpoint,
)

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


# Lightning-compatible private aliases (``lightning.fabric.utilities.cloud_io``).
_load = load
_atomic_save = atomic_save
