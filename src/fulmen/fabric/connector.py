"""Resolve (accelerator, strategy, devices, num_nodes, precision, plugins) into one configured strategy.

Names resolve through the registries (accelerators, strategies, precision); the cluster environment is
detected from the process's variables. The result is a strategy holding its accelerator, precision
plugin, checkpoint IO, cluster environment and launcher: the whole hardware layer, used by Fabric
and, through Fabric, by the Trainer.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from fulmen.accelerators import Accelerator, select_accelerator
from fulmen.plugins.environments import ClusterEnvironment, LightningEnvironment, detect_cluster_environment
from fulmen.plugins.precision import DeepSpeedPrecision, Precision, normalize_precision, select_precision
from fulmen.strategies import STRATEGY_REGISTRY, SingleDeviceStrategy, Strategy
from fulmen.utilities.exceptions import MisconfigurationException, MisconfigurationValueError
from fulmen.utilities.rank_zero import rank_zero_warn, sync_lightning_utilities


def _is_interactive() -> bool:
    import __main__

    return hasattr(sys, "ps1") or bool(sys.flags.interactive) or not hasattr(__main__, "__file__")


def build_strategy(
    accelerator: Any = "auto",
    strategy: Any = "auto",
    devices: Any = "auto",
    num_nodes: int = 1,
    precision: Any = None,
    plugins: Any = None,
) -> Strategy:
    """Build the configured strategy.

    Raises:
        MisconfigurationException: an unknown name, a device that is not there, flags that contradict the
            cluster environment or each other.
    """
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise MisconfigurationValueError(
            f"num_nodes={num_nodes!r}; expected a positive int. Fix: num_nodes=1."
        )
    sync_lightning_utilities()  # libraries using lightning_utilities' rank_zero_only need its rank set
    checkpoint_io = None
    precision_plugin: Precision | None = None
    environment: ClusterEnvironment | None = None
    for plugin in (
        plugins if isinstance(plugins, (list, tuple)) else ([plugins] if plugins is not None else [])
    ):
        if isinstance(plugin, Precision):
            precision_plugin = plugin
        elif isinstance(plugin, ClusterEnvironment):
            environment = plugin
        elif hasattr(plugin, "save_checkpoint") and hasattr(plugin, "load_checkpoint"):
            checkpoint_io = plugin
        else:
            raise MisconfigurationException(
                f"plugins contains {plugin!r}, which is neither a precision plugin, a cluster environment nor a "
                "CheckpointIO. Fix: pass fulmen.plugins instances."
            )
    if precision_plugin is not None and precision is not None:
        raise MisconfigurationException(
            f"Both precision={precision!r} and a precision plugin were given. Fix: pass only one of them."
        )
    if isinstance(strategy, Strategy):
        return _complete(
            strategy, accelerator, devices, num_nodes, precision, precision_plugin, checkpoint_io, environment
        )
    if not isinstance(strategy, str) and strategy is not None:
        raise MisconfigurationException(
            f"strategy={strategy!r}; expected a name ({STRATEGY_REGISTRY.names()}) or a Strategy instance."
        )
    name = "auto" if strategy is None else strategy
    env = environment or detect_cluster_environment()
    acc: Accelerator = select_accelerator(accelerator)
    devices = _devices_from_environment(devices, env, num_nodes)
    ids = acc.parse_devices(devices)
    n_procs = len(ids) * num_nodes
    if name == "dp" and acc.name != "cuda":
        # as Lightning: DataParallel needs CUDA GPUs; elsewhere the name means one process per device
        rank_zero_warn(f"strategy='dp' is not supported on accelerator={acc.name!r}; using strategy='ddp' instead.")
        name = "ddp"
    if name == "auto":
        if n_procs > 1:
            name = "ddp_fork" if _is_interactive() and not env.creates_processes_externally else "ddp"
        else:
            name = "single_device"
    if name == "single_device":
        if n_procs > 1:
            raise MisconfigurationException(
                f"strategy='single_device' runs one process, but devices={devices!r} x num_nodes={num_nodes} asks for "
                f"{n_procs}. Fix: use strategy='ddp' (or 'auto'), or devices=1."
            )
        device = acc.get_device(ids[0])
        prec = precision_plugin or _select_precision(precision, device.type)
        return SingleDeviceStrategy(
            device=device, accelerator=acc, checkpoint_io=checkpoint_io, precision=prec
        )
    built = STRATEGY_REGISTRY.get(name)
    return _complete(built, acc, ids, num_nodes, precision, precision_plugin, checkpoint_io, env)


def _devices_from_environment(devices: Any, env: ClusterEnvironment, num_nodes: int) -> Any:
    """``devices="auto"`` under torchrun/SLURM/...: as many as the tool started per node."""
    if devices != "auto" or not env.creates_processes_externally or isinstance(env, LightningEnvironment):
        return devices
    local = os.environ.get("LOCAL_WORLD_SIZE")
    if local is not None and local.isdigit():
        return int(local)
    world = env.world_size()
    return max(1, world // num_nodes) if world > 1 else devices


def _complete(
    strategy: Strategy,
    accelerator: Any,
    devices: Any,
    num_nodes: int,
    precision: Any,
    precision_plugin: Precision | None,
    checkpoint_io: Any,
    environment: ClusterEnvironment | None,
) -> Strategy:
    """Fill in what a strategy object was not given (accelerator, devices, environment, precision, launcher)."""
    from fulmen.strategies.parallel import ParallelStrategy

    if strategy.accelerator is None:
        strategy.accelerator = (
            accelerator if isinstance(accelerator, Accelerator) else select_accelerator(accelerator)
        )
    acc = strategy.accelerator
    if checkpoint_io is not None:
        strategy.checkpoint_io = checkpoint_io
    if isinstance(strategy, ParallelStrategy):
        if strategy.cluster_environment is None:
            strategy.cluster_environment = environment or detect_cluster_environment()
        env = strategy.cluster_environment
        if strategy.parallel_devices is None:
            ids = devices if isinstance(devices, list) and all(isinstance(i, int) for i in devices) else None
            if ids is None:
                ids = acc.parse_devices(_devices_from_environment(devices, env, num_nodes))
            strategy.parallel_devices = [acc.get_device(i) for i in ids]
        strategy.num_nodes = num_nodes
        strategy.set_world_ranks()  # ranks are known now (the calling process of a spawn launcher counts as 0)
        if env.creates_processes_externally and not isinstance(env, LightningEnvironment):
            env.validate_settings(len(strategy.parallel_devices), num_nodes)
        device_type = strategy.parallel_devices[0].type if strategy.parallel_devices else "cpu"
        configure = getattr(strategy, "_configure_launcher", None)
        if configure is not None:
            configure()
        launcher = strategy.launcher
        if launcher is not None and not launcher.is_interactive_compatible and _is_interactive():
            method = getattr(strategy, "start_method", "?")
            how = (
                "runs your script again once per device"
                if method == "popen"
                else f"starts fresh interpreters ({method}) that import your code by module name"
            )
            raise MisconfigurationException(
                f"{type(strategy).__name__}(start_method={method!r}) {how}, which code typed into a notebook or REPL "
                "cannot support. Fix: use strategy='ddp_notebook' (or 'ddp_fork'), or run the code as a script."
            )
    else:
        if getattr(strategy, "parallel_devices", ()) is None:  # DataParallelStrategy: the devices of one process
            strategy.parallel_devices = [acc.get_device(i) for i in acc.parse_devices(devices)]  # type: ignore[attr-defined]
        device_type = strategy.root_device.type if _has_root_device(strategy) else "cpu"
    if precision_plugin is not None:
        strategy.precision = precision_plugin
    elif precision is not None or type(strategy.precision) is Precision:
        own = isinstance(strategy.precision, DeepSpeedPrecision)  # the engine decides (and explains fp16 on CPU)
        strategy.precision = select_precision(precision, device_type) if own else _select_precision(precision, device_type)
    return strategy


def _select_precision(precision: Any, device_type: str) -> Precision:
    """The plugin for a precision flag; ``16-mixed`` on the CPU becomes ``bf16-mixed`` with a warning, as in
    Lightning (fp16 autocast on CPUs is slow and loses accuracy; bf16 is what CPUs support)."""
    if device_type == "cpu" and not isinstance(precision, Precision) and normalize_precision(precision) == "16-mixed":
        rank_zero_warn(
            f"precision={precision!r} (16-bit AMP) is not supported on the CPU; using precision='bf16-mixed' instead."
        )
        precision = "bf16-mixed"
    return select_precision(precision, device_type)


def _has_root_device(strategy: Strategy) -> bool:
    try:
        strategy.root_device  # noqa: B018
    except (NotImplementedError, AttributeError):
        return False
    return True
