"""``ThroughputMonitor``: batches/samples/items/FLOPs per second and MFU for every stage, logged to the loggers.

The rates are :class:`fulmen.utilities.throughput.Throughput`'s, over a rolling window of batches. Training
rates are logged when the trainer logs (after an optimizer step, every ``log_every_n_steps``), at the trainer's
logging step with the ``epoch``; evaluation and prediction rates every ``log_every_n_steps`` batches of a run,
at the stage's running batch count (which continues across ``validate``/``test`` calls). Metric names are prefixed with the stage: ``train/device/samples_per_sec``, ``validate/time``.
Time spent in validation during ``fit`` is not counted as training time. FLOPs come from a ``flops_per_batch``
attribute of the LightningModule (see :func:`fulmen.utilities.throughput.measure_flops`). Only global rank 0
measures and logs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from fulmen.callbacks.callback import Callback
from fulmen.core.states import RunningStage, TrainerFn
from fulmen.utilities.rank_zero import rank_zero_only, rank_zero_warn
from fulmen.utilities.throughput import Throughput, _precision_dtype, get_available_flops


class ThroughputMonitor(Callback):
    """Measure and log throughput (``lightning.pytorch.callbacks.ThroughputMonitor``).

    Args:
        batch_size_fn: the number of samples in a batch, e.g. ``lambda batch: batch[0].size(0)``.
        length_fn: the number of items (e.g. tokens) in a batch; enables ``items_per_sec``.
        **kwargs: :class:`~fulmen.utilities.throughput.Throughput`'s ``window_size`` and ``separator``.

    Raises:
        TypeError: ``batch_size_fn`` (or ``length_fn``) is not callable.
    """

    def __init__(
        self, batch_size_fn: Callable[[Any], int], length_fn: Callable[[Any], int] | None = None, **kwargs: Any
    ) -> None:
        super().__init__()
        if not callable(batch_size_fn):
            raise TypeError(
                f"ThroughputMonitor(batch_size_fn={batch_size_fn!r}); expected a function of the batch, e.g. "
                "batch_size_fn=lambda batch: batch.size(0)."
            )
        if length_fn is not None and not callable(length_fn):
            raise TypeError(f"ThroughputMonitor(length_fn={length_fn!r}); expected a function of the batch or None.")
        Throughput(**kwargs)  # validate window_size/separator now, not at the first batch
        self.kwargs = kwargs
        self.batch_size_fn = batch_size_fn
        self.length_fn = length_fn
        self.available_flops: int | None = None
        self._throughputs: dict[RunningStage, Throughput] = {}
        self._t0s: dict[RunningStage, float] = {}
        self._lengths: dict[RunningStage, int] = {}
        self._samples: dict[RunningStage, int] = {}
        self._batches: dict[RunningStage, int] = {}
        self._iterations: dict[RunningStage, int] = {}  # evaluation batches of this trainer, never reset
        self._run_batches: dict[RunningStage, int] = {}  # batches of the current evaluation run
        self._module_has_flops: bool | None = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        device = trainer.strategy.root_device
        self.available_flops = get_available_flops(device, _precision_dtype(trainer.precision_plugin))
        stages = {
            "fit": [RunningStage.TRAINING] + ([RunningStage.VALIDATING] if trainer.enable_validation else []),
            "validate": [RunningStage.VALIDATING],
            "test": [RunningStage.TESTING],
            "predict": [RunningStage.PREDICTING],
        }.get(str(getattr(stage, "value", stage)), [])
        for running_stage in stages:
            self._throughputs[running_stage] = Throughput(
                available_flops=self.available_flops, world_size=trainer.world_size, **self.kwargs
            )

    # ------------------------------------------------------------------ measuring
    def _start(self, trainer: Any, stage: RunningStage) -> None:
        if stage not in self._throughputs:
            self._throughputs[stage] = Throughput(
                available_flops=self.available_flops, world_size=trainer.world_size, **self.kwargs
            )
        if trainer.state.fn == TrainerFn.FITTING or stage not in self._samples:
            self._throughputs[stage].reset()
            self._lengths[stage] = self._samples[stage] = self._batches[stage] = 0
        self._run_batches[stage] = 0
        self._t0s[stage] = time.perf_counter()

    @torch.inference_mode()  # batch_size_fn/length_fn must not record autograd graphs
    def _update(self, trainer: Any, pl_module: Any, batch: Any, stage: RunningStage) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # the clock must include the queued kernels
        elapsed = time.perf_counter() - self._t0s[stage]
        if self.length_fn is not None:
            self._lengths[stage] += self.length_fn(batch)
        if self._module_has_flops is None:
            self._module_has_flops = hasattr(pl_module, "flops_per_batch")
            if not self._module_has_flops:
                rank_zero_warn(
                    "When using the `ThroughputMonitor`, you need to define a `flops_per_batch` attribute or property"
                    f" in {type(pl_module).__name__} to compute the FLOPs."
                )
        self._samples[stage] += self.batch_size_fn(batch)
        self._batches[stage] += 1
        self._throughputs[stage].update(
            time=elapsed,
            batches=self._batches[stage],
            samples=self._samples[stage],
            lengths=None if self.length_fn is None else self._lengths[stage],
            flops=pl_module.flops_per_batch if self._module_has_flops else None,
        )

    def _log(self, trainer: Any, stage: RunningStage, step: int, epoch: int | None) -> None:
        throughput = self._throughputs[stage]
        metrics: dict[str, Any] = {
            f"{stage.value}{throughput.separator}{key}": value for key, value in throughput.compute().items()
        }
        if epoch is not None:
            metrics.setdefault("epoch", epoch)
        for logger in trainer.loggers:
            logger.log_metrics(metrics=metrics, step=step)
            logger.save()

    def _eval_batch_end(self, trainer: Any, pl_module: Any, batch: Any, stage: RunningStage) -> None:
        self._update(trainer, pl_module, batch, stage)
        iteration = self._iterations[stage] = self._iterations.get(stage, 0) + 1
        in_run = self._run_batches[stage] = self._run_batches.get(stage, 0) + 1
        every = trainer.log_every_n_steps
        if (every and in_run % every == 0) or trainer.should_stop:
            self._log(trainer, stage, iteration, epoch=None)

    # ------------------------------------------------------------------ hooks
    @rank_zero_only
    def on_train_start(self, trainer: Any, *_: Any) -> None:
        self._start(trainer, RunningStage.TRAINING)

    @rank_zero_only
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *_: Any) -> None:
        stage = RunningStage.TRAINING
        self._update(trainer, pl_module, batch, stage)
        run_state = trainer.run_state
        # log only when an optimizer step closed the (accumulated) batch, on the trainer's own logging cadence
        if not run_state.last_batch_stepped:
            return
        every = trainer.log_every_n_steps
        if (every and (run_state.batches_that_stepped + 1) % every == 0) or trainer.should_stop:
            self._log(trainer, stage, run_state.batches_that_stepped, epoch=trainer.current_epoch)

    @rank_zero_only
    def on_validation_start(self, trainer: Any, *_: Any) -> None:
        if not trainer.sanity_checking:
            self._start(trainer, RunningStage.VALIDATING)

    @rank_zero_only
    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *_: Any) -> None:
        if not trainer.sanity_checking:
            self._eval_batch_end(trainer, pl_module, batch, RunningStage.VALIDATING)

    @rank_zero_only
    def on_validation_end(self, trainer: Any, *_: Any) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        train, val = RunningStage.TRAINING, RunningStage.VALIDATING
        if train not in self._t0s or val not in self._t0s:
            return
        train_times, val_times = self._throughputs[train]._time, self._throughputs[val]._time
        train_done_at = self._t0s[train] + (train_times[-1] if train_times else 0.0)
        # move the training clock's origin forward by the gap before validation and the validation itself
        self._t0s[train] += (self._t0s[val] - train_done_at) + (val_times[-1] if val_times else 0.0)

    @rank_zero_only
    def on_test_start(self, trainer: Any, *_: Any) -> None:
        self._start(trainer, RunningStage.TESTING)

    @rank_zero_only
    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *_: Any) -> None:
        self._eval_batch_end(trainer, pl_module, batch, RunningStage.TESTING)

    @rank_zero_only
    def on_predict_start(self, trainer: Any, *_: Any) -> None:
        self._start(trainer, RunningStage.PREDICTING)

    @rank_zero_only
    def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *_: Any) -> None:
        self._eval_batch_end(trainer, pl_module, batch, RunningStage.PREDICTING)
