"""The directory layout shared by the CSV and TensorBoard loggers: ``save_dir/name/version_N``.

``save_dir`` may be a local path or any fsspec URL (``s3://...``, ``memory://...``). The version is
resolved lazily, on first use, to the next free ``version_N`` under ``save_dir/name``, so that
constructing a logger has no side effects. In a distributed Trainer run every rank must agree on it
(the checkpoint directory and ``trainer.log_dir`` derive from it), and a directory listing races with
rank 0 creating its version folder: so the Trainer resolves it on global rank 0 only and broadcasts it.
"""

from __future__ import annotations

import os
import re
from abc import ABC
from typing import TYPE_CHECKING, Any

from fulmen.loggers.logger import Logger
from fulmen.loggers.utilities import _PATH, _check_not_a_file, _check_path_arg, _makedirs
from fulmen.utilities.exceptions import misconfig
from fulmen.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem  # type: ignore[import-untyped]

_VERSION_DIR = re.compile(r"^version_(\d+)$")


def _check_version(owner: str, version: Any) -> int | str | None:
    if version is None or (isinstance(version, str) and version.strip() != ""):
        return version
    if isinstance(version, int) and not isinstance(version, bool) and version >= 0:
        return version
    raise misconfig(
        f"{owner}(version=...)",
        version,
        "None (the next free version_N), an int >= 0 (written as version_<int>) or a non-empty str (used as the"
        " folder name)",
        "pass version=None to number runs automatically, or e.g. version=3 or version='baseline'",
    )


def _check_name(owner: str, name: Any) -> str:
    if name is None:
        return ""
    if isinstance(name, (str, os.PathLike)):
        return os.fspath(name)
    raise misconfig(
        f"{owner}(name=...)",
        name,
        "a str (the experiment folder under save_dir), or None/'' for no folder",
        "pass name='lightning_logs' or another folder name",
    )


class _DirectoryLogger(Logger, ABC):
    """A logger that writes under ``save_dir/name/<version>``; owns the path and version logic.

    The Trainer's loggers call the directory ``save_dir`` and ``save_dir/name`` their ``root_dir``; Fabric's
    (:mod:`fulmen.fabric.loggers`) call the directory ``root_dir``. ``_DIR_ARG`` is the argument's name in
    messages, and the version folders always live in :attr:`_experiment_dir`.
    """

    _DIR_ARG = "save_dir"

    def __init__(self, save_dir: _PATH, name: str | None, version: int | str | None) -> None:
        from fsspec.core import url_to_fs  # type: ignore[import-untyped]

        owner = type(self).__name__
        checked: str = _check_path_arg(owner, self._DIR_ARG, save_dir)  # type: ignore[assignment]
        self._save_dir = os.path.expanduser(os.path.expandvars(checked))
        self._name = _check_name(owner, name)
        self._version = _check_version(owner, version)
        # numbered automatically: in a distributed run the Trainer has global rank 0 pick the number and sends
        # it to the other ranks (see fulmen.trainer.lifecycle._sync_logger_versions)
        self._auto_version = self._version is None
        fs: AbstractFileSystem
        fs, _ = url_to_fs(self._save_dir)
        self._fs = fs
        _check_not_a_file(self._fs, self._save_dir, owner, self._DIR_ARG)

    @property
    def name(self) -> str:
        """The experiment folder under ``save_dir`` (``""`` for none)."""
        return self._name

    @property
    def version(self) -> int | str:
        """The version: the one given, or the next free ``version_N`` under :attr:`root_dir` (resolved once; in a
        distributed Trainer run, by global rank 0, and every rank uses that number)."""
        if self._version is None:
            self._version = self._get_next_version()
        return self._version

    @property
    def save_dir(self) -> str:
        """The directory given as ``save_dir`` (with ``~`` and environment variables expanded)."""
        return self._save_dir

    @property
    def _experiment_dir(self) -> str:
        """``save_dir/name``, or ``save_dir`` when the name is empty: the parent of all versions."""
        return os.path.join(self._save_dir, self._name) if self._name else self._save_dir

    @property
    def root_dir(self) -> str:
        """``save_dir/name``, or ``save_dir`` when the name is empty: the parent of all versions."""
        return self._experiment_dir

    @property
    def log_dir(self) -> str:
        """``save_dir/name/version_N`` for an int version, ``save_dir/name/<version>`` for a str version."""
        version = self.version
        folder = version if isinstance(version, str) else f"version_{version}"
        return os.path.join(self._experiment_dir, folder)

    def _get_next_version(self) -> int:
        """One more than the largest ``version_N`` folder under ``save_dir/name``, or 0 if there is none."""
        root = self._experiment_dir
        try:
            if not self._fs.isdir(root):
                return 0
            entries = self._fs.listdir(root, detail=True)
        except OSError as exc:
            rank_zero_warn(f"{type(self).__name__}: can't list {root!r} ({exc}); starting at version_0.")
            return 0
        versions = []
        for entry in entries:
            if entry.get("type") != "directory":
                continue
            match = _VERSION_DIR.match(os.path.basename(str(entry["name"]).rstrip("/")))
            if match:
                versions.append(int(match.group(1)))
        return max(versions) + 1 if versions else 0

    def _makedirs(self, path: str) -> None:
        _makedirs(self._fs, path, type(self).__name__)
