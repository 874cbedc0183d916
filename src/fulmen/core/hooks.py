"""Default implementations of the LightningModule's hooks (spec §1.2), split by concern."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.optim import Optimizer

from fulmen.utilities.apply_func import move_data_to_device

if TYPE_CHECKING:
    from fulmen.core.optimizer import LightningOptimizer


class ModelHooks:
    """Lifecycle and optimisation hooks. Most do nothing; the dispatcher skips those not overridden."""

    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        """Return -1 to skip the rest of the current epoch."""
        return None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...

    def on_validation_model_zero_grad(self) -> None:
        """Called before in-epoch validation; frees gradient memory (set_to_none)."""
        self.zero_grad(set_to_none=True)  # type: ignore[attr-defined]

    def on_validation_model_eval(self) -> None:
        self.trainer.model.eval()  # type: ignore[attr-defined]

    def on_validation_model_train(self) -> None:
        self.trainer.model.train()  # type: ignore[attr-defined]

    def on_test_model_eval(self) -> None:
        self.trainer.model.eval()  # type: ignore[attr-defined]

    def on_test_model_train(self) -> None:
        self.trainer.model.train()  # type: ignore[attr-defined]

    def on_predict_model_eval(self) -> None:
        self.trainer.model.eval()  # type: ignore[attr-defined]

    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...

    def on_before_zero_grad(self, optimizer: Optimizer) -> None: ...
    def on_before_backward(self, loss: torch.Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: Optimizer) -> None: ...

    def configure_sharded_model(self) -> None:
        """Deprecated alias of :meth:`configure_model`."""

    def configure_model(self) -> None:
        """Create modules here to have them built on the target device or sharded strategy."""

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Optimizer | LightningOptimizer, optimizer_closure: Any = None
    ) -> None:
        """Run the optimizer step; the closure runs training_step, zero_grad and backward."""
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Optimizer) -> None:
        optimizer.zero_grad()


class DataHooks:
    """Data hooks shared by LightningModule and LightningDataModule."""

    prepare_data_per_node: bool = True
    allow_zero_length_dataloader_with_multiple_devices: bool = False

    def prepare_data(self) -> None:
        """Download or prepare data once per node (or once in total with ``prepare_data_per_node=False``)."""

    def setup(self, stage: str) -> None:
        """Called on every process at the start of fit/validate/test/predict."""

    def teardown(self, stage: str) -> None:
        """Called on every process at the end of fit/validate/test/predict."""

    def train_dataloader(self) -> Any:
        raise NotImplementedError("`train_dataloader` must be implemented to be used with the Trainer")

    def val_dataloader(self) -> Any:
        raise NotImplementedError("`val_dataloader` must be implemented to be used with the Trainer")

    def test_dataloader(self) -> Any:
        raise NotImplementedError("`test_dataloader` must be implemented to be used with the Trainer")

    def predict_dataloader(self) -> Any:
        raise NotImplementedError("`predict_dataloader` must be implemented to be used with the Trainer")

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return move_data_to_device(batch, device)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch


class CheckpointHooks:
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Read what :meth:`on_save_checkpoint` added."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add or change entries of the checkpoint dict before it is written."""
