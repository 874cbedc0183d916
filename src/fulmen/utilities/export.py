"""Export a trained model for inference: ONNX, TorchScript, ``torch.export`` and safetensors weights.

Works on any ``nn.Module``; a LightningModule's ``to_onnx`` / ``to_torchscript`` call these. When no example
input is given, the module's ``example_input_array`` is used. Every export runs in eval mode and
restores the module's train/eval mode afterwards.

Which format for what:

* :func:`to_onnx` - ONNX Runtime, TensorRT and other runtimes (extra ``fulmen[onnx]``);
* :func:`to_torch_export` - ``torch.export.ExportedProgram`` (``.pt2``): AOTInductor, ExecuTorch, TensorRT;
* :func:`to_torchscript` - TorchScript (``torch.jit``; PyTorch is deprecating it, prefer ``torch.export``);
* :func:`save_weights` / :func:`load_weights` - the weights alone as safetensors (extra
  ``fulmen[safetensors]``), which load without running any code; :func:`checkpoint_to_safetensors`
  converts a training checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fulmen.utilities.apply_func import move_data_to_device
from fulmen.utilities.exceptions import MisconfigurationException, MisconfigurationValueError

__all__ = [
    "checkpoint_to_safetensors",
    "load_weights",
    "save_weights",
    "to_onnx",
    "to_torch_export",
    "to_torchscript",
]

_PATH = str | Path


def _example(module: nn.Module, given: Any, what: str) -> Any:
    sample = given if given is not None else getattr(module, "example_input_array", None)
    if sample is None:
        raise MisconfigurationValueError(
            f"{what} needs an example input: none was given and `example_input_array` is not set. "
            "Fix: pass one, or set `self.example_input_array = torch.randn(...)` in __init__."
        )
    return move_data_to_device(sample, _device(module))


def _device(module: nn.Module) -> torch.device:
    device = getattr(module, "device", None)
    if isinstance(device, torch.device):
        return device
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _as_args(sample: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """An example input as (args, kwargs): a tuple is the positional args, a dict the keyword args."""
    if isinstance(sample, tuple):
        return sample, {}
    if isinstance(sample, Mapping):
        return (), dict(sample)
    return (sample,), {}


@contextmanager
def _eval_mode(module: nn.Module) -> Generator[None, None, None]:
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


@contextmanager
def _jit_scripting(module: nn.Module) -> Generator[None, None, None]:
    # LightningModule properties such as `trainer` raise when detached; torch.jit.script reads them all
    flagged = [m for m in module.modules() if hasattr(type(m), "_jit_is_scripting")]
    for m in flagged:
        m.__dict__["_jit_is_scripting"] = True
    try:
        yield
    finally:
        for m in flagged:
            m.__dict__.pop("_jit_is_scripting", None)


def _open_for_write(path: _PATH) -> Any:
    import fsspec  # type: ignore[import-untyped]

    parent = os.path.dirname(os.fspath(path))
    fs, _ = fsspec.core.url_to_fs(os.fspath(path))
    if parent:
        fs.makedirs(parent, exist_ok=True)
    return fsspec.open(os.fspath(path), "wb")


def to_torchscript(
    module: nn.Module,
    file_path: _PATH | None = None,
    method: str = "script",
    example_inputs: Any = None,
    **kwargs: Any,
) -> Any:
    """Compile ``module`` with ``torch.jit.script`` (default) or ``torch.jit.trace`` and optionally save it.

    Args:
        module: The model; exported in eval mode, its mode is restored afterwards.
        file_path: Where to save (``torch.jit.save``); local path or fsspec URL. ``None`` saves nothing.
        method: ``"script"`` or ``"trace"``.
        example_inputs: Input for tracing (default: ``module.example_input_array``).
        **kwargs: Passed to ``torch.jit.script`` / ``torch.jit.trace``.

    Returns:
        The ``torch.jit.ScriptModule``.

    Raises:
        MisconfigurationException: For an unknown ``method``, or tracing without an example input.
    """
    if method not in ("script", "trace"):
        raise MisconfigurationValueError(
            f"to_torchscript(method={method!r}); expected 'script' or 'trace'. Fix: use one of them."
        )
    with _eval_mode(module), _jit_scripting(module):
        if method == "script":
            scripted = torch.jit.script(module, **kwargs)
        else:
            sample = _example(module, example_inputs, "to_torchscript(method='trace')")
            scripted = torch.jit.trace(module, example_inputs=sample, **kwargs)  # type: ignore[no-untyped-call]
    if file_path is not None:
        with _open_for_write(file_path) as f:
            torch.jit.save(scripted, f)
    return scripted


def to_onnx(
    module: nn.Module, file_path: _PATH | None = None, input_sample: Any = None, **kwargs: Any
) -> Any:
    """Export ``module`` to ONNX with ``torch.onnx.export``.

    Args:
        module: The model; exported in eval mode, its mode is restored afterwards.
        file_path: The ``.onnx`` file. May be ``None`` only with ``dynamo=True`` (the program is returned).
        input_sample: Example input (default: ``module.example_input_array``); a tuple is the positional
            arguments of ``forward``.
        **kwargs: Passed to ``torch.onnx.export`` (``input_names``, ``output_names``, ``dynamic_axes``,
            ``opset_version``, ``dynamo``, ...). ``dynamo`` defaults to ``False`` (the TorchScript-based
            exporter, no extra dependency); ``dynamo=True`` needs ``onnxscript``. Without ``dynamic_axes`` /
            ``dynamic_shapes``, dim 0 (the batch) of every input and output is exported as dynamic (with
            ``dynamo=True``: of every positional tensor input); pass ``dynamic_axes={}`` for fixed shapes.

    Returns:
        ``torch.onnx.ONNXProgram`` with ``dynamo=True``, else ``None``.

    Raises:
        ModuleNotFoundError: If ``onnx`` (or ``onnxscript`` for ``dynamo=True``) is missing; install
            ``fulmen[onnx]``.
        MisconfigurationException: Without an example input, or without ``file_path`` and ``dynamo=True``.
    """
    try:
        import onnx  # noqa: F401
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "to_onnx requires the onnx package. Fix: pip install 'fulmen[onnx]'."
        ) from err
    dynamo = bool(kwargs.setdefault("dynamo", False))
    if dynamo:
        try:
            import onnxscript  # noqa: F401
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError(
                "to_onnx(dynamo=True) requires the onnxscript package. Fix: pip install 'fulmen[onnx]'."
            ) from err
    elif file_path is None:
        raise MisconfigurationException(
            "to_onnx(file_path=None) returns an ONNXProgram only with dynamo=True. Fix: pass a file path, "
            "or dynamo=True."
        )
    sample = _example(module, input_sample, "to_onnx")
    args, sample_kwargs = _as_args(sample)
    if sample_kwargs:
        kwargs.setdefault("kwargs", sample_kwargs)
    static_export: bytes | None = None  # the fixed-shape export, kept in case the dynamic one fails
    with _eval_mode(module):
        if kwargs.get("dynamic_axes") is None and kwargs.get("dynamic_shapes") is None:
            # a model is served at any batch size: dim 0 of every input and output is dynamic unless the user
            # gave dynamic_axes / dynamic_shapes (``dynamic_axes={}`` exports fixed shapes)
            kwargs.pop("dynamic_axes", None)
            kwargs.pop("dynamic_shapes", None)
            if dynamo:
                if not sample_kwargs:
                    kwargs["dynamic_shapes"] = _batch_dynamic_shapes(args)
            else:
                dynamic, static_export = _batch_dynamic_axes(module, args, kwargs)
                kwargs.update(dynamic)
        if file_path is not None:
            parent = os.path.dirname(os.fspath(file_path))
            if parent:
                os.makedirs(parent, exist_ok=True)
        try:
            return torch.onnx.export(module, args, None if file_path is None else os.fspath(file_path), **kwargs)
        except Exception as err:
            if static_export is None or file_path is None:
                raise
            # the model does not export with a dynamic batch (a shape fixed in forward): keep the fixed-shape file
            from fulmen.utilities.rank_zero import rank_zero_warn

            rank_zero_warn(
                f"to_onnx: exporting with a dynamic batch dimension failed ({type(err).__name__}: {err}); "
                f"{os.fspath(file_path)} is exported with the example input's fixed shapes instead. Fix: pass "
                "dynamic_axes={input_name: {0: 'batch'}, ...} for the dims that may vary, or dynamic_axes={}."
            )
            with open(os.fspath(file_path), "wb") as f:
                f.write(static_export)
            return None


def _batch_dynamic_shapes(args: tuple[Any, ...]) -> Any:
    """``dynamic_shapes`` for the torch.export-based exporter: dim 0 of every tensor argument, ``Dim.AUTO`` (the
    exporter keeps it static where the model needs that instead of failing)."""
    from torch.export import Dim
    from torch.utils._pytree import tree_map

    def spec(x: Any) -> Any:
        return {0: Dim.AUTO} if isinstance(x, torch.Tensor) and x.ndim > 0 else None

    return tuple(tree_map(spec, a) for a in args)


def _batch_dynamic_axes(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[dict[str, Any], bytes]:
    """``input_names``/``output_names``/``dynamic_axes`` for the TorchScript-based exporter with dim 0 of every
    input and output dynamic.

    The exporter names unnamed inputs and outputs itself (``onnx::Flatten_0``, ``17``) and flattens nested inputs,
    so the names and ranks are read from a first export to memory; the real export then names them the same way.
    Also returns that first (fixed-shape) export.
    """
    import io
    import warnings

    import onnx

    probe = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, probe, **kwargs)  # type: ignore[arg-type]  # a file object works
    graph = onnx.load_from_string(probe.getvalue()).graph
    weights = {init.name for init in graph.initializer}

    def ranked(values: Any, skip_weights: bool) -> list[tuple[str, int]]:
        out = []
        for v in values:
            if skip_weights and v.name in weights:  # weights listed as inputs (keep_initializers_as_inputs)
                continue
            has_shape = v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")
            out.append((v.name, len(v.type.tensor_type.shape.dim) if has_shape else 0))
        return out

    def named(values: list[tuple[str, int]], prefix: str) -> list[tuple[str, int]]:
        # the exporter's own numbered names ("7") cannot be given back to it: those get "output_<i>"
        return [(f"{prefix}_{i}" if name.isdigit() else name, rank) for i, (name, rank) in enumerate(values)]

    inputs, outputs = named(ranked(graph.input, True), "input"), named(ranked(graph.output, False), "output")
    return {
        "input_names": [name for name, _ in inputs],
        "output_names": [name for name, _ in outputs],
        "dynamic_axes": {name: {0: "batch"} for name, rank in inputs + outputs if rank > 0},
    }, probe.getvalue()


def to_torch_export(
    module: nn.Module,
    file_path: _PATH | None = None,
    example_inputs: Any = None,
    *,
    dynamic_shapes: Any = None,
    strict: bool = False,
    **kwargs: Any,
) -> torch.export.ExportedProgram:
    """Capture ``module.forward`` as a ``torch.export.ExportedProgram`` and optionally save it (``.pt2``).

    Args:
        module: The model; exported in eval mode, its mode is restored afterwards.
        file_path: Where to save with ``torch.export.save`` (reload with ``torch.export.load``).
        example_inputs: Example input (default: ``module.example_input_array``); a tuple is the positional
            arguments, a dict the keyword arguments.
        dynamic_shapes: Passed to ``torch.export.export``, e.g. ``{"x": {0: torch.export.Dim("batch")}}``.
        strict: Use TorchDynamo's strict tracing (``False``, the default, is the non-strict mode).
        **kwargs: Passed to ``torch.export.export``.

    Returns:
        The exported program; ``program.module()`` is a callable ``nn.Module``.

    Raises:
        MisconfigurationException: Without an example input.
    """
    sample = _example(module, example_inputs, "to_torch_export")
    args, sample_kwargs = _as_args(sample)
    with _eval_mode(module):
        program = torch.export.export(
            module, args, kwargs=sample_kwargs or None, dynamic_shapes=dynamic_shapes, strict=strict, **kwargs
        )
    if file_path is not None:
        with _open_for_write(file_path) as f:
            torch.export.save(program, f)
    return program


def save_weights(
    module_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: _PATH,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a module's weights (its ``state_dict``) to a ``.safetensors`` file, atomically.

    Raises:
        ImportError: If ``safetensors`` is not installed (``fulmen[safetensors]``).
        TypeError: If the state dict holds non-tensor values.
    """
    from fulmen.checkpoint.safetensors_io import save_safetensors

    state = (
        module_or_state_dict.state_dict()
        if isinstance(module_or_state_dict, nn.Module)
        else module_or_state_dict
    )
    save_safetensors(state, path, metadata=metadata)


def load_weights(module: nn.Module, path: _PATH, strict: bool = True) -> Any:
    """Load a ``.safetensors`` file into ``module`` (on the module's device); returns ``load_state_dict``'s result.

    Raises:
        ImportError: If ``safetensors`` is not installed (``fulmen[safetensors]``).
        RuntimeError: With ``strict=True``, when keys or shapes do not match.
    """
    from fulmen.checkpoint.safetensors_io import load_safetensors

    return module.load_state_dict(load_safetensors(path, device=_device(module)), strict=strict)


def checkpoint_to_safetensors(
    checkpoint_path: _PATH, path: _PATH, metadata: dict[str, str] | None = None
) -> None:
    """Convert a training checkpoint's ``state_dict`` to a ``.safetensors`` file (loaded safely).

    Raises:
        KeyError: If the checkpoint has no ``state_dict``.
    """
    from fulmen.utilities.cloud_io import load

    checkpoint = load(checkpoint_path, map_location="cpu")
    if "state_dict" not in checkpoint:
        raise KeyError(
            f"{os.fspath(checkpoint_path)!r} has no 'state_dict' (keys: {sorted(checkpoint)}). Fix: pass a "
            "checkpoint written by trainer.save_checkpoint or ModelCheckpoint."
        )
    save_weights(checkpoint["state_dict"], path, metadata=metadata)
