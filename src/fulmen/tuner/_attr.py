"""Find a tunable value (``lr``, ``batch_size``, ...) on the model, its hparams, or the datamodule."""

from __future__ import annotations

from typing import Any


def _holders(trainer: Any, model: Any, name: str) -> list[Any]:
    """Every object that holds ``name``: the model, ``model.hparams``, the datamodule, ``datamodule.hparams``."""
    found: list[Any] = []
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    for obj in (model, dm):
        if obj is None:
            continue
        if name in getattr(obj, "__dict__", {}) or isinstance(
            getattr(type(obj), name, None), (property, int, float)
        ):
            found.append(obj)
        hparams = getattr(obj, "hparams", None)
        if isinstance(hparams, dict) and name in hparams:
            found.append(hparams)
    return found


def _model_holders(model: Any, name: str, trainer: Any) -> list[Any]:
    """:func:`_holders` with the model's own trainer when ``trainer`` is not given."""
    return _holders(trainer if trainer is not None else getattr(model, "_trainer", None), model, name)


def _existing_holders(model: Any, name: str, trainer: Any) -> list[Any]:
    """:func:`_model_holders`, which must find at least one.

    Raises:
        AttributeError: If no object holds ``name``.
    """
    holders = _model_holders(model, name, trainer)
    if not holders:
        raise AttributeError(
            f"{name!r} is neither an attribute nor an hparam of the model, nor of the datamodule. Fix: store it on "
            f"the model (self.{name} = ...) or save it with self.save_hyperparameters()."
        )
    return holders


def lightning_hasattr(model: Any, name: str, trainer: Any = None) -> bool:
    """Whether ``name`` is an attribute or hparam of the model or of the trainer's datamodule."""
    return bool(_model_holders(model, name, trainer))


def lightning_getattr(model: Any, name: str, trainer: Any = None) -> Any:
    """The value of ``name`` (model attribute first, then hparams, then the datamodule).

    Raises:
        AttributeError: If no object holds ``name``.
    """
    holders = _existing_holders(model, name, trainer)
    first = holders[0]
    return first[name] if isinstance(first, dict) else getattr(first, name)


def lightning_setattr(model: Any, name: str, value: Any, trainer: Any = None) -> None:
    """Set ``name`` everywhere it is held (model, hparams, datamodule), so every reader sees the new value.

    Raises:
        AttributeError: If no object holds ``name``.
    """
    holders = _existing_holders(model, name, trainer)
    for holder in holders:
        if isinstance(holder, dict):
            holder[name] = value
        else:
            setattr(holder, name, value)
