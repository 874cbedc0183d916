"""``on_train_batch_end`` receives Lightning's ``outputs``: a dict with the detached (normalized) loss."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import fulmen as L
from fulmen.demos import BoringModel


class _Capture(L.Callback):
    def __init__(self) -> None:
        self.outputs: list[Any] = []

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.outputs.append(outputs)


def _fit(model: L.LightningModule, **kw: Any) -> _Capture:
    capture = _Capture()
    trainer = L.Trainer(
        max_steps=kw.pop("max_steps", 2),
        callbacks=[capture],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        **kw,
    )
    trainer.fit(model)
    return capture


class _ReturnsTensor(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.raw: list[torch.Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = self.step(batch)
        self.raw.append(loss.detach().clone())
        return loss


@pytest.mark.parametrize("accumulate", [1, 3])
def test_automatic_outputs_are_a_dict_with_the_normalized_detached_loss(accumulate: int) -> None:
    model = _ReturnsTensor()
    capture = _fit(model, accumulate_grad_batches=accumulate)
    assert len(capture.outputs) == 2 * accumulate
    for out, raw in zip(capture.outputs, model.raw):
        assert set(out) == {"loss"} and not out["loss"].requires_grad
        torch.testing.assert_close(out["loss"], raw / accumulate)


def test_extra_keys_are_kept_and_a_skipped_step_gives_an_empty_dict() -> None:
    class Extra(BoringModel):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if batch_idx == 1:
                return None
            return {"loss": self.step(batch), "extra": 7}

    capture = _fit(Extra(), max_steps=2)
    assert capture.outputs[0]["extra"] == 7 and list(capture.outputs[0]) == ["loss", "extra"]
    assert capture.outputs[1] == {}


def test_manual_optimization_outputs() -> None:
    class Manual(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            opt = self.optimizers()
            loss = self.step(batch)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            return loss if batch_idx == 0 else ({"loss": loss, "n": 1} if batch_idx == 1 else None)

    capture = _fit(Manual(), max_steps=3)
    assert set(capture.outputs[0]) == {"loss"} and not capture.outputs[0]["loss"].requires_grad
    assert capture.outputs[1]["n"] == 1 and not capture.outputs[1]["loss"].requires_grad
    assert capture.outputs[2] == {}
