"""``BatchSizeFinder``: find the largest batch size that fits at the start of a run."""

from __future__ import annotations

from typing import Any

from fulmen.callbacks.callback import Callback
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.rank_zero import rank_zero_warn

__all__ = ["BatchSizeFinder"]


class BatchSizeFinder(Callback):
    """Scale the batch size in ``on_fit_start`` (or at the start of validate/test/predict), then run with it.

    The batch size must be an attribute or hparam (``batch_arg_name``) of the model or datamodule that
    their ``*_dataloader()`` hooks read. Each trial rebuilds the loaders and runs ``steps_per_trial`` steps;
    the model, optimizers and Trainer are restored afterwards.

    Args:
        mode: ``"power"`` (double until out of memory) or ``"binsearch"`` (then bisect).
        steps_per_trial: Steps per trial (training steps, or evaluation batches).
        init_val: The batch size of the first trial.
        max_trials: Most trials.
        batch_arg_name: The attribute holding the batch size.
        margin: ``binsearch`` only: keep this fraction below the size found.
        max_val: Largest batch size tried.

    Attributes:
        optimal_batch_size: The size found by the last run.

    Raises:
        MisconfigurationException: For an invalid ``mode`` or ``margin``.
    """

    SUPPORTED_MODES = ("power", "binsearch")

    def __init__(
        self,
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        margin: float = 0.05,
        max_val: int | None = 8192,
    ) -> None:
        mode = mode.lower()
        if mode not in self.SUPPORTED_MODES:
            raise MisconfigurationException(
                f"BatchSizeFinder(mode={mode!r}): expected one of {list(self.SUPPORTED_MODES)}."
            )
        if not 0.0 <= margin < 1.0:
            raise MisconfigurationException(f"BatchSizeFinder(margin={margin}): expected a float in [0, 1).")
        self.mode = mode
        self._steps_per_trial = steps_per_trial
        self._init_val = init_val
        self._max_trials = max_trials
        self._batch_arg_name = batch_arg_name
        self._margin = margin
        self._max_val = max_val
        self._early_exit = False
        self.optimal_batch_size: int | None = init_val

    def scale_batch_size(self, trainer: Any, pl_module: Any, fn: str = "fit") -> None:
        """Run the search now and write the result to ``batch_arg_name``."""
        from fulmen.tuner.batch_size_scaling import scale_batch_size

        self.optimal_batch_size = scale_batch_size(
            trainer,
            pl_module,
            fn,
            self.mode,
            self._steps_per_trial,
            self._init_val,
            self._max_trials,
            self._batch_arg_name,
            self._margin,
            self._max_val,
        )
        if self._early_exit:
            from fulmen.core.states import _TunerExitException

            raise _TunerExitException()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.scale_batch_size(trainer, pl_module, "fit")

    def _eval_start(self, trainer: Any, pl_module: Any, fn: str) -> None:
        if trainer.sanity_checking or trainer.state.fn != fn:
            return
        if not self._early_exit:
            rank_zero_warn(
                f"BatchSizeFinder in trainer.{fn}(): the loaders of this run are already built, so the batch size "
                "found applies from the next run. Fix: use Tuner(trainer).scale_batch_size(model, method=...) first."
            )
        self.scale_batch_size(trainer, pl_module, fn)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start(trainer, pl_module, "validate")

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start(trainer, pl_module, "test")

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self._eval_start(trainer, pl_module, "predict")
