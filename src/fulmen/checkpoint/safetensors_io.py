"""Export and import of model weights in the safetensors format.

safetensors files hold only named tensors and string metadata, so loading one can never run code,
and they can be memory-mapped. Use them to hand trained weights to other tools; use the regular
checkpoint (``TorchCheckpointIO``) for resuming training, which also needs optimizer and loop state.
The ``safetensors`` package is an optional dependency (``pip install 'fulmen[safetensors]'``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import ModuleType
from typing import IO, Any

import torch
from fsspec.implementations.local import LocalFileSystem

from fulmen.utilities import cloud_io
from fulmen.utilities.cloud_io import _PATH

__all__ = ["load_safetensors", "save_safetensors"]


def _import_safetensors() -> ModuleType:
    try:
        import safetensors.torch
    except ImportError as err:
        raise ImportError(
            "Saving or loading .safetensors files needs the `safetensors` package, which is not installed. "
            "Fix: pip install 'fulmen[safetensors]' (or pip install safetensors)."
        ) from err
    return safetensors.torch


def _prepare(state_dict: object, path: _PATH) -> dict[str, torch.Tensor]:
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"save_safetensors({os.fspath(path)!r}): got {type(state_dict).__name__}; expected a mapping of "
            "names to tensors such as model.state_dict(). Fix: pass checkpoint['state_dict'], not the checkpoint."
        )
    tensors: dict[str, torch.Tensor] = {}
    seen_storages: set[tuple[int, int]] = set()
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(
                f"save_safetensors({os.fspath(path)!r}): the key {name!r} is a {type(name).__name__}; "
                "safetensors names must be strings."
            )
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"save_safetensors({os.fspath(path)!r}): the value of {name!r} is a {type(value).__name__}; "
                "safetensors stores only tensors. Fix: keep only the tensors, e.g. "
                "{k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}, and store other values in "
                "the metadata argument as strings."
            )
        tensor = value.detach()
        if tensor.layout != torch.strided:
            raise TypeError(
                f"save_safetensors({os.fspath(path)!r}): {name!r} is a {tensor.layout} tensor; safetensors stores "
                "only dense tensors. Fix: convert it with .to_dense()."
            )
        tensor = tensor.to("cpu").contiguous()
        # safetensors refuses tensors that share memory (tied weights); store each one separately.
        storage_key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if tensor.numel() and storage_key in seen_storages:
            tensor = tensor.clone()
        elif tensor.numel():
            seen_storages.add(storage_key)
        tensors[name] = tensor
    return tensors


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor],
    path: _PATH,
    metadata: dict[str, str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Write a state dict of tensors to a ``.safetensors`` file, atomically.

    Tensors are copied to the CPU and made contiguous; tensors that share memory (tied weights) are
    written as separate copies. The write is atomic in the same way as checkpoint saves.

    Args:
        state_dict: Names to tensors, e.g. ``model.state_dict()`` or ``checkpoint["state_dict"]``.
        path: A local path or an fsspec URL.
        metadata: Optional string-to-string metadata stored in the file header.
        storage_options: Keyword arguments for the fsspec filesystem.

    Raises:
        ImportError: If ``safetensors`` is not installed (install ``fulmen[safetensors]``).
        TypeError: If ``state_dict`` is not a mapping of string names to dense tensors, or
            ``metadata`` is not a dict of strings.
    """
    st = _import_safetensors()
    if metadata is not None and (
        not isinstance(metadata, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise TypeError(
            f"save_safetensors: metadata must be a dict of str to str, got {metadata!r}. "
            "Fix: convert values to strings, e.g. {'epoch': str(epoch)}."
        )
    tensors = _prepare(state_dict, path)
    fs, fs_path = cloud_io._resolve(path, storage_options)

    def write(f: IO[bytes]) -> None:
        f.write(st.save(tensors, metadata=metadata))

    cloud_io._atomic_write(fs, fs_path, write)


def load_safetensors(
    path: _PATH, device: str | torch.device = "cpu", storage_options: dict[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file into a dict of tensors.

    Args:
        path: A local path or an fsspec URL.
        device: Where to put the tensors.
        storage_options: Keyword arguments for the fsspec filesystem.

    Returns:
        Names to tensors, ready for ``model.load_state_dict``.

    Raises:
        ImportError: If ``safetensors`` is not installed (install ``fulmen[safetensors]``).
        CheckpointNotFoundError: If ``path`` does not exist.
        CheckpointLoadError: If ``path`` is a directory or not a valid (complete) safetensors file.
    """
    st = _import_safetensors()
    fs, fs_path = cloud_io._resolve(path, storage_options)
    display = os.fspath(path)
    cloud_io._check_is_file(fs, fs_path, display)
    try:
        if isinstance(fs, LocalFileSystem):  # memory-maps the file instead of reading it into memory
            tensors: dict[str, torch.Tensor] = st.load_file(fs_path, device=str(device))
        else:
            with fs.open(fs_path, "rb") as f:
                tensors = st.load(f.read())
    except Exception as err:  # safetensors raises its own SafetensorError for malformed headers/lengths
        raise cloud_io.CheckpointLoadError(
            f"Cannot load {display!r} as safetensors: the file is truncated or corrupted, or not a safetensors "
            f"file ({type(err).__name__}: {err}). Fix: export it again with save_safetensors, or use an earlier "
            "copy.",
            path=display,
            reason=f"truncated or corrupted: {err}",
        ) from err
    return {name: tensor.to(device) for name, tensor in tensors.items()}
