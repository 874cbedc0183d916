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
    params = inspect.signature(cls.__init__).parameters  # type: ignore[misc]  # cls is a class, not an instance
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
    module.load_state_dict(state_dict, strict=bool(strict))


# ---------------------------------------------------------------- hparams files (Lightning's core.saving helpers)
def _hparams_dict(hparams: Any) -> dict[str, Any]:
    from argparse import Namespace

    if isinstance(hparams, Namespace):
        return vars(hparams)
    if type(hparams).__module__.startswith("omegaconf"):  # a DictConfig: resolve to plain containers
        from omegaconf import OmegaConf

        return OmegaConf.to_container(hparams, resolve=True)  # type: ignore[return-value]
    if isinstance(hparams, dict):
        return dict(hparams)
    raise TypeError(
        f"hparams of type {type(hparams).__name__}; expected a dict, an argparse.Namespace or an OmegaConf "
        "DictConfig. Fix: pass e.g. dict(lr=0.1)."
    )


def _missing_file(path: Any) -> bool:
    import fsspec.core

    fs, resolved = fsspec.core.url_to_fs(str(path))
    if fs.exists(resolved):
        return False
    import warnings

    warnings.warn(f"Missing Tags: {path}.", RuntimeWarning, stacklevel=3)
    return True


def load_hparams_from_yaml(config_yaml: Any, use_omegaconf: bool = True) -> Any:
    """Read hyperparameters from a YAML file (``hparams.yaml`` of the CSV/TensorBoard loggers).

    Returns ``{}`` with a ``RuntimeWarning`` when the file does not exist, as Lightning does. With
    ``use_omegaconf`` and omegaconf installed, the mapping comes back as an OmegaConf ``DictConfig``.

    Raises:
        MisconfigurationException: the file holds YAML that is not a mapping.
    """
    if _missing_file(config_yaml):
        return {}
    hparams = _read_hparams_file(config_yaml)
    if use_omegaconf:
        import importlib.util

        if importlib.util.find_spec("omegaconf") is not None:
            from omegaconf import OmegaConf
            from omegaconf.errors import UnsupportedValueType, ValidationError

            try:
                return OmegaConf.create(hparams)
            except (UnsupportedValueType, ValidationError):
                pass
    return hparams


def save_hparams_to_yaml(config_yaml: Any, hparams: Any, use_omegaconf: bool = True) -> None:
    """Write hyperparameters (a dict, Namespace or DictConfig) to a YAML file, atomically.

    Values with no plain YAML form (a class, a function) are skipped with a warning, as the loggers do.
    ``use_omegaconf`` is accepted for Lightning compatibility: a DictConfig is always resolved to plain data.

    Raises:
        RuntimeError: the folder of ``config_yaml`` does not exist.
        TypeError: ``hparams`` is not a dict, Namespace or DictConfig.
    """
    import fsspec.core

    from fulmen.loggers.utilities import _save_hparams_to_yaml

    fs, path = fsspec.core.url_to_fs(str(config_yaml))
    parent = path.rsplit("/", 1)[0] if "/" in path else "."
    if not fs.isdir(parent):
        raise RuntimeError(f"Missing folder: {parent}. Fix: create it before saving {config_yaml}.")
    _save_hparams_to_yaml(fs, path, _hparams_dict(hparams), "save_hparams_to_yaml")


def _literal(value: str) -> Any:
    import ast

    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def save_hparams_to_tags_csv(tags_csv: Any, hparams: Any) -> None:
    """Write hyperparameters as a two-column CSV (``key,value``): Lightning's legacy ``meta_tags.csv`` format.

    Raises:
        RuntimeError: the folder of ``tags_csv`` does not exist.
    """
    import csv

    import fsspec.core

    fs, path = fsspec.core.url_to_fs(str(tags_csv))
    parent = path.rsplit("/", 1)[0] if "/" in path else "."
    if not fs.isdir(parent):
        raise RuntimeError(f"Missing folder: {parent}. Fix: create it before saving {tags_csv}.")
    with fs.open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["key", "value"], delimiter=",")
        writer.writerow({"key": "key", "value": "value"})
        for key, value in _hparams_dict(hparams).items():
            writer.writerow({"key": key, "value": value})


def load_hparams_from_tags_csv(tags_csv: Any) -> dict[str, Any]:
    """Read a ``key,value`` CSV written by :func:`save_hparams_to_tags_csv`; values parsed as Python literals.

    Returns ``{}`` with a ``RuntimeWarning`` when the file does not exist.
    """
    import csv

    import fsspec.core

    if _missing_file(tags_csv):
        return {}
    fs, path = fsspec.core.url_to_fs(str(tags_csv))
    with fs.open(path, "r", newline="") as f:
        rows = list(csv.reader(f, delimiter=","))
    return {row[0]: _literal(row[1]) for row in rows[1:] if len(row) >= 2}
