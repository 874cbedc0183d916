"""fulmen: the PyTorch Lightning 2.x API on a faster, lighter, more reliable engine.

``import fulmen as L`` gives ``L.LightningModule``, ``L.LightningDataModule``, ``L.Trainer``,
``L.Callback``, ``L.Fabric`` and ``L.seed_everything``. Names are resolved lazily so that
``import fulmen`` stays cheap (it imports torch and nothing optional).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fulmen.__about__ import __version__

_LAZY = {
    "LightningModule": "fulmen.core.module",
    "LightningDataModule": "fulmen.core.datamodule",
    "Trainer": "fulmen.trainer.trainer",
    "Callback": "fulmen.callbacks.callback",
    "Fabric": "fulmen.fabric.fabric",
    "seed_everything": "fulmen.utilities.seed",
    "cli_lightning_logo": "fulmen.utilities.logo",
}

__all__ = [
    "Callback",
    "Fabric",
    "LightningDataModule",
    "LightningModule",
    "Trainer",
    "__version__",
    "cli_lightning_logo",
    "seed_everything",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fulmen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from fulmen.callbacks.callback import Callback
    from fulmen.core.datamodule import LightningDataModule
    from fulmen.core.module import LightningModule
    from fulmen.fabric.fabric import Fabric
    from fulmen.trainer.trainer import Trainer
    from fulmen.utilities.logo import cli_lightning_logo
    from fulmen.utilities.seed import seed_everything
