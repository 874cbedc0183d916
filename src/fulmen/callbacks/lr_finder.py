"""``LearningRateFinder``: run the learning-rate range test at the start of ``fit``."""

from __future__ import annotations

from typing import Any

from fulmen.callbacks.callback import Callback
from fulmen.utilities.exceptions import MisconfigurationException

__all__ = ["LearningRateFinder"]


class LearningRateFinder(Callback):
    """Find a learning rate in ``on_fit_start``, then train with it.

    The range test trains ``num_training_steps`` steps while raising the LR from ``min_lr`` to ``max_lr``,
    then restores the model, the optimizers and the Trainer. With ``update_attr=True`` the suggestion is
    written to ``lr`` / ``learning_rate`` (or ``attr_name``) and ``configure_optimizers`` is called again, so
    the fit that follows uses it. Subclass and override :meth:`on_fit_start` / :meth:`on_train_epoch_start`
    to re-run it during training (call :meth:`lr_find`).

    Args:
        min_lr: Smallest learning rate tried.
        max_lr: Largest learning rate tried.
        num_training_steps: Optimizer steps in the test.
        mode: ``"exponential"`` or ``"linear"`` increase.
        early_stop_threshold: Stop when the smoothed loss exceeds this multiple of the best loss
            (``None`` disables it).
        update_attr: Write the suggestion to the model's LR attribute and rebuild the optimizers.
        attr_name: The attribute to write (default: ``lr`` or ``learning_rate``).
        weights_only: Passed to the load of the temporary checkpoint that restores the state.

    Attributes:
        optimal_lr: The :class:`~fulmen.tuner.LRFinder` result of the last run.

    Raises:
        MisconfigurationException: For an invalid ``mode``.
    """

    SUPPORTED_MODES = ("linear", "exponential")

    def __init__(
        self,
        min_lr: float = 1e-8,
        max_lr: float = 1,
        num_training_steps: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
        weights_only: bool | None = None,
    ) -> None:
        mode = mode.lower()
        if mode not in self.SUPPORTED_MODES:
            raise MisconfigurationException(
                f"LearningRateFinder(mode={mode!r}): expected one of {list(self.SUPPORTED_MODES)}."
            )
        self._min_lr = min_lr
        self._max_lr = max_lr
        self._num_training_steps = num_training_steps
        self._mode = mode
        self._early_stop_threshold = early_stop_threshold
        self._update_attr = update_attr
        self._attr_name = attr_name
        self._weights_only = weights_only
        self._early_exit = False
        self.optimal_lr: Any = None

    def lr_find(self, trainer: Any, pl_module: Any) -> None:
        """Run the range test now (inside a fit) and apply the suggestion."""
        from fulmen.tuner._optimizers import reconfigure_optimizers
        from fulmen.tuner.lr_finder import lr_find

        self.optimal_lr = lr_find(
            trainer,
            pl_module,
            min_lr=self._min_lr,
            max_lr=self._max_lr,
            num_training=self._num_training_steps,
            mode=self._mode,
            early_stop_threshold=self._early_stop_threshold,
            update_attr=self._update_attr,
            attr_name=self._attr_name,
            weights_only=self._weights_only,
        )
        if self._early_exit:
            from fulmen.core.states import _TunerExitException

            raise _TunerExitException()
        if self._update_attr and self.optimal_lr is not None and self.optimal_lr.suggestion() is not None:
            reconfigure_optimizers(trainer, pl_module)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.lr_find(trainer, pl_module)
