"""The learning-rate range test: train a few steps with an increasing LR and record the loss.

:func:`lr_find` runs inside a fit (``LearningRateFinder.on_fit_start``): it raises the learning rate of
every optimizer param group from ``min_lr`` to ``max_lr`` over ``num_training`` optimizer steps
(exponentially or linearly), records the smoothed training loss, stops early when the loss diverges,
restores the model and Trainer state (see ``_trial.py``) and suggests the LR where the loss falls fastest.
"""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Any

import torch

from fulmen.callbacks.callback import Callback
from fulmen.tuner._attr import lightning_hasattr, lightning_setattr
from fulmen.tuner._trial import TrialSession
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer

log = logging.getLogger("fulmen.tuner")

__all__ = ["LRFinder", "lr_find"]


class LRFinder:
    """The result of a learning-rate range test (Lightning's ``_LRFinder``).

    Attributes:
        results: ``{"lr": [...], "loss": [...]}``, one entry per optimizer step (the loss is smoothed).
    """

    def __init__(self, mode: str, lr_min: float, lr_max: float, num_training: int) -> None:
        if mode not in ("linear", "exponential"):
            raise MisconfigurationException(
                f"lr_find(mode={mode!r}): expected 'linear' or 'exponential'. Fix: use one of them."
            )
        if not 0 < lr_min < lr_max:
            raise MisconfigurationException(
                f"lr_find(min_lr={lr_min}, max_lr={lr_max}): expected 0 < min_lr < max_lr. Fix: e.g. min_lr=1e-6, "
                "max_lr=1.0."
            )
        if num_training < 2:
            raise MisconfigurationException(
                f"lr_find(num_training={num_training}): expected at least 2 steps."
            )
        self.mode = mode
        self.lr_min = lr_min
        self.lr_max = lr_max
        self.num_training = num_training
        self.results: dict[str, list[float]] = {"lr": [], "loss": []}
        self._optimal_idx: int | None = None

    def lr_at(self, step: int) -> float:
        """The learning rate used at optimizer step ``step`` (0-based)."""
        frac = step / (self.num_training - 1)
        if self.mode == "exponential":
            return float(self.lr_min * (self.lr_max / self.lr_min) ** frac)
        return self.lr_min + (self.lr_max - self.lr_min) * frac

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> float | None:
        """The LR with the steepest loss decrease (on the log-LR axis in exponential mode).

        Args:
            skip_begin: Points to ignore at the start (noisy).
            skip_end: Points to ignore at the end (divergence).

        Returns:
            The suggested learning rate, or ``None`` if fewer than 2 usable points were recorded.
        """
        lrs = torch.tensor(self.results["lr"], dtype=torch.float64)
        losses = torch.tensor(self.results["loss"], dtype=torch.float64)
        index = torch.arange(len(lrs))
        end = len(lrs) - skip_end if skip_end > 0 else len(lrs)
        keep = (index >= skip_begin) & (index < end) & torch.isfinite(losses)
        lrs, losses, index = lrs[keep], losses[keep], index[keep]
        if len(losses) < 2:
            log.error(
                "Failed to compute a learning-rate suggestion: only %d usable points. Fix: increase num_training "
                "or the size of the dataset, or lower skip_begin.",
                len(losses),
            )
            self._optimal_idx = None
            return None
        x = torch.log10(lrs) if self.mode == "exponential" else lrs
        gradients = torch.gradient(losses, spacing=(x,))[0]
        best = int(torch.argmin(gradients))
        self._optimal_idx = int(index[best])
        return float(lrs[best])

    def plot(
        self,
        suggest: bool = False,
        show: bool = False,
        ax: Any = None,
        path: str | os.PathLike[str] | None = None,
    ) -> Any:
        """Plot loss against learning rate with matplotlib; ``path`` saves the figure (e.g. as PNG).

        Raises:
            ModuleNotFoundError: If matplotlib is not installed (``pip install matplotlib``, part of
                ``fulmen[all]``).
        """
        try:
            import matplotlib

            if ax is None and not show:
                matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError(
                "LRFinder.plot needs matplotlib. Fix: pip install matplotlib (or 'fulmen[all]')."
            ) from err
        lrs, losses = self.results["lr"], self.results["loss"]
        if ax is None:
            fig, ax = plt.subplots()
        else:
            fig = ax.figure
        ax.plot(lrs, losses)
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss")
        if suggest:
            if self._optimal_idx is None:
                self.suggestion()
            if self._optimal_idx is not None:
                ax.plot(
                    lrs[self._optimal_idx], losses[self._optimal_idx], markersize=10, marker="o", color="red"
                )
        if path is not None:
            fig.savefig(os.fspath(path))
        if show:
            plt.show()
        return fig


_LRFinder = LRFinder  # Lightning's name


class _LRRecorder(Callback):
    """Sets each step's learning rate and records the smoothed loss; stops the trial on divergence."""

    def __init__(self, finder: LRFinder, early_stop_threshold: float | None, beta: float = 0.98) -> None:
        self.finder = finder
        self.early_stop_threshold = early_stop_threshold
        self.beta = beta
        self.avg_loss = 0.0
        self.best_loss = math.inf
        self.step = 0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        lr = self.finder.lr_at(min(self.step, self.finder.num_training - 1))
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer._accumulating:  # only optimizer steps count (the LR is constant within a window)
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        current = float(loss.detach().float().item())
        lr = self.finder.lr_at(min(self.step, self.finder.num_training - 1))
        self.step += 1
        self.avg_loss = self.beta * self.avg_loss + (1 - self.beta) * current
        smoothed = self.avg_loss / (1 - self.beta**self.step)
        if not math.isfinite(smoothed) or (
            self.early_stop_threshold is not None
            and self.step > 1
            and smoothed > self.early_stop_threshold * self.best_loss
        ):
            trainer.should_stop = True
        if smoothed < self.best_loss or self.step == 1:
            self.best_loss = smoothed
        self.finder.results["lr"].append(lr)
        self.finder.results["loss"].append(smoothed)


def _lr_attr(trainer: Trainer, model: Any, attr_name: str) -> str:
    if attr_name:
        if lightning_hasattr(model, attr_name, trainer):
            return attr_name
        raise AttributeError(
            f"lr_find(attr_name={attr_name!r}): the model and its hparams have no such attribute. Fix: pass the name "
            "of the attribute that configure_optimizers reads."
        )
    for name in ("lr", "learning_rate"):
        if lightning_hasattr(model, name, trainer):
            return name
    raise AttributeError(
        "lr_find(update_attr=True) found neither `lr` nor `learning_rate` on the model or its hparams. Fix: store the "
        "learning rate as self.lr (read by configure_optimizers), pass attr_name=..., or update_attr=False."
    )


def lr_find(
    trainer: Trainer,
    model: Any,
    min_lr: float = 1e-8,
    max_lr: float = 1.0,
    num_training: int = 100,
    mode: str = "exponential",
    early_stop_threshold: float | None = 4.0,
    update_attr: bool = False,
    attr_name: str = "",
    weights_only: bool | None = None,
) -> LRFinder | None:
    """Run the LR range test on ``trainer`` (from ``on_fit_start``) and restore the state afterwards.

    Returns:
        The :class:`LRFinder` with the results, or ``None`` under ``fast_dev_run``.

    Raises:
        AttributeError: With ``update_attr=True`` when the LR attribute cannot be found.
        MisconfigurationException: For invalid ``mode``/``min_lr``/``max_lr``/``num_training``, or a model
            without an optimizer.
    """
    if trainer.fast_dev_run:
        rank_zero_warn("Skipping the learning rate finder since fast_dev_run is enabled.")
        return None
    attr = _lr_attr(trainer, model, attr_name) if update_attr else None
    finder = LRFinder(mode, min_lr, max_lr, num_training)
    from fulmen.core.optimizer import _MockOptimizer

    if not trainer.optimizers or isinstance(trainer.optimizers[0], _MockOptimizer):
        raise MisconfigurationException(
            "lr_find needs an optimizer, but configure_optimizers returned none. Fix: return an optimizer."
        )
    recorder = _LRRecorder(finder, early_stop_threshold)
    with TrialSession(
        trainer,
        "lr_find",
        [recorder],
        weights_only,
        max_steps=num_training,
        max_epochs=-1,
        limit_val_batches=0,
    ) as session:
        session.run_fit()
    lr = finder.suggestion()
    if attr is not None and lr is not None:
        lightning_setattr(model, attr, lr, trainer)
        log.info("Learning rate set to %s", lr)
    return finder
