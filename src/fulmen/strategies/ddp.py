"""``DDPStrategy``: one process per device, the model replicated, gradients all-reduced during backward.

Registered names (``fulmen.strategies``): ``ddp`` (the script is relaunched once per local rank, as
torchrun does), ``ddp_spawn``, ``ddp_fork``, ``ddp_notebook`` (workers started with multiprocessing),
each also as ``*_find_unused_parameters_{true,false}``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fulmen.accelerators import Accelerator
from fulmen.plugins.environments import ClusterEnvironment
from fulmen.plugins.precision import Precision
from fulmen.strategies.parallel import ParallelStrategy
from fulmen.utilities import distributed as fdist
from fulmen.utilities.exceptions import MisconfigurationException

_START_METHODS = ("popen", "spawn", "fork", "forkserver")


class DDPStrategy(ParallelStrategy):
    """Distributed data parallel.

    Args:
        start_method: ``"popen"`` relaunches the script per local rank (the default, like torchrun);
            ``"spawn"``, ``"fork"``, ``"forkserver"`` start workers with multiprocessing and return rank 0's
            results to the calling process (``fork`` works in notebooks).
        find_unused_parameters, static_graph, gradient_as_bucket_view, bucket_cap_mb, broadcast_buffers and any
            other keyword: passed to :class:`torch.nn.parallel.DistributedDataParallel`.
        ddp_comm_state, ddp_comm_hook: a DDP communication hook (e.g. fp16 gradient compression) and its state.
        process_group_backend, timeout, failure_timeout, sync_timeout: see
            :class:`~fulmen.strategies.parallel.ParallelStrategy`.
    """

    strategy_name = "ddp"

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        checkpoint_io: Any = None,
        precision: Precision | None = None,
        ddp_comm_state: object | None = None,
        ddp_comm_hook: Any = None,
        ddp_comm_wrapper: Any = None,
        model_averaging_period: int | None = None,
        process_group_backend: str | None = None,
        timeout: timedelta | None = fdist.default_pg_timeout,
        start_method: str = "popen",
        failure_timeout: float = 10.0,
        sync_timeout: float | None = None,
        precision_plugin: Precision | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            cluster_environment=cluster_environment,
            checkpoint_io=checkpoint_io,
            precision=precision,
            precision_plugin=precision_plugin,
            process_group_backend=process_group_backend,
            timeout=timeout,
            failure_timeout=failure_timeout,
            sync_timeout=sync_timeout,
        )
        if start_method not in _START_METHODS:
            raise MisconfigurationException(
                f"DDPStrategy(start_method={start_method!r}); expected one of {_START_METHODS}. Fix: e.g. 'popen'."
            )
        if model_averaging_period is not None or ddp_comm_wrapper is not None:
            from fulmen.utilities.exceptions import NotSupportedYetError

            raise NotSupportedYetError(
                "DDPStrategy(model_averaging_period=..., ddp_comm_wrapper=...) is not supported. Fix: pass a plain "
                "ddp_comm_hook instead."
            )
        self._start_method = start_method
        self._ddp_kwargs = kwargs
        self._ddp_comm_state = ddp_comm_state
        self._ddp_comm_hook = ddp_comm_hook
        self._in_forward = False
        self._manual_sync = True

    @property
    def start_method(self) -> str:
        return self._start_method

    def _configure_launcher(self) -> None:
        from fulmen.strategies.launchers import MultiProcessingLauncher, SubprocessScriptLauncher

        env = self._env()
        if env.creates_processes_externally:
            self._launcher = None  # torchrun, srun, ... (or our script launcher) already started this process
        elif self._start_method == "popen":
            self._launcher = SubprocessScriptLauncher(
                env, self.num_processes, self.num_nodes, self.failure_timeout
            )
        else:
            self._launcher = MultiProcessingLauncher(self, start_method=self._start_method)

    @staticmethod
    def _warm_up_before_fork() -> None:
        # DistributedDataParallel.__init__ imports torch._dynamo (seconds); forked workers inherit it
        import torch._dynamo  # noqa: F401

    # ------------------------------------------------------------------ the model
    def setup_module(self, module: nn.Module) -> nn.Module:
        if isinstance(module, DistributedDataParallel):
            return module
        if self.layer_sync is not None:
            module = self.layer_sync.apply(module)
        if not any(p.requires_grad for p in module.parameters()):
            self.model = None  # nothing to synchronize (evaluation of a frozen model)
            return module
        device_ids = [self.root_device.index or 0] if self.root_device.type == "cuda" else None
        try:
            ddp = DistributedDataParallel(module, device_ids=device_ids, **self._ddp_kwargs)
        except (RuntimeError, ValueError) as exc:
            if "same model across all ranks" in str(exc) or "inconsistent" in str(exc):
                raise MisconfigurationException(
                    f"The ranks built different models (DDP compares parameter shapes across ranks): {exc} Fix: build "
                    "the model the same way on every rank (no rank-dependent layers or sizes)."
                ) from exc
            raise
        if self._ddp_comm_hook is not None:
            ddp.register_comm_hook(state=self._ddp_comm_state, hook=self._ddp_comm_hook)
        self.model = ddp
        return ddp

    def module_to_device(self, module: nn.Module) -> None:
        module.to(self.root_device)

    def step_function(self, module: nn.Module, name: str) -> Any:
        step = super().step_function(module, name)
        if self.model is None or name != "training_step":
            return step
        manual = not getattr(module, "automatic_optimization", True)

        def tracked(*args: Any, **kwargs: Any) -> Any:
            ddp = self.model
            self._in_forward = True
            sync = ddp.require_backward_grad_sync  # type: ignore[union-attr]
            if manual:
                # manual optimization runs backward *inside* training_step; DDP's own pre/post-forward would
                # arm the reducer for a backward after forward returns. Arm it per manual_backward instead.
                self._manual_sync = bool(sync)
                ddp.require_backward_grad_sync = False  # type: ignore[union-attr]
            try:
                return step(*args, **kwargs)
            finally:
                self._in_forward = False
                if manual:
                    ddp.require_backward_grad_sync = sync  # type: ignore[union-attr]

        return tracked

    def backward(self, tensor: torch.Tensor, module: nn.Module | None, *args: Any, **kwargs: Any) -> None:
        ddp = self.model
        if not (self._in_forward and isinstance(ddp, DistributedDataParallel)):
            super().backward(tensor, module, *args, **kwargs)
            return
        ddp.require_backward_grad_sync = self._manual_sync
        _prepare_for_backward(ddp, tensor)
        try:
            super().backward(tensor, module, *args, **kwargs)
        finally:
            ddp.require_backward_grad_sync = False

    def no_backward_sync(self, module: Any, enabled: bool = True) -> Any:
        ddp = module if isinstance(module, DistributedDataParallel) else self.model
        if enabled and isinstance(ddp, DistributedDataParallel):
            return ddp.no_sync()
        return super().no_backward_sync(module, enabled)

    def __repr__(self) -> str:
        return f"DDPStrategy(start_method={self._start_method!r}, backend={self._process_group_backend!r})"


def _prepare_for_backward(model: DistributedDataParallel, output: Any) -> None:
    if torch.is_grad_enabled() and model.require_backward_grad_sync:
        model.require_forward_param_sync = True
        from torch.nn.parallel.distributed import _find_tensors

        find = model.find_unused_parameters and not model.static_graph
        args = list(_find_tensors(output)) if find else []  # type: ignore[no-untyped-call]
        reducer = model.reducer
        reducer._rebuild_buckets()
        reducer.prepare_for_backward(args)
    else:
        model.require_forward_param_sync = False



def _register_names() -> None:
    """``ddp`` relaunches the script once per local rank (like torchrun); the others start workers with
    multiprocessing. Each has ``find_unused_parameters`` variants."""
    from fulmen.strategies import STRATEGY_REGISTRY

    for base, method in (("ddp", "popen"), ("ddp_spawn", "spawn"), ("ddp_fork", "fork"), ("ddp_notebook", "fork")):
        STRATEGY_REGISTRY.register(
            base, DDPStrategy, f"DDP strategy with `start_method` {method!r}", override=True, start_method=method
        )
        for flag in (True, False):
            STRATEGY_REGISTRY.register(
                f"{base}_find_unused_parameters_{str(flag).lower()}",
                DDPStrategy,
                f"DDP strategy with `find_unused_parameters` as {flag} and `start_method` {method!r}",
                override=True,
                start_method=method,
                find_unused_parameters=flag,
            )


_register_names()

__all__ = ["DDPStrategy"]
