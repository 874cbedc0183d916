"""``FSDPStrategy``: parameters, gradients and optimizer state sharded across ranks (PyTorch FSDP2, ``fully_shard``).

Registered as ``fsdp`` and ``fsdp_cpu_offload``. Each rank holds ``1/world_size`` of every sharded
parameter; a module's parameters are gathered just before its forward/backward and freed after. It
runs wherever the process group's backend has all-gather and reduce-scatter: NCCL on CUDA, gloo on CPU.

Checkpoints:

* ``state_dict_type="full"`` (default): the full state dict is gathered (to CPU) and rank 0 writes one
  ordinary checkpoint file, which loads on any number of processes, with or without FSDP.
* ``state_dict_type="sharded"``: every rank writes its shards with ``torch.distributed.checkpoint`` into a
  directory (fast, no gather; reload with the same or another world size; layout in
  :mod:`fulmen.checkpoint.sharded`). ``Fabric.load`` and the Trainer's ``ckpt_path`` read it in place: the
  small entries first, then the weights once the model is sharded and the optimizer states once the
  optimizers exist, each rank reading only its shards. Without FSDP (or with ``fulmen fabric consolidate``)
  the directory is consolidated into a full checkpoint on one process.

Steps: ``training_step`` and also ``validation/test/predict_step`` run inside the root module's forward, so a
step may call submodules directly (``self.encoder(x)``). Inside a gradient-accumulation window FSDP holds each
rank's gradients unreduced; a checkpoint written there stores them reduced and sharded (exact resume).
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
from fulmen.checkpoint.sharded import (
    META_FILE,
    SHARDED_GRADS,
    SHARDED_KEYS,
    ShardedEntry,
    check_sharded_folder,
    is_sharded_checkpoint,
    read_meta,
)
from fulmen.plugins.environments import ClusterEnvironment
from fulmen.plugins.precision import Precision
from fulmen.strategies.parallel import ParallelStrategy, forward_redirection
from fulmen.utilities import distributed as fdist
from fulmen.utilities.exceptions import MisconfigurationException, NotSupportedYetError


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

    @contextmanager
    def tensor_init_context(self, empty_init: bool | None = None) -> Any:
        # as module_init_context: tensors made on the meta device are materialized when the module is sharded
        if empty_init:
            with torch.device("meta"), self.precision.tensor_init_context():
                yield
        else:
            with super().tensor_init_context(empty_init):
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

    def full_module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        """The whole (gathered, CPU) state dict whatever ``state_dict_type`` is: what a launched run hands back
        to the caller's model."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        from torch.distributed.fsdp import FSDPModule

        if not isinstance(module, FSDPModule) or self._broken:
            return module.state_dict()
        return get_model_state_dict(module, options=self._options(True))

    def accumulated_gradients(self, module: nn.Module) -> dict[str, Any]:
        """The gradients of an open accumulation window, for a checkpoint: sharded like the parameters (whole
        tensors with ``state_dict_type="full"``). With gradient sync off FSDP keeps each rank's unreduced sum
        unsharded inside; it is reduced here as FSDP's own reduce-scatter would (sum over ranks / their number)
        and added to the sharded gradient already there. The live gradients are not changed (a collective)."""
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor, Partial

        pending: dict[int, torch.Tensor] = {}
        for sub in module.modules():
            if not isinstance(sub, FSDPModule):
                continue
            for group in sub._get_fsdp_state()._fsdp_param_groups:
                for fsdp_param in group.fsdp_params:
                    local = fsdp_param.unsharded_accumulated_grad
                    if local is None and hasattr(fsdp_param, "_unsharded_param"):
                        local = fsdp_param._unsharded_param.grad
                    if local is not None:
                        pending[id(fsdp_param.sharded_param)] = local
        out: dict[str, Any] = {}
        for name, param in module.named_parameters():
            grad: Any = param.grad.detach().clone() if param.grad is not None else None
            local = pending.get(id(param))
            if local is not None and isinstance(param, DTensor):
                if isinstance(local, DTensor):
                    local = local.to_local()
                mesh = param.device_mesh
                reduced: Any = DTensor.from_local(
                    local.detach().to(param.dtype),
                    mesh,
                    [Partial()] * mesh.ndim,
                    run_check=False,
                    shape=param.shape,
                    stride=param.stride(),
                ).redistribute(mesh, param.placements)
                reduced = reduced / mesh.size()
                grad = reduced if grad is None else grad + reduced
            if grad is not None:
                whole = self.state_dict_type == "full" and isinstance(grad, DTensor)
                out[name] = grad.full_tensor().cpu() if whole else grad
        return out

    def place_gradient(self, param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """A restored gradient for ``param``: a whole tensor (from a full checkpoint) is cut to this rank's shard."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        if isinstance(param, DTensor) and not isinstance(grad, DTensor):
            local = grad.to(param.to_local().device, param.dtype)
            return distribute_tensor(local, param.device_mesh, param.placements, src_data_rank=None)
        return grad.to(param.device)

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
        checkpoint = _split_sharded_grads(checkpoint)
        tensors = {k: v for k, v in checkpoint.items() if _has_dtensor(v)}
        rest = {k: v for k, v in checkpoint.items() if k not in tensors}
        if self.is_global_zero:
            path.mkdir(parents=True, exist_ok=True)
        self.barrier("fsdp sharded save")
        dcp.save(tensors, checkpoint_id=str(path))  # type: ignore[attr-defined]
        if self.is_global_zero:
            from fulmen.utilities.cloud_io import atomic_save

            atomic_save({SHARDED_KEYS: sorted(tensors), **rest}, str(path / META_FILE))
        self.barrier("fsdp sharded save done")

    def load_checkpoint(
        self, path: Any, weights_only: bool | None = None, map_location: Any = None
    ) -> dict[str, Any]:
        """A sharded directory: its small entries now, each sharded entry as a :class:`ShardedEntry` that
        :meth:`load_sharded_entries` reads later into the sharded model/optimizers (each rank only its shards,
        from any world size). A checkpoint file: loaded as usual (full tensors)."""
        if not is_sharded_checkpoint(path):
            return super().load_checkpoint(path, weights_only=weights_only, map_location=map_location)
        folder = check_sharded_folder(path)
        checkpoint, keys = read_meta(folder, weights_only)
        others = [k for k in keys if k not in ("state_dict", "optimizer_states", SHARDED_GRADS)]
        if others:
            # e.g. a callback that keeps sharded tensors (averaged weights): read whole, as without FSDP (only
            # those entries: the weights and optimizer states are read later, each rank only its shards)
            from fulmen.checkpoint.sharded import consolidate_checkpoint

            whole = consolidate_checkpoint(folder, weights_only, keys=others)
            checkpoint.update({k: whole[k] for k in others})
        for key in keys:
            if key in others:
                continue
            if key == SHARDED_GRADS:
                run_state = (checkpoint.get("fulmen") or {}).get("run_state")
                if isinstance(run_state, dict):
                    run_state["grads"] = ShardedEntry(folder, key)
            else:
                checkpoint[key] = ShardedEntry(folder, key)
        return checkpoint

    def load_sharded_entries(
        self, checkpoint: dict[str, Any], module: nn.Module, optimizers: list[Any] | None, strict: bool = True
    ) -> None:
        """Replace the :class:`ShardedEntry` placeholders in ``checkpoint`` by their values, read in place:
        ``"state_dict"`` is loaded into ``module`` right away (it must be set up, i.e. sharded); with
        ``optimizers`` (after ``configure_optimizers``), ``"optimizer_states"`` becomes their sharded states and the
        gradients of an open accumulation window become sharded gradients (restored by the Trainer as usual)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
        )
        from torch.distributed.fsdp import FSDPModule

        entry = checkpoint.get("state_dict")
        if not isinstance(module, FSDPModule):
            raise MisconfigurationException(
                f"Loading the sharded checkpoint {getattr(entry, 'path', '')!r} needs the model set up with FSDP first."
            )
        template: dict[str, Any] = {}
        if isinstance(entry, ShardedEntry):
            template["state_dict"] = get_model_state_dict(module)
        run_state = (checkpoint.get("fulmen") or {}).get("run_state") if optimizers is not None else None
        grads = run_state.get("grads") if isinstance(run_state, dict) else None
        if optimizers is not None:
            if isinstance(checkpoint.get("optimizer_states"), ShardedEntry):
                template["optimizer_states"] = [get_optimizer_state_dict(module, o) for o in optimizers]
            if isinstance(grads, ShardedEntry):
                template[SHARDED_GRADS] = {n: torch.zeros_like(p) for n, p in module.named_parameters()}
        if not template:
            return
        folder = next(
            v.path for v in (checkpoint.get("state_dict"), checkpoint.get("optimizer_states"), grads)
            if isinstance(v, ShardedEntry)
        )
        stored = _stored_keys(folder)
        if SHARDED_GRADS in template:
            # only the parameters that had a gradient when the checkpoint was written
            template[SHARDED_GRADS] = {
                n: g for n, g in template[SHARDED_GRADS].items() if f"{SHARDED_GRADS}.{n}" in stored
            }
        if "optimizer_states" in template:
            saved = {k.split(".")[1] for k in stored if k.startswith("optimizer_states.")}
            if len(saved) != len(optimizers or []):
                raise MisconfigurationException(
                    f"The checkpoint {folder!r} has {len(saved)} optimizer state(s) but configure_optimizers "
                    f"returned {len(optimizers or [])}. Fix: resume with the same optimizer setup."
                )
        if "state_dict" in template:
            _check_state_dict_keys(folder, stored, template["state_dict"], strict)
        from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

        dcp.load(  # type: ignore[attr-defined]
            template, checkpoint_id=folder, planner=DefaultLoadPlanner(allow_partial_load=not strict)
        )
        if "state_dict" in template:
            set_model_state_dict(module, template["state_dict"], options=StateDictOptions(strict=strict))
            checkpoint["state_dict"] = ShardedEntry(folder, "state_dict (loaded into the sharded model)")
        if "optimizer_states" in template:
            checkpoint["optimizer_states"] = template["optimizer_states"]
        if SHARDED_GRADS in template and isinstance(run_state, dict):
            run_state["grads"] = template[SHARDED_GRADS]

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

        meta, keys = read_meta(check_sharded_folder(path), weights_only=False)
        sharded = set(keys)
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
        return is_sharded_checkpoint(path)

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


def _split_sharded_grads(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Gradients of an open accumulation window are sharded: move them out of ``fulmen.run_state`` (saved in
    ``meta.pt``) into their own entry saved with the other shards. The caller's dict is not changed."""
    extra = checkpoint.get("fulmen")
    run_state = extra.get("run_state") if isinstance(extra, dict) else None
    grads = run_state.get("grads") if isinstance(run_state, dict) else None
    if not grads or not _has_dtensor(grads):
        return checkpoint
    assert isinstance(extra, dict) and isinstance(run_state, dict)
    return {
        **checkpoint,
        "fulmen": {**extra, "run_state": {**run_state, "grads": None}},
        SHARDED_GRADS: grads,
    }


def _stored_keys(folder: str) -> set[str]:
    import torch.distributed.checkpoint as dcp

    return set(dcp.FileSystemReader(folder).read_metadata().state_dict_metadata)


def _check_state_dict_keys(folder: str, stored: set[str], template: dict[str, Any], strict: bool) -> None:
    saved = {k[len("state_dict.") :] for k in stored if k.startswith("state_dict.")}
    missing = sorted(set(template) - saved)
    unexpected = sorted(saved - set(template))
    if strict and (missing or unexpected):
        raise RuntimeError(
            f"The sharded checkpoint {folder!r} does not match the model: missing keys {missing[:10]}, unexpected "
            f"keys {unexpected[:10]}. Fix: build the same model as when it was saved, or set "
            "`self.strict_loading = False` in the LightningModule to load the matching keys only."
        )


def _has_dtensor(obj: Any) -> bool:
    if type(obj).__name__ == "DTensor":
        return True
    if isinstance(obj, dict):
        return any(_has_dtensor(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_dtensor(v) for v in obj)
    return False



def _register_names() -> None:
    from fulmen.strategies import STRATEGY_REGISTRY

    STRATEGY_REGISTRY.register("fsdp", FSDPStrategy, "Fully Sharded Data Parallel (FSDP) training", override=True)
    STRATEGY_REGISTRY.register(
        "fsdp_cpu_offload", FSDPStrategy, "FSDP training with parameters offloaded to CPU", override=True,
        cpu_offload=True,
    )


_register_names()

__all__ = ["FSDPStrategy", "ModelParallelStrategy"]
