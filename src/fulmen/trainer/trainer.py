"""``Trainer``: runs a LightningModule through fit, validate, test and predict (spec §1.7-1.8).

The Trainer is a client of :class:`~fulmen.fabric.Fabric`: devices, precision, strategy and checkpoint
IO come from the Fabric it owns. Its flags live in a frozen :class:`TrainerConfig`; everything that a
resume restores lives on :class:`~fulmen.core.run_state.RunState`; the loops in ``trainer/loops`` fire
every hook through one :class:`~fulmen.core.dispatch.Dispatcher`.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import torch

from fulmen.callbacks.callback import Callback, Checkpoint
from fulmen.core.dispatch import Dispatcher
from fulmen.core.optimizer import LightningOptimizer, LRSchedulerConfig
from fulmen.core.results import ResultCollection
from fulmen.core.run_state import RunState
from fulmen.fabric.fabric import Fabric
from fulmen.profilers import Profiler, resolve_profiler
from fulmen.trainer import lifecycle
from fulmen.trainer.config import TrainerConfig, defaults_from_env_vars, log_configured_flags
from fulmen.trainer.data import DataManager
from fulmen.trainer.loops.evaluation import EvaluationLoop
from fulmen.trainer.loops.fit import FitLoop, Optimization
from fulmen.trainer.loops.prediction import PredictionLoop
from fulmen.trainer.metrics import MetricsStore
from fulmen.trainer.states import RunningStage, TrainerFn, TrainerState, TrainerStatus
from fulmen.utilities.combined_loader import CombinedLoader
from fulmen.utilities.exceptions import MisconfigurationAttributeError, MisconfigurationException

_NOT_SUPPORTED_YET = {"model_registry": None}


class Trainer:
    """Run a :class:`~fulmen.LightningModule` on any hardware. All arguments are keyword-only."""

    @defaults_from_env_vars  # PL_TRAINER_MAX_EPOCHS=3 ... as Lightning
    def __init__(
        self,
        *,
        accelerator: Any = "auto",
        strategy: Any = "auto",
        devices: Any = "auto",
        num_nodes: int = 1,
        precision: Any = None,
        logger: Any = None,
        callbacks: Any = None,
        fast_dev_run: int | bool = False,
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int = -1,
        min_steps: int | None = None,
        max_time: Any = None,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        overfit_batches: int | float = 0.0,
        val_check_interval: int | float | str | _dt.timedelta | dict[str, int] | None = None,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int | None = None,
        log_every_n_steps: int | None = None,
        enable_checkpointing: bool | None = None,
        enable_progress_bar: bool | None = None,
        enable_model_summary: bool | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
        deterministic: bool | str | None = None,
        benchmark: bool | None = None,
        inference_mode: bool = True,
        use_distributed_sampler: bool = True,
        profiler: Any = None,
        detect_anomaly: bool = False,
        barebones: bool = False,
        plugins: Any = None,
        sync_batchnorm: bool = False,
        reload_dataloaders_every_n_epochs: int = 0,
        default_root_dir: Any = None,
        enable_autolog_hparams: bool = True,
        model_registry: str | None = None,
        suggest_integrations: bool = True,
    ) -> None:
        if model_registry is not None:
            from fulmen.utilities.exceptions import NotSupportedYetError

            raise NotSupportedYetError(
                f"Trainer(model_registry={model_registry!r}) is not supported yet. Fix: drop the argument."
            )
        self.config = TrainerConfig.build(
            max_epochs=max_epochs, min_epochs=min_epochs, max_steps=max_steps, min_steps=min_steps, max_time=max_time,
            limit_train_batches=limit_train_batches, limit_val_batches=limit_val_batches,
            limit_test_batches=limit_test_batches, limit_predict_batches=limit_predict_batches,
            overfit_batches=overfit_batches, val_check_interval=val_check_interval,
            check_val_every_n_epoch=check_val_every_n_epoch, num_sanity_val_steps=num_sanity_val_steps,
            log_every_n_steps=log_every_n_steps, accumulate_grad_batches=accumulate_grad_batches,
            gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm,
            fast_dev_run=fast_dev_run, deterministic=deterministic, benchmark=benchmark,
            inference_mode=inference_mode, use_distributed_sampler=use_distributed_sampler,
            detect_anomaly=detect_anomaly, barebones=barebones,
            reload_dataloaders_every_n_epochs=reload_dataloaders_every_n_epochs, default_root_dir=default_root_dir,
            enable_progress_bar=enable_progress_bar, enable_model_summary=enable_model_summary,
            enable_checkpointing=enable_checkpointing, sync_batchnorm=sync_batchnorm,
            enable_autolog_hparams=enable_autolog_hparams, logger=logger, profiler=profiler,
        )
        log_configured_flags(
            fast_dev_run, limit_train_batches=limit_train_batches, limit_val_batches=limit_val_batches,
            limit_test_batches=limit_test_batches, limit_predict_batches=limit_predict_batches,
            overfit_batches=overfit_batches, val_check_interval=val_check_interval,
        )
        self.fabric = Fabric(accelerator=accelerator, strategy=strategy, devices=devices, num_nodes=num_nodes,
                             precision=precision, plugins=plugins)
        if sync_batchnorm and self.fabric.strategy.is_distributed:
            from fulmen.plugins.layer_sync import TorchSyncBatchNorm

            self.fabric.strategy.layer_sync = TorchSyncBatchNorm()
        self.run_state = RunState(accumulate_grad_batches=self.config.accumulate_grad_batches)
        # the default PassThroughProfiler is never called: the run is instrumented only for a real profiler
        self.profiler: Profiler = resolve_profiler(profiler)
        self.state = TrainerState()
        self.loggers = lifecycle.build_loggers(self, logger)
        user_cbs = [callbacks] if isinstance(callbacks, Callback) else callbacks if isinstance(callbacks, (list, tuple)) else []
        if max_time is not None and any(any(k.__name__ == "Timer" for k in type(c).__mro__) for c in user_cbs):
            from fulmen.utilities.rank_zero import rank_zero_info

            rank_zero_info("Ignoring `Trainer(max_time=...)`, callbacks list already contains a Timer.")
        self.callbacks: list[Callback] = lifecycle.build_callbacks(self, callbacks, max_time)
        self.lightning_module: Any = None
        self.datamodule: Any = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self._lightning_optimizers: list[LightningOptimizer] = []
        self.lr_scheduler_configs: list[LRSchedulerConfig] = []
        self._ckpt_path: str | None = None
        self._user_managed_ckpt_path = False
        self._dispatcher: Dispatcher = Dispatcher(self, None, None, self.callbacks)
        self._data = DataManager(self)
        self._metrics = MetricsStore(self)
        self._results: ResultCollection | None = None
        self._current_fx: str | None = None
        self._multiple_eval_loaders = False
        self._eval_dataloader_idx = 0
        self._accumulating = False
        self._restored_mid_run = False
        self._optimization = Optimization(self)
        self.fit_loop = FitLoop(self)
        self._val_loop = EvaluationLoop(self, RunningStage.VALIDATING)
        self._val_loop_sanity = EvaluationLoop(self, RunningStage.SANITY_CHECKING)
        self._test_loop = EvaluationLoop(self, RunningStage.TESTING)
        self.validate_loop = self._val_loop
        self.test_loop = self._test_loop
        self.predict_loop = PredictionLoop(self)
        self.received_sigterm = False
        # set by the preemption signal handler; the fit loop checks it at batch boundaries
        self._preempt_signal: int | None = None
        # a single-device strategy holds no cluster environment: SLURM requeue and resume read this one
        from fulmen.trainer.preemption import cluster_environment

        self._cluster_environment = cluster_environment(self.fabric.strategy, plugins)
        lifecycle.apply_global_flags(self.config)

    # ------------------------------------------------------------------ entry points
    def fit(self, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None, datamodule: Any = None,
            ckpt_path: Any = None, weights_only: bool | None = None) -> None:
        """Train ``model``; ``ckpt_path`` (a path, "last" or "best") resumes a previous run exactly."""
        from fulmen.core.datamodule import LightningDataModule

        if isinstance(train_dataloaders, LightningDataModule):
            datamodule, train_dataloaders = train_dataloaders, None
        if datamodule is not None and (train_dataloaders is not None or val_dataloaders is not None):
            raise MisconfigurationException(
                "trainer.fit got both a datamodule and dataloaders. Fix: pass either datamodule=... or the loaders."
            )
        lifecycle.run(self, TrainerFn.FITTING, model, datamodule,
                      {"train": train_dataloaders, "val": val_dataloaders}, ckpt_path, weights_only)

    def validate(self, model: Any = None, dataloaders: Any = None, ckpt_path: Any = None, verbose: bool = True,
                 datamodule: Any = None, weights_only: bool | None = None) -> list[dict[str, float]]:
        dataloaders, datamodule = _split_datamodule("validate", dataloaders, datamodule)
        return lifecycle.run(self, TrainerFn.VALIDATING, model, datamodule, {"val": dataloaders}, ckpt_path,
                             weights_only, verbose=verbose)

    def test(self, model: Any = None, dataloaders: Any = None, ckpt_path: Any = None, verbose: bool = True,
             datamodule: Any = None, weights_only: bool | None = None) -> list[dict[str, float]]:
        dataloaders, datamodule = _split_datamodule("test", dataloaders, datamodule)
        return lifecycle.run(self, TrainerFn.TESTING, model, datamodule, {"test": dataloaders}, ckpt_path,
                             weights_only, verbose=verbose)

    def predict(self, model: Any = None, dataloaders: Any = None, datamodule: Any = None,
                return_predictions: bool | None = None, ckpt_path: Any = None,
                weights_only: bool | None = None) -> Any:
        dataloaders, datamodule = _split_datamodule("predict", dataloaders, datamodule)
        return lifecycle.run(self, TrainerFn.PREDICTING, model, datamodule, {"predict": dataloaders}, ckpt_path,
                             weights_only, return_predictions=True if return_predictions is None else return_predictions)

    def save_checkpoint(self, filepath: Any, weights_only: bool = False, storage_options: Any = None) -> None:
        """Write a checkpoint atomically. Collective: every rank must call it (rank 0 writes)."""
        if self.lightning_module is None:
            raise MisconfigurationAttributeError(
                "trainer.save_checkpoint was called before a model was attached. Fix: call it during or after fit."
            )
        from fulmen.trainer.checkpointing import dump_checkpoint

        checkpoint = dump_checkpoint(self, weights_only)
        self.strategy.save_checkpoint(checkpoint, filepath, storage_options=storage_options)
        self.strategy.barrier("Trainer.save_checkpoint")

    @contextmanager
    def init_module(self, empty_init: bool | None = None) -> Generator[None, None, None]:
        with self.strategy.module_init_context(empty_init):
            yield

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.local_rank == 0:
            print(*args, **kwargs)

    # ------------------------------------------------------------------ internal helpers used by the loops
    def _transfer_batch(self, batch: Any, dataloader_idx: int) -> Any:
        return lifecycle.transfer_batch(self, batch, dataloader_idx)

    def _manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        self._optimization.manual_backward(loss, *args, **kwargs)

    def _data_loader_state(self) -> Any:
        loader = self._data.train_loader
        if loader is not None and hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict"):
            return loader.state_dict()
        return None

    def strategy_no_sync(self) -> Any:
        return self.strategy.no_backward_sync(self.lightning_module)

    # ------------------------------------------------------------------ hardware (from Fabric)
    @property
    def strategy(self) -> Any:
        return self.fabric.strategy

    @property
    def accelerator(self) -> Any:
        return self.fabric.accelerator

    @property
    def precision_plugin(self) -> Any:
        return self.fabric.strategy.precision

    @property
    def precision(self) -> str:
        return self.precision_plugin.precision

    @property
    def scaler(self) -> Any:
        return getattr(self.precision_plugin, "scaler", None)

    @property
    def global_rank(self) -> int:
        return self.fabric.global_rank

    @property
    def local_rank(self) -> int:
        return self.fabric.local_rank

    @property
    def node_rank(self) -> int:
        return self.fabric.node_rank

    @property
    def world_size(self) -> int:
        return self.fabric.world_size

    @property
    def num_nodes(self) -> int:
        return int(getattr(self.strategy, "num_nodes", 1))

    @property
    def num_devices(self) -> int:
        return len(self.device_ids)

    @property
    def device_ids(self) -> list[int]:
        devices = getattr(self.strategy, "parallel_devices", None) or [self.strategy.root_device]
        return [d.index or 0 for d in devices]

    @property
    def is_global_zero(self) -> bool:
        return self.fabric.is_global_zero

    # ------------------------------------------------------------------ model and config
    @property
    def model(self) -> Any:
        return self.lightning_module

    @property
    def barebones(self) -> bool:
        return self.config.barebones

    @property
    def fast_dev_run(self) -> int | bool:
        """``True`` for a one-batch run (``fast_dev_run=True`` or ``1``), else the number of batches (0: off)."""
        n = self.config.fast_dev_run
        return True if n == 1 else n

    @property
    def max_epochs(self) -> int | None:
        """None until the first fit when not given (then 1000, or -1 with ``max_steps``/``max_time``), as Lightning."""
        return self.config.max_epochs

    @property
    def min_epochs(self) -> int | None:
        return self.config.min_epochs

    @property
    def max_steps(self) -> int:
        return self.config.max_steps

    @property
    def min_steps(self) -> int | None:
        return self.config.min_steps

    @property
    def val_check_interval(self) -> int | float | _dt.timedelta:
        """The validation interval: a float fraction, an int number of batches, or a timedelta (time-based)."""
        return self.config.val_check_interval

    @property
    def val_check_batch(self) -> int | float | None:
        """Batches between in-epoch validations; None when ``val_check_interval`` is time-based."""
        return self._data.val_check_batch

    @property
    def check_val_every_n_epoch(self) -> int | None:
        return self.config.check_val_every_n_epoch

    @property
    def log_every_n_steps(self) -> int:
        return self.config.log_every_n_steps

    @property
    def gradient_clip_val(self) -> float | None:
        return self.config.gradient_clip_val

    @property
    def gradient_clip_algorithm(self) -> str:
        return self.config.gradient_clip_algorithm

    @property
    def default_root_dir(self) -> str:
        return self.config.default_root_dir

    @property
    def limit_train_batches(self) -> int | float:
        return self.config.limit_train_batches

    @property
    def limit_val_batches(self) -> int | float:
        return self.config.limit_val_batches

    @property
    def limit_test_batches(self) -> int | float:
        return self.config.limit_test_batches

    @property
    def limit_predict_batches(self) -> int | float:
        return self.config.limit_predict_batches

    @property
    def num_sanity_val_steps(self) -> int:
        return self.config.num_sanity_val_steps

    @property
    def accumulate_grad_batches(self) -> int:
        return self.run_state.accumulate_grad_batches

    @accumulate_grad_batches.setter
    def accumulate_grad_batches(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MisconfigurationException(f"accumulate_grad_batches={value!r}; expected a positive int.")
        self.run_state.accumulate_grad_batches = value

    # ------------------------------------------------------------------ run state
    @property
    def global_step(self) -> int:
        return self.run_state.global_step

    @property
    def current_epoch(self) -> int:
        return self.run_state.epoch

    @property
    def is_last_batch(self) -> bool:
        return self.run_state.is_last_batch

    @property
    def should_stop(self) -> bool:
        return self.run_state.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self.run_state.should_stop = bool(value)

    @property
    def interrupted(self) -> bool:
        return self.state.status == TrainerStatus.INTERRUPTED

    @property
    def training(self) -> bool:
        return self.state.stage == RunningStage.TRAINING

    @property
    def sanity_checking(self) -> bool:
        return self.state.stage == RunningStage.SANITY_CHECKING

    @property
    def validating(self) -> bool:
        return self.state.stage == RunningStage.VALIDATING

    @property
    def testing(self) -> bool:
        return self.state.stage == RunningStage.TESTING

    @property
    def predicting(self) -> bool:
        return self.state.stage == RunningStage.PREDICTING

    @property
    def evaluating(self) -> bool:
        return self.state.stage is not None and self.state.stage.evaluating

    @property
    def ckpt_path(self) -> str | None:
        return self._ckpt_path

    @ckpt_path.setter
    def ckpt_path(self, path: str | None) -> None:
        self._ckpt_path = path
        self._user_managed_ckpt_path = path is not None

    # ------------------------------------------------------------------ data
    # as in Lightning, the loaders in the structure they were given (a CombinedLoader's iterables, a dict, ...)
    @property
    def train_dataloader(self) -> Any:
        loader = self._data.train_loader
        return loader.iterables if isinstance(loader, CombinedLoader) else loader

    @property
    def val_dataloaders(self) -> Any:
        return self._data.eval_iterables.get("val") if self._data.val_loaders else None

    @property
    def test_dataloaders(self) -> Any:
        return self._data.eval_iterables.get("test") if self._data.test_loaders else None

    @property
    def predict_dataloaders(self) -> Any:
        return self._data.eval_iterables.get("predict") if self._data.predict_loaders else None

    @property
    def num_training_batches(self) -> int | float:
        return self._data.num_training_batches

    @property
    def num_val_batches(self) -> list[int | float]:
        return list(self._data.num_val_batches)

    @property
    def num_sanity_val_batches(self) -> list[int | float]:
        n = self.config.num_sanity_val_steps
        return [b if n == -1 else min(n, b) for b in self._data.num_val_batches]

    @property
    def num_test_batches(self) -> list[int | float]:
        return list(self._data.num_test_batches)

    @property
    def num_predict_batches(self) -> list[int | float]:
        return list(self._data.num_predict_batches)

    @property
    def enable_validation(self) -> bool:
        return bool(self._data.val_loaders) and sum(self._data.num_val_batches) > 0

    @property
    def estimated_stepping_batches(self) -> int | float:
        """Optimizer steps the fit will take, as Lightning computes it: epochs (at least 1) x batches /
        accumulation, capped by ``max_steps`` when set; ``max_steps`` (or inf) without an epoch or batch limit."""
        max_steps = self.config.max_steps
        max_epochs = lifecycle.resolved_max_epochs(self)
        if max_epochs == -1:
            return math.inf if max_steps == -1 else max_steps
        if self._data.train_loader is None and self.lightning_module is not None:
            self._data.load_train()
        n = self._data.num_training_batches
        if n == math.inf:
            return math.inf if max_steps == -1 else max_steps
        estimate = math.ceil(n / self.run_state.accumulate_grad_batches) * max(max_epochs, 1)
        return estimate if max_steps == -1 else min(estimate, max_steps)

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int] | None:
        return self.strategy.distributed_sampler_kwargs

    # ------------------------------------------------------------------ metrics and logging
    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        return self._metrics.callback_metrics()

    @property
    def logged_metrics(self) -> dict[str, Any]:
        return self._metrics.logged_metrics()

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        return self._metrics.progress_bar_metrics()

    @property
    def logger(self) -> Any:
        return self.loggers[0] if self.loggers else None

    @logger.setter
    def logger(self, logger: Any) -> None:
        self.loggers = [] if logger is None else [logger]

    @property
    def log_dir(self) -> str | None:
        logger = self.logger
        if logger is None:
            return self.default_root_dir
        log_dir = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
        return log_dir if log_dir is not None else self.default_root_dir

    # ------------------------------------------------------------------ callbacks
    @property
    def checkpoint_callbacks(self) -> list[Checkpoint]:
        return [c for c in self.callbacks if isinstance(c, Checkpoint)]

    @property
    def checkpoint_callback(self) -> Checkpoint | None:
        cbs = self.checkpoint_callbacks
        return cbs[0] if cbs else None

    @property
    def early_stopping_callbacks(self) -> list[Callback]:
        return [c for c in self.callbacks if type(c).__name__ == "EarlyStopping" or _is_subclass_named(c, "EarlyStopping")]

    @property
    def early_stopping_callback(self) -> Callback | None:
        cbs = self.early_stopping_callbacks
        return cbs[0] if cbs else None

    @property
    def progress_bar_callback(self) -> Callback | None:
        return next((c for c in self.callbacks if _is_subclass_named(c, "ProgressBar")), None)


def _split_datamodule(fn: str, dataloaders: Any, datamodule: Any) -> tuple[Any, Any]:
    """As Lightning: a LightningDataModule passed in the ``dataloaders`` slot (``trainer.test(model, dm)``) is the
    datamodule (it wins over a ``datamodule=`` also given); loaders and a datamodule together are refused."""
    from fulmen.core.datamodule import LightningDataModule

    if isinstance(dataloaders, LightningDataModule):
        return None, dataloaders
    if dataloaders is not None and datamodule is not None:
        raise MisconfigurationException(
            f"trainer.{fn} got both dataloaders and a datamodule. Fix: pass either `dataloaders=...` or "
            "`datamodule=...`, not both."
        )
    return dataloaders, datamodule


def _is_subclass_named(obj: Any, name: str) -> bool:
    return any(k.__name__ == name for k in type(obj).__mro__)


_ = os
