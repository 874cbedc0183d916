"""The predict loop."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from fulmen.trainer.loops.evaluation import _record_modes, _restore_modes, eval_context
from fulmen.trainer.states import RunningStage

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer


class PredictionLoop:
    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

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
        forward_ctx = t.strategy.precision.forward_context
        # through the strategy: FSDP runs the step inside the root module's forward (parameters gathered)
        predict_step = t.strategy.step_function(module, "predict_step")
        # as in Lightning, every hook of the loop runs without grad (from on_predict_model_eval to on_predict_end)
        with eval_context(t):
            d.module_hook("on_predict_model_eval")
            d.both("on_predict_start")
            d.both("on_predict_epoch_start")
            for dl_idx, (loader, limit) in enumerate(zip(loaders, limits)):
                if limit == 0:
                    continue
                extra = (dl_idx,) if multiple else ()
                for batch_idx, batch in enumerate(loader):
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
