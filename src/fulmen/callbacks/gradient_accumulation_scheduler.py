"""Change the number of accumulated batches per optimizer step as training progresses.

:func:`accumulation_for_epoch` is the plain lookup; :class:`GradientAccumulationScheduler` sets
``trainer.accumulate_grad_batches`` (run state, read by the loop every batch) at each epoch start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from typing_extensions import override

from fulmen.callbacks.callback import Callback
from fulmen.utilities.exceptions import MisconfigurationException, MisconfigurationTypeError
from fulmen.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from fulmen.core.module import LightningModule
    from fulmen.trainer.trainer import Trainer


def accumulation_for_epoch(scheduling: dict[int, int], epoch: int) -> int:
    """The accumulation factor in force at ``epoch``: the value of the largest key ``<= epoch`` (1 if "
    "none)."""
    factor = 1
    for start in sorted(scheduling):
        if epoch >= start:
            factor = scheduling[start]
        else:
            break
    return factor


def _is_overridden_by_user(obj: Any, name: str) -> bool:
    """Whether ``name`` is defined by a class outside fulmen (i.e. the user overrode the default)."""
    for cls in type(obj).__mro__:
        if name in vars(cls):
            return not cls.__module__.startswith("fulmen.")
    return False


class GradientAccumulationScheduler(Callback):
    r"""Change gradient accumulation by epoch.

    Args:
        scheduling: ``{epoch: accumulate_grad_batches}``; from each key's epoch (0-indexed) on, that many
            batches are accumulated per optimizer step. Epochs before the smallest key use 1.

    Raises:
        MisconfigurationException: if ``scheduling`` is empty, not a dict, or has a key that is not an
            int >= 0 or a value that is not an int >= 1.

    Example::

        # epochs 0-4: 1 batch per step; 5-9: 2 batches; 10+: 4 batches
        GradientAccumulationScheduler(scheduling={5: 2, 10: 4})
    """

    def __init__(self, scheduling: dict[int, int]) -> None:
        super().__init__()
        if not isinstance(scheduling, dict) or not scheduling:
            raise MisconfigurationTypeError(
                f"GradientAccumulationScheduler(scheduling=...): got {scheduling!r}; expected a non-empty "
                "dict "
                "{epoch: accumulate_grad_batches}. Fix: pass e.g. scheduling={0: 1, 4: 2}."
            )
        bad_keys = [k for k in scheduling if isinstance(k, bool) or not isinstance(k, int) or k < 0]
        if bad_keys:
            raise MisconfigurationException(
                f"GradientAccumulationScheduler(scheduling=...): epoch keys {bad_keys} are invalid; "
                "expected ints "
                f">= 0 (got keys {list(scheduling)}). Fix: use 0-indexed epoch numbers as keys."
            )
        bad_values = [
            v for v in scheduling.values() if isinstance(v, bool) or not isinstance(v, int) or v < 1
        ]
        if bad_values:
            raise MisconfigurationException(
                f"GradientAccumulationScheduler(scheduling=...): accumulation factors {bad_values} are "
                "invalid; "
                f"expected ints >= 1 (got values {list(scheduling.values())}). Fix: use 1 for no "
                "accumulation."
            )
        self.scheduling = dict(scheduling)
        if 0 not in self.scheduling:
            self.scheduling[0] = 1
        self.epochs = sorted(self.scheduling)

    def going_to_accumulate_grad_batches(self) -> bool:
        """Whether any epoch accumulates more than one batch."""
        return any(v > 1 for v in self.scheduling.values())

    def get_accumulate_grad_batches(self, epoch: int) -> int:
        """The accumulation factor for ``epoch``."""
        return accumulation_for_epoch(self.scheduling, epoch)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # At fit start the run state holds the Trainer's own value (a resumed run restores the
        # scheduled value only afterwards), so this sees what the user passed.
        if trainer.accumulate_grad_batches != 1:
            raise MisconfigurationException(
                "GradientAccumulationScheduler: "
                f"Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches}) "
                "was also set; the two would conflict. Fix: remove accumulate_grad_batches from the "
                "Trainer or "
                "remove the callback."
            )

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not pl_module.automatic_optimization:
            raise MisconfigurationException(
                "GradientAccumulationScheduler: the LightningModule uses manual optimization "
                "(automatic_optimization=False), where the trainer does not accumulate gradients. "
                "Fix: remove the callback, or switch to automatic optimization."
            )
        overridden = _is_overridden_by_user(pl_module, "optimizer_step") or _is_overridden_by_user(
            pl_module, "optimizer_zero_grad"
        )
        if overridden and self.going_to_accumulate_grad_batches():
            rank_zero_warn(
                "When using `Trainer(accumulate_grad_batches != 1)` and overriding "
                "`LightningModule.optimizer_{step,zero_grad}`, the hooks will not be called on every batch "
                "(rather, they are called on every optimization step)."
            )

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trainer.accumulate_grad_batches = self.get_accumulate_grad_batches(trainer.current_epoch)


__all__ = ["GradientAccumulationScheduler", "accumulation_for_epoch"]
