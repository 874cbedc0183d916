"""DeepSpeed checkpoint directories: importing the engine, reading what fulmen saved beside DeepSpeed's own
shards, and :func:`convert_zero_checkpoint_to_fp32_state_dict` (one ordinary file from a sharded directory).

Part of :mod:`fulmen.strategies.deepspeed`, which re-exports these names; needs no process group.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from fulmen.utilities.exceptions import MisconfigurationException

_TAG = "checkpoint"
_META_KEY = "_fulmen_deepspeed"
_INSTALL = (
    "Fix: `pip install deepspeed --no-build-isolation` in an environment that already has torch (DeepSpeed is "
    "built from source against the installed torch), or use strategy='fsdp', which shards parameters, gradients "
    "and optimizer state like ZeRO-3 with plain PyTorch."
)


def deepspeed_available() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def _import_deepspeed(device_type: str = "cpu") -> Any:
    if device_type == "cpu":
        # DeepSpeed picks its accelerator when first asked; on a CUDA machine running on the CPU it would pick CUDA
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:  # pragma: no cover - checked in __init__ already
        raise MisconfigurationException(
            f"strategy='deepspeed' needs the `deepspeed` package: {exc}. {_INSTALL}"
        ) from exc
    return deepspeed



# ---------------------------------------------------------------------- checkpoint files
_DS_KEYS = {
    "module",
    "buffer_names",
    "optimizer",
    "param_shapes",
    "frozen_param_shapes",
    "shared_params",
    "frozen_param_fragments",
    "lr_scheduler",
    "data_sampler",
    "random_ltd",
    "sparse_tensor_module_names",
    "skipped_steps",
    "global_steps",
    "global_samples",
    "dp_world_size",
    "mp_world_size",
    "ds_config",
    "ds_version",
    "compiled_autograd",
    "ds_checkpoint_version",
    "checkpoint_parallel_dimensions",
}


def _is_deepspeed_key(key: str) -> bool:
    return key in _DS_KEYS


def _checkpoint_tag(path: Any) -> str | None:
    """The tag of the DeepSpeed checkpoint in directory ``path`` (its ``latest`` file, else fulmen's tag), or None
    when ``path`` is not such a directory."""
    p = Path(str(path))
    if not p.is_dir():
        return None
    latest = p / "latest"
    tag = latest.read_text().strip() if latest.is_file() else _TAG
    if (p / tag).is_dir() and any((p / tag).glob("*model_states.pt")):
        return tag
    return None


def _model_states_file(path: Any, tag: str) -> Path:
    d = Path(str(path)) / tag
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (d / name).is_file():
            return d / name
    found = sorted(d.glob("*model_states.pt"))
    if not found:
        raise MisconfigurationException(f"{str(d)!r} holds no DeepSpeed model states file.")
    return found[0]


def _client_entries(state: dict[str, Any]) -> dict[str, Any]:
    """The entries fulmen saved as client state (DeepSpeed adds its own beside them)."""
    keys = state.get(_META_KEY, {}).get("client_keys")
    if keys is None:  # written by DeepSpeed without fulmen
        return {k: v for k, v in state.items() if not _is_deepspeed_key(k)}
    return {k: state[k] for k in keys if k in state}


def _read_client_state(path: Any, tag: str) -> dict[str, Any]:
    state = torch.load(_model_states_file(path, tag), map_location="cpu", weights_only=False)
    meta = state.get(_META_KEY, {})
    return {**_client_entries(state), _META_KEY: meta}


def _consolidated_state_dict(path: str, tag: str, stage: int) -> dict[str, Any]:
    """The full fp32 weights of a DeepSpeed checkpoint, merged from its shards on the CPU."""
    if stage == 0:
        module: dict[str, Any] = torch.load(
            _model_states_file(path, tag), map_location="cpu", weights_only=False
        )["module"]
        return module
    _import_deepspeed()
    from deepspeed.utils.zero_to_fp32 import (  # type: ignore[import-not-found,unused-ignore]
        get_fp32_state_dict_from_zero_checkpoint,
    )

    state: dict[str, Any] = get_fp32_state_dict_from_zero_checkpoint(path, tag=tag)
    return state


def convert_zero_checkpoint_to_fp32_state_dict(
    checkpoint_dir: str | Path, output_file: str | Path, tag: str | None = None
) -> dict[str, Any]:
    """Turn a DeepSpeed checkpoint directory written by fulmen into one ordinary checkpoint file.

    The weights are consolidated from the ZeRO shards in float32 (on the CPU, no process group needed) and stored
    under the module's key (the Trainer's ``state_dict``) beside fulmen's other entries (hyperparameters, run state,
    callbacks, ...). The optimizer state is left out (it stays in the directory), so the file loads with
    ``LightningModule.load_from_checkpoint`` or ``torch.load``, and resuming a fit from it says it holds weights
    only. Returns the saved dict.
    """
    path = Path(str(checkpoint_dir))
    found = _checkpoint_tag(path)
    if found is None:
        raise MisconfigurationException(
            f"{str(checkpoint_dir)!r} is not a DeepSpeed checkpoint directory (no 'latest' file or tag folder with "
            "*model_states.pt). Fix: pass the directory that strategy='deepspeed' wrote, e.g. 'checkpoints/last.ckpt'."
        )
    tag = tag or found
    client = _read_client_state(path, tag)
    meta = client.pop(_META_KEY, {})
    state_dict = _consolidated_state_dict(str(path), tag, int(meta.get("stage", 2)))
    for key in meta.get("modules", []) or ["state_dict"]:
        client[key] = state_dict
    for key in meta.get("optimizers", []):
        client.pop(key, None)
    client.pop("optimizer_states", None)  # placeholders: the optimizer state stays in the directory
    from fulmen.utilities.cloud_io import atomic_save

    atomic_save(client, str(output_file))
    return client


__all__ = ["convert_zero_checkpoint_to_fp32_state_dict", "deepspeed_available"]
