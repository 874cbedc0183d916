"""Resolve (accelerator, strategy, devices, num_nodes, precision, plugins) into plugin instances."""

from __future__ import annotations

from typing import Any

from fulmen.accelerators import Accelerator, select_accelerator
from fulmen.plugins.precision import Precision, select_precision
from fulmen.strategies import STRATEGY_REGISTRY, SingleDeviceStrategy, Strategy
from fulmen.utilities.exceptions import MisconfigurationException, NotSupportedYetError


def build_strategy(
    accelerator: Any = "auto",
    strategy: Any = "auto",
    devices: Any = "auto",
    num_nodes: int = 1,
    precision: Any = None,
    plugins: Any = None,
) -> Strategy:
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise MisconfigurationException(f"num_nodes={num_nodes!r}; expected a positive int. Fix: num_nodes=1.")
    checkpoint_io = None
    precision_plugin: Precision | None = None
    for plugin in plugins if isinstance(plugins, (list, tuple)) else ([plugins] if plugins is not None else []):
        if isinstance(plugin, Precision):
            precision_plugin = plugin
        elif hasattr(plugin, "save_checkpoint") and hasattr(plugin, "load_checkpoint"):
            checkpoint_io = plugin
        else:
            raise MisconfigurationException(
                f"plugins contains {plugin!r}, which is neither a precision plugin nor a CheckpointIO. "
                "Fix: pass fulmen.plugins precision or checkpoint IO instances."
            )
    if isinstance(strategy, Strategy):
        if strategy.accelerator is None:
            strategy.accelerator = select_accelerator(accelerator)
        if precision_plugin is not None:
            strategy.precision = precision_plugin
        if checkpoint_io is not None:
            strategy.checkpoint_io = checkpoint_io
        return strategy
    acc: Accelerator = select_accelerator(accelerator)
    ids = acc.parse_devices(devices)
    if num_nodes > 1 or len(ids) > 1:
        if strategy in ("auto", "single_device", None):
            raise NotSupportedYetError(
                f"devices={devices!r}, num_nodes={num_nodes} asks for {len(ids) * num_nodes} processes; multi-process "
                "strategies are not supported yet. Fix: use devices=1, num_nodes=1."
            )
    if strategy not in ("auto", None, "single_device"):
        STRATEGY_REGISTRY.get(strategy)  # raises a clear error for unknown / not-yet names
    device = acc.get_device(ids[0])
    if precision_plugin is None:
        precision_plugin = select_precision(precision, device.type)
    elif precision is not None:
        raise MisconfigurationException(
            f"Both precision={precision!r} and a precision plugin were given. Fix: pass only one of them."
        )
    return SingleDeviceStrategy(device=device, accelerator=acc, checkpoint_io=checkpoint_io, precision=precision_plugin)
