"""``lightning.pytorch.utilities.migration`` / ``upgrade_checkpoint``: bring an older checkpoint dict up to date.

fulmen reads and writes Lightning 2.x checkpoints (``pytorch-lightning_version`` = the Lightning version fulmen
is compatible with). ``migrate_checkpoint`` applies, in version order, the fixes a checkpoint written by an
older Lightning needs before fulmen loads it; each migration is a plain function of the dict, in ``_MIGRATIONS``.
Loop-state layouts from before Lightning 2.0 are not converted: resuming training from such a checkpoint is
not supported (loading its weights is).
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable, Generator
from contextlib import contextmanager
from typing import Any

from fulmen.__about__ import LIGHTNING_COMPAT_VERSION
from fulmen.utilities.rank_zero import PossibleUserWarning

_CHECKPOINT = dict[str, Any]
_VERSION_KEY = "pytorch-lightning_version"
_LEGACY_KEY = "legacy_pytorch-lightning_version"


def _version_tuple(version: str) -> tuple[int, ...]:
    numbers = re.match(r"^\s*v?(\d+(?:\.\d+)*)", str(version))
    return tuple(int(p) for p in numbers.group(1).split(".")) if numbers else (0,)


def _drop_save_on_train_epoch_end_from_state_keys(checkpoint: _CHECKPOINT) -> _CHECKPOINT:
    """1.9.0: ``save_on_train_epoch_end`` left ModelCheckpoint's state key (the key must match to restore)."""
    callbacks = checkpoint.get("callbacks")
    if not isinstance(callbacks, dict):
        return checkpoint
    renamed = {
        (re.sub(r", 'save_on_train_epoch_end': (None|True|False)", "", key) if key.startswith("ModelCheckpoint")
         else key): state
        for key, state in callbacks.items()
        if isinstance(key, str)
    }
    if len(renamed) < len(callbacks):
        warnings.warn(
            "This checkpoint has several ModelCheckpoint states whose keys collide once upgraded; they are left "
            "as they are, and at least one ModelCheckpoint will not restore its state.",
            PossibleUserWarning,
            stacklevel=3,
        )
        return checkpoint
    checkpoint["callbacks"] = renamed
    return checkpoint


def _drop_apex_amp_state(checkpoint: _CHECKPOINT) -> _CHECKPOINT:
    """2.0.0: apex AMP is gone; its ``amp_scaling_state`` cannot be restored anywhere."""
    if "amp_scaling_state" in checkpoint:
        warnings.warn("This checkpoint holds apex AMP state, which is dropped (apex is not supported).", stacklevel=3)
        del checkpoint["amp_scaling_state"]
    return checkpoint


_MIGRATIONS: dict[str, list[Callable[[_CHECKPOINT], _CHECKPOINT]]] = {
    "1.9.0": [_drop_save_on_train_epoch_end_from_state_keys],
    "2.0.0": [_drop_apex_amp_state],
}


def migration_index() -> dict[str, list[Callable[[_CHECKPOINT], _CHECKPOINT]]]:
    """The migrations, by the Lightning version that introduced the change they undo."""
    return _MIGRATIONS


def migrate_checkpoint(
    checkpoint: _CHECKPOINT, target_version: str | None = None
) -> tuple[_CHECKPOINT, dict[str, list[str]]]:
    """Apply, in place and in version order, the migrations a checkpoint from an older Lightning needs.

    Args:
        checkpoint: the loaded checkpoint dict (``torch.load(path)``).
        target_version: apply migrations only up to this version (inclusive).

    Returns:
        The checkpoint, and the names of the migrations applied, by version. The checkpoint's version becomes
        the current one; the original is kept under ``legacy_pytorch-lightning_version``.

    Raises:
        TypeError: ``checkpoint`` is not a dict.
        KeyError: it has no ``pytorch-lightning_version`` (not a Lightning/fulmen checkpoint).
    """
    if not isinstance(checkpoint, dict):
        raise TypeError(f"migrate_checkpoint expected a checkpoint dict, got {type(checkpoint).__name__}.")
    if _VERSION_KEY not in checkpoint:
        raise KeyError(
            f"The checkpoint has no {_VERSION_KEY!r} entry, so it was not written by Lightning or fulmen. "
            "Fix: pass the dict torch.load returns for a Trainer checkpoint."
        )
    version = str(checkpoint[_VERSION_KEY])
    current = _version_tuple(LIGHTNING_COMPAT_VERSION)
    if _version_tuple(version) > current:
        warnings.warn(
            f"The loaded checkpoint was produced with Lightning v{version}, which is newer than the version "
            f"fulmen is compatible with (v{LIGHTNING_COMPAT_VERSION}).",
            PossibleUserWarning,
            stacklevel=2,
        )
        return checkpoint, {}
    applied: dict[str, list[str]] = {}
    for migration_version, functions in sorted(migration_index().items(), key=lambda kv: _version_tuple(kv[0])):
        if _version_tuple(version) >= _version_tuple(migration_version):
            continue
        if target_version is not None and _version_tuple(migration_version) > _version_tuple(target_version):
            continue
        for function in functions:
            checkpoint = function(checkpoint)
        applied[migration_version] = [f.__name__ for f in functions]
    if version != LIGHTNING_COMPAT_VERSION:
        checkpoint.setdefault(_LEGACY_KEY, version)
    checkpoint[_VERSION_KEY] = LIGHTNING_COMPAT_VERSION
    return checkpoint, applied


@contextmanager
def pl_legacy_patch() -> Generator[None, None, None]:
    """Let ``torch.load``/``pickle`` find classes a checkpoint names by their Lightning module paths.

    Inside the block, ``pytorch_lightning.*``/``lightning.*`` resolve to fulmen (as under ``fulmen run``), so a
    pickled ``pytorch_lightning.utilities.parsing.AttributeDict`` loads as fulmen's. Restored on exit.
    """
    from fulmen.compat._finder import lightning_imports

    with lightning_imports():
        yield


def main() -> None:  # ``python -m lightning.pytorch.utilities.upgrade_checkpoint``
    """Upgrade checkpoint files in place: ``upgrade_checkpoint PATH [--map-to-cpu]`` (a file or a folder of .ckpt)."""
    import argparse
    from pathlib import Path

    import torch

    parser = argparse.ArgumentParser(description="Upgrade Lightning checkpoints to the current version, in place.")
    parser.add_argument("path", type=str, help="a checkpoint file or a folder with .ckpt files")
    parser.add_argument("--extension", "-e", default=".ckpt", help="the extension of the files in a folder")
    parser.add_argument("--map-to-cpu", action="store_true", help="load tensors onto the CPU")
    args = parser.parse_args(sys.argv[1:])
    path = Path(args.path)
    files = sorted(path.glob(f"**/*{args.extension}")) if path.is_dir() else [path]
    if not files:
        raise SystemExit(f"No checkpoint files found at {path}.")
    for file in files:
        with pl_legacy_patch():
            checkpoint = torch.load(file, map_location="cpu" if args.map_to_cpu else None, weights_only=False)
        migrate_checkpoint(checkpoint)
        torch.save(checkpoint, file)
        print(f"Upgraded {file}")
