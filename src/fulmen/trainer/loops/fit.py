"""The fit loop, top to bottom: every training hook appears here in the order it fires.

Lightning's order (spec §1.1) is kept exactly; the work between hooks is done once per run where
possible (which hooks are overridden, the step function, the precision context), so a step with no
overridden hooks is: transfer, training_step, zero_grad, backward, optimizer.step.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch

from fulmen.core.results import ResultCollection
from fulmen.trainer.lifecycle import batch_transfer_fn
from fulmen.trainer.loops.step_args import BATCH_IDX, DATALOADER_ITER, DataLoaderIter, adapt_step, step_flavor
from fulmen.trainer.loops.views import FitLoopViews
from fulmen.trainer.states import RunningStage
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn
from fulmen.utilities.seed import isolate_rng

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer

# the clock of a time-based ``val_check_interval`` (read once per batch, only in that mode); tests replace it
_clock = time.monotonic


class FitLoop(FitLoopViews):  # FitLoopViews: Lightning's fit_loop internals public code reads
    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self._first_results: ResultCollection | None = None
        # the training epoch's results: saved in checkpoints, restored on resume
        self.current_results: ResultCollection | None = None
        self.restored_results: ResultCollection | None = None
        # Multi-process: a stop or skip-the-rest-of-the-epoch asked for on some rank (by this rank's
        # on_train_batch_start returning -1, or a peer's request seen by the watchdog) and not yet acted on.
        # Checked at each batch boundary, as ``should_stop`` is; acted on where every rank agrees.
        self._end_request = False
        self._skip_asked = False
        # time-based val_check_interval: when the time since the last validation started counting (as in
        # Lightning: at the start of fit, after each validation and when the train loader is reloaded);
        # None outside a fit's training
        self._last_val_time: float | None = None
        # ... with several processes: the agreement through which every rank validates after the same batch (None
        # otherwise), and whether this rank or a peer asked for a validation that has not run yet
        self._val_agreement: Any = None
        self._val_request = False

    # ------------------------------------------------------------------ the run
    def run(self) -> None:
        t = self.trainer
        d = t._dispatcher
        rs = t.run_state
        # as in Lightning, the sanity check leaves the RNG as it found it (training sees the same random draws
        # with or without it), and without a sanity check val_dataloader is requested after train_dataloader
        with isolate_rng():
            sanity_checked = self._sanity_check()
        t._data.load_train()
        if self._done():
            # as Lightning: a fit on a Trainer whose earlier fit reached max_epochs/max_steps trains nothing (no
            # on_train_start/on_train_end); raise the limit (trainer.fit_loop.max_epochs = N) to continue
            return
        # a resumed run carries on with the time already spent since the last validation
        self._last_val_time = _clock() - rs.val_time_elapsed
        if not sanity_checked:
            t._data.load_val()
        # values logged in on_train_start belong to the first epoch's results (as in Lightning)
        self._first_results = t._results = self._new_results()
        self._clear_end_request()
        if rs.batch_in_epoch == 0:  # a fresh or epoch-boundary start: as Lightning, no validation batches yet
            rs.val_batch_progress.reset()
        agreement = t.strategy.epoch_end_agreement
        if agreement is not None:
            agreement.callbacks[:] = [self._on_peer_request]
        self._val_request = False
        self._val_agreement = None
        val_agreement = t.strategy.val_check_agreement
        if val_agreement is not None:
            if t._data.val_check_seconds is not None:
                self._val_agreement = val_agreement
                val_agreement.callbacks[:] = [self._on_peer_val_request]
            else:
                val_agreement.callbacks[:] = []  # nobody asks: the watchdog does not poll for it
        d.both("on_train_start")
        while not self._done():
            if t._data.maybe_reload_train(rs.epoch):
                self._last_val_time = _clock()
            self._run_epoch()
        t._optimization._last_loss = None  # the last step's graph (see Optimization.setup)
        d.both("on_train_end")
        self._last_val_time = None
        self._val_agreement = None

    def val_time_elapsed(self) -> float:
        """Time-based val_check_interval: seconds since the last validation (for a checkpoint), else 0."""
        t = self.trainer
        if t._data.val_check_seconds is None or self._last_val_time is None:
            return 0.0
        if t.run_state.resume_point == "after_val":  # written inside a validation: the timer restarts after it
            return 0.0
        return _clock() - self._last_val_time

    def _sanity_check(self) -> bool:
        """Run the sanity check if it applies; returns whether it ran (and so loaded the val dataloaders)."""
        t = self.trainer
        n = t.config.num_sanity_val_steps
        if n == 0 or t._restored_mid_run or not self._validation_defined():
            return False
        t.state.stage = RunningStage.SANITY_CHECKING
        d = t._dispatcher
        d.callbacks_hook("on_sanity_check_start")
        if d.module_overrides("on_sanity_check_start"):
            d.module_hook("on_sanity_check_start")
        # as in Lightning, val_dataloader is requested inside the sanity check, after on_sanity_check_start
        t._data.load_val()
        if t.enable_validation:
            limits = [b if n == -1 else min(n, b) for b in t._data.num_val_batches]
            t._val_loop_sanity.run(t._data.val_loaders, limits)
            t._metrics.reset_after_sanity()
        d.callbacks_hook("on_sanity_check_end")
        if d.module_overrides("on_sanity_check_end"):
            d.module_hook("on_sanity_check_end")
        t.state.stage = RunningStage.TRAINING
        return True

    def _validation_defined(self) -> bool:
        """Whether validation can run, decided without building a loader: validation_step is defined, a val
        source exists (explicit loaders, datamodule or module ``val_dataloader``) and limit_val_batches > 0."""
        from fulmen.core.datamodule import LightningDataModule
        from fulmen.core.module import LightningModule
        from fulmen.trainer.data import _defines

        t = self.trainer
        if t.config.limit_val_batches == 0 or not _defines(t.lightning_module, "validation_step", LightningModule):
            return False
        return (
            t._data.explicit.get("val") is not None
            or _defines(t.datamodule, "val_dataloader", LightningDataModule)
            or _defines(t.lightning_module, "val_dataloader", LightningModule)
        )

    def _can_stop_early(self) -> bool:
        t = self.trainer
        cfg = t.config
        rs = t.run_state
        met_epochs = cfg.min_epochs is None or rs.epoch >= cfg.min_epochs
        met_steps = cfg.min_steps is None or rs.global_step >= cfg.min_steps
        return met_epochs and met_steps

    def _done(self) -> bool:
        t = self.trainer
        cfg = t.config
        rs = t.run_state
        if cfg.max_steps >= 0 and rs.global_step >= cfg.max_steps:
            rank_zero_info(f"`Trainer.fit` stopped: `max_steps={cfg.max_steps!r}` reached.")
            return True
        if cfg.max_epochs >= 0 and rs.epoch >= cfg.max_epochs:  # type: ignore[operator]  # resolved by fit
            rank_zero_info(f"`Trainer.fit` stopped: `max_epochs={cfg.max_epochs!r}` reached.")
            return True
        if t.strategy.is_distributed:  # a stop asked for on any rank stops every rank (a collective decision)
            rs.should_stop = t.strategy.reduce_boolean_decision(rs.should_stop, all=False)
        if rs.should_stop:
            if self._can_stop_early():
                return True
            rank_zero_info(
                f"Trainer was signaled to stop but min_epochs={cfg.min_epochs} or min_steps={cfg.min_steps} has "
                "not been met. Training will continue."
            )
            rs.should_stop = False
        return False

    # ------------------------------------------------------------------ one epoch
    def _run_epoch(self) -> None:
        t = self.trainer
        d = t._dispatcher
        rs = t.run_state
        cfg = t.config
        resume_point = rs.resume_point if self.restored_results is not None or rs.resume_point else ""
        results = self.restored_results or self._first_results or self._new_results()
        self._first_results = None
        self.restored_results = None
        self.current_results = results
        t._results = results
        t._metrics.new_train_epoch(results)
        t.state.stage = RunningStage.TRAINING
        if resume_point == "epoch_end":
            # the checkpoint was written inside on_train_epoch_end: only the work after it remains
            self._finish_epoch(results, completed=True)
            return
        if rs.batch_in_epoch == 0:  # a run resumed mid-epoch counted this epoch's start before the checkpoint
            rs.epoch_progress.start()
        d.both("on_train_epoch_start")

        n_batches = t._data.num_training_batches
        loader = t._data.train_loader
        start = rs.batch_in_epoch
        if start == 0:
            rs.epoch_rng_state = t._data.capture_epoch_rng()
            rs.batch_progress.reset_current()
            rs.val_batch_progress.reset()  # Lightning counts the validation batches per training epoch
            rs.val_checks_in_epoch = 0
        module = t.lightning_module
        auto = module.automatic_optimization
        val_batch = t._data.val_check_batch
        check_val = t.enable_validation and (
            cfg.check_val_every_n_epoch is None or (rs.epoch + 1) % cfg.check_val_every_n_epoch == 0
        )
        if resume_point in ("batch_end", "val"):
            # the checkpoint was written after batch ``start - 1`` ran but before its logging/validation
            self._after_batch(results, start - 1, rs.is_last_batch, rs.last_batch_stepped, check_val, val_batch,
                              skip_logging=resume_point == "val")
        completed = rs.last_batch_done and start > 0
        if not completed and not self._should_end_epoch():
            run_batches = self._run_iter_batches if t._optimization.flavor == DATALOADER_ITER else self._run_batches
            completed = run_batches(results, loader, start, n_batches, auto, check_val, val_batch)
        self._finish_epoch(results, completed)

    def _should_end_epoch(self) -> bool:
        t = self.trainer
        rs = t.run_state
        if t.config.max_steps >= 0 and rs.global_step >= t.config.max_steps:
            return True
        if t.strategy.epoch_end_agreement is not None:  # a stop asked in on_train_epoch_start on some rank only
            rs.should_stop = t.strategy.reduce_boolean_decision(rs.should_stop, all=False)
        return rs.should_stop and self._can_stop_early()

    def _on_peer_request(self, value: object) -> None:
        """Watchdog thread: a peer asked to end the epoch; this rank joins at its next batch boundary."""
        self._end_request = True

    def _clear_end_request(self) -> None:
        self._end_request = self._skip_asked = False

    def _on_peer_val_request(self, value: object) -> None:
        """Watchdog thread: a peer's time-based validation interval elapsed; this rank joins at its next boundary."""
        self._val_request = True

    def _clear_val_request(self) -> None:
        self._val_request = False

    def _agreed_epoch_end(self, agreement: Any) -> bool | None:
        """Multi-process, at a batch boundary where this rank or a peer asked to end the epoch: None to keep
        training, else end the epoch here (every rank ends it after this same batch) and return whether it
        counts as completed (a skip) or not (a stop, as on one process)."""
        t = self.trainer
        rs = t.run_state
        kind = "stop" if rs.should_stop and self._can_stop_early() else "skip" if self._skip_asked else ""
        if not kind and not self._end_request:
            return None  # should_stop before min_epochs/min_steps are met: nothing to ask for yet
        self._end_request = True  # asked: look again at every boundary until the agreed one
        values = agreement.agree(kind, rs.global_step)
        if values is None:
            return None
        if "stop" in values:
            rs.should_stop = True  # every rank stops (the epoch-end reduce would tell them too)
            return False
        # a skip: this batch is the epoch's last one for the epoch-interval schedulers, as after a -1 on one process
        t._optimization.step_schedulers("epoch", plateau=False)
        return True

    def _run_batches(
        self, results: ResultCollection, loader: Any, start: int, n_batches: int | float, auto: bool,
        check_val: bool, val_batch: int | float | None,
    ) -> bool:
        """Run the epoch's batches from ``start``; return whether the epoch ran to its end."""
        t = self.trainer
        d = t._dispatcher
        rs = t.run_state
        it = t._data.iterate_train(loader, rs, start)
        has_bstart = d.has_callbacks("on_train_batch_start") or d.module_overrides("on_train_batch_start")
        has_bend = d.has_callbacks("on_train_batch_end") or d.module_overrides("on_train_batch_end")
        step = t._optimization.step_auto if auto else t._optimization.step_manual
        transfer = batch_transfer_fn(t, 0)
        agreement = t.strategy.epoch_end_agreement  # None on one process
        max_steps = t.config.max_steps
        batch_idx = start
        rs.is_last_batch = False
        for batch, is_last in it:
            rs.is_last_batch = is_last
            batch = transfer(batch)
            results.set_batch(batch)
            if has_bstart:
                d.callbacks_hook("on_train_batch_start", batch, batch_idx)
                if d.module_overrides("on_train_batch_start"):
                    if d.module_hook("on_train_batch_start", batch, batch_idx) == -1:
                        if agreement is not None:
                            # multi-process: the other ranks are about to run this batch's collectives, so this
                            # rank runs it too; every rank ends the epoch after the batch they agree on
                            self._skip_asked = self._end_request = True
                        else:
                            # Lightning: -1 skips the rest of the epoch; this batch counts as the epoch's last one
                            # for the non-plateau schedulers (step- and epoch-interval), which step as after a batch
                            opt = t._optimization
                            if opt.has_sched_step:
                                opt.step_schedulers("step", plateau=False, batch_idx=batch_idx)
                            opt.step_schedulers("epoch", plateau=False)
                            return True
            stepped, outputs = step(batch, batch_idx, is_last)
            rs.batch_in_epoch = batch_idx + 1
            rs.batch_progress.increment()
            rs.last_batch_stepped = stepped
            rs.last_batch_done = is_last  # the epoch's last batch has run (a checkpoint now resumes after it)
            if is_last:  # Lightning steps epoch-interval schedulers on the last batch, before on_train_batch_end
                t._optimization.step_schedulers("epoch", plateau=False)
            rs.resume_point = "batch_end"
            if has_bend:
                d.both("on_train_batch_end", outputs, batch, batch_idx)
            self._after_batch(results, batch_idx, is_last, stepped, check_val, val_batch)
            if t._preempt_signal is not None:
                from fulmen.trainer.preemption import handle_preemption

                handle_preemption(t)
            batch_idx += 1
            if is_last:
                return True
            if max_steps >= 0 and rs.global_step >= max_steps:
                return False  # as _should_end_epoch
            if rs.should_stop or self._end_request:  # attribute checks: nothing else runs while nobody asks
                if agreement is None:
                    if self._can_stop_early():
                        return False  # as _should_end_epoch
                else:
                    ended = self._agreed_epoch_end(agreement)
                    if ended is not None:
                        return ended
        if batch_idx == start and start == 0 and t._data.num_training_batches != 0:
            raise MisconfigurationException(
                "The train dataloader produced no batches. Fix: check the dataset is not empty and that "
                "drop_last=True does not drop every sample (batch_size larger than the dataset?)."
            )
        return True  # the iterator ended itself (having run the loader to its end)

    def _run_iter_batches(
        self, results: ResultCollection, loader: Any, start: int, n_batches: int | float, auto: bool,
        check_val: bool, val_batch: int | float | None,
    ) -> bool:
        """The epoch for a ``training_step(self, dataloader_iter)``: the step pulls its batches (see step_args).

        As Lightning counts it, one step is one "batch" of the progress counters and of the batch hooks; the
        data position saved in checkpoints (``batch_in_epoch``) is the number of batches pulled.
        """
        t = self.trainer
        d = t._dispatcher
        rs = t.run_state
        it = DataLoaderIter(t._data.iterate_train(loader, rs, start), start=start)
        step = t._optimization.step_auto if auto else t._optimization.step_manual
        agreement = t.strategy.epoch_end_agreement  # None on one process
        max_steps = t.config.max_steps
        step_idx = rs.batch_progress.current_completed
        rs.is_last_batch = False
        while not it.done:
            batch, batch_idx = it.batch, max(it.batch_idx, 0)
            results.set_batch(batch)
            d.callbacks_hook("on_train_batch_start", batch, batch_idx)
            if d.module_overrides("on_train_batch_start") and d.module_hook(
                "on_train_batch_start", batch, batch_idx
            ) == -1:
                t._optimization.step_schedulers("epoch", plateau=False)
                return True
            try:
                # as Lightning: the step that (pulling one batch) reaches the epoch's last batch closes an open
                # gradient-accumulation window with an optimizer step
                stepped, outputs = step(it, step_idx, it.next_is_last)
            except StopIteration:  # the step ran out of batches: the epoch ends (as in Lightning)
                t._accumulating = False
                return True
            rs.is_last_batch = is_last = it.done
            rs.batch_in_epoch = start + it.fetched
            rs.batch_progress.increment()
            rs.last_batch_stepped = stepped
            rs.last_batch_done = is_last
            if is_last:
                t._optimization.step_schedulers("epoch", plateau=False)
            rs.resume_point = "batch_end"
            d.both("on_train_batch_end", outputs, it.batch, max(it.batch_idx, 0))
            self._after_batch(results, step_idx, is_last, stepped, check_val, val_batch)
            if t._preempt_signal is not None:
                from fulmen.trainer.preemption import handle_preemption

                handle_preemption(t)
            step_idx += 1
            if is_last:
                return True
            if max_steps >= 0 and rs.global_step >= max_steps:
                return False
            if rs.should_stop or self._end_request:
                if agreement is None:
                    if self._can_stop_early():
                        return False
                else:  # several processes: every rank ends the epoch after the same agreed step
                    ended = self._agreed_epoch_end(agreement)
                    if ended is not None:
                        return ended
        return True

    def _after_batch(
        self, results: ResultCollection, batch_idx: int, is_last: bool, stepped: bool, check_val: bool,
        val_batch: int | float | None, skip_logging: bool = False,
    ) -> None:
        """Logging, in-epoch validation and step-interval plateau schedulers after a batch's hooks."""
        t = self.trainer
        rs = t.run_state
        if stepped and not skip_logging:
            log_n = t.config.log_every_n_steps
            if (log_n and (rs.batches_that_stepped + 1) % log_n == 0) or rs.should_stop:
                t._metrics.log_train_step(results)
            rs.batches_that_stepped += 1
        if results.metrics:
            results.reset_step()
        rs.resume_point = "val"
        # time-based: a checkpoint written inside this batch's validation (resume point "val") resumes into it
        if check_val and ((skip_logging and val_batch is None) or self._val_due(batch_idx, is_last, val_batch)):
            # logged at the step of this batch, which was already counted in batches_that_stepped
            with t._metrics.logging_step_offset(-1 if stepped else 0):
                self._run_validation()
            t._results = results
        rs.resume_point = ""
        if stepped and t._optimization.has_sched_step:
            # step-interval ReduceLROnPlateau: after this batch's validation, so it can monitor val metrics
            t._optimization.step_schedulers("step", plateau=True, batch_idx=batch_idx)

    def _finish_epoch(self, results: ResultCollection, completed: bool) -> None:
        """Epoch-end hooks; a completed epoch is counted, one cut short (max_steps, should_stop) is not.

        Counting only completed epochs is what makes a checkpoint written after a run that stopped
        mid-epoch resume that same epoch at the right batch (Lightning counts it and loses the rest).
        """
        t = self.trainer
        d = t._dispatcher
        rs = t.run_state
        t._current_fx = None
        # every rank must end the epoch after the same batch; a rank that did not is reported, not waited for
        t.strategy.sync_point("train_epoch_end")
        # a request to end the epoch that is still pending (the epoch ended first) is dropped on every rank here;
        # a stop it asked for is still decided, by the reduce of should_stop in _done
        agreement = t.strategy.epoch_end_agreement
        if agreement is not None:
            agreement.next_generation(self._clear_end_request)
        else:
            self._clear_end_request()
        if self._val_agreement is not None:  # likewise a validation asked for too late to run in this epoch
            self._val_agreement.next_generation(self._clear_val_request)
        if rs.resume_point != "epoch_end":
            rs.resume_point = "epoch_end" if completed else ""
            t._metrics.epoch_end_reached = True
            d.epoch_end("on_train_epoch_end")
        with t._metrics.logging_step_offset(-1):  # at the step of the epoch's last batch, as in Lightning
            t._metrics.epoch_end(results, log=True, keep=not completed)
        t._metrics.epoch_end_reached = False
        rs.resume_point = ""
        if not completed:
            return
        t._optimization.step_schedulers("epoch", plateau=True)
        rs.epoch_progress.complete()
        rs.epoch += 1
        rs.batch_in_epoch = 0
        rs.is_last_batch = rs.last_batch_done = False
        rs.epoch_rng_state = None
        self.current_results = None

    def _new_results(self) -> ResultCollection:
        results = ResultCollection(training=True)
        results.reduce = self.trainer.strategy.metric_reduce
        return results

    def _val_due(self, batch_idx: int, is_last: bool, val_batch: int | float | None) -> bool:
        t = self.trainer
        if val_batch is None:  # time-based: due once the interval has passed since the last validation
            if is_last and t._data.num_training_batches == math.inf:
                return True
            elapsed = _clock() - self._last_val_time >= t._data.val_check_seconds  # type: ignore[operator]
            agreement = self._val_agreement
            if agreement is None:  # one process: its own clock decides
                return elapsed
            # several processes: the ranks' clocks may disagree, and validation runs collectives, so every rank
            # validates after the same batch. The epoch's last batch is one every rank reaches: one reduce there
            # (once per epoch) also runs a validation that was asked for and not yet agreed on
            if is_last:
                return t.strategy.reduce_boolean_decision(elapsed or self._val_request, all=False)
            if not (elapsed or self._val_request):  # attribute checks: nothing else runs while nobody asks
                agreement.pass_boundary()  # a peer asking at this batch need not wait for this rank here
                return False
            self._val_request = True  # asked: look again at every boundary until the agreed one
            return agreement.agree("val" if elapsed else "", t.run_state.global_step) is not None
        if val_batch == math.inf:
            return is_last
        if t.config.check_val_every_n_epoch is None:
            return (t.run_state.batch_progress.total_completed) % int(val_batch) == 0
        return (batch_idx + 1) % int(val_batch) == 0

    def _run_validation(self) -> None:
        t = self.trainer
        t.run_state.val_checks_in_epoch += 1
        t._val_loop.run(t._data.val_loaders, t._data.num_val_batches, in_fit=True)
        t.state.stage = RunningStage.TRAINING
        self._last_val_time = _clock()
        if self._val_agreement is not None:  # every rank, right after the validation they agreed on
            self._val_agreement.next_generation(self._clear_val_request)


class Optimization:
    """One training batch: automatic (closure) or manual optimisation; scheduler stepping."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self._setup_done = False
        self.flavor = BATCH_IDX  # how training_step is called (step_args), decided in setup

    def __getstate__(self) -> dict[str, Any]:
        # copy.deepcopy(trainer) / torch.save(trainer) mid-run: the last step's loss holds its autograd graph (not
        # copyable); the next step sets it again
        state = self.__dict__.copy()
        state["_last_loss"] = None
        return state

    def setup(self) -> None:
        t = self.trainer
        d = t._dispatcher
        module = t.lightning_module
        self.module = module
        self.precision = t.strategy.precision
        self.forward_ctx = self.precision.forward_context
        # through DDP/FSDP when wrapped; called as (batch, batch_idx) whatever the step's signature (step_args)
        self.flavor = step_flavor(module.training_step)
        if self.flavor == DATALOADER_ITER:
            rank_zero_warn(
                "Found `dataloader_iter` argument in the `training_step`. Note that the support for this signature "
                "is experimental and the behavior is subject to change."
            )
        self.training_step = adapt_step(t.strategy.step_function(module, "training_step"), self.flavor)
        self.opt = t.optimizers[0] if t.optimizers else None
        self.lopt = t._lightning_optimizers[0] if t._lightning_optimizers else None
        self.custom_optimizer_step = d.module_overrides("optimizer_step")
        self.custom_zero_grad = d.module_overrides("optimizer_zero_grad")
        self.custom_backward = d.module_overrides("backward")
        self.custom_clip = d.module_overrides("configure_gradient_clipping")
        self.has_before_zero = d.has_callbacks("on_before_zero_grad") or d.module_overrides("on_before_zero_grad")
        self.has_before_bwd = d.has_callbacks("on_before_backward") or d.module_overrides("on_before_backward")
        self.has_after_bwd = d.has_callbacks("on_after_backward") or d.module_overrides("on_after_backward")
        self.has_before_opt = d.has_callbacks("on_before_optimizer_step") or d.module_overrides("on_before_optimizer_step")
        self.clip_val = t.config.gradient_clip_val
        self.clip_algo = t.config.gradient_clip_algorithm
        self.need_after_closure = self.has_before_opt or self.custom_clip or bool(self.clip_val)
        self.has_sched_step = any(c.interval == "step" for c in t.lr_scheduler_configs)
        # Decided once per run so the default step calls no wrapper: the forward runs without a context when
        # the precision plugin's is the base (no-op) one, backward is ``loss.backward()`` when neither the
        # strategy nor the precision plugin changes it, and on_train_batch_end's outputs dict is built only
        # when something receives it.
        from fulmen.plugins.precision import Precision
        from fulmen.strategies import Strategy

        precision, strategy = self.precision, t.strategy
        self.plain_forward = _is(precision.forward_context, Precision.forward_context)
        self.plain_backward = (
            not self.has_before_bwd and not self.has_after_bwd and not self.custom_backward
            and _is(strategy.backward, Strategy.backward) and _is(precision.backward, Precision.backward)
        )
        self.plain_zero_grad = not self.has_before_zero and not self.custom_zero_grad and self.opt is not None
        self.want_outputs = d.has_callbacks("on_train_batch_end") or d.module_overrides("on_train_batch_end")
        self.after_closure = self._after_closure if self.need_after_closure else None
        # the base plugin's optimizer_step without an after-closure is exactly ``optimizer.step(closure=closure)``
        self.plain_step = self.after_closure is None and _is(precision.optimizer_step, Precision.optimizer_step)
        self.closure = self._closure  # one bound method for the run; the step's inputs are set on self
        self._batch: Any = None
        self._batch_idx = 0
        self._acc = 1
        self._zero_now = True
        self._outputs: Any = None
        # The last step's loss is kept until the next step replaces it, as a hand-written loop's ``loss`` variable
        # is: its graph holds the parameters' gradient accumulators, which the next backward then reuses instead
        # of building one per parameter per step.
        self._last_loss: Any = None
        if not module.automatic_optimization:
            for lo in t._lightning_optimizers:
                self._install_manual(lo)
        elif self.lopt is not None:
            self._install_auto(self.lopt)

    # ---- automatic optimisation
    def step_auto(self, batch: Any, batch_idx: int, is_last: bool) -> tuple[bool, Any]:
        t = self.trainer
        rs = t.run_state
        acc = rs.accumulate_grad_batches
        if acc == 1:
            should_step = zero_now = True
        else:
            should_step = (batch_idx + 1) % acc == 0 or is_last
            zero_now = batch_idx % acc == 0
        t._accumulating = not should_step
        # the closure reads the step's inputs from here (no function object is built per step)
        self._batch, self._batch_idx, self._acc, self._zero_now, self._outputs = batch, batch_idx, acc, zero_now, None
        closure = self.closure
        if not should_step:
            with t.strategy_no_sync():
                closure()
            return False, self._take_outputs()
        if self.opt is None:
            closure()
        elif self.custom_optimizer_step:
            self._last_loss = _CLOSURE_NOT_RUN  # the closure replaces it: checked below, only on this path
            t._dispatcher.module_hook("optimizer_step", rs.epoch, batch_idx, self.lopt, closure)
            if self._last_loss is _CLOSURE_NOT_RUN:
                # as Lightning (same text): otherwise the step would silently train nothing
                raise MisconfigurationException(
                    "The closure hasn't been executed. HINT: did you call `optimizer_closure()` in your "
                    "`optimizer_step` hook? It could also happen because the `optimizer.step(optimizer_closure)` "
                    f"call did not execute it internally. Fix: {type(self.module).__name__}.optimizer_step must call "
                    "optimizer.step(closure=optimizer_closure), which runs training_step and backward."
                )
        elif self.plain_step:
            self.opt.step(closure=closure)  # type: ignore[arg-type]  # torch types the closure as returning float
        else:
            self.precision.optimizer_step(self.opt, closure, self.after_closure)
        rs.optimizer_steps.increment()
        rs.global_step += 1
        if self.has_sched_step:
            self.step_schedulers("step", plateau=False, batch_idx=batch_idx)
        t._accumulating = False
        outputs, self._outputs, self._batch = self._outputs, None, None
        return True, outputs

    def _take_outputs(self) -> Any:
        outputs, self._outputs, self._batch = self._outputs, None, None
        return outputs

    def _closure(self) -> torch.Tensor | None:
        """training_step, zero_grad (at the start of an accumulation window) and backward of the current batch."""
        t = self.trainer
        t._current_fx = "training_step"
        if self.plain_forward:
            output = self.training_step(self._batch, self._batch_idx)
        else:
            with self.forward_ctx():
                output = self.training_step(self._batch, self._batch_idx)
        t._current_fx = None
        loss: torch.Tensor | None
        if type(output) is torch.Tensor and output.numel() == 1:  # the common case, checked without a call
            loss = output
        else:
            loss = _extract_loss(output, self.module.automatic_optimization)
        if loss is None:
            self._outputs = {}
        else:
            if self._acc > 1:
                loss = loss / self._acc
            if self.want_outputs:
                self._outputs = _batch_end_outputs(output, loss)
        self._last_loss = loss
        if self._zero_now:
            if self.plain_zero_grad:
                self.opt.zero_grad()  # type: ignore[union-attr]  # plain_zero_grad implies an optimizer
                t.run_state.zero_grad_progress.increment()
            else:
                self._zero_grad(self._batch_idx)
        if loss is not None:
            if self.plain_backward:
                loss.backward()
            else:
                self._backward(loss)
        return loss

    def _zero_grad(self, batch_idx: int) -> None:
        t = self.trainer
        if self.has_before_zero:
            t._dispatcher.both("on_before_zero_grad", self.opt)
        if self.custom_zero_grad:
            t._dispatcher.module_hook("optimizer_zero_grad", t.run_state.epoch, batch_idx, self.opt)
        elif self.opt is not None:
            self.opt.zero_grad()
        t.run_state.zero_grad_progress.increment()

    def _backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        t = self.trainer
        d = t._dispatcher
        if self.has_before_bwd:
            d.both("on_before_backward", loss)
        if self.custom_backward:
            d.module_hook("backward", self.precision_scale(loss), *args, **kwargs)
        else:
            t.strategy.backward(loss, self.module, *args, **kwargs)
        if self.has_after_bwd:
            d.both("on_after_backward")

    def precision_scale(self, loss: torch.Tensor) -> torch.Tensor:
        scaler = getattr(self.precision, "scaler", None)
        return scaler.scale(loss) if scaler is not None else loss

    def _after_closure(self, opt: Any = None) -> None:
        t = self.trainer
        opt = opt if opt is not None else self.opt
        if self.has_before_opt:
            t._dispatcher.both("on_before_optimizer_step", opt)
        if self.custom_clip:
            t._dispatcher.module_hook("configure_gradient_clipping", opt, self.clip_val, self.clip_algo)
        elif self.clip_val:
            self.module.clip_gradients(opt, self.clip_val, self.clip_algo)

    def _install_auto(self, lopt: Any) -> None:
        """A user ``optimizer_step`` calls ``optimizer.step(closure)``: route it through the precision plugin so
        unscaling, ``on_before_optimizer_step`` and gradient clipping run after the closure, as on the default path."""
        precision = self.precision
        opt = lopt.optimizer
        after = self._after_closure if self.need_after_closure else None

        def step_fn(closure: Any, kwargs: dict[str, Any]) -> Any:
            return precision.optimizer_step(opt, closure, after, **kwargs)

        lopt._step_fn = step_fn
        lopt._module = self.module

    # ---- manual optimisation
    def _install_manual(self, lopt: Any) -> None:
        t = self.trainer
        precision = self.precision
        opt = lopt.optimizer

        def step_fn(closure: Any, kwargs: dict[str, Any]) -> Any:
            def after() -> None:
                if self.has_before_opt:
                    t._dispatcher.both("on_before_optimizer_step", opt)

            return precision.optimizer_step(opt, closure, after, **kwargs)

        def on_after() -> None:
            t.run_state.optimizer_steps.increment()
            t.run_state.global_step += 1

        lopt._step_fn = step_fn
        lopt._on_after_step = on_after
        lopt._module = self.module

    def step_manual(self, batch: Any, batch_idx: int, is_last: bool) -> tuple[bool, Any]:
        t = self.trainer
        t._current_fx = "training_step"
        with self.forward_ctx():
            output = self.training_step(batch, batch_idx)
        t._current_fx = None
        _extract_loss(output, False)
        if isinstance(output, torch.Tensor):
            output = {"loss": output}
        return True, _batch_end_outputs(output, output.get("loss") if isinstance(output, dict) else None)

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        self._backward(loss, *args, **kwargs)

    # ---- schedulers
    def step_schedulers(self, interval: str, plateau: bool, batch_idx: int = 0) -> None:
        """Step the schedulers of ``interval`` (and plateau kind) whose ``frequency`` divides the counter.

        As in Lightning, a step-interval scheduler counts the batches of the current epoch (``batch_idx + 1``,
        starting again every epoch, so a resumed epoch counts the same), not optimizer steps: it is asked after
        every batch that ends an accumulation window (a batch whose training_step returned None included), and
        an epoch-interval one counts epochs (``current_epoch + 1``).
        """
        t = self.trainer
        if not t.lightning_module.automatic_optimization:
            return
        rs = t.run_state
        for cfg in t.lr_scheduler_configs:
            if cfg.interval != interval:
                continue
            if cfg.reduce_on_plateau != plateau:
                continue
            counter = batch_idx + 1 if interval == "step" else rs.epoch + 1
            if counter % cfg.frequency != 0:
                continue
            metric = None
            if cfg.reduce_on_plateau:
                monitor_val = t.callback_metrics.get(cfg.monitor) if cfg.monitor else None
                if monitor_val is None:
                    if cfg.strict:
                        avail = sorted(t.callback_metrics)
                        raise MisconfigurationException(
                            f"ReduceLROnPlateau conditioned on metric {cfg.monitor!r} which is not available. "
                            f"Available metrics are: {avail}. Fix: log {cfg.monitor!r} with self.log, or set "
                            "'strict': False in the lr scheduler config."
                        )
                    rank_zero_warn(
                        f"ReduceLROnPlateau conditioned on metric {cfg.monitor!r} which is not available but strict "
                        "is set to False; skipping this learning rate update.",
                        category=RuntimeWarning,
                    )
                    continue
                metric = monitor_val
            t._current_fx = "lr_scheduler_step"
            t._dispatcher.module_hook("lr_scheduler_step", cfg.scheduler, metric)
            t._current_fx = None
            rs.scheduler_progress.increment()


# a user optimizer_step's closure not having run yet (see Optimization.step_auto)
_CLOSURE_NOT_RUN = object()


def _is(bound: Any, base_fn: Any) -> bool:
    """Whether ``bound`` is ``base_fn`` bound to an instance: not overridden in a subclass nor shadowed on the
    instance (the profilers shadow methods to time them)."""
    return getattr(bound, "__func__", None) is base_fn


def _batch_end_outputs(output: Any, loss: Any) -> dict[str, Any]:
    """What ``on_train_batch_end`` receives, as in Lightning: always a dict, ``{"loss": detached loss, **other
    keys}`` (in automatic mode the loss divided by ``accumulate_grad_batches``), ``{}`` for a skipped step."""
    outputs = {k: v for k, v in output.items() if k != "loss"} if isinstance(output, dict) else {}
    if loss is None:
        return outputs
    return {"loss": loss.detach() if isinstance(loss, torch.Tensor) else loss, **outputs}


def _extract_loss(output: Any, automatic: bool) -> torch.Tensor | None:
    if output is None:
        return None
    if isinstance(output, torch.Tensor):
        loss = output
    elif isinstance(output, dict):
        if "loss" not in output:
            if not automatic:
                return None
            raise MisconfigurationException(
                f"training_step returned a dict without a 'loss' key (keys: {sorted(output)}). Fix: return "
                "{'loss': loss, ...} or the loss tensor itself."
            )
        loss = output["loss"]
    else:
        if not automatic:
            return None
        raise MisconfigurationException(
            f"training_step returned {type(output).__name__} ({output!r:.60}); expected a loss tensor, a dict with "
            "'loss', or None to skip the batch. Fix: return the scalar loss tensor."
        )
    if not automatic:
        return None
    if not isinstance(loss, torch.Tensor):
        raise MisconfigurationException(
            f"training_step's loss is {type(loss).__name__} ({loss!r:.60}); expected a scalar tensor. Fix: return "
            "the loss tensor computed from the model's output (not loss.item())."
        )
    if loss.numel() != 1:
        raise MisconfigurationException(
            f"training_step returned a loss of shape {tuple(loss.shape)}; expected a scalar. Fix: reduce it, e.g. "
            "loss.mean()."
        )
    return loss
