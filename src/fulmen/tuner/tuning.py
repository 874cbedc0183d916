"""``Tuner(trainer)``: find a learning rate or the largest batch size before training (spec §1.12)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fulmen.utilities.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer
    from fulmen.tuner.lr_finder import LRFinder

__all__ = ["Tuner"]

_METHODS = ("fit", "validate", "test", "predict")


def _check_configuration(train_dataloaders: Any, val_dataloaders: Any, dataloaders: Any, method: str) -> None:
    if method not in _METHODS:
        raise MisconfigurationException(f"Tuner: method={method!r}; expected one of {list(_METHODS)}.")
    if method == "fit" and dataloaders is not None:
        raise MisconfigurationException(
            "Tuner with method='fit' got `dataloaders`. Fix: pass train_dataloaders= and val_dataloaders= instead."
        )
    if method != "fit" and (train_dataloaders is not None or val_dataloaders is not None):
        raise MisconfigurationException(
            f"Tuner with method={method!r} got train_dataloaders/val_dataloaders. Fix: pass dataloaders= instead."
        )


class Tuner:
    """Tuning helpers for a Trainer. Both run a short trial on the Trainer and restore the model and the
    Trainer afterwards, so ``trainer.fit(model)`` can follow with the tuned value.

    Args:
        trainer: The Trainer the final run will use.
    """

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer

    def _check_no_callback(self, callback_type: type, tuner_method: str) -> None:
        """The Tuner adds its own ``callback_type`` for the trial: the Trainer must not have one already."""
        if any(isinstance(cb, callback_type) for cb in self._trainer.callbacks):
            raise MisconfigurationException(
                f"The Trainer already has a {callback_type.__name__} callback. Fix: remove it to use "
                f"Tuner.{tuner_method}, or use only the callback."
            )

    def _run(
        self,
        callback: Any,
        method: str,
        model: Any,
        train_dataloaders: Any,
        val_dataloaders: Any,
        dataloaders: Any,
        datamodule: Any,
    ) -> None:
        trainer = self._trainer
        callback._early_exit = True
        trainer.callbacks = [callback, *trainer.callbacks]
        try:
            if method == "fit":
                trainer.fit(model, train_dataloaders, val_dataloaders, datamodule)
            elif method == "validate":
                trainer.validate(model, dataloaders, datamodule=datamodule, verbose=False)
            elif method == "test":
                trainer.test(model, dataloaders, datamodule=datamodule, verbose=False)
            else:
                trainer.predict(model, dataloaders, datamodule=datamodule, return_predictions=False)
        finally:
            trainer.callbacks = [cb for cb in trainer.callbacks if cb is not callback]

    def scale_batch_size(
        self,
        model: Any,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: Any = None,
        method: str = "fit",
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        margin: float = 0.05,
        max_val: int | None = 8192,
    ) -> int | None:
        """Find the largest batch size that fits in memory and write it to ``batch_arg_name``.

        The batch size must be an attribute (or hparam) of the model or the datamodule that its
        ``*_dataloader()`` hooks read. ``mode="power"`` doubles it until a trial runs out of memory;
        ``"binsearch"`` then bisects, and keeps ``margin`` (a fraction) below the result.

        Returns:
            The batch size found, or ``None`` under ``fast_dev_run``.

        Raises:
            MisconfigurationException: For a bad method/mode/margin, a missing attribute, loaders passed
                directly, or a Trainer that already has a ``BatchSizeFinder`` callback.
        """
        from fulmen.callbacks.batch_size_finder import BatchSizeFinder

        _check_configuration(train_dataloaders, val_dataloaders, dataloaders, method)
        self._check_no_callback(BatchSizeFinder, "scale_batch_size")
        finder = BatchSizeFinder(
            mode=mode,
            steps_per_trial=steps_per_trial,
            init_val=init_val,
            max_trials=max_trials,
            batch_arg_name=batch_arg_name,
            margin=margin,
            max_val=max_val,
        )
        self._run(finder, method, model, train_dataloaders, val_dataloaders, dataloaders, datamodule)
        return finder.optimal_batch_size

    def lr_find(
        self,
        model: Any,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: Any = None,
        method: str = "fit",
        min_lr: float = 1e-8,
        max_lr: float = 1,
        num_training: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
        weights_only: bool | None = None,
    ) -> LRFinder | None:
        """Run the learning-rate range test; with ``update_attr`` the suggestion is written to ``lr`` /
        ``learning_rate`` (or ``attr_name``) on the model or its hparams.

        Returns:
            The :class:`~fulmen.tuner.lr_finder.LRFinder` (``.suggestion()``, ``.plot()``, ``.results``), or
            ``None`` under ``fast_dev_run``.

        Raises:
            MisconfigurationException: For ``method`` other than ``"fit"``, bad settings, or a Trainer that
                already has a ``LearningRateFinder`` callback.
            AttributeError: With ``update_attr=True`` when the LR attribute cannot be found.
        """
        from fulmen.callbacks.lr_finder import LearningRateFinder

        if method != "fit":
            raise MisconfigurationException("Tuner.lr_find: method='fit' is the only valid configuration.")
        _check_configuration(train_dataloaders, val_dataloaders, dataloaders, method)
        self._check_no_callback(LearningRateFinder, "lr_find")
        finder = LearningRateFinder(
            min_lr=min_lr,
            max_lr=max_lr,
            num_training_steps=num_training,
            mode=mode,
            early_stop_threshold=early_stop_threshold,
            update_attr=update_attr,
            attr_name=attr_name,
            weights_only=weights_only,
        )
        self._run(finder, method, model, train_dataloaders, val_dataloaders, None, datamodule)
        result: LRFinder | None = finder.optimal_lr
        return result
