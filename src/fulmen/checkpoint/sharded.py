"""Sharded checkpoints: the directory ``FSDPStrategy(state_dict_type="sharded")`` writes, and turning one into a
regular checkpoint.

Layout of a sharded checkpoint directory::

    epoch=1-step=8.ckpt/
        meta.pt          # torch.save'd dict: every entry without sharded tensors (epoch, loops, callbacks, ...)
                         # plus "sharded_keys": the names of the entries stored with torch.distributed.checkpoint
        .metadata        # torch.distributed.checkpoint: which rank wrote which piece of which tensor
        __0_0.distcp ... # the shards (one file per rank)

``"state_dict"`` and ``"optimizer_states"`` are in the shards; so are the gradients of an open
gradient-accumulation window (entry ``"fulmen_sharded_grads"``, put back under ``fulmen.run_state.grads`` when
consolidated).

:func:`consolidate_checkpoint` reads the whole directory on one process (no process group needed) into the dict
that ``state_dict_type="full"`` would have written; :func:`consolidate_checkpoint_to_file` saves it as one file
(what ``fulmen fabric consolidate`` does). ``TorchCheckpointIO.load_checkpoint`` consolidates on the fly, so a
sharded directory loads anywhere a checkpoint file does (``load_from_checkpoint``, a single-device or DDP
``Trainer(ckpt_path=...)``, ``Fabric.load``); ``FSDPStrategy`` instead reads only each rank's shards.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

META_FILE = "meta.pt"
SHARDED_KEYS = "sharded_keys"
SHARDED_GRADS = "fulmen_sharded_grads"

_PATH = str | os.PathLike[str]


def is_sharded_checkpoint(path: Any) -> bool:
    """Whether ``path`` is a local directory written by ``FSDPStrategy(state_dict_type="sharded")``."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    p = Path(path)
    return p.is_dir() and (p / META_FILE).is_file() and (p / ".metadata").is_file()


class ShardedEntry:
    """Stands in a loaded checkpoint dict for an entry that stays on disk, in shards, until the strategy reads it
    into the set-up (sharded) model and optimizers. ``FSDPStrategy.load_checkpoint`` returns these for a sharded
    directory; the Trainer resolves them after the model is sharded (weights) and the optimizers exist (their
    state), so no process ever holds the full tensors."""

    def __init__(self, path: _PATH, key: str) -> None:
        self.path = str(path)
        self.key = key

    def __repr__(self) -> str:
        return f"ShardedEntry({self.key!r} in {self.path!r})"


def check_sharded_folder(folder: Any) -> Path:
    """The folder as a Path if it is a sharded checkpoint; otherwise a clear error saying what it is."""
    p = Path(os.fspath(folder))
    if not p.exists():
        raise FileNotFoundError(
            f"{str(folder)!r} does not exist. Fix: pass the directory that Trainer/Fabric wrote with "
            "FSDPStrategy(state_dict_type='sharded') (e.g. checkpoints/epoch=0-step=100.ckpt)."
        )
    if not p.is_dir():
        raise ValueError(
            f"{str(folder)!r} is a file, not a sharded checkpoint directory; it is probably a regular checkpoint "
            "already. Fix: load it directly (torch.load / load_from_checkpoint), nothing to consolidate."
        )
    if not (p / META_FILE).is_file() or not (p / ".metadata").is_file():
        raise ValueError(
            f"{str(folder)!r} is not a sharded checkpoint: a sharded checkpoint directory holds {META_FILE!r} and "
            "torch.distributed.checkpoint's '.metadata' (written by FSDPStrategy(state_dict_type='sharded')). "
            "Fix: pass such a directory."
        )
    return p


def read_meta(folder: Path, weights_only: bool | None = None) -> tuple[dict[str, Any], list[str]]:
    """The non-sharded entries of the checkpoint and the names of the sharded ones."""
    from fulmen.utilities import cloud_io

    meta = cloud_io.load(str(folder / META_FILE), map_location="cpu", weights_only=weights_only)
    if not isinstance(meta, dict) or SHARDED_KEYS not in meta:
        raise ValueError(
            f"{str(folder / META_FILE)!r} is not the metadata of a fulmen sharded checkpoint (no {SHARDED_KEYS!r}). "
            "Fix: pass a directory written by FSDPStrategy(state_dict_type='sharded')."
        )
    meta = dict(meta)
    keys = list(meta.pop(SHARDED_KEYS))
    return meta, keys


def consolidate_checkpoint(
    folder: _PATH, weights_only: bool | None = None, keys: Iterable[str] | None = None
) -> dict[str, Any]:
    """Read a sharded checkpoint directory into one regular checkpoint dict (full tensors, on the CPU).

    Runs on one process without a process group; it needs memory for the whole model and optimizer state.
    ``keys`` reads only these sharded entries (default: all of them); the non-sharded entries are always there.
    """
    import torch.distributed.checkpoint as dcp

    p = check_sharded_folder(folder)
    meta, names = read_meta(p, weights_only)
    only = None if keys is None else set(keys)
    if only is not None:
        names = [k for k in names if k in only]
    shards: dict[str, Any] = {}
    try:
        # what torch's dcp_to_torch_save does, without the round trip through a file
        from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
    except ImportError:  # pragma: no cover - a torch that moved the private helpers
        import tempfile

        import torch
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(str(p), os.path.join(tmp, "full.pt"))
            shards = torch.load(os.path.join(tmp, "full.pt"), map_location="cpu", weights_only=True)
    else:
        import warnings

        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message=".*single process.*")
            _load_state_dict(
                shards,
                storage_reader=dcp.FileSystemReader(str(p)),
                planner=_EmptyStateDictLoadPlanner(keys=only),
                no_dist=True,
            )
    missing = [k for k in names if k not in shards]
    if missing:
        raise ValueError(
            f"The sharded checkpoint {str(folder)!r} lists {missing} in {META_FILE!r} but its shards do not hold "
            "them: the directory is incomplete (a save was interrupted?). Fix: use another checkpoint."
        )
    checkpoint = {**meta, **{k: shards[k] for k in names if k != SHARDED_GRADS}}
    if SHARDED_GRADS in names:
        run_state = checkpoint.get("fulmen", {}).get("run_state")
        if isinstance(run_state, dict):
            run_state["grads"] = shards[SHARDED_GRADS]
    return checkpoint


def consolidate_checkpoint_to_file(folder: _PATH, output_file: _PATH, overwrite: bool = False) -> Path:
    """:func:`consolidate_checkpoint` and save the result atomically as ``output_file`` (what ``fulmen fabric
    consolidate`` runs). The file loads with ``torch.load(weights_only=True)``, ``load_from_checkpoint`` and as a
    Trainer ``ckpt_path``."""
    from fulmen.utilities.cloud_io import atomic_save

    out = Path(os.fspath(output_file))
    check_sharded_folder(folder)
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"The output file {str(out)!r} already exists. Fix: pass another --output_file, or delete it first."
        )
    src = Path(os.fspath(folder)).resolve()
    if out.resolve() == src or src in out.resolve().parents:
        raise ValueError(
            f"The output file {str(out)!r} is inside the sharded checkpoint {str(folder)!r}. Fix: write it elsewhere."
        )
    checkpoint = consolidate_checkpoint(folder)
    atomic_save(checkpoint, str(out))
    return out


__all__ = [
    "META_FILE",
    "ShardedEntry",
    "check_sharded_folder",
    "consolidate_checkpoint",
    "consolidate_checkpoint_to_file",
    "is_sharded_checkpoint",
]
