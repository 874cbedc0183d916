"""Validation and test loops (also the sanity check). Hooks in order: see ``core/events.py``."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from fulmen.core.results import ResultCollection
from fulmen.trainer.loops.step_args import DATALOADER_ITER, DataLoaderIter, adapt_step, limited_pairs, step_flavor
from fulmen.trainer.states import RunningStage
from fulmen.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer


def _record_modes(module: torch.nn.Module) -> dict[torch.nn.Module, bool]:
    return {m: m.training for m in module.modules()}


def _restore_modes(modes: dict[torch.nn.Module, bool]) -> None:
    for m, training in modes.items():
        if m.training != training:
            m.training = training


def eval_context(trainer: Trainer, in_fit: bool = False) -> Any:
    # As in Lightning: no inference mode on a gloo process group (tensors created there, e.g. FSDP's unsharded
    # parameters, would be inference tensors that the next training step cannot update in place), and none for the
    # validation inside fit (and its sanity check): a tensor the module caches there may be used by training later.
    if not in_fit and trainer.config.inference_mode and trainer.strategy.supports_inference_mode:
        return torch.inference_mode()
    return torch.no_grad()


class EvaluationLoop:
    """Runs ``[eval epoch]`` for validation (incl. sanity check) or test."""

    def __init__(self, trainer: Trainer, stage: RunningStage) -> None:
        self.trainer = trainer
        self.stage = stage
        self.prefix = "validation" if stage in (RunningStage.VALIDATING, RunningStage.SANITY_CHECKING) else "test"

    def run(self, loaders: list[Any], limits: list[int | float], in_fit: bool = False) -> list[dict[str, float]]:
        trainer = self.trainer
        d = trainer._dispatcher
        module = trainer.lightning_module
        p = self.prefix
        prev_stage = trainer.state.stage
        prev_results = trainer._results
        trainer.state.stage = self.stage
        results = ResultCollection(training=False)
        results.reduce = trainer.strategy.metric_reduce
        trainer._results = results
        trainer._multiple_eval_loaders = len(loaders) > 1
        modes = _record_modes(module)
        # the sanity check runs inside fit too (no inference mode there either)
        fitting = in_fit or self.stage == RunningStage.SANITY_CHECKING
        try:
            if in_fit and not trainer._accumulating:  # outside the no-grad context, as in Lightning
                d.module_hook("on_validation_model_zero_grad")
            # As in Lightning, the whole loop runs without grad, from on_*_model_eval to on_*_model_train
            with eval_context(trainer, fitting):
                d.module_hook(f"on_{p}_model_eval")
                d.both(f"on_{p}_start")
                d.both(f"on_{p}_epoch_start")
                self._run_batches(loaders, limits, results)
                # epoch-end hooks belong to no dataloader: their values get no suffix and go to every result
                results.set_batch(None)
                # callbacks and the module read this run's values from trainer.callback_metrics here
                trainer._metrics.eval_epoch_end = results
                try:
                    d.both(f"on_{p}_epoch_end")
                finally:
                    trainer._metrics.eval_epoch_end = None
                # only trainer.validate/test return the per-dataloader numbers; skipping them in fit and the
                # sanity check saves a host sync per metric
                returned = not in_fit and self.stage != RunningStage.SANITY_CHECKING
                out = self._per_dataloader(results, len(loaders)) if returned else []
                trainer._metrics.epoch_end(results, log=self.stage != RunningStage.SANITY_CHECKING)
                if in_fit:  # a checkpoint written from on_validation_end resumes after this validation
                    trainer.run_state.resume_point = "after_val"
                self._on_end(p, d)
                if d.module_overrides(f"on_{p}_model_train") and p in ("validation", "test"):
                    d.module_hook(f"on_{p}_model_train")
                else:
                    _restore_modes(modes)
        finally:
            trainer._results = prev_results
            trainer.state.stage = prev_stage
        return out

    def _on_end(self, p: str, d: Any) -> None:
        # Lightning: every callback (ModelCheckpoint saving on validation end included), then the module;
        # only on_train_epoch_end holds the monitoring callbacks back until after the module
        d.both(f"on_{p}_end")

    def _run_batches(self, loaders: list[Any], limits: list[int | float], results: ResultCollection) -> None:
        trainer = self.trainer
        d = trainer._dispatcher
        p = self.prefix
        step_name = f"{p}_step"
        multiple = len(loaders) > 1
        # through the strategy: FSDP runs the step inside the root module's forward (parameters gathered); called as
        # (batch, batch_idx, *dataloader_idx) whatever the step's signature (step_args, decided once per run)
        module = trainer.lightning_module
        flavor = step_flavor(getattr(module, step_name))
        step_fn = adapt_step(trainer.strategy.step_function(module, step_name), flavor)
        if flavor == DATALOADER_ITER:
            rank_zero_warn(
                f"Found `dataloader_iter` argument in the `{step_name}`. Note that the support for this signature "
                "is experimental and the behavior is subject to change."
            )
        forward_ctx = trainer.strategy.precision.forward_context
        has_start = d.has_callbacks(f"on_{p}_batch_start") or d.module_overrides(f"on_{p}_batch_start")
        has_end = d.has_callbacks(f"on_{p}_batch_end") or d.module_overrides(f"on_{p}_batch_end")
        # as Lightning's fit_loop.epoch_loop.val_loop.batch_progress: fit's validation batches (not the sanity
        # check's, not trainer.validate's), its total reset at each training epoch start (FitLoop)
        in_fit = self.stage == RunningStage.VALIDATING and trainer.state.fn == "fit"
        progress = trainer.run_state.val_batch_progress if in_fit else None
        # as in Lightning, each batch's on_step values go to the loggers (not in the sanity check), at a step
        # counting this dataloader's evaluation batches (see DataManager.eval_log_steps)
        log_steps = None if self.stage == RunningStage.SANITY_CHECKING else trainer._data.eval_log_steps
        metrics_store = trainer._metrics
        for dl_idx, (loader, limit) in enumerate(zip(loaders, limits)):
            if limit == 0:
                continue
            trainer._eval_dataloader_idx = dl_idx
            extra = (dl_idx,) if multiple else ()
            if flavor == DATALOADER_ITER:
                self._run_iter_loader(loader, limit, dl_idx, extra, results, step_fn, has_start, has_end, progress,
                                      log_steps)
                continue
            for batch_idx, batch in enumerate(loader):
                batch = trainer._transfer_batch(batch, dl_idx)
                results.set_batch(batch, dl_idx)
                if has_start:
                    d.both(f"on_{p}_batch_start", batch, batch_idx, *extra)
                trainer._current_fx = step_name
                with forward_ctx():
                    output = step_fn(batch, batch_idx, *extra)
                trainer._current_fx = None
                if has_end:
                    d.both(f"on_{p}_batch_end", output, batch, batch_idx, *extra)
                if progress is not None:
                    progress.increment()
                if log_steps is not None:
                    n = log_steps.get(dl_idx, 0)
                    metrics_store.log_eval_step(results, dl_idx if multiple else None, n)
                    log_steps[dl_idx] = n + 1
                if limit != math.inf and batch_idx + 1 >= limit:
                    break

    def _run_iter_loader(
        self, loader: Any, limit: int | float, dl_idx: int, extra: tuple[int, ...], results: ResultCollection,
        step_fn: Any, has_start: bool, has_end: bool, progress: Any, log_steps: dict[int, int] | None,
    ) -> None:
        """One dataloader for a ``*_step(self, dataloader_iter)``: the step pulls its batches (see step_args)."""
        trainer = self.trainer
        d = trainer._dispatcher
        p = self.prefix
        step_name = f"{p}_step"
        forward_ctx = trainer.strategy.precision.forward_context
        it = DataLoaderIter(limited_pairs(loader, limit), dl_idx)
        while not it.done:
            batch, batch_idx = it.batch, max(it.batch_idx, 0)
            results.set_batch(batch, dl_idx)
            if has_start:
                d.both(f"on_{p}_batch_start", batch, batch_idx, *extra)
            trainer._current_fx = step_name
            try:
                with forward_ctx():
                    output = step_fn(it, batch_idx, *extra)
            except StopIteration:  # the step ran out of batches: this dataloader is done (as in Lightning)
                break
            finally:
                trainer._current_fx = None
            if has_end:
                d.both(f"on_{p}_batch_end", output, it.batch, max(it.batch_idx, 0), *extra)
            if progress is not None:
                progress.increment()
            if log_steps is not None:
                n = log_steps.get(dl_idx, 0)
                trainer._metrics.log_eval_step(results, dl_idx if len(extra) else None, n)
                log_steps[dl_idx] = n + 1

    @staticmethod
    def _per_dataloader(results: ResultCollection, n: int) -> list[dict[str, float]]:
        out: list[dict[str, float]] = [{} for _ in range(max(n, 1))]
        for m in results.metrics.values():
            if not m.meta.on_epoch or not m.meta.logger:  # as in Lightning: the values sent to the loggers
                continue
            # a torchmetrics Metric computes here once; torchmetrics caches it for the epoch_end that follows
            value = m.epoch_value(results.reduce)
            if value is None:
                continue
            name = m.meta.epoch_key
            number = value.item() if isinstance(value, torch.Tensor) else float(value)
            targets = [m.meta.dataloader_idx] if m.meta.dataloader_idx is not None else range(len(out))
            for i in targets:
                out[i][name] = number
        return out


_ = nullcontext
