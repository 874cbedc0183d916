"""``load_from_checkpoint`` for modules and datamodules: rebuild from saved hparams, then load weights."""

from __future__ import annotations

import inspect
from typing import Any

from fulmen.utilities.exceptions import MisconfigurationException


def _read_hparams_file(path: Any) -> dict[str, Any]:
    import fsspec
    import yaml

    with fsspec.open(str(path), "r") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise MisconfigurationException(f"hparams_file={str(path)!r} does not hold a mapping. Fix: pass a YAML dict.")
    return data


# What LightningCLI(load_from_checkpoint_support=True) writes under ``_instantiator`` (fulmen's, and Lightning's
# names for the same function). Only these are accepted: a checkpoint never chooses code to import.
_CLI_INSTANTIATORS = frozenset({
    "fulmen.cli.instantiate_module",
    "lightning.pytorch.cli.instantiate_module",
    "pytorch_lightning.cli.instantiate_module",
})


def _instantiator(cls: type, name: Any) -> Any:
    """The function that rebuilds ``cls`` from hyperparameters saved by the CLI, or None for ``cls(**hparams)``."""
    if name is None:
        return None
    if name not in _CLI_INSTANTIATORS:
        raise MisconfigurationException(
            f"{cls.__name__}.load_from_checkpoint: the checkpoint's hyperparameters name the instantiator {name!r}; "
            f"only LightningCLI's ({sorted(_CLI_INSTANTIATORS)}) is accepted, because a checkpoint must not choose "
            "code to run. Fix: remove '_instantiator' from checkpoint['hyper_parameters'] and pass the constructor "
            "arguments as keyword arguments to load_from_checkpoint."
        )
    # the CLI's parser rebuilds nested class specs under its import allowlist (a documented layering exception)
    from fulmen.cli import instantiate_module

    return instantiate_module


def _rebuild(
    cls: type, checkpoint_path: Any, map_location: Any, hparams_file: Any, weights_only: bool | None, kwargs: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """Read the checkpoint and build ``cls`` from its saved hyperparameters (+ ``hparams_file``, + ``kwargs``)."""
    from fulmen.checkpoint import TorchCheckpointIO

    checkpoint = TorchCheckpointIO().load_checkpoint(
        checkpoint_path, map_location=map_location or "cpu", weights_only=weights_only
    )
    key = cls.CHECKPOINT_HYPER_PARAMS_KEY  # type: ignore[attr-defined]
    hparams = dict(checkpoint.get(key) or {})
    if hparams_file is not None:
        hparams.update(_read_hparams_file(hparams_file))
    hparams.update(kwargs)
    instantiate = _instantiator(cls, hparams.pop("_instantiator", None))
    params = inspect.signature(cls.__init__).parameters
    accepts_var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    init_kwargs = hparams if accepts_var_kw else {k: v for k, v in hparams.items() if k in params}
    try:
        obj = instantiate(cls, init_kwargs) if instantiate is not None else cls(**init_kwargs)
    except TypeError as err:
        raise MisconfigurationException(
            f"{cls.__name__}.load_from_checkpoint could not rebuild the object from the saved hyperparameters "
            f"{sorted(init_kwargs)}: {err}. Fix: pass the missing constructor arguments as keyword arguments, "
            f"e.g. {cls.__name__}.load_from_checkpoint(path, backbone=...)."
        ) from err
    return obj, checkpoint


def load_datamodule_from_checkpoint(
    cls: type,
    checkpoint_path: Any,
    map_location: Any = None,
    hparams_file: Any = None,
    weights_only: bool | None = None,
    **kwargs: Any,
) -> Any:
    """``LightningDataModule.load_from_checkpoint``: rebuild from hyperparameters, then load its own state entry."""
    obj, checkpoint = _rebuild(cls, checkpoint_path, map_location, hparams_file, weights_only, kwargs)
    state_key = cls.__qualname__
    if state_key in checkpoint:
        obj.load_state_dict(checkpoint[state_key])
    return obj


def load_from_checkpoint(
    cls: type,
    checkpoint_path: Any,
    map_location: Any = None,
    hparams_file: Any = None,
    strict: bool | None = None,
    weights_only: bool | None = None,
    **kwargs: Any,
) -> Any:
    """``LightningModule.load_from_checkpoint``: rebuild from hyperparameters, load the weights, move, ``eval()``."""
    obj, checkpoint = _rebuild(cls, checkpoint_path, map_location, hparams_file, weights_only, kwargs)
    obj.on_load_checkpoint(checkpoint)
    if "state_dict" not in checkpoint:
        raise MisconfigurationException(
            f"{str(checkpoint_path)!r} has no 'state_dict' entry, so it is not a fulmen/Lightning checkpoint. Fix: "
            "pass a file written by trainer.save_checkpoint or ModelCheckpoint."
        )
    load_state_dict_strictly(obj, checkpoint["state_dict"], obj.strict_loading if strict is None else strict, checkpoint_path)
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        obj.to(map_location)
    obj.eval()
    return obj


def load_state_dict_strictly(module: Any, state_dict: dict[str, Any], strict: bool, path: Any) -> None:
    """Load weights; mismatches are reported by parameter name (missing, unexpected, shape)."""
    own = module.state_dict()
    shape_errors = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and hasattr(v, "shape") and hasattr(own[k], "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if shape_errors or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"missing keys: {missing}")
        if unexpected:
            parts.append(f"unexpected keys: {unexpected}")
        if shape_errors:
            parts.append(f"shape mismatches: {shape_errors}")
        raise MisconfigurationException(
            f"The checkpoint {str(path)!r} does not match {type(module).__name__}: " + "; ".join(parts) + ". Fix: load "
            "it into the model it was saved from, or pass strict=False to ignore missing/unexpected keys."
        )
    module.load_state_dict(state_dict, strict=False if not strict else True)
