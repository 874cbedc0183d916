"""``LightningDataModule``: the data side of an experiment (download, split, loaders, state)."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader, Dataset, IterableDataset

from fulmen.core.hooks import DataHooks
from fulmen.core.hparams import HyperparametersMixin

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer


class LightningDataModule(DataHooks, HyperparametersMixin):
    """Groups ``prepare_data``, ``setup``, the four ``*_dataloader`` methods and data state."""

    name: str | None = None
    CHECKPOINT_HYPER_PARAMS_KEY = "datamodule_hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "datamodule_hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "datamodule_hparams_type"

    def __init__(self) -> None:
        super().__init__()
        self.trainer: Trainer | None = None

    @classmethod
    def from_datasets(
        cls,
        train_dataset: Dataset[Any] | Iterable[Dataset[Any]] | None = None,
        val_dataset: Dataset[Any] | Iterable[Dataset[Any]] | None = None,
        test_dataset: Dataset[Any] | Iterable[Dataset[Any]] | None = None,
        predict_dataset: Dataset[Any] | Iterable[Dataset[Any]] | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        **datamodule_kwargs: Any,
    ) -> LightningDataModule:
        """A datamodule whose loaders wrap the given datasets (train shuffled, the others not)."""

        def loader(ds: Any, shuffle: bool) -> DataLoader[Any]:
            shuffle &= not isinstance(ds, IterableDataset)
            return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, persistent_workers=False)

        def many(ds: Any, shuffle: bool) -> Any:
            if isinstance(ds, Mapping):
                return {k: loader(v, shuffle) for k, v in ds.items()}
            if isinstance(ds, (list, tuple)):
                return [loader(v, shuffle) for v in ds]
            return loader(ds, shuffle)

        params = inspect.signature(cls.__init__).parameters
        accepts_kwargs = any(p.kind == p.VAR_KEYWORD for p in params.values())
        special = {"train_dataset", "val_dataset", "test_dataset", "predict_dataset", "batch_size", "num_workers"}
        kwargs = {k: v for k, v in datamodule_kwargs.items() if accepts_kwargs or k in params}
        for k in special & set(params):
            kwargs.setdefault(k, locals()[k])
        dm = cls(**kwargs)
        if train_dataset is not None:
            dm.train_dataloader = lambda: many(train_dataset, True)  # type: ignore[method-assign]
        if val_dataset is not None:
            dm.val_dataloader = lambda: many(val_dataset, False)  # type: ignore[method-assign]
        if test_dataset is not None:
            dm.test_dataloader = lambda: many(test_dataset, False)  # type: ignore[method-assign]
        if predict_dataset is not None:
            dm.predict_dataloader = lambda: many(predict_dataset, False)  # type: ignore[method-assign]
        return dm

    def state_dict(self) -> dict[str, Any]:
        """State saved in checkpoints under the class ``__qualname__`` (empty: nothing saved)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def on_exception(self, exception: BaseException) -> None:
        """Called when fit/validate/test/predict raises."""

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        from fulmen.core.saving import load_datamodule_from_checkpoint

        return load_datamodule_from_checkpoint(cls, checkpoint_path, map_location, hparams_file, weights_only, **kwargs)

    def __str__(self) -> str:
        names = [n for n in ("train", "val", "test", "predict") if _overridden(self, f"{n}_dataloader")]
        return f"{type(self).__name__}(dataloaders={names})"


def _overridden(dm: LightningDataModule, name: str) -> bool:
    return name in vars(dm) or getattr(type(dm), name) is not getattr(LightningDataModule, name)
