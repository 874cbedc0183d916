"""What happens around the loops: building loggers/callbacks, the stage lifecycle, errors, teardown."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from fulmen.callbacks.callback import Callback
from fulmen.core.dispatch import Dispatcher
from fulmen.core.optimizer import LightningOptimizer, init_optimizers
from fulmen.core.states import _TunerExitException
from fulmen.trainer.states import RunningStage, TrainerFn, TrainerStatus
from fulmen.utilities.exceptions import MisconfigurationException, MisconfigurationTypeError, MisconfigurationValueError
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer


def build_loggers(trainer: Trainer, logger: Any) -> list[Any]:
    loggers = _build_loggers(trainer, logger)
    n = trainer.config.fast_dev_run
    if n:
        rank_zero_info(
            f"Running in `fast_dev_run` mode: will run the requested loop using {n} batch(es). "
            "Logging and checkpointing is suppressed."
        )
    if n and loggers:
        # as Lightning: a fast_dev_run logs nothing anywhere (no log files, no experiment runs); the loggers are
        # replaced by one DummyLogger, so code that reads trainer.logger still finds a logger
        from fulmen.loggers.logger import DummyLogger

        return [DummyLogger()]
    return loggers


def _build_loggers(trainer: Trainer, logger: Any) -> list[Any]:
    if logger is None:
        logger = not trainer.config.barebones
    if logger is True:
        return [_default_logger(trainer.config.default_root_dir)]
    if logger is False:
        return []
    loggers = _as_list(logger)
    for i, lg in enumerate(loggers):
        if not (hasattr(lg, "log_metrics") and hasattr(lg, "log_hyperparams")):
            where = "" if len(loggers) == 1 and lg is logger else f" element {i}"
            raise MisconfigurationException(
                f"Trainer(logger=...){where} is {lg!r} of type {type(lg).__name__}; expected True/False, a fulmen "
                "Logger or a sequence of them. Fix: e.g. logger=CSVLogger('logs')."
            )
    return loggers


def _is_single(value: Any) -> bool:
    from collections.abc import Sequence

    return isinstance(value, (str, bytes)) or not isinstance(value, Sequence)


def _as_list(value: Any) -> list[Any]:
    """``logger``/``callbacks`` as a list: one object, or any sequence (a list, a tuple, omegaconf's
    ``ListConfig`` from a Hydra config, ...), as Lightning accepts."""
    from collections.abc import Iterable

    if _is_single(value):
        # an iterable that is no Sequence (a generator, a set) is taken whole, as Lightning's Iterable check
        if isinstance(value, Iterable) and not isinstance(value, (str, bytes)) and not hasattr(value, "log_metrics"):
            return list(value)
        return [value]
    return list(value)


def _default_logger(root: str) -> Any:
    """Lightning's default logger: ``TensorBoardLogger`` when ``tensorboard`` is installed, else ``CSVLogger``
    (with Lightning's warning). Checked with ``find_spec``: the logger imports tensorboard when it first writes."""
    if _tensorboard_available():
        from fulmen.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=root, version=_slurm_log_version())
    rank_zero_warn(
        "`logger=True` uses `CSVLogger` as the default logger because the `tensorboard` package is not installed. "
        "Install it (`pip install 'fulmen[tensorboard]'`) to log to TensorBoard by default, as Lightning does."
    )
    from fulmen.loggers import CSVLogger

    return CSVLogger(save_dir=root)


@functools.cache
def _tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _slurm_log_version() -> int | None:
    """As Lightning: a SLURM batch job's default logger version is its job id (not in an interactive job)."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if job_id is None:
        return None
    from fulmen.plugins.environments.slurm import _is_interactive

    if _is_interactive():
        return None
    try:
        return int(job_id)
    except ValueError:
        return None


def _rich_available() -> bool:
    from fulmen.trainer._results_table import rich_available

    return rich_available()


def build_callbacks(trainer: Trainer, callbacks: Any, max_time: Any) -> list[Callback]:
    from collections.abc import Sequence

    if callbacks is None:
        cbs: list[Callback] = []
    elif isinstance(callbacks, Callback):
        cbs = [callbacks]
    elif isinstance(callbacks, Sequence) and not isinstance(callbacks, (str, bytes)):
        cbs = list(callbacks)  # a list, a tuple, omegaconf's ListConfig (Hydra configs)...
    else:
        raise MisconfigurationException(
            f"Trainer(callbacks={callbacks!r}) of type {type(callbacks).__name__}; expected a Callback or a "
            "sequence of Callbacks. Fix: callbacks=[...]."
        )
    for i, cb in enumerate(cbs):
        if not isinstance(cb, Callback):
            raise MisconfigurationException(
                f"Trainer(callbacks=...)[{i}] is {cb!r} of type {type(cb).__name__}, which is not a fulmen Callback. "
                "Fix: subclass fulmen.Callback."
            )
    cbs += environment_callbacks(trainer, cbs)
    cfg = trainer.config
    names = {type(c).__mro__[i].__name__ for c in cbs for i in range(len(type(c).__mro__))}
    if cfg.enable_progress_bar and "ProgressBar" not in names:
        bar = _default_progress_bar()
        if bar is not None:
            cbs.append(bar)
    if cfg.enable_model_summary and "ModelSummary" not in names and "RichModelSummary" not in names:
        # as Lightning 2.6: the rich summary when rich is installed
        summary = _optional("fulmen.callbacks.model_summary", "RichModelSummary" if _rich_available() else "ModelSummary")
        if summary is not None:
            cbs.append(summary())
    if max_time is not None and "Timer" not in names:
        timer = _optional("fulmen.callbacks.timer", "Timer")
        if timer is None:
            from fulmen.utilities.exceptions import NotSupportedYetError

            raise NotSupportedYetError("Trainer(max_time=...) needs the Timer callback, which is not available yet.")
        cbs.append(timer(duration=max_time, interval="step"))
    # as Lightning, fast_dev_run keeps the default ModelCheckpoint (which saves nothing under fast_dev_run)
    if cfg.enable_checkpointing and "Checkpoint" not in names:
        mc = _optional("fulmen.callbacks.model_checkpoint", "ModelCheckpoint")
        if mc is not None:
            cbs.append(mc())
    elif not cfg.enable_checkpointing and any(isinstance(c, _checkpoint_base()) for c in cbs):
        raise MisconfigurationException(
            "Trainer(enable_checkpointing=False) but a checkpoint callback was passed in callbacks. Fix: remove one."
        )
    _check_state_keys(cbs)
    return _reorder(cbs)


def environment_callbacks(trainer: Trainer, callbacks: list[Callback]) -> list[Callback]:
    """Callbacks the environment asks for: ``FULMEN_CALLBACKS="pkg.module:factory,..."``.

    A public extension point for tools that start unmodified scripts (``fulmen sweep`` trials): each
    ``factory(trainer, callbacks)`` is called with the Trainer being built and the user's callbacks, and
    returns callbacks to add. Processes a launcher starts inherit the variable, so every rank gets them.
    """
    import importlib

    spec = os.environ.get("FULMEN_CALLBACKS", "").strip()
    out: list[Callback] = []
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        module, _, name = entry.partition(":")
        try:
            factory = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise MisconfigurationException(
                f"FULMEN_CALLBACKS={spec!r}: cannot load {entry!r} ({exc}). Expected 'package.module:factory'. "
                "Fix: correct or unset the variable."
            ) from exc
        out += list(factory(trainer, callbacks))
    return out


def _checkpoint_base() -> type:
    from fulmen.callbacks.callback import Checkpoint

    return Checkpoint


def _reorder(cbs: list[Callback]) -> list[Callback]:
    """Checkpoint callbacks run last so they see every other callback's state."""
    ck = _checkpoint_base()
    return [c for c in cbs if not isinstance(c, ck)] + [c for c in cbs if isinstance(c, ck)]


def _check_state_keys(cbs: list[Callback]) -> None:
    seen: dict[str, Callback] = {}
    for cb in cbs:
        if type(cb).state_dict is Callback.state_dict:
            continue
        key = cb.state_key
        if key in seen:
            raise MisconfigurationException(
                f"Two stateful callbacks share the state_key {key!r}: {seen[key]!r} and {cb!r}. Their checkpoint "
                "states would overwrite each other. Fix: give them different arguments or override state_key."
            )
        seen[key] = cb


def _optional(module: str, name: str) -> Any:
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _default_progress_bar() -> Any:
    # as Lightning 2.6: RichProgressBar when rich is installed, else TQDMProgressBar
    cls = _optional("fulmen.callbacks.progress", "RichProgressBar" if _rich_available() else "TQDMProgressBar")
    return cls() if cls is not None else None


def apply_global_flags(cfg: Any) -> None:
    if cfg.deterministic is not None:
        torch.use_deterministic_algorithms(bool(cfg.deterministic), warn_only=cfg.deterministic == "warn")
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if cfg.benchmark is not None:
        torch.backends.cudnn.benchmark = cfg.benchmark
    elif cfg.deterministic:
        torch.backends.cudnn.benchmark = False


def transfer_batch(trainer: Trainer, batch: Any, dataloader_idx: int) -> Any:
    d = trainer._dispatcher
    dm = trainer.datamodule
    if dm is not None:
        batch = _dm_or(d, "on_before_batch_transfer", batch, dataloader_idx)
    if d.module_overrides("on_before_batch_transfer"):
        batch = d.module_hook("on_before_batch_transfer", batch, dataloader_idx)
    device = trainer.strategy.root_device
    if d.module_overrides("transfer_batch_to_device"):
        batch = d.module_hook("transfer_batch_to_device", batch, device, dataloader_idx)
    elif dm is not None and _dm_overrides(d, "transfer_batch_to_device"):
        batch = dm.transfer_batch_to_device(batch, device, dataloader_idx)
    else:
        batch = trainer.strategy.batch_to_device(batch, device)
    if dm is not None:
        batch = _dm_or(d, "on_after_batch_transfer", batch, dataloader_idx)
    if d.module_overrides("on_after_batch_transfer"):
        batch = d.module_hook("on_after_batch_transfer", batch, dataloader_idx)
    convert = trainer.strategy.precision.convert_input
    return convert(batch)


_TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


def batch_transfer_fn(trainer: Trainer, dataloader_idx: int) -> Callable[[Any], Any]:
    """``transfer_batch`` for one loop run, with the per-batch decisions made once.

    Without transfer hooks on the module or datamodule, a stock strategy and a precision plugin whose
    ``convert_input`` is the identity, the batch goes straight to ``move_data_to_device``.
    """
    d = trainer._dispatcher
    if any(d.module_overrides(h) for h in _TRANSFER_HOOKS) or any(_dm_overrides(d, h) for h in _TRANSFER_HOOKS):
        return functools.partial(transfer_batch, trainer, dataloader_idx=dataloader_idx)
    from fulmen.plugins.precision import Precision
    from fulmen.strategies import Strategy
    from fulmen.utilities.apply_func import move_batch_to_cpu, move_data_to_device

    strategy = trainer.strategy
    device = strategy.root_device
    # compared through the bound method, so an override on the instance (a profiler's timing shadow) counts
    if getattr(strategy.batch_to_device, "__func__", None) is not Strategy.batch_to_device:
        to_device: Callable[[Any], Any] = functools.partial(strategy.batch_to_device, device=device)
    elif device.type == "cpu":
        to_device = move_batch_to_cpu
    else:
        to_device = functools.partial(move_data_to_device, device=device)
    convert = strategy.precision.convert_input
    if getattr(convert, "__func__", None) is Precision.convert_input:  # the identity
        return to_device
    return lambda batch: convert(to_device(batch))


def _dm_overrides(d: Dispatcher, name: str) -> bool:
    from fulmen.core.dispatch import _overrides

    return d.datamodule is not None and _overrides(d.datamodule, d._dm_base, name)


def _dm_or(d: Dispatcher, name: str, batch: Any, idx: int) -> Any:
    if _dm_overrides(d, name):
        return getattr(d.datamodule, name)(batch, idx)
    return batch


def _check_model(trainer: Trainer, model: Any, fn: TrainerFn) -> Any:
    from fulmen.core.module import LightningModule

    if model is None:
        model = trainer.lightning_module
        if model is None:
            raise MisconfigurationTypeError(
                f"trainer.{fn.value}() needs a model: none was passed and no previous fit attached one. "
                f"Fix: trainer.{fn.value}(model, ...)."
            )
    if not isinstance(model, LightningModule):
        raise MisconfigurationTypeError(
            f"trainer.{fn.value}() expects a fulmen LightningModule, got {type(model).__name__}. Fix: subclass "
            "fulmen.LightningModule (for a plain nn.Module write your own loop with fulmen.Fabric)."
        )
    from fulmen.core.dispatch import _overrides

    if fn == TrainerFn.FITTING:
        if not _overrides(model, LightningModule, "training_step"):
            raise MisconfigurationException(
                f"{type(model).__name__} has no training_step. Fix: define "
                "`def training_step(self, batch, batch_idx)` returning the loss."
            )
        if model.automatic_optimization and not _overrides(model, LightningModule, "configure_optimizers"):
            raise MisconfigurationException(
                f"{type(model).__name__} has no configure_optimizers. Fix: define it, e.g. return "
                "torch.optim.Adam(self.parameters(), lr=1e-3)."
            )
        if not model.automatic_optimization:
            # Lightning rejects these too: the loop cannot clip or accumulate for you in manual optimization
            cfg = trainer.config
            if cfg.gradient_clip_val:
                raise MisconfigurationException(
                    f"Trainer(gradient_clip_val={cfg.gradient_clip_val}) does not apply in manual optimization. Fix: "
                    "remove it and call self.clip_gradients(opt, gradient_clip_val=...) before opt.step() in "
                    "training_step, or switch to automatic optimization."
                )
            if cfg.accumulate_grad_batches != 1:
                raise MisconfigurationException(
                    f"Trainer(accumulate_grad_batches={cfg.accumulate_grad_batches}) does not apply in manual "
                    "optimization. Fix: remove it and step the optimizers every N batches in training_step, or "
                    "switch to automatic optimization."
                )
    if fn == TrainerFn.PREDICTING and vars(model).get("predict_step", True) is None:
        raise MisconfigurationException(
            f"`predict_step` cannot be None to run `Trainer.predict` ({type(model).__name__}.predict_step was set to "
            "None). Fix: drop the assignment, or define predict_step(self, batch, batch_idx)."
        )
    if fn == TrainerFn.PREDICTING and not _overrides(model, LightningModule, "predict_step") and not _overrides(
        model, LightningModule, "forward"
    ):
        raise MisconfigurationException(
            f"trainer.predict: {type(model).__name__} defines neither predict_step nor forward. Fix: define "
            "predict_step(self, batch, batch_idx) returning the predictions."
        )
    if fn in (TrainerFn.VALIDATING, TrainerFn.TESTING):
        step = "validation_step" if fn == TrainerFn.VALIDATING else "test_step"
        if not _overrides(model, LightningModule, step):
            raise MisconfigurationException(
                f"trainer.{fn.value}: {type(model).__name__} has no {step}. Fix: define "
                f"{step}(self, batch, batch_idx) and log metrics with self.log."
            )
    return model


def _resolve_ckpt_path(trainer: Trainer, ckpt_path: Any, fn: TrainerFn) -> str | None:
    if ckpt_path is None:
        if fn != TrainerFn.FITTING:
            return None
        auto_resume = os.environ.get("FULMEN_AUTO_RESUME")
        if auto_resume == "1":
            ckpt_path = "last"
        elif auto_resume != "0" and _slurm_restart_count(trainer) > 0:
            return _slurm_resume_path(trainer)
        else:
            return None
    if ckpt_path == "best":
        if trainer.config.fast_dev_run:
            raise MisconfigurationException(
                f'Trainer.{fn.value}(ckpt_path="best") with Trainer(fast_dev_run={trainer.fast_dev_run!r}): a '
                "fast_dev_run saves no checkpoints, so there is no best one. Fix: pass an exact checkpoint path, "
                "or leave ckpt_path=None to use the current weights."
            )
        cb = trainer.checkpoint_callback
        best = getattr(cb, "best_model_path", None)
        if not best:
            raise MisconfigurationValueError(
                'ckpt_path="best" but no best checkpoint is known (no ModelCheckpoint with a saved best model). '
                "Fix: pass a path, or fit with a ModelCheckpoint(monitor=...) first."
            )
        return str(best)
    if ckpt_path == "last":
        return _find_last(trainer)
    if ckpt_path in ("hpc", "registry"):
        from fulmen.utilities.exceptions import NotSupportedYetError

        class _NotSupportedCkptPath(NotSupportedYetError, ValueError):  # Lightning: ValueError (no such checkpoint)
            pass

        raise _NotSupportedCkptPath(f"ckpt_path={ckpt_path!r} is not supported yet. Fix: pass a path.")
    return str(ckpt_path)


def _slurm_restart_count(trainer: Trainer) -> int:
    """How often SLURM requeued this job (``SLURM_RESTART_COUNT``); 0 when the run is not a SLURM job."""
    from fulmen.trainer.preemption import slurm_environment

    count = os.environ.get("SLURM_RESTART_COUNT", "0").strip()
    if slurm_environment(trainer) is None or not count.isdigit():
        return 0
    return int(count)


def _slurm_resume_path(trainer: Trainer) -> str | None:
    """A requeued SLURM job resumes from the newest last checkpoint (the preemption save) when there is one."""
    path = _find_last(trainer, warn=False)
    restarts = os.environ.get("SLURM_RESTART_COUNT")
    if path is None:
        rank_zero_info(
            f"SLURM requeued this job (SLURM_RESTART_COUNT={restarts}) but there is no last checkpoint under "
            f"{trainer.default_root_dir!r}: training starts from scratch."
        )
        return None
    rank_zero_info(
        f"SLURM requeued this job (SLURM_RESTART_COUNT={restarts}): resuming from {path}. Pass ckpt_path to choose "
        "another checkpoint, or set FULMEN_AUTO_RESUME=0 to start from scratch."
    )
    return path


def _remote_mtime(info: dict[str, Any]) -> float:
    """A listed remote file's modification time (object stores name it differently); 0 when unknown."""
    for key in ("LastModified", "mtime", "updated", "last_modified", "created"):
        value = info.get(key)
        if value is not None and hasattr(value, "timestamp"):
            return float(value.timestamp())
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            from datetime import datetime

            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return 0.0


def _find_last(trainer: Trainer, warn: bool = True) -> str | None:
    candidates: list[str] = []
    remote: dict[str, float] = {}  # last*.ckpt in remote checkpoint folders (fsspec URLs) -> modification time
    for cb in trainer.checkpoint_callbacks:
        last = getattr(cb, "last_model_path", None)
        if last:
            candidates.append(last)
        dirpath = getattr(cb, "dirpath", None)
        if dirpath is None:
            continue
        try:
            import fsspec

            fs, root = fsspec.core.url_to_fs(str(dirpath))
            local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
            if fs.exists(root):
                for f in fs.ls(root, detail=True):
                    name = os.path.basename(f["name"])
                    if name.startswith("last") and name.endswith(".ckpt"):
                        if local:
                            candidates.append(f["name"])
                        else:  # s3://, gs://...: keep the URL; an object store's file is complete once listed
                            remote[fs.unstrip_protocol(f["name"])] = _remote_mtime(f)
        except Exception:  # noqa: BLE001 - an unreadable dir just has no candidates
            continue
    # a restarted job (preemption, requeue) has a new logger version: look across the whole root too
    import glob

    root = trainer.default_root_dir
    candidates += glob.glob(os.path.join(root, "checkpoints", "last*.ckpt"))
    candidates += glob.glob(os.path.join(root, "**", "checkpoints", "last*.ckpt"), recursive=True)
    found = {c: os.path.getmtime(c) for c in candidates if os.path.exists(c)}
    found.update(remote)
    if not found:
        if warn:
            rank_zero_warn(
                'ckpt_path="last" is set, but there is no last checkpoint yet; training starts from scratch.'
            )
        return None
    return max(found, key=lambda c: found[c])


def run(trainer: Trainer, fn: TrainerFn, model: Any, datamodule: Any, loaders: dict[str, Any], ckpt_path: Any,
        weights_only: bool | None, verbose: bool = True, return_predictions: bool = True) -> Any:
    model = _check_model(trainer, model, fn)
    if fn == TrainerFn.FITTING:
        resolve_max_epochs(trainer)
    from fulmen.core.datamodule import LightningDataModule

    if datamodule is not None and not isinstance(datamodule, LightningDataModule):
        raise MisconfigurationException(
            f"datamodule={datamodule!r} is not a LightningDataModule. Fix: subclass fulmen.LightningDataModule."
        )
    # getattr: strategies without multi-process support have no launcher (and no on_exception) attribute
    launcher = getattr(trainer.strategy, "launcher", None)
    if launcher is None:
        return _run(trainer, fn, model, datamodule, loaders, ckpt_path, weights_only, verbose, return_predictions)
    from fulmen.trainer import _launch

    try:
        out = launcher.launch(_launch.run_launched, _run, trainer, fn, model, datamodule, loaders, ckpt_path,
                              weights_only, verbose, return_predictions)
    except KeyboardInterrupt as exc:
        # Ctrl-C while worker processes run the stage (each shuts itself down): as Lightning, exit with status 1
        rank_zero_warn("Detected KeyboardInterrupt, attempting graceful shutdown ...")
        trainer.state.status = TrainerStatus.INTERRUPTED
        raise SystemExit(1) from exc
    return _launch.apply_worker_output(trainer, fn, model, datamodule, out)


def _sync_logger_versions(trainer: Trainer) -> None:
    """Give every rank global rank 0's automatic logger version (``version_N``), once per run.

    Each rank resolving ``version_N`` itself by listing ``save_dir/name`` races with rank 0 creating its
    version folder, so ranks could disagree (and with them ``trainer.log_dir`` and the default checkpoint
    directory). Rank 0 resolves it (only rank 0 writes logs) and one broadcast sends it to the others; a rank
    that had already resolved its own number takes rank 0's. Nothing happens on one process or without such
    a logger; the loggers are built from the same arguments on every rank, so every rank takes part alike.
    """
    strategy = trainer.strategy
    if not getattr(strategy, "is_distributed", False) or strategy.world_size <= 1:
        return
    auto = [lg for lg in trainer.loggers if getattr(lg, "_auto_version", False)]
    if not auto:
        return
    mine = [lg.version for lg in auto] if strategy.global_rank == 0 else None
    versions = strategy.broadcast(mine, src=0)
    for lg, version in zip(auto, versions):
        lg._version = version


def resolved_max_epochs(trainer: Trainer) -> int:
    """``max_epochs`` as a fit uses it: when not given, 1000, or -1 (no limit) with ``max_steps`` or a Timer."""
    cfg = trainer.config
    if cfg.max_epochs is not None:
        return cfg.max_epochs
    timer = any(type(k).__name__ == "Timer" for c in trainer.callbacks for k in type(c).__mro__)
    return 1000 if cfg.max_steps == -1 and not timer else -1


def resolve_max_epochs(trainer: Trainer) -> None:
    """At the start of each fit, as Lightning: an unset ``max_epochs`` becomes 1000 (with a warning), or -1 with
    ``max_steps``/``max_time``; an unset ``min_epochs`` becomes 1 with ``min_steps``, else 0;
    ``trainer.max_epochs``/``min_epochs`` (and ``fit_loop``'s) read the values from then on."""
    import dataclasses

    if trainer.config.min_epochs is None:
        min_epochs = 1 if trainer.config.min_steps is not None else 0
        trainer.config = dataclasses.replace(trainer.config, min_epochs=min_epochs)
    if trainer.config.max_epochs is not None:
        return

    from fulmen.utilities.rank_zero import PossibleUserWarning

    max_epochs = resolved_max_epochs(trainer)
    if max_epochs == 1000:
        rank_zero_warn(
            "`max_epochs` was not set. Setting it to 1000 epochs. To train without an epoch limit, set "
            "`max_epochs=-1`.",
            category=PossibleUserWarning,
        )
    trainer.config = dataclasses.replace(trainer.config, max_epochs=max_epochs)


def _run(trainer: Trainer, fn: TrainerFn, model: Any, datamodule: Any, loaders: dict[str, Any], ckpt_path: Any,
         weights_only: bool | None, verbose: bool = True, return_predictions: bool = True) -> Any:
    trainer.state.fn = fn
    trainer.state.status = TrainerStatus.RUNNING
    # as Lightning: the run's stage holds from the setup hooks through teardown (trainer.training is True in
    # setup/on_fit_start/on_fit_end/teardown of a fit, trainer.validating in those of a validate, ...)
    trainer.state.stage = _RUN_STAGE[fn]
    trainer.lightning_module = model
    trainer.datamodule = datamodule if datamodule is not None else (trainer.datamodule if fn != TrainerFn.FITTING else None)
    model.trainer = trainer
    if trainer.datamodule is not None:
        trainer.datamodule.trainer = trainer
    trainer._data.reset()
    trainer._data.explicit = {k: v for k, v in loaders.items() if v is not None}
    trainer._metrics.reset()
    callbacks = list(trainer.callbacks)
    trainer._dispatcher = Dispatcher(trainer, model, trainer.datamodule, trainer.callbacks)
    stage = fn.value
    profiling = _start_profiling(trainer, model, stage)
    try:
        _configure_callbacks(trainer, model)
        trainer._dispatcher = Dispatcher(trainer, model, trainer.datamodule, trainer.callbacks)
        if getattr(trainer.profiler, "active", False):  # only a real profiler wraps the hooks
            from fulmen.profilers._instrument import instrument_dispatcher

            instrument_dispatcher(trainer._dispatcher)
        d = trainer._dispatcher
        trainer.strategy.setup_environment()
        _sync_logger_versions(trainer)
        _prepare_data(trainer, model, d)
        d.callbacks_hook("setup", stage)
        if trainer.datamodule is not None:
            trainer.datamodule.setup(stage)
        d.module_hook("setup", stage)
        return _run_stage(trainer, fn, model, ckpt_path, weights_only, verbose, return_predictions)
    except _TunerExitException:
        # a Tuner ended the run after tuning: not a failure, so no on_exception and the loggers finalize "success"
        _teardown(trainer, stage, success=True)
        trainer.state.status = TrainerStatus.FINISHED
        trainer.state.stage = None
        return None
    except KeyboardInterrupt as exc:
        # As Lightning: a graceful shutdown (on_exception hooks, loggers finalized, the strategy torn down; not the
        # teardown hooks), then the process exits with status 1, so the code after ``fit`` does not run. A second
        # Ctrl-C during the shutdown is ignored.
        # Lightning logs it at INFO level, which its console handler shows; fulmen configures no log handler
        rank_zero_warn("Detected KeyboardInterrupt, attempting graceful shutdown ...")
        previous = _ignore_sigint()
        try:
            trainer.state.status = TrainerStatus.INTERRUPTED
            _strategy_on_exception(trainer, exc)
            _on_exception(trainer, exc)
            trainer.strategy.teardown()  # as Lightning, trainer.state.stage keeps the stage that was interrupted
        finally:
            _restore_sigint(previous)
        raise SystemExit(1) from exc
    except BaseException as exc:
        trainer.state.status = TrainerStatus.INTERRUPTED
        # in a multi-process run: tell the other ranks (they stop), or learn that a peer failed first
        reported = _strategy_on_exception(trainer, exc)
        _on_exception(trainer, reported)
        _teardown(trainer, stage, success=False)
        trainer.state.stage = None
        if reported is not exc:
            raise reported from exc
        raise
    finally:
        if profiling is not None:
            profiling.close()
        trainer.callbacks[:] = callbacks if trainer._dispatcher is None else trainer.callbacks


def _ignore_sigint() -> Any:
    """Ignore SIGINT (from the main thread only, where Python allows it); returns the handler to put back."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, signal.SIG_IGN)


def _restore_sigint(previous: Any) -> None:
    if previous is not None:
        import signal

        signal.signal(signal.SIGINT, previous)


def _strategy_on_exception(trainer: Trainer, exc: BaseException) -> BaseException:
    hook = getattr(trainer.strategy, "on_exception", None)
    return exc if hook is None else hook(exc)


def _prepare_data(trainer: Trainer, model: Any, d: Dispatcher) -> None:
    """``prepare_data`` once per node (local rank 0), or once in total with ``prepare_data_per_node=False``;
    the other ranks wait for it."""
    dm = trainer.datamodule
    for owner in ([dm] if dm is not None else []) + [model]:
        per_node = getattr(owner, "prepare_data_per_node", True)
        if (trainer.local_rank if per_node else trainer.global_rank) == 0:
            if owner is model:
                d.module_hook("prepare_data")
            else:
                owner.prepare_data()
    trainer.strategy.barrier("prepare_data")


def _start_profiling(trainer: Trainer, model: Any, stage: str) -> Any:
    """Instrument this run for ``trainer.profiler`` (None, and no work at all, for the default profiler)."""
    if not trainer.profiler.active:
        return None
    from fulmen.profilers._instrument import RunInstrumentation

    return RunInstrumentation(trainer, model, stage)


def _configure_callbacks(trainer: Trainer, model: Any) -> None:
    extra = model.configure_callbacks()
    if not extra:
        return
    extra = list(extra) if isinstance(extra, (list, tuple)) else [extra]
    types = {type(c) for c in extra}
    kept = [c for c in trainer.callbacks if type(c) not in types]
    trainer.callbacks[:] = _reorder(kept + extra)


def _run_stage(trainer: Trainer, fn: TrainerFn, model: Any, ckpt_path: Any, weights_only: bool | None, verbose: bool,
               return_predictions: bool) -> Any:
    from fulmen.trainer.checkpointing import (
        restore_module_and_callbacks,
        restore_sharded_weights,
        restore_training_state,
    )

    d = trainer._dispatcher
    stage = fn.value
    path = _resolve_ckpt_path(trainer, ckpt_path, fn)
    trainer._ckpt_path = path
    checkpoint = None
    if path is not None:
        checkpoint = trainer.strategy.load_checkpoint(path, weights_only=weights_only)
    d.module_hook("configure_model")
    strategy = trainer.strategy
    model = strategy.precision.convert_module(model)
    strategy.module_to_device(model)
    if checkpoint is not None:
        restore_module_and_callbacks(trainer, checkpoint)
    if fn == TrainerFn.FITTING or getattr(strategy, "shards_parameters", False):
        strategy.setup_module(model)  # DDP / FSDP wrapping (a no-op on one device)
    if checkpoint is not None:
        restore_sharded_weights(trainer, checkpoint)  # a sharded checkpoint: into the sharded parameters
    trainer._restored_mid_run = False
    if fn == TrainerFn.FITTING:
        # As in Lightning, the progress of earlier fits on this Trainer is kept: a second fit once max_epochs or
        # max_steps is reached trains nothing, and one with a raised limit continues. Only a stop request ends.
        trainer.run_state.should_stop = False
        trainer.run_state.resume_point = ""
        trainer.run_state.accumulate_grad_batches = trainer.config.accumulate_grad_batches
        trainer._current_fx = "configure_optimizers"
        opts, scheds = init_optimizers(model)
        trainer._current_fx = None
        _check_multiple_optimizers(model, len(opts))
        engine_setup = getattr(strategy, "setup_training_engine", None)
        if engine_setup is not None:  # DeepSpeed: one engine for the module and its optimizer
            cfg = trainer.config
            engine_setup(model, opts, cfg.accumulate_grad_batches, cfg.gradient_clip_val, cfg.gradient_clip_algorithm)
        trainer.optimizers = opts
        trainer._lightning_optimizers = [LightningOptimizer(o) for o in opts]
        trainer.lr_scheduler_configs = scheds
        _log_hparams(trainer, model)
        d.both("on_fit_start")
        model.zero_grad()
        if checkpoint is not None:
            restore_training_state(trainer, checkpoint)
            # as Lightning, the sanity check is skipped when the checkpoint was written inside an epoch or inside a
            # validation, and runs for one written at an epoch's end (on_train_epoch_end) or after a fit
            rs = trainer.run_state
            trainer._restored_mid_run = rs.resume_point in ("val", "after_val") or (
                rs.batch_in_epoch > 0 and rs.resume_point != "epoch_end"
            )
        trainer._optimization.setup()
        from fulmen.trainer.preemption import preemption_handlers

        trainer._preempt_signal = None
        # Lightning: detect_anomaly applies to the whole fit loop (set_detect_anomaly restores the mode after)
        with preemption_handlers(trainer), torch.autograd.set_detect_anomaly(trainer.config.detect_anomaly):
            trainer.fit_loop.run()
        trainer.state.stage = RunningStage.TRAINING  # as Lightning: on_fit_end and teardown see TRAINING
        d.both("on_fit_end")
        result = None
    elif fn in (TrainerFn.VALIDATING, TrainerFn.TESTING):
        key = "val" if fn == TrainerFn.VALIDATING else "test"
        loaders, limits = trainer._data.load_eval(key)
        loop = trainer._val_loop if key == "val" else trainer._test_loop
        result = loop.run(loaders, limits)
        if verbose and trainer.is_global_zero:
            _print_results(result, "Validate" if key == "val" else "Test")
    else:
        loaders, limits = trainer._data.load_eval("predict")
        result = trainer.predict_loop.run(loaders, limits, return_predictions)
    trainer.state.stage = _RUN_STAGE[fn]
    # as Lightning: the teardown hooks run while the status is still RUNNING; FINISHED once they are done
    _teardown(trainer, stage, success=True)
    trainer.state.status = TrainerStatus.FINISHED
    trainer.state.stage = None
    return result


def _check_multiple_optimizers(model: Any, n: int) -> None:
    """Lightning's RuntimeErrors (same text) for Lightning 1.x-style multi-optimizer training under automatic
    optimization: a ``training_step`` taking ``optimizer_idx``, or several optimizers."""
    import inspect

    fn = getattr(model.training_step, "__wrapped__", model.training_step)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C callable: nothing to inspect
        params = {}  # type: ignore[assignment]
    if "optimizer_idx" in params:
        raise RuntimeError(
            "Training with multiple optimizers is only supported with manual optimization. Remove the "
            "`optimizer_idx` argument from `training_step`, set `self.automatic_optimization = False` and access "
            "your optimizers in `training_step` with `opt1, opt2, ... = self.optimizers()`. Fix: drop "
            "`optimizer_idx` (Lightning 1.x style) and step the optimizers yourself in manual optimization."
        )
    if model.automatic_optimization and n > 1:
        raise RuntimeError(
            "Training with multiple optimizers is only supported with manual optimization. Set "
            "`self.automatic_optimization = False`, then access your optimizers in `training_step` with "
            f"`opt1, opt2, ... = self.optimizers()`. (configure_optimizers returned {n} optimizers.) Fix: switch to "
            "manual optimization and step each optimizer in training_step, or return one optimizer."
        )


def _log_hparams(trainer: Trainer, model: Any) -> None:
    if not trainer.loggers or not trainer.config.enable_autolog_hparams:
        return
    # as Lightning: the loggers get the hyperparameters even when there are none (TensorBoardLogger then writes
    # hp_metric and an hparams.yaml of `{}`), once the module or the datamodule called save_hyperparameters
    dm = trainer.datamodule
    log_module = bool(getattr(model, "_log_hyperparams", False))
    log_dm = dm is not None and bool(getattr(dm, "_log_hyperparams", False))
    params: dict[str, Any] | None = None
    if log_module or log_dm:
        params = {}
        if log_module:
            params.update(dict(model.hparams_initial))
        if log_dm:
            params.update(dict(dm.hparams_initial))
        params.pop("_class_path", None)  # LightningCLI's internal entry is not logged (as Lightning)
    for logger in trainer.loggers:
        if params is not None:
            logger.log_hyperparams(params)
        if hasattr(logger, "log_graph"):
            logger.log_graph(model)
        logger.save()


def _on_exception(trainer: Trainer, exc: BaseException) -> None:
    d = trainer._dispatcher
    try:
        d.callbacks_hook("on_exception", exc)
        if trainer.lightning_module is not None and d.module_overrides("on_exception"):
            d.module_hook("on_exception", exc)
        if trainer.datamodule is not None:
            trainer.datamodule.on_exception(exc)
    finally:
        for logger in trainer.loggers:
            logger.finalize("failed")  # as Lightning 2.6.1, a Ctrl-C too


def _teardown(trainer: Trainer, stage: str, success: bool) -> None:
    d = trainer._dispatcher
    trainer._current_fx = None
    if success:
        for logger in trainer.loggers:
            logger.finalize("success")
    d.callbacks_hook("teardown", stage)
    if trainer.datamodule is not None:
        trainer.datamodule.teardown(stage)
    if trainer.lightning_module is not None:
        d.module_hook("teardown", stage)
    trainer.strategy.teardown()


def _print_results(results: list[dict[str, float]], title: str) -> None:
    from fulmen.trainer._results_table import print_results

    print_results(results, title)  # Lightning's table, character for character


_RUN_STAGE = {
    TrainerFn.FITTING: RunningStage.TRAINING,
    TrainerFn.VALIDATING: RunningStage.VALIDATING,
    TrainerFn.TESTING: RunningStage.TESTING,
    TrainerFn.PREDICTING: RunningStage.PREDICTING,
}
