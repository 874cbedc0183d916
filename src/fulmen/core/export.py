"""Export a LightningModule: TorchScript and ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fulmen.utilities.exceptions import MisconfigurationException


def _example(module: Any, given: Any, what: str) -> Any:
    sample = given if given is not None else module.example_input_array
    if sample is None:
        raise MisconfigurationException(
            f"{what} needs an example input: none was given and `example_input_array` is not set. "
            "Fix: pass one, or set `self.example_input_array = torch.randn(...)` in __init__."
        )
    return sample


def to_torchscript(module: Any, file_path: str | Path | None, method: str, example_inputs: Any, **kwargs: Any) -> Any:
    mode = module.training
    module.eval()
    try:
        if method == "script":
            scripted = torch.jit.script(module, **kwargs)
        elif method == "trace":
            sample = _example(module, example_inputs, "to_torchscript(method='trace')")
            from fulmen.utilities.apply_func import move_data_to_device

            sample = move_data_to_device(sample, module.device)
            scripted = torch.jit.trace(module, example_inputs=sample, **kwargs)
        else:
            raise MisconfigurationException(
                f"to_torchscript(method={method!r}); expected 'script' or 'trace'. Fix: use one of them."
            )
    finally:
        module.train(mode)
    if file_path is not None:
        torch.jit.save(scripted, str(file_path))
    return scripted


def to_onnx(module: Any, file_path: str | Path | None, input_sample: Any, **kwargs: Any) -> Any:
    try:
        import onnx  # noqa: F401
    except ModuleNotFoundError as err:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError("to_onnx requires onnx: pip install 'fulmen[onnx]'") from err
    sample = _example(module, input_sample, "to_onnx")
    from fulmen.utilities.apply_func import move_data_to_device

    sample = move_data_to_device(sample, module.device)
    mode = module.training
    module.eval()
    try:
        kwargs.setdefault("dynamo", False)
        return torch.onnx.export(module, sample if isinstance(sample, tuple) else (sample,), str(file_path), **kwargs)
    finally:
        module.train(mode)
