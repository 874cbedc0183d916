"""``FSDPStrategy``: parameters, gradients and optimizer state sharded across ranks (PyTorch FSDP2, ``fully_shard``).

Registered as ``fsdp`` and ``fsdp_cpu_offload``. Each rank holds ``1/world_size`` of every sharded
parameter; a module's parameters are gathered just before its forward/backward and freed after. It
runs wherever the process group's backend has all-gather and reduce-scatter: NCCL on CUDA, gloo on CPU.

Checkpoints:

* ``state_dict_type="full"`` (default): the full state dict is gathered (to CPU) and rank 0 writes one
  ordinary checkpoint file, which loads on any number of processes, with or without FSDP.
* ``state_dict_type="sharded"``: every rank writes its shards with ``torch.distributed.checkpoint`` into a
  directory (fast, no gather; reload with the same or another world size). Supported by ``Fabric.save`` /
  ``Fabric.load`` and by ``Trainer.save_checkpoint``; the Trainer resumes only from full checkpoints.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fulmen.accelerators import Accelerator
from fulmen.plugins.environments import ClusterEnvironment
from fulmen.plugins.precision import Precision
from fulmen.strategies.parallel import ParallelStrategy, forward_redirection
from fulmen.utilities import distributed as fdist
from fulmen.utilities.exceptions import MisconfigurationException, NotSupportedYetError

_META = "meta.pt"


def _fsdp2() -> Any:
    try:
        from torch.distributed.fsdp import fully_shard  # torch >= 2.6
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard  # type: ignore[attr-defined,no-redef,unused-ignore]
        except ImportError as exc:
            raise NotSupportedYetError(
                f"strategy='fsdp' needs FSDP2 (torch.distributed.fsdp.fully_shard), which torch {torch.__version__} "
                "does not have. Fix: upgrade to torch>=2.6, or use strategy='ddp'."
            ) from exc
    return fully_shard


class FSDPStrategy(ParallelStrategy):
    """Fully sharded data parallel (FSDP2).

    Args:
        auto_wrap_policy: which submodules get their own shard group (gathered and freed separately): a set of
            module classes, or ``policy(module) -> bool``. Default: one group for the whole model.
        sharding_strategy: ``"FULL_SHARD"`` (free gathered parameters after forward), ``"SHARD_GRAD_OP"`` (keep
            them until after backward) or ``"HYBRID_SHARD"`` (shard within a node, replicate across nodes).
        cpu_offload: keep parameter shards and optimizer state on the CPU.
        mixed_precision: a ``torch.distributed.fsdp.MixedPrecisionPolicy`` (the precision flag's autocast is
            applied either way).
        activation_checkpointing_policy: module classes (or a predicate) whose forward is recomputed in backward.
        state_dict_type: ``"full"`` or ``"sharded"`` (see the module docstring).
        start_method, process_group_backend, timeout, failure_timeout, sync_timeout: as for DDP.
    """

    strategy_name = "fsdp"
    shards_parameters = True

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        checkpoint_io: Any = None,
        precision: Precision | None = None,
        process_group_backend: str | None = None,
        timeout: timedelta | None = fdist.default_pg_timeout,
        cpu_offload: bool = False,
        mixed_precision: Any = None,
        auto_wrap_policy: Any = None,
        activation_checkpointing_policy: Any = None,
        sharding_strategy: str = "FULL_SHARD",
        state_dict_type: str = "full",
        start_method: str = "popen",
        failure_timeout: float = 10.0,
        sync_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            cluster_environment=cluster_environment,
            checkpoint_io=checkpoint_io,
            precision=precision,
            process_group_backend=process_group_backend,
            timeout=timeout,
            failure_timeout=failure_timeout,
            sync_timeout=sync_timeout,
        )
        _fsdp2()
        strategy = str(sharding_strategy).upper()
        if strategy not in ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD"):
            raise MisconfigurationException(
                f"FSDPStrategy(sharding_strategy={sharding_strategy!r}); expected 'FULL_SHARD', 'SHARD_GRAD_OP' or "
                "'HYBRID_SHARD'. Fix: for no sharding use strategy='ddp'."
            )
        if state_dict_type not in ("full", "sharded"):
            raise MisconfigurationException(
                f"FSDPStrategy(state_dict_type={state_dict_type!r}); expected 'full' or 'sharded'."
            )
        if kwargs:
            raise MisconfigurationException(
                f"FSDPStrategy got unknown arguments {sorted(kwargs)}. Fix: see the FSDPStrategy docstring for what "
                "it takes."
            )
        self.sharding_strategy = strategy
        self.cpu_offload = cpu_offload
        self.mixed_precision = mixed_precision
        self.auto_wrap_policy = auto_wrap_policy
        self.activation_checkpointing_policy = activation_checkpointing_policy
        self.state_dict_type = state_dict_type
        self._start_method = start_method
        self._mesh: Any = None
        self._models: list[weakref.ref[nn.Module]] = []

    @property
    def start_method(self) -> str:
        return self._start_method

    def _configure_launcher(self) -> None:
        from fulmen.strategies.launchers import MultiProcessingLauncher, SubprocessScriptLauncher

        env = self._env()
        if env.creates_processes_externally:
            self._launcher = None
        elif self._start_method == "popen":
            self._launcher = SubprocessScriptLauncher(
                env, self.num_processes, self.num_nodes, self.failure_timeout
            )
        else:
            self._launcher = MultiProcessingLauncher(self, start_method=self._start_method)

    @staticmethod
    def _warm_up_before_fork() -> None:
        import torch.distributed.fsdp
        import torch.distributed.tensor  # noqa: F401

    # ------------------------------------------------------------------ the model
    @property
    def mesh(self) -> Any:
        if self._mesh is None:
            from torch.distributed.device_mesh import init_device_mesh

            device_type = self.root_device.type
            if self.sharding_strategy == "HYBRID_SHARD" and self.num_nodes > 1:
                self._mesh = init_device_mesh(
                    device_type, (self.num_nodes, self.num_processes), mesh_dim_names=("replicate", "shard")
                )
            else:
                self._mesh = init_device_mesh(device_type, (self.world_size,))
        return self._mesh

    def _wrap_policy(self) -> Callable[[nn.Module], bool] | None:
        return _as_predicate(self.auto_wrap_policy, "auto_wrap_policy")

    def setup_module(self, module: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FSDPModule

        if isinstance(module, FSDPModule):
            self.model = module
            return module
        if self.layer_sync is not None:
            module = self.layer_sync.apply(module)
        fully_shard = _fsdp2()
        kwargs: dict[str, Any] = {
            "mesh": self.mesh,
            "reshard_after_forward": self.sharding_strategy != "SHARD_GRAD_OP",
        }
        if self.mixed_precision is not None:
            kwargs["mp_policy"] = self.mixed_precision
        if self.cpu_offload:
            from torch.distributed.fsdp import CPUOffloadPolicy

            kwargs["offload_policy"] = CPUOffloadPolicy()
        checkpointed = _as_predicate(self.activation_checkpointing_policy, "activation_checkpointing_policy")
        if checkpointed is not None:
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
                apply_activation_checkpointing,
            )

            apply_activation_checkpointing(module, check_fn=checkpointed)
        policy = self._wrap_policy()
        if policy is not None:
            # children before parents: each group owns the parameters not already in a smaller group
            for sub in reversed(list(module.modules())):
                if sub is not module and policy(sub) and any(True for _ in sub.parameters()):
                    fully_shard(sub, **kwargs)
        root_kwargs = dict(kwargs)
        if self.sharding_strategy != "SHARD_GRAD_OP":
            # torch's default for the root: keep its parameters gathered from forward to backward. A step that
            # calls ``self(x)`` and then a submodule of the root group directly needs them still gathered.
            del root_kwargs["reshard_after_forward"]
        fully_shard(module, **root_kwargs)
        self.model = module
        self._models.append(weakref.ref(module))
        return module

    def _owner(self, optimizer: Any) -> nn.Module:
        model = self._model_for(optimizer)
        if model is None:
            raise MisconfigurationException(
                "This optimizer's parameters belong to no module set up with FSDP."
            )
        return model

    def _model_for(self, optimizer: Any) -> nn.Module | None:
        """The sharded module whose parameters ``optimizer`` updates (Fabric may set up several)."""
        ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        for ref in reversed(self._models):
            module = ref()
            if module is not None and any(id(p) in ids for p in module.parameters()):
                return module
        return self.model

    def module_to_device(self, module: nn.Module) -> None:
        if not self.cpu_offload:
            module.to(self.root_device)

    def check_optimizers(self, optimizers: Iterable[Any]) -> None:
        """Fabric: an optimizer must be built from the *sharded* parameters (after ``setup_module``)."""
        from torch.distributed.tensor import DTensor

        for opt in optimizers:
            opt = getattr(opt, "optimizer", opt)
            params = [p for g in opt.param_groups for p in g["params"]]
            if params and not any(isinstance(p, DTensor) for p in params):
                raise MisconfigurationException(
                    "With strategy='fsdp' the optimizer must be created after the model is set up (sharding replaces "
                    "the parameters). Fix: `model = fabric.setup_module(model)`, then `optimizer = "
                    "fabric.setup_optimizers(torch.optim.AdamW(model.parameters()))`."
                )

    def step_function(self, module: nn.Module, name: str) -> Any:
        """``training_step`` and also ``validation/test/predict_step`` run inside the root module's ``forward``.

        FSDP2 gathers the parameters of a shard group in that group's forward pre-hook, and the root's hook
        is also where FSDP initializes itself. A step that calls a submodule directly (``self.encoder(x)``
        instead of ``self(x)``) would otherwise see parameter shards (DTensors) wherever the submodule is not
        its own shard group, or fail with "FSDP requires running forward through the root module first".
        """
        from torch.distributed.fsdp import FSDPModule

        step = super().step_function(module, name)
        if not isinstance(module, FSDPModule) or self.model is not module:
            return step
        # training_step already runs inside the root's forward (ParallelStrategy.step_function)
        run = step if name == "training_step" else partial(forward_redirection, module, module, name)

        def explained(*args: Any, **kwargs: Any) -> Any:
            try:
                return run(*args, **kwargs)
            except RuntimeError as exc:
                if "mixed torch.Tensor and DTensor" not in str(exc):
                    raise
                raise RuntimeError(
                    f"{type(module).__name__.removeprefix('FSDP')}.{name} used a parameter that FSDP had not "
                    f"gathered: {exc} A shard group's parameters are gathered only while one of its modules is "
                    "called (runs forward); the root group's (those in no auto_wrap_policy group) stay gathered for "
                    "the whole step. Fix: call the submodule (`self.encoder(x)`) instead of using its parameters or "
                    "other methods directly, or leave that submodule out of auto_wrap_policy."
                ) from exc

        return explained

    def no_backward_sync(self, module: Any, enabled: bool = True) -> Any:
        target = module if hasattr(module, "set_requires_gradient_sync") else self.model
        if not enabled or target is None or not hasattr(target, "set_requires_gradient_sync"):
            return super().no_backward_sync(module, enabled)
        return _no_gradient_sync(target)

    @contextmanager
    def module_init_context(self, empty_init: bool | None = None) -> Any:
        # build on the meta device when asked to (no memory until sharded), else as usual
        if empty_init:
            with torch.device("meta"), self.precision.module_init_context():
                yield
        else:
            with super().module_init_context(empty_init):
                yield

    # ------------------------------------------------------------------ state
    def _options(self, full: bool) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=full, cpu_offload=full)

    def module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        from torch.distributed.fsdp import FSDPModule

        if not isinstance(module, FSDPModule) or self._broken:
            return module.state_dict()
        return get_model_state_dict(module, options=self._options(self.state_dict_type == "full"))

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        model = self._model_for(optimizer)
        if model is None or self._broken:
            state: dict[str, Any] = optimizer.state_dict()
            return state
        return get_optimizer_state_dict(
            model, optimizer, options=self._options(self.state_dict_type == "full")
        )

    def load_module_state_dict(
        self, module: nn.Module, state_dict: dict[str, Any], strict: bool = True
    ) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.fsdp import FSDPModule

        if not isinstance(module, FSDPModule):
            return module.load_state_dict(state_dict, strict=strict)
        full = not any(type(v).__name__ == "DTensor" for v in state_dict.values())
        return set_model_state_dict(
            module, state_dict, options=StateDictOptions(full_state_dict=full, strict=strict)
        )

    def load_optimizer_state(self, optimizer: Any, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        model = self._model_for(optimizer)
        if model is None:
            optimizer.load_state_dict(state)
            return
        full = not _has_dtensor(state)
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=full))

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        if self.state_dict_type == "full":
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        import torch.distributed.checkpoint as dcp

        self.sync_point(f"save_checkpoint {os.path.basename(str(filepath))}")
        path = Path(filepath)
        tensors = {k: v for k, v in checkpoint.items() if _has_dtensor(v)}
        rest = {k: v for k, v in checkpoint.items() if k not in tensors}
        if self.is_global_zero:
            path.mkdir(parents=True, exist_ok=True)
        self.barrier("fsdp sharded save")
        dcp.save(tensors, checkpoint_id=str(path))  # type: ignore[attr-defined]
        if self.is_global_zero:
            from fulmen.utilities.cloud_io import atomic_save

            atomic_save({"sharded_keys": sorted(tensors), **rest}, str(path / _META))

    def load_checkpoint(
        self, path: Any, weights_only: bool | None = None, map_location: Any = None
    ) -> dict[str, Any]:
        if Path(str(path)).is_dir() and (Path(str(path)) / _META).exists():
            raise NotSupportedYetError(
                f"{str(path)!r} is a sharded FSDP checkpoint; loading one needs the sharded model as a template. "
                "Fix: load it with fabric.load(path, {'model': model, 'optimizer': optimizer}), or save with "
                "FSDPStrategy(state_dict_type='full') to resume the Trainer."
            )
        return super().load_checkpoint(path, weights_only=weights_only, map_location=map_location)

    def load_sharded(self, path: Any, state: dict[str, Any], strict: bool = True) -> dict[str, Any]:
        """``Fabric.load`` of a sharded checkpoint: the objects in ``state`` are filled in place (every rank reads
        only its shards); returns the checkpoint's other entries."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        path = Path(str(path))
        meta = torch.load(path / _META, map_location="cpu", weights_only=False)
        sharded = set(meta.pop("sharded_keys"))
        modules = {
            k: getattr(v, "module", v)
            for k, v in state.items()
            if isinstance(getattr(v, "module", v), nn.Module)
        }
        template: dict[str, Any] = {}
        for key, obj in state.items():
            if key not in sharded:
                continue
            if key in modules:
                template[key] = get_model_state_dict(modules[key])
            else:
                opt = getattr(obj, "optimizer", obj)
                template[key] = get_optimizer_state_dict(self._owner(opt), opt)
        dcp.load(template, checkpoint_id=str(path))  # type: ignore[attr-defined]
        opts = StateDictOptions(strict=strict)
        for key, value in template.items():
            obj = state[key]
            if key in modules:
                set_model_state_dict(modules[key], value, options=opts)
            else:
                opt = getattr(obj, "optimizer", obj)
                set_optimizer_state_dict(self._owner(opt), opt, value, options=opts)
        missing = [k for k in state if k not in sharded and k not in meta]
        if missing and strict:
            raise KeyError(
                f"Fabric.load: {missing} are not in the checkpoint {str(path)!r}. Fix: pass strict=False."
            )
        return {k: v for k, v in meta.items() if k not in state or not hasattr(state[k], "load_state_dict")}

    @staticmethod
    def is_sharded_checkpoint(path: Any) -> bool:
        p = Path(str(path))
        return p.is_dir() and (p / _META).exists()

    def teardown(self) -> None:
        super().teardown()

    def __repr__(self) -> str:
        return f"FSDPStrategy(sharding_strategy={self.sharding_strategy!r}, state_dict_type={self.state_dict_type!r})"


class ModelParallelStrategy(FSDPStrategy):
    """Lightning's DTensor strategy: here FSDP2 over all ranks; tensor parallelism is applied by the user in
    ``configure_model`` (the mesh is ``self.device_mesh``)."""

    def __init__(
        self, data_parallel_size: Any = "auto", tensor_parallel_size: Any = 1, **kwargs: Any
    ) -> None:
        if tensor_parallel_size not in ("auto", 1):
            raise NotSupportedYetError(
                f"ModelParallelStrategy(tensor_parallel_size={tensor_parallel_size}) is not supported yet. Fix: use "
                "tensor_parallel_size=1 (FSDP2 data parallelism) or strategy='fsdp'."
            )
        super().__init__(**kwargs)

    @property
    def device_mesh(self) -> Any:
        return self.mesh


@contextmanager
def _no_gradient_sync(module: Any) -> Any:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def _as_predicate(policy: Any, name: str) -> Callable[[nn.Module], bool] | None:
    if policy is None:
        return None
    if isinstance(policy, (set, list, tuple, frozenset)):
        classes = tuple(policy)
        if not all(isinstance(c, type) and issubclass(c, nn.Module) for c in classes):
            raise MisconfigurationException(f"FSDPStrategy({name}={policy!r}): expected nn.Module classes.")
        return lambda m: isinstance(m, classes)
    if isinstance(policy, type) and issubclass(policy, nn.Module):
        return lambda m: isinstance(m, policy)
    if callable(policy):
        return policy  # type: ignore[no-any-return]
    raise MisconfigurationException(
        f"FSDPStrategy({name}={policy!r}): expected a set of module classes or a function module -> bool."
    )


def _has_dtensor(obj: Any) -> bool:
    if type(obj).__name__ == "DTensor":
        return True
    if isinstance(obj, dict):
        return any(_has_dtensor(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_dtensor(v) for v in obj)
    return False


__all__ = ["FSDPStrategy", "ModelParallelStrategy"]
