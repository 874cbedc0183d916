"""``LightningModule.to_torchscript`` / ``to_onnx``: thin wrappers over :mod:`fulmen.utilities.export`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fulmen.utilities import export as _export


def to_torchscript(
    module: Any, file_path: str | Path | None, method: str, example_inputs: Any, **kwargs: Any
) -> Any:
    return _export.to_torchscript(module, file_path, method, example_inputs, **kwargs)


def to_onnx(module: Any, file_path: str | Path | None, input_sample: Any, **kwargs: Any) -> Any:
    return _export.to_onnx(module, file_path, input_sample, **kwargs)
