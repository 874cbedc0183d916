"""``lightning.pytorch.utilities.model_helpers``: ``is_overridden`` and ``get_torchvision_model``.

It lives in ``core`` (not ``utilities``) because ``is_overridden`` picks its default parent among the module,
datamodule and callback classes, which ``utilities`` may not import.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from fulmen.core.callback import Callback
from fulmen.core.datamodule import LightningDataModule
from fulmen.core.module import LightningModule

_DEFAULT_PARENTS = (LightningModule, LightningDataModule, Callback)


def _function_of(attr: Any) -> Any:
    """The plain function behind a bound method, a ``functools.partial`` or a decorated function."""
    while True:
        if isinstance(attr, functools.partial):
            attr = attr.func
        elif hasattr(attr, "__func__"):  # bound method
            attr = attr.__func__
        elif hasattr(attr, "__wrapped__") and not hasattr(attr, "__code__"):
            attr = attr.__wrapped__
        else:
            return attr


def is_overridden(method_name: str, instance: object | None = None, parent: type[object] | None = None) -> bool:
    """Whether ``instance`` (or its class) defines ``method_name`` differently from ``parent``.

    ``parent`` defaults to ``LightningModule``, ``LightningDataModule`` or ``Callback``, whichever ``instance`` is.
    ``instance=None`` gives False (so ``is_overridden("x", trainer.lightning_module)`` is safe before setup).

    Raises:
        ValueError: ``parent`` is not given and ``instance`` is none of those types, or ``parent`` has no
            ``method_name``.
    """
    if instance is None:
        return False
    if parent is None:
        parent = next((base for base in _DEFAULT_PARENTS if isinstance(instance, base)), None)
        if parent is None:
            raise ValueError(
                f"Expected a parent: {type(instance).__name__} is not a LightningModule, LightningDataModule or "
                "Callback. Fix: pass parent=<the base class that defines the method>."
            )
    instance_attr = getattr(instance, method_name, None)
    if instance_attr is None:
        return False
    parent_attr = getattr(parent, method_name, None)
    if parent_attr is None:
        raise ValueError(
            f"The parent should define the method: {parent.__name__} has no {method_name!r}. Fix: pass the base "
            "class that defines it as parent=."
        )
    mock_value = getattr(instance_attr, "_mock_return_value", None)  # unittest.mock: a Mock(return_value=bool)
    if type(instance_attr).__module__ == "unittest.mock" and isinstance(mock_value, bool):
        return mock_value
    instance_fn, parent_fn = _function_of(instance_attr), _function_of(parent_attr)
    instance_code = getattr(instance_fn, "__code__", None)
    parent_code = getattr(parent_fn, "__code__", None)
    if instance_code is None or parent_code is None:
        return instance_fn is not parent_fn
    return bool(instance_code != parent_code)


def get_torchvision_model(model_name: str, **kwargs: Any) -> nn.Module:
    """Build ``torchvision.models.<model_name>(**kwargs)``, e.g. ``get_torchvision_model("resnet18", weights=None)``.

    Raises:
        ModuleNotFoundError: torchvision is not installed.
        ValueError: torchvision has no model of that name.
    """
    try:
        from torchvision import models
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"get_torchvision_model({model_name!r}) needs torchvision, which is not installed. "
            "Fix: pip install torchvision."
        ) from err
    get_model = getattr(models, "get_model", None)
    if get_model is not None:
        return get_model(model_name, **kwargs)  # type: ignore[no-any-return]
    builder = getattr(models, model_name, None)
    if builder is None:
        raise ValueError(f"torchvision has no model {model_name!r}. Fix: see torchvision.models.list_models().")
    return builder(**kwargs)  # type: ignore[no-any-return]
