"""Which fsspec filesystem serves a checkpoint path, with clear errors for bad paths and unknown protocols.

Part of :mod:`fulmen.utilities.cloud_io` (whose docstring describes the guarantees); the names are importable
from there.
"""

from __future__ import annotations

import os
from typing import Any

import fsspec
from fsspec.core import url_to_fs

_PATH = str | os.PathLike[str]

# Protocols whose single put is atomic (the object appears whole or not at all).
_SINGLE_PUT_PROTOCOLS = frozenset(
    {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci", "oss", "r2", "memory"}
)


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
