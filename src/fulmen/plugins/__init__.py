"""Plugins (``lightning.pytorch.plugins``): precision, checkpoint IO, cluster environments and layer sync.

Names resolve lazily, so importing ``fulmen.plugins`` imports none of them until used.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Precision": "fulmen.plugins.precision",
    "MixedPrecision": "fulmen.plugins.precision",
    "HalfPrecision": "fulmen.plugins.precision",
    "DoublePrecision": "fulmen.plugins.precision",
    "DeepSpeedPrecision": "fulmen.plugins.precision",
    "CheckpointIO": "fulmen.checkpoint",
    "TorchCheckpointIO": "fulmen.checkpoint",
    "AsyncCheckpointIO": "fulmen.checkpoint",
    "ClusterEnvironment": "fulmen.plugins.environments",
    "LightningEnvironment": "fulmen.plugins.environments",
    "TorchElasticEnvironment": "fulmen.plugins.environments",
    "SLURMEnvironment": "fulmen.plugins.environments",
    "KubeflowEnvironment": "fulmen.plugins.environments",
    "LSFEnvironment": "fulmen.plugins.environments",
    "MPIEnvironment": "fulmen.plugins.environments",
    "LayerSync": "fulmen.plugins.layer_sync",
    "TorchSyncBatchNorm": "fulmen.plugins.layer_sync",
}

__all__ = [
    "AsyncCheckpointIO",
    "CheckpointIO",
    "ClusterEnvironment",
    "DeepSpeedPrecision",
    "DoublePrecision",
    "HalfPrecision",
    "KubeflowEnvironment",
    "LSFEnvironment",
    "LayerSync",
    "LightningEnvironment",
    "MPIEnvironment",
    "MixedPrecision",
    "Precision",
    "SLURMEnvironment",
    "TorchCheckpointIO",
    "TorchElasticEnvironment",
    "TorchSyncBatchNorm",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fulmen.plugins' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
