"""``lightning.pytorch.utilities.model_helpers``: ``is_overridden`` and ``get_torchvision_model``."""

from __future__ import annotations

import functools
import importlib.util

import pytest

import fulmen
from fulmen.core.model_helpers import get_torchvision_model, is_overridden
from fulmen.demos import BoringDataModule, BoringModel


def _decorate(fn):  # type: ignore[no-untyped-def]
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        return fn(*args, **kwargs)

    return wrapper


class _Callback(fulmen.Callback):
    def on_fit_start(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        pass


def test_is_overridden() -> None:
    assert not is_overridden("whatever", None)
    with pytest.raises(ValueError, match="Expected a parent"):
        is_overridden("whatever", object())
    model = BoringModel()
    assert not is_overridden("whatever", model)
    assert not is_overridden("whatever", model, parent=fulmen.LightningDataModule)
    assert is_overridden("training_step", model)
    assert not is_overridden("on_fit_start", model)
    assert is_overridden("train_dataloader", BoringDataModule())
    assert is_overridden("on_fit_start", _Callback()) and not is_overridden("on_fit_end", _Callback())
    with pytest.raises(ValueError, match="The parent should define the method"):
        is_overridden("training_step", model, parent=fulmen.Callback)


def test_is_overridden_sees_through_wrappers() -> None:
    class Decorated(BoringModel):
        @_decorate
        def on_train_start(self) -> None:
            pass

    model = Decorated()
    assert is_overridden("on_train_start", model)
    model.on_validation_start = functools.partial(BoringModel.on_validation_start, model)  # type: ignore[method-assign]
    assert not is_overridden("on_validation_start", model)  # the parent's own function, partially applied


def test_is_overridden_agrees_with_lightning_through_the_aliases() -> None:
    from fulmen.compat import lightning_imports

    with lightning_imports():
        from lightning.pytorch.utilities.model_helpers import is_overridden as aliased

    assert aliased is is_overridden


def test_get_torchvision_model() -> None:
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(ModuleNotFoundError, match="needs torchvision.*pip install torchvision"):
            get_torchvision_model("resnet18", weights=None)
    else:  # pragma: no cover - torchvision is not in the test environment
        model = get_torchvision_model("resnet18", weights=None)
        assert type(model).__name__ == "ResNet"
