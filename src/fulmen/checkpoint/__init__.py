"""Checkpoint IO: atomic saving, safe loading and the ``CheckpointIO`` plugins.

Who owns what:

* ``fulmen.utilities.cloud_io`` does the file work: atomic writes on local and fsspec filesystems,
  safe (``weights_only=True``) loading with fulmen's allowlist, and diagnosing damaged files.
* :class:`CheckpointIO` and its implementations (:class:`TorchCheckpointIO`,
  :class:`AsyncCheckpointIO`) are the plugins strategies call to save, load and remove checkpoints.
* :func:`add_safe_globals` lets fulmen modules and users allowlist plain-data types (dataclasses,
  Enums) that appear in checkpoints, so those checkpoints still load without ``weights_only=False``.
* :func:`save_safetensors` / :func:`load_safetensors` export weights to the safetensors format.
"""

from fulmen.checkpoint.io import (
    AsyncCheckpointIO,
    AsyncCheckpointSaveError,
    CheckpointIO,
    TorchCheckpointIO,
    WrappingCheckpointIO,
)
from fulmen.checkpoint.safetensors_io import load_safetensors, save_safetensors
from fulmen.utilities.cloud_io import (
    CheckpointLoadError,
    CheckpointNotFoundError,
    UnsafeCheckpointError,
    add_safe_globals,
    atomic_save,
    get_safe_globals,
    load,
    verify_checkpoint,
)

__all__ = [
    "AsyncCheckpointIO",
    "AsyncCheckpointSaveError",
    "CheckpointIO",
    "CheckpointLoadError",
    "CheckpointNotFoundError",
    "TorchCheckpointIO",
    "UnsafeCheckpointError",
    "WrappingCheckpointIO",
    "add_safe_globals",
    "atomic_save",
    "get_safe_globals",
    "load",
    "load_safetensors",
    "save_safetensors",
    "verify_checkpoint",
]
