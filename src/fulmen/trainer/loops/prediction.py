"""The predict loop."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from fulmen.trainer.loops.evaluation import _record_modes, _restore_modes, eval_context
from fulmen.trainer.loops.step_args import DATALOADER_ITER, DataLoaderIter, adapt_step, limited_pairs, step_flavor
from fulmen.trainer.states import RunningStage
from fulmen.utilities.data import record_batch_indices
from fulmen.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer


class PredictionLoop:
    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        # the dataset indices of the current batch and of every batch so far, per dataloader (Lightning's
        # ``predict_loop.current_batch_indices`` / ``epoch_batch_indices``: BasePredictionWriter passes them on);
        # empty where the loader has no batch sampler to read them from
        self.current_batch_indices: list[Any] = []
        self.epoch_batch_indices: list[list[Any]] = []

    def run(self, loaders: list[Any], limits: list[int | float], return_predictions: bool) -> Any:
        t = self.trainer
        d = t._dispatcher
        module = t.lightning_module
        t.state.stage = RunningStage.PREDICTING
        t._results = None
        modes = _record_modes(module)
        multiple = len(loaders) > 1
        all_preds: list[list[Any]] = [[] for _ in loaders]
        self.predictions = all_preds
        self.epoch_batch_indices = [[] for _ in loaders]
        forward_ctx = t.strategy.precision.forward_context
        # through the strategy: FSDP runs the step inside the root module's forward (parameters gathered); called as
        # (batch, batch_idx, *dataloader_idx) whatever the step's signature (step_args, decided once per run)
        flavor = step_flavor(module.predict_step)
        predict_step = adapt_step(t.strategy.step_function(module, "predict_step"), flavor)
        if flavor == DATALOADER_ITER:
            rank_zero_warn(
                "Found `dataloader_iter` argument in the `predict_step`. Note that the support for this signature "
                "is experimental and the behavior is subject to change."
            )
        # as in Lightning, every hook of the loop runs without grad (from on_predict_model_eval to on_predict_end)
        with eval_context(t):
            d.module_hook("on_predict_model_eval")
            d.both("on_predict_start")
            d.both("on_predict_epoch_start")
            for dl_idx, (loader, limit) in enumerate(zip(loaders, limits)):
                if limit == 0:
                    continue
                extra = (dl_idx,) if multiple else ()
                self.current_batch_indices = []
                if flavor == DATALOADER_ITER:
                    self._run_iter_loader(loader, limit, dl_idx, extra, predict_step,
                                          all_preds[dl_idx] if return_predictions else None)
                    continue
                loader, recorder = record_batch_indices(loader)
                seen_indices = self.epoch_batch_indices[dl_idx]
                for batch_idx, batch in enumerate(loader):
                    if recorder is not None:
                        self.current_batch_indices = recorder.seen[batch_idx]
                        seen_indices.append(self.current_batch_indices)
                    batch = t._transfer_batch(batch, dl_idx)
                    d.both("on_predict_batch_start", batch, batch_idx, *extra)
                    t._current_fx = "predict_step"
                    with forward_ctx():
                        out = predict_step(batch, batch_idx, *extra)
                    t._current_fx = None
                    if return_predictions:
                        all_preds[dl_idx].append(out)
                    d.both("on_predict_batch_end", out, batch, batch_idx, *extra)
                    if limit != math.inf and batch_idx + 1 >= limit:
                        break
            d.both("on_predict_epoch_end")
            d.both("on_predict_end")
        _restore_modes(modes)
        if not return_predictions:
            return None
        return all_preds if multiple else all_preds[0]

    def _run_iter_loader(self, loader: Any, limit: int | float, dl_idx: int, extra: tuple[int, ...],
                         predict_step: Any, preds: list[Any] | None) -> None:
        """One dataloader for a ``predict_step(self, dataloader_iter)``: the step pulls its batches (step_args)."""
        t = self.trainer
        d = t._dispatcher
        forward_ctx = t.strategy.precision.forward_context
        it = DataLoaderIter(limited_pairs(loader, limit), dl_idx)
        while not it.done:
            d.both("on_predict_batch_start", it.batch, max(it.batch_idx, 0), *extra)
            t._current_fx = "predict_step"
            try:
                with forward_ctx():
                    out = predict_step(it, max(it.batch_idx, 0), *extra)
            except StopIteration:  # the step ran out of batches: this dataloader is done (as in Lightning)
                break
            finally:
                t._current_fx = None
            if preds is not None:
                preds.append(out)
            d.both("on_predict_batch_end", out, it.batch, max(it.batch_idx, 0), *extra)
