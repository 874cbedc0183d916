"""Apply a function to every tensor in a nested collection (dicts, lists, tuples, namedtuples, dataclasses)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch


def apply_to_collection(data: Any, dtype: type | tuple[type, ...], function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Recursively apply ``function`` to every element of ``data`` that is an instance of ``dtype``."""
    if isinstance(data, dtype):
        return function(data, *args, **kwargs)
    if isinstance(data, Mapping):
        return type(data)({k: apply_to_collection(v, dtype, function, *args, **kwargs) for k, v in data.items()})  # type: ignore[call-arg]
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(apply_to_collection(v, dtype, function, *args, **kwargs) for v in data))
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        out = [apply_to_collection(v, dtype, function, *args, **kwargs) for v in data]
        return out if isinstance(data, list) else type(data)(out)  # type: ignore[call-arg]
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        changes = {
            f.name: apply_to_collection(getattr(data, f.name), dtype, function, *args, **kwargs)
            for f in dataclasses.fields(data)
            if f.init
        }
        return dataclasses.replace(data, **changes)
    return data


def _move(t: torch.Tensor, device: torch.device, non_blocking: bool) -> torch.Tensor:
    return t.to(device, non_blocking=non_blocking)


def move_data_to_device(batch: Any, device: torch.device | str | int) -> Any:
    """Move every tensor (and object with a ``.to``) in ``batch`` to ``device``."""
    device = torch.device(device) if not isinstance(device, torch.device) else device
    non_blocking = device.type == "cuda"
    if isinstance(batch, torch.Tensor):  # fast path: the common single-tensor batch
        return batch.to(device, non_blocking=non_blocking)
    cls = type(batch)
    if cls is tuple or cls is list:  # fast path: (x, y); the same result as apply_to_collection, built directly
        on_cpu = device.type == "cpu"  # a CPU tensor's .to("cpu") returns the tensor itself: skip the call
        if on_cpu and cls is tuple:
            for v in batch:
                if not (isinstance(v, torch.Tensor) and v.is_cpu):
                    break
            else:
                return batch  # nothing to move (an immutable tuple of the same tensors, as a rebuilt one would hold)
        out = [
            (v if on_cpu and v.is_cpu else v.to(device, non_blocking=non_blocking))
            if isinstance(v, torch.Tensor)
            else apply_to_collection(v, torch.Tensor, _move, device, non_blocking)
            for v in batch
        ]
        return out if cls is list else tuple(out)
    return apply_to_collection(batch, torch.Tensor, _move, device, non_blocking)


_CPU = torch.device("cpu")


def move_batch_to_cpu(batch: Any) -> Any:
    """``move_data_to_device(batch, "cpu")``; a tuple of CPU tensors (the usual CPU batch) is returned as it is."""
    if type(batch) is tuple:
        for v in batch:
            if not (isinstance(v, torch.Tensor) and v.is_cpu):
                return move_data_to_device(batch, _CPU)
        return batch
    return move_data_to_device(batch, _CPU)


def convert_tensors_to_scalars(data: Any) -> Any:
    """Turn every single-element tensor into a Python number (a host sync per tensor)."""

    def to_item(t: torch.Tensor) -> Any:
        if t.numel() != 1:
            raise ValueError(f"The metric {t} does not contain a single element; it cannot be converted to a scalar.")
        return t.item()

    return apply_to_collection(data, torch.Tensor, to_item)
