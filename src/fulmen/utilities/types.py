"""Type aliases of Lightning's public API (mirrors ``lightning.pytorch.utilities.types``).

User code annotates hooks with these (``def training_step(...) -> STEP_OUTPUT``,
``def configure_optimizers(self) -> OptimizerLRScheduler``), so they exist under the same names.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypedDict, runtime_checkable

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

_NUMBER = int | float
_METRIC = Tensor | _NUMBER | Any  # Any: a torchmetrics Metric, without importing torchmetrics
STEP_OUTPUT = Tensor | Mapping[str, Any] | None
_EVALUATE_OUTPUT = list[Mapping[str, float]]
_PREDICT_OUTPUT = list[Any] | list[list[Any]]
TRAIN_DATALOADERS = Any
EVAL_DATALOADERS = Any
_PATH = str | Path
_DEVICE = torch.device | str | int
_MAP_LOCATION_TYPE = _DEVICE | Mapping[_DEVICE, _DEVICE] | Any | None
_PARAMETERS = Iterator[torch.nn.Parameter]

LRSchedulerTypeTuple = (LRScheduler, ReduceLROnPlateau)
LRSchedulerTypeUnion = LRScheduler | ReduceLROnPlateau
LRSchedulerType = type[LRScheduler] | type[ReduceLROnPlateau]
LRSchedulerPLType = LRSchedulerTypeUnion


class LRSchedulerConfigType(TypedDict, total=False):
    scheduler: Any
    name: str | None
    interval: str
    frequency: int
    reduce_on_plateau: bool
    monitor: str | None
    strict: bool


class OptimizerConfig(TypedDict):
    optimizer: Optimizer


class OptimizerLRSchedulerConfig(TypedDict):
    optimizer: Optimizer
    lr_scheduler: LRSchedulerTypeUnion | LRSchedulerConfigType


OptimizerLRScheduler = (
    Optimizer
    | Sequence[Optimizer]
    | tuple[Sequence[Optimizer], Sequence[LRSchedulerTypeUnion | LRSchedulerConfigType]]
    | OptimizerConfig
    | OptimizerLRSchedulerConfig
    | Sequence[OptimizerConfig]
    | Sequence[OptimizerLRSchedulerConfig]
    | None
)



@runtime_checkable
class Steppable(Protocol):
    """Anything with an optimizer-like ``step(closure=None)`` (Lightning's ``fabric.utilities.types.Steppable``)."""

    def step(self, closure: Any | None = ...) -> Any: ...


@runtime_checkable
class Optimizable(Steppable, Protocol):
    """A :class:`Steppable` with ``param_groups`` and ``state_dict``: what ``torch.optim.Optimizer`` provides."""

    param_groups: list[dict[Any, Any]]
    defaults: dict[Any, Any]
    state: Any

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


# A process group handle (``torch.distributed.ProcessGroup``); ``Any`` so this module needs no torch.distributed.
CollectibleGroup = Any


def __getattr__(name: str) -> Any:
    # ``LRSchedulerConfig`` lives with the optimizer parsing in fulmen.core; utilities must not import core
    # at import time (layering), so it is resolved on first use.
    if name == "LRSchedulerConfig":
        from fulmen.core.optimizer import LRSchedulerConfig

        return LRSchedulerConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EVAL_DATALOADERS",
    "STEP_OUTPUT",
    "TRAIN_DATALOADERS",
    "CollectibleGroup",
    "LRSchedulerConfigType",
    "LRSchedulerPLType",
    "LRSchedulerType",
    "LRSchedulerTypeTuple",
    "LRSchedulerTypeUnion",
    "Optimizable",
    "OptimizerConfig",
    "OptimizerLRScheduler",
    "OptimizerLRSchedulerConfig",
    "Steppable",
]
