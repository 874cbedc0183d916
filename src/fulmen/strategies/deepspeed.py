"""``DeepSpeedStrategy``: ZeRO stages 1-3 (optionally with CPU/NVMe offload) through DeepSpeed's engine.

DeepSpeed is an optional extra (``pip install --no-build-isolation deepspeed`` into an environment that already
has torch; see docs/hardware.md). Without it, every ``deepspeed*`` name raises a clear error saying how to install
it. The registered names and what they set:

=================================  =====  ==========================================
name                               stage  offload
=================================  =====  ==========================================
``deepspeed``                      2
``deepspeed_stage_1``              1
``deepspeed_stage_1_offload``      1      optimizer state to CPU
``deepspeed_stage_2``              2
``deepspeed_stage_2_offload``      2      optimizer state to CPU
``deepspeed_stage_3``              3
``deepspeed_stage_3_offload``      3      optimizer state and parameters to CPU
``deepspeed_stage_3_offload_nvme`` 3      optimizer state and parameters to NVMe
=================================  =====  ==========================================

How fulmen drives the engine:

* the module and its (single) optimizer go through ``deepspeed.initialize`` together: in the Trainer after
  ``configure_optimizers``, in Fabric through ``fabric.setup(model, optimizer)``;
* ``training_step`` runs inside the engine's ``forward`` (ZeRO-3 gathers parameters there), backward is
  ``engine.backward`` and the optimizer step ``engine.step`` (which also clears the gradients);
* gradient accumulation stays the loop's: every backward tells the engine whether it ends an accumulation
  window (``set_gradient_accumulation_boundary``), and the loss is divided by the loop (never twice);
* ``gradient_clip_val`` (norm only) becomes the config's ``gradient_clipping``; the precision flag becomes its
  ``fp16`` / ``bf16`` section (:class:`~fulmen.plugins.precision.DeepSpeedPrecision`);
* checkpoints are directories written by ``engine.save_checkpoint`` on every rank (each rank its shard), with
  fulmen's own state (run state, callbacks, schedulers, RNG) as the engine's client state. Resuming reads the
  weights from the shards (consolidated on the CPU) and the optimizer state through ``engine.load_checkpoint``.
"""

from __future__ import annotations

import copy
import json
import os
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fulmen.accelerators import Accelerator
from fulmen.plugins.environments import ClusterEnvironment
from fulmen.plugins.precision import DeepSpeedPrecision, Precision
from fulmen.strategies.ddp import _START_METHODS, DDPStrategy
from fulmen.strategies.deepspeed_checkpoint import (  # noqa: F401 - re-exported (this module's names before the split)
    _DS_KEYS,
    _INSTALL,
    _META_KEY,
    _TAG,
    _checkpoint_tag,
    _client_entries,
    _consolidated_state_dict,
    _import_deepspeed,
    _is_deepspeed_key,
    _model_states_file,
    _read_client_state,
    convert_zero_checkpoint_to_fp32_state_dict,
    deepspeed_available,
)
from fulmen.strategies.parallel import ParallelStrategy
from fulmen.utilities import distributed as fdist
from fulmen.utilities.exceptions import MisconfigurationException


class _SavedByEngine(dict):  # type: ignore[type-arg]
    """A module or optimizer state in a checkpoint dict that the DeepSpeed engine writes itself (its own shard
    files): kept out of the client state. For ZeRO 1/2 a module's entry still holds its (full) state dict, so
    ``on_save_checkpoint`` hooks can read it; under ZeRO-3 it is empty (the parameters are partitioned)."""

    def __init__(self, kind: str, *args: Any) -> None:
        super().__init__(*args)
        self.kind = kind  # "module" or "optimizer"


class DeepSpeedStrategy(ParallelStrategy):
    """DeepSpeed ZeRO data parallelism.

    Args:
        zero_optimization: use ZeRO (``False``: stage 0, plain data parallel through the engine).
        stage: ZeRO stage 1 (optimizer state sharded), 2 (+ gradients) or 3 (+ parameters).
        offload_optimizer, offload_optimizer_device: keep the optimizer state (and step) on ``"cpu"`` or ``"nvme"``.
        offload_parameters, offload_params_device: ZeRO-3: keep parameters on ``"cpu"`` or ``"nvme"``.
        remote_device: ``"cpu"`` or ``"nvme"`` for both offloads (the ``*_offload_nvme`` name sets ``"nvme"``).
        nvme_path: where NVMe offload swaps to.
        config: a DeepSpeed config (dict, or the path of a JSON file) used instead of the one built from these
            arguments; ``train_micro_batch_size_per_gpu``, ``gradient_clipping`` and the precision section are
            filled in when missing. ``gradient_accumulation_steps`` must not be in it (use the Trainer's
            ``accumulate_grad_batches``).
        logging_batch_size_per_gpu: DeepSpeed's ``train_micro_batch_size_per_gpu`` (only used for its throughput
            logging): an int, or ``"auto"`` (1).
        allgather_bucket_size, reduce_bucket_size, overlap_comm, contiguous_gradients, allgather_partitions,
        reduce_scatter, sub_group_size, pin_memory, params_buffer_count, params_buffer_size, max_in_cpu,
        optimizer_buffer_count, block_size, queue_depth, single_submit, overlap_events, thread_count:
            the ``zero_optimization`` / ``aio`` settings of the same names.
        zero_allow_untested_optimizer: allow any torch optimizer with ZeRO (default True).
        loss_scale, initial_scale_power, loss_scale_window, hysteresis, min_loss_scale: the ``fp16`` section
            (``precision="16-mixed"``); ``loss_scale=0`` is dynamic scaling.
        exclude_frozen_parameters: leave parameters with ``requires_grad=False`` out of checkpoints.
        process_group_backend, timeout, failure_timeout, sync_timeout, start_method: as for DDP.
    """

    strategy_name = "deepspeed"

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        zero_optimization: bool = True,
        stage: int = 2,
        remote_device: str | None = None,
        offload_optimizer: bool = False,
        offload_parameters: bool = False,
        offload_params_device: str = "cpu",
        nvme_path: str = "/local_nvme",
        params_buffer_count: int = 5,
        params_buffer_size: int = 100_000_000,
        max_in_cpu: int = 1_000_000_000,
        offload_optimizer_device: str = "cpu",
        optimizer_buffer_count: int = 4,
        block_size: int = 1_048_576,
        queue_depth: int = 8,
        single_submit: bool = False,
        overlap_events: bool = True,
        thread_count: int = 1,
        pin_memory: bool = False,
        sub_group_size: int = 1_000_000_000_000,
        contiguous_gradients: bool = True,
        overlap_comm: bool = True,
        allgather_partitions: bool = True,
        reduce_scatter: bool = True,
        allgather_bucket_size: int = 200_000_000,
        reduce_bucket_size: int = 200_000_000,
        zero_allow_untested_optimizer: bool = True,
        logging_batch_size_per_gpu: str | int = "auto",
        config: str | Path | dict[str, Any] | None = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        loss_scale: float = 0,
        initial_scale_power: int = 16,
        loss_scale_window: int = 1000,
        hysteresis: int = 2,
        min_loss_scale: int = 1,
        exclude_frozen_parameters: bool = False,
        checkpoint_io: Any = None,
        precision: Precision | None = None,
        process_group_backend: str | None = None,
        timeout: timedelta | None = fdist.default_pg_timeout,
        start_method: str = "popen",
        failure_timeout: float = 10.0,
        sync_timeout: float | None = None,
        precision_plugin: Precision | None = None,
    ) -> None:
        if not deepspeed_available():
            raise MisconfigurationException(
                f"strategy='deepspeed' (ZeRO stage {stage}) needs the `deepspeed` package, which is not installed. "
                + _INSTALL
            )
        self._precision_plugin: DeepSpeedPrecision = DeepSpeedPrecision()
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
        if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
            raise MisconfigurationException(
                f"DeepSpeedStrategy(stage={stage!r}); expected a ZeRO stage 0, 1, 2 or 3. Fix: e.g. stage=2, or "
                "strategy='deepspeed_stage_3'."
            )
        for name, value in (
            ("remote_device", remote_device),
            ("offload_optimizer_device", offload_optimizer_device),
            ("offload_params_device", offload_params_device),
        ):
            if value is not None and value not in ("cpu", "nvme"):
                raise MisconfigurationException(
                    f"DeepSpeedStrategy({name}={value!r}); expected 'cpu' or 'nvme'."
                )
        if offload_parameters and stage != 3 and config is None:
            raise MisconfigurationException(
                f"DeepSpeedStrategy(offload_parameters=True, stage={stage}): parameter offload needs ZeRO stage 3. "
                "Fix: stage=3 (strategy='deepspeed_stage_3_offload'), or offload_optimizer=True only."
            )
        if not (
            logging_batch_size_per_gpu == "auto"
            or (isinstance(logging_batch_size_per_gpu, int) and logging_batch_size_per_gpu > 0)
        ):
            raise MisconfigurationException(
                f"DeepSpeedStrategy(logging_batch_size_per_gpu={logging_batch_size_per_gpu!r}); expected 'auto' or "
                "a positive int."
            )
        if start_method not in _START_METHODS:
            raise MisconfigurationException(
                f"DeepSpeedStrategy(start_method={start_method!r}); expected 'popen', 'spawn', 'fork' or "
                "'forkserver'."
            )
        self.stage = int(stage) if zero_optimization else 0
        self.zero_optimization = bool(zero_optimization)
        self.remote_device = remote_device
        self.offload_optimizer = offload_optimizer
        self.offload_parameters = offload_parameters
        self.exclude_frozen_parameters = exclude_frozen_parameters
        self.logging_batch_size_per_gpu = logging_batch_size_per_gpu
        self._start_method = start_method
        self._user_config = self._load_config(config)
        self._zero_settings = {
            "offload_optimizer_device": remote_device or offload_optimizer_device,
            "offload_params_device": remote_device or offload_params_device,
            "nvme_path": nvme_path,
            "params_buffer_count": params_buffer_count,
            "params_buffer_size": params_buffer_size,
            "max_in_cpu": max_in_cpu,
            "optimizer_buffer_count": optimizer_buffer_count,
            "pin_memory": pin_memory,
            "sub_group_size": sub_group_size,
            "contiguous_gradients": contiguous_gradients,
            "overlap_comm": overlap_comm,
            "allgather_partitions": allgather_partitions,
            "reduce_scatter": reduce_scatter,
            "allgather_bucket_size": allgather_bucket_size,
            "reduce_bucket_size": reduce_bucket_size,
        }
        self._aio = {
            "block_size": block_size,
            "queue_depth": queue_depth,
            "single_submit": single_submit,
            "overlap_events": overlap_events,
            "thread_count": thread_count,
        }
        self._fp16 = {
            "loss_scale": loss_scale,
            "initial_scale_power": initial_scale_power,
            "loss_scale_window": loss_scale_window,
            "hysteresis": hysteresis,
            "min_loss_scale": min_loss_scale,
        }
        self.zero_allow_untested_optimizer = zero_allow_untested_optimizer
        self.config: dict[str, Any] = {}  # the config given to deepspeed.initialize (filled at setup)
        self._no_sync = False
        self._patched: list[Any] = []
        self._pending_resume: tuple[str, str] | None = None
        self._module: nn.Module | None = None

    # ------------------------------------------------------------------ precision: always the DeepSpeed plugin
    @property  # type: ignore[override,unused-ignore]
    def precision(self) -> DeepSpeedPrecision:
        return self._precision_plugin

    @precision.setter
    def precision(self, plugin: Precision | None) -> None:
        if plugin is None or isinstance(plugin, DeepSpeedPrecision):
            self._precision_plugin = plugin or DeepSpeedPrecision()
            return
        # the connector picks a plugin for the precision flag; under DeepSpeed the engine does what it did
        self._precision_plugin = DeepSpeedPrecision(getattr(plugin, "precision", "32-true"))

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _load_config(config: Any) -> dict[str, Any] | None:
        if config is None:
            env = os.environ.get("PL_DEEPSPEED_CONFIG_PATH")
            if not env:
                return None
            config = env
        if isinstance(config, dict):
            return copy.deepcopy(config)
        if isinstance(config, (str, Path)):
            path = Path(config)
            if not path.is_file():
                raise MisconfigurationException(
                    f"DeepSpeedStrategy(config={str(config)!r}): no such file. Fix: pass the path of a DeepSpeed JSON "
                    "config, or a dict."
                )
            try:
                loaded = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise MisconfigurationException(
                    f"DeepSpeedStrategy(config={str(config)!r}) is not valid JSON: {exc}. Fix: correct the file."
                ) from exc
            if not isinstance(loaded, dict):
                raise MisconfigurationException(
                    f"DeepSpeedStrategy(config={str(config)!r}) holds a {type(loaded).__name__}; expected a JSON "
                    "object."
                )
            return loaded
        raise MisconfigurationException(
            f"DeepSpeedStrategy(config={config!r}); expected a dict or the path of a JSON file."
        )

    def _default_config(self) -> dict[str, Any]:
        s = self._zero_settings
        zero: dict[str, Any] = {"stage": self.stage}
        if self.stage > 0:
            zero.update(
                contiguous_gradients=s["contiguous_gradients"],
                overlap_comm=s["overlap_comm"],
                allgather_partitions=s["allgather_partitions"],
                reduce_scatter=s["reduce_scatter"],
                allgather_bucket_size=s["allgather_bucket_size"],
                reduce_bucket_size=s["reduce_bucket_size"],
                sub_group_size=s["sub_group_size"],
            )
        if self.offload_optimizer:
            zero["offload_optimizer"] = {
                "device": s["offload_optimizer_device"],
                "nvme_path": s["nvme_path"],
                "buffer_count": s["optimizer_buffer_count"],
                "pin_memory": s["pin_memory"],
            }
        if self.offload_parameters:
            zero["offload_param"] = {
                "device": s["offload_params_device"],
                "nvme_path": s["nvme_path"],
                "buffer_count": s["params_buffer_count"],
                "buffer_size": s["params_buffer_size"],
                "max_in_cpu": s["max_in_cpu"],
                "pin_memory": s["pin_memory"],
            }
        config: dict[str, Any] = {
            "zero_allow_untested_optimizer": self.zero_allow_untested_optimizer,
            "zero_optimization": zero,
        }
        if self.offload_optimizer or self.offload_parameters:
            # any torch optimizer runs on the offloaded state (DeepSpeedCPUAdam is faster, not required)
            config["zero_force_ds_cpu_optimizer"] = False
            if "nvme" in (s["offload_optimizer_device"], s["offload_params_device"]):
                config["aio"] = dict(self._aio)
        return config

    def _build_config(
        self,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> dict[str, Any]:
        config = copy.deepcopy(self._user_config) if self._user_config is not None else self._default_config()
        if (
            "gradient_accumulation_steps" in config
            and self._user_config is not None
            and accumulate_grad_batches != 1
        ):
            raise MisconfigurationException(
                "The DeepSpeed config sets gradient_accumulation_steps and the Trainer sets accumulate_grad_batches="
                f"{accumulate_grad_batches}. Fix: remove gradient_accumulation_steps from the config; fulmen "
                "accumulates gradients with accumulate_grad_batches."
            )
        config["gradient_accumulation_steps"] = int(accumulate_grad_batches)
        config.pop("train_batch_size", None)  # derived by DeepSpeed from the two below and the world size
        if "train_micro_batch_size_per_gpu" not in config:
            b = self.logging_batch_size_per_gpu
            config["train_micro_batch_size_per_gpu"] = 1 if b == "auto" else int(b)
        if gradient_clip_val:
            if (gradient_clip_algorithm or "norm") != "norm":
                raise MisconfigurationException(
                    f"gradient_clip_algorithm={gradient_clip_algorithm!r} with strategy='deepspeed': DeepSpeed clips "
                    "gradients by norm only. Fix: gradient_clip_algorithm='norm'."
                )
            if config.get("gradient_clipping") not in (None, 0, 0.0, float(gradient_clip_val)):
                raise MisconfigurationException(
                    f"gradient_clip_val={gradient_clip_val} and the DeepSpeed config's gradient_clipping="
                    f"{config['gradient_clipping']} differ. Fix: set only one of them."
                )
            config["gradient_clipping"] = float(gradient_clip_val)
        else:
            config.setdefault("gradient_clipping", 0.0)  # DeepSpeed's own default clips at norm 1.0
        precision = self.precision.precision
        if precision in ("16-mixed", "16-true") and "fp16" not in config:
            fp16: dict[str, Any] = {"enabled": True, **self._fp16}
            config["fp16"] = fp16
        elif precision in ("bf16-mixed", "bf16-true") and "bf16" not in config:
            config["bf16"] = {"enabled": True}
        config.setdefault("steps_per_print", 2**62)  # no progress lines from DeepSpeed itself
        return config

    # ------------------------------------------------------------------ launching
    # the same process launching as DDP (popen: the script launcher; spawn/fork/forkserver: multiprocessing)
    start_method = DDPStrategy.start_method
    _configure_launcher = DDPStrategy._configure_launcher

    def setup_environment(self) -> None:
        super().setup_environment()
        # DeepSpeed reads LOCAL_RANK (a one-process run has no launcher that sets it)
        if "LOCAL_RANK" not in os.environ:
            os.environ["LOCAL_RANK"] = str(self.local_rank)
            self._set_local_rank = True
        deepspeed = _import_deepspeed(self.root_device.type)
        # DeepSpeed's communication layer over the process group fulmen created
        deepspeed.init_distributed(
            dist_backend=self.process_group_backend,
            dist_init_required=False,
            verbose=False,
            timeout=self._timeout,
        )

    # ------------------------------------------------------------------ the model and optimizer
    def setup_module(self, module: nn.Module) -> nn.Module:
        """The engine needs the optimizer too: it is built by :meth:`setup_module_and_optimizers` (the Trainer
        after ``configure_optimizers``, Fabric in ``fabric.setup(model, optimizer)``); until then the module is
        used as it is."""
        if self.layer_sync is not None:
            module = self.layer_sync.apply(module)
        self._module = module
        return module

    def setup_module_and_optimizers(
        self,
        module: nn.Module,
        optimizers: list[Any],
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> tuple[Any, list[Any]]:
        """``deepspeed.initialize`` for ``module`` and its optimizer; returns the engine and the optimizers (the
        user's objects: their ``step`` goes through the engine, their param groups stay the ones schedulers
        change)."""
        if len(optimizers) != 1:
            raise MisconfigurationException(
                f"strategy='deepspeed' drives one optimizer per model; got {len(optimizers)}. Fix: put the parameter "
                "groups into one optimizer, or use strategy='ddp' or 'fsdp' for several optimizers."
            )
        if self.model is not None:
            raise MisconfigurationException(
                "strategy='deepspeed' sets up one model with its optimizer per run; a second one was given. Fix: "
                "combine the models into one nn.Module, or use strategy='fsdp'."
            )
        optimizer = getattr(optimizers[0], "optimizer", optimizers[0])
        deepspeed = _import_deepspeed(self.root_device.type)
        self.config = self._build_config(accumulate_grad_batches, gradient_clip_val, gradient_clip_algorithm)
        _check_dtype_supported(self.config, self.root_device)
        engine, _ds_optimizer, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, config=copy.deepcopy(self.config), dist_init_required=False
        )
        self.model = engine
        self._module = module
        self.precision._engines[id(optimizer)] = engine
        # The engine owns the gradients and clears them in engine.step(); the optimizer's own zero_grad (called by
        # the loop, or by a Fabric user) would drop the engine's gradient buffers (ZeRO-Offload keeps them on the
        # optimizer's flat parameters). Undone in teardown.
        optimizer.zero_grad = _engine_owns_gradients  # type: ignore[method-assign,unused-ignore]
        self._patched.append(optimizer)
        return engine, [optimizer]

    def setup_training_engine(
        self,
        module: nn.Module,
        optimizers: list[Any],
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """The Trainer's call after ``configure_optimizers``; also finishes a resume (optimizer state)."""
        if not optimizers:
            raise MisconfigurationException(
                "strategy='deepspeed' needs an optimizer (configure_optimizers returned none). Fix: return one from "
                "configure_optimizers."
            )
        self.setup_module_and_optimizers(
            module, optimizers, accumulate_grad_batches, gradient_clip_val, gradient_clip_algorithm
        )
        if self._pending_resume is not None:
            path, tag = self._pending_resume
            self._pending_resume = None
            engine: Any = self.model
            loaded, _ = engine.load_checkpoint(
                path,
                tag=tag,
                load_optimizer_states=True,
                load_lr_scheduler_states=False,
                load_module_strict=getattr(module, "strict_loading", True),
            )
            if loaded is None:
                raise MisconfigurationException(
                    f"DeepSpeed could not load the checkpoint {path!r} (tag {tag!r}). Fix: check the directory holds "
                    "a complete DeepSpeed checkpoint written with the same ZeRO stage."
                )

    def check_optimizers(self, optimizers: Any) -> None:
        """Fabric: ``setup_optimizers`` alone cannot build an engine."""
        raise MisconfigurationException(
            "With strategy='deepspeed' the model and its optimizer are set up together (one DeepSpeed engine). Fix: "
            "`model, optimizer = fabric.setup(model, optimizer)` instead of setup_module + setup_optimizers."
        )

    def _engine(self) -> Any:
        if self.model is None:
            raise MisconfigurationException(
                "strategy='deepspeed': backward/step before the DeepSpeed engine was set up. Fix: in Fabric, "
                "`model, optimizer = fabric.setup(model, optimizer)` first."
            )
        return self.model

    def backward(self, tensor: torch.Tensor, module: nn.Module | None, *args: Any, **kwargs: Any) -> None:
        engine = self._engine()
        engine.set_gradient_accumulation_boundary(not self._no_sync)
        # the loop (or the Fabric user) already divided the loss for accumulation
        engine.backward(tensor, retain_graph=bool(kwargs.get("retain_graph", False)), scale_wrt_gas=False)

    def no_backward_sync(self, module: Any, enabled: bool = True) -> Any:
        return self._accumulating_context(enabled)

    @contextmanager
    def _accumulating_context(self, enabled: bool) -> Any:
        previous = self._no_sync
        self._no_sync = bool(enabled)
        try:
            yield
        finally:
            self._no_sync = previous

    def module_to_device(self, module: nn.Module) -> None:
        module.to(self.root_device)

    # ------------------------------------------------------------------ state
    def module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        if self.model is None:
            if any(hasattr(p, "ds_id") for p in module.parameters()):
                return _gathered_state_dict(module)  # after a ZeRO-3 run (collective): the full weights
            return module.state_dict()
        return _SavedByEngine("module") if self.stage == 3 else _SavedByEngine("module", module.state_dict())

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        if self.model is None:
            return super().optimizer_state(optimizer)
        return _SavedByEngine("optimizer")

    def load_optimizer_state(self, optimizer: Any, state: dict[str, Any]) -> None:
        if self.model is not None and state:
            raise MisconfigurationException(
                "strategy='deepspeed' resumes the optimizer state from a DeepSpeed checkpoint directory, not from an "
                "ordinary checkpoint file's optimizer_states. Fix: resume from a checkpoint written with "
                "strategy='deepspeed', or load only the weights (LightningModule.load_from_checkpoint) and start a "
                "new fit."
            )

    def accumulated_gradients(self, module: nn.Module) -> dict[str, Any]:
        """A checkpoint written inside a gradient-accumulation window (e.g. on preemption): the window's gradients
        live in the engine's (partitioned) buffers and are not saved; the resumed window steps with the
        micro-batches it still runs."""
        from fulmen.utilities.rank_zero import rank_zero_warn

        rank_zero_warn(
            "strategy='deepspeed': this checkpoint is written inside a gradient-accumulation window; the window's "
            "gradients so far are not saved (they live in DeepSpeed's buffers), so after a resume that optimizer "
            "step uses only the window's remaining batches. Checkpoints at optimizer steps resume exactly."
        )
        return {}

    def load_module_state_dict(
        self, module: nn.Module, state_dict: dict[str, Any], strict: bool = True
    ) -> Any:
        if self.model is not None and self.stage == 3:
            raise MisconfigurationException(
                "Loading a state dict into a ZeRO-3 model after setup is not supported (its parameters are "
                "partitioned). Fix: load a DeepSpeed checkpoint directory with fabric.load(path, state), or load the "
                "weights before fabric.setup."
            )
        return module.load_state_dict(state_dict, strict=strict)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Every rank writes its shards into the directory ``filepath`` (collective)."""
        engine: Any = self.model
        if engine is None:
            # no engine (after fit, or before Fabric's setup): one ordinary file with the full weights and fulmen's
            # entries; the optimizer state lived in the engine, so resuming from this file says it holds weights only
            checkpoint = {k: v for k, v in checkpoint.items() if k != "optimizer_states"}
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        if storage_options is not None:
            raise MisconfigurationException(
                "strategy='deepspeed' writes checkpoint directories itself; storage_options are not supported."
            )
        self.sync_point(f"save_checkpoint {os.path.basename(str(filepath))}")
        client: dict[str, Any] = {}
        modules: list[str] = []
        optimizers: list[str] = []
        for key, value in checkpoint.items():
            if isinstance(value, _SavedByEngine):
                (modules if value.kind == "module" else optimizers).append(key)
            elif isinstance(value, list) and value and all(isinstance(v, _SavedByEngine) for v in value):
                client[key] = [{} for _ in value]  # the optimizer states' places (the engine restores them)
            else:
                client[key] = value
        client[_META_KEY] = {
            "modules": modules,
            "optimizers": optimizers,
            "stage": self.stage,
            "client_keys": sorted(client),
        }
        self._progress += 1
        engine.save_checkpoint(
            str(filepath),
            tag=_TAG,
            client_state=client,
            exclude_frozen_parameters=self.exclude_frozen_parameters,
        )

    @staticmethod
    def is_sharded_checkpoint(path: Any) -> bool:
        return _checkpoint_tag(path) is not None

    def load_checkpoint(
        self, path: Any, weights_only: bool | None = None, map_location: Any = None
    ) -> dict[str, Any]:
        """A DeepSpeed directory: fulmen's entries plus the full weights (consolidated from the shards on the CPU)
        under the module's key; the optimizer state is loaded into the engine when it is set up (Trainer)."""
        tag = _checkpoint_tag(path)
        if tag is None:
            return super().load_checkpoint(path, weights_only=weights_only, map_location=map_location)
        client = _read_client_state(path, tag)
        meta = client.pop(_META_KEY, {})
        state_dict = _consolidated_state_dict(str(path), tag, int(meta.get("stage", self.stage)))
        for key in meta.get("modules", []):  # the Trainer's "state_dict", Fabric's module key
            client[key] = state_dict
        for key in meta.get("optimizers", []):
            client[key] = {}  # restored by the engine once it is set up
        self._pending_resume = (str(path), tag)
        return client

    def load_sharded(self, path: Any, state: dict[str, Any], strict: bool = True) -> dict[str, Any]:
        """``Fabric.load`` of a DeepSpeed directory: the engine loads the module (and optimizer) in place; other
        objects in ``state`` are restored from the client state. Returns the checkpoint's other entries."""
        engine: Any = self.model
        if engine is None:
            raise MisconfigurationException(
                f"Loading the DeepSpeed checkpoint {str(path)!r} needs the engine. Fix: `model, optimizer = "
                "fabric.setup(model, optimizer)` before fabric.load(path, state)."
            )
        tag = _checkpoint_tag(path)
        has_optimizer = any(_is_optimizer(v) for v in state.values())
        loaded, client = engine.load_checkpoint(
            str(path),
            tag=tag,
            load_optimizer_states=has_optimizer,
            load_lr_scheduler_states=False,
            load_module_strict=strict,
        )
        if loaded is None or client is None:
            raise MisconfigurationException(
                f"DeepSpeed could not load the checkpoint {str(path)!r}. Fix: check it is a complete DeepSpeed "
                "checkpoint directory."
            )
        meta = client.get(_META_KEY, {})
        by_engine = set(meta.get("modules", [])) | set(meta.get("optimizers", []))
        rest = _client_entries(client)
        missing = [k for k in state if k not in rest and k not in by_engine]
        if missing and strict:
            raise KeyError(
                f"Fabric.load: {missing} are not in the checkpoint {str(path)!r}. Fix: pass strict=False."
            )
        for key, obj in list(state.items()):
            if key in by_engine or key not in rest:
                continue
            value = rest.pop(key)
            if hasattr(obj, "load_state_dict") and not isinstance(obj, nn.Module):
                obj.load_state_dict(value)
            else:
                state[key] = value
        for key in by_engine:
            rest.pop(key, None)
        return rest

    def finalize(self) -> None:
        super().finalize()
        if getattr(self, "_set_local_rank", False):
            os.environ.pop("LOCAL_RANK", None)
            self._set_local_rank = False

    def teardown(self) -> None:
        super().teardown()
        self._module = None
        # a checkpoint read by validate/test/predict is not resumed by a later fit
        self._pending_resume = None
        self.precision._engines.clear()
        for optimizer in self._patched:
            optimizer.__dict__.pop("zero_grad", None)
        self._patched.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_module"] = None
        state["_patched"] = []
        return state

    def __repr__(self) -> str:
        return (
            f"DeepSpeedStrategy(stage={self.stage}, offload_optimizer={self.offload_optimizer}, "
            f"offload_parameters={self.offload_parameters})"
        )


def _check_dtype_supported(config: dict[str, Any], device: torch.device) -> None:
    from deepspeed.accelerator import get_accelerator  # type: ignore[import-not-found,unused-ignore]

    accelerator = get_accelerator()
    for section, supported, other in (
        ("fp16", accelerator.is_fp16_supported, "bf16-mixed"),
        ("bf16", accelerator.is_bf16_supported, "32-true"),
    ):
        if config.get(section, {}).get("enabled") and not supported():
            raise MisconfigurationException(
                f"DeepSpeed's {accelerator.device_name()} accelerator does not support its {section} mode (device "
                f"{device}), which the precision flag or the config asks for. Fix: precision='{other}'."
            )


def _engine_owns_gradients(set_to_none: bool = True) -> None:
    """``optimizer.zero_grad`` under DeepSpeed: nothing to do, ``engine.step()`` cleared the gradients."""


def _gathered_state_dict(module: nn.Module) -> dict[str, Any]:
    """The full state dict of a module whose parameters ZeRO-3 partitioned (every rank must call it)."""
    deepspeed = _import_deepspeed()
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _is_optimizer(obj: Any) -> bool:
    return isinstance(getattr(obj, "optimizer", obj), torch.optim.Optimizer)


_PRESETS: dict[str, dict[str, Any]] = {
    "deepspeed": {},
    "deepspeed_stage_1": {"stage": 1},
    "deepspeed_stage_1_offload": {"stage": 1, "offload_optimizer": True},
    "deepspeed_stage_2": {"stage": 2},
    "deepspeed_stage_2_offload": {"stage": 2, "offload_optimizer": True},
    "deepspeed_stage_3": {"stage": 3},
    "deepspeed_stage_3_offload": {"stage": 3, "offload_optimizer": True, "offload_parameters": True},
    "deepspeed_stage_3_offload_nvme": {
        "stage": 3,
        "offload_optimizer": True,
        "offload_parameters": True,
        "remote_device": "nvme",
    },
}


def _register_names() -> None:
    from fulmen.strategies import STRATEGY_REGISTRY

    for name, preset in _PRESETS.items():
        STRATEGY_REGISTRY.register(name, DeepSpeedStrategy, f"DeepSpeed {preset or 'defaults'}", override=True, **preset)


_register_names()

__all__ = ["DeepSpeedStrategy", "convert_zero_checkpoint_to_fp32_state_dict"]
