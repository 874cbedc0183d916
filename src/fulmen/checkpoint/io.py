"""Checkpoint IO plugins: how a checkpoint dict becomes a file and back.

* :class:`CheckpointIO` is the interface the strategies (and through them ``Trainer`` and ``Fabric``)
  call. Implement it to store checkpoints somewhere else or in another format.
* :class:`TorchCheckpointIO` is the default: ``torch.save``/``torch.load`` through fsspec, atomic
  writes, parent directories created, safe (``weights_only=True``) loading by default.
* :class:`AsyncCheckpointIO` wraps another ``CheckpointIO`` and writes on a background thread, so
  the training loop only pays for a snapshot of the tensors.
* :class:`WrappingCheckpointIO` is the base for plugins that wrap another one; it forwards every
  call, so a subclass overrides only what it changes (e.g. injecting ``storage_options``).
"""

from __future__ import annotations

import concurrent.futures
import copy
import enum
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

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

        Raises:
            CheckpointNotFoundError: If ``path`` does not exist.
            CheckpointLoadError: If ``path`` is a directory, empty, truncated, corrupted, or holds
                something other than a checkpoint dict.
            UnsafeCheckpointError: If safe loading refuses the file (the message says how to opt in).
        """
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


class AsyncCheckpointIO(WrappingCheckpointIO):
    """Writes checkpoints on a background thread so training continues during the write.

    ``save_checkpoint`` copies every tensor in the checkpoint to the CPU (so optimizer steps that
    update parameters in place cannot race with the write), hands the copy to a background thread
    and returns. One write is in flight at a time: the next save, a load or a remove first waits for
    the previous write. A write that failed is reported, as :class:`AsyncCheckpointSaveError`, on the
    next call or at :meth:`teardown`, which also waits for the last write. Atomicity is the wrapped
    plugin's: with the default :class:`TorchCheckpointIO`, a failed or killed write leaves the
    previous file intact.

    Args:
        checkpoint_io: The plugin that does the writing. ``None`` lets the Trainer set it, or
            :class:`TorchCheckpointIO` on first use.

    Raises:
        TypeError: If ``checkpoint_io`` is not a ``CheckpointIO``.
    """

    def __init__(self, checkpoint_io: CheckpointIO | None = None) -> None:
        super().__init__(checkpoint_io)
        self._lock = threading.Lock()  # guards _pending
        self._save_lock = threading.Lock()  # one save at a time, even when called from several threads
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: tuple[str, concurrent.futures.Future[None]] | None = None

    def _wait_for_pending(self) -> None:
        """Block until the in-flight write (if any) finishes; raise if it failed."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        path, future = pending
        error = future.exception()
        if error is not None:
            raise AsyncCheckpointSaveError(
                f"The background save of checkpoint {path!r} failed with {type(error).__name__}: {error}. "
                "The file at that path was not replaced, so it still holds its previous checkpoint, if any. "
                "Fix the cause above (disk space, permissions, a value that cannot be pickled) and save again.",
                path=path,
            ) from error

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: dict[str, Any] | None = None
    ) -> None:
        """Snapshot ``checkpoint`` and write it in the background; returns before the write finishes.

        Raises:
            AsyncCheckpointSaveError: If the previous background write failed (this save is then not
                started).
            TypeError: If ``checkpoint`` is not a dict or ``path`` is not a path.
        """
        _check_checkpoint(checkpoint, path)
        display = cloud_io._check_path(path)
        with self._save_lock:
            self._wait_for_pending()
            wrapped = self._wrapped()
            snapshot = _snapshot(checkpoint, {})
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="fulmen-async-checkpoint"
                )
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
        """Wait for the last write, stop the background thread and tear down the wrapped plugin.

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
        state.update(_lock=None, _save_lock=None, _executor=None, _pending=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
