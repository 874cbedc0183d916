"""The progress bar's sync-free read (fulmen.core.host_read): CUDA values one refresh late, exact at the epoch end.

On the CPU the bar reads exactly (nothing to wait for); ``host_read.DEFER_CPU`` sends CPU tensors through
the deferred route so that its logic runs here as it does for CUDA tensors (the copy is a clone, the
event ``None``). The CUDA tests at the end skip without a GPU.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import fulmen as L
from fulmen.callbacks.progress import TQDMProgressBar
from fulmen.core import host_read
from fulmen.core.host_read import DeferredHostRead

FULMEN_SRC = str(Path(L.__file__).parent)


class Data:
    def __init__(self, n: int) -> None:
        self.batches = [(torch.full((2, 3), float(i)), torch.zeros(2, 1)) for i in range(n)]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Model(L.LightningModule):
    """Logs the batch index as ``v`` (step) and its epoch mean as ``m_epoch``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 1)
        self.logged: list[torch.Tensor] = []  # kept alive, so no later tensor can reuse their memory

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        v = x[0, 0].clone()  # == batch_idx, a tensor made by the step
        self.logged.append(v)
        self.log("v", v, prog_bar=True)
        self.log("m", v, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.0)


class RecordingBar(TQDMProgressBar):
    """Records (epoch, batches done, what get_metrics returned) at each read."""

    def __init__(self, refresh_rate: int) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.seen: list[tuple[int, int, dict[str, Any]]] = []

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        logged = {k: v for k, v in items.items() if k in ("v", "m")}
        self.seen.append((trainer.current_epoch, trainer.run_state.batch_in_epoch, logged))
        return items


def _fit(tmp_path: Path, epochs: int = 1, n: int = 8, refresh: int = 2) -> tuple[RecordingBar, Model]:
    bar = RecordingBar(refresh)
    model = Model()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[bar], default_root_dir=tmp_path,
    )
    trainer.fit(model, Data(n))
    return bar, model


def test_cpu_values_are_exact_at_every_refresh(tmp_path: Path) -> None:
    bar, _ = _fit(tmp_path, epochs=2)
    # refreshes after batches 2, 4, 6, 8 show that batch's value, then the epoch end reads again; the epoch
    # mean ``m`` is reduced after the bar's epoch end (as in Lightning), so it shows from the next epoch on
    assert bar.seen == [
        (0, 2, {"v": 1.0}), (0, 4, {"v": 3.0}), (0, 6, {"v": 5.0}), (0, 8, {"v": 7.0}), (0, 8, {"v": 7.0}),
        (1, 2, {"v": 1.0, "m": 3.5}), (1, 4, {"v": 3.0, "m": 3.5}), (1, 6, {"v": 5.0, "m": 3.5}),
        (1, 8, {"v": 7.0, "m": 3.5}), (1, 8, {"v": 7.0, "m": 3.5}),
    ]


def test_deferred_route_shows_values_one_refresh_late_and_exact_at_epoch_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(host_read, "DEFER_CPU", True)
    bar, _ = _fit(tmp_path, epochs=2)
    assert [(e, b, m) for e, b, m in bar.seen] == [
        (0, 2, {}),  # the first refresh has nothing on the host yet
        (0, 4, {"v": 1.0}),  # the value copied at the previous refresh
        (0, 6, {"v": 3.0}),
        (0, 8, {"v": 5.0}),
        (0, 8, {"v": 7.0}),  # epoch end: exact
        (1, 2, {"v": 7.0}),  # a new epoch starts from the exact epoch-end values (``m`` is new: not copied yet)
        (1, 4, {"v": 1.0, "m": 3.5}),
        (1, 6, {"v": 3.0, "m": 3.5}),
        (1, 8, {"v": 5.0, "m": 3.5}),
        (1, 8, {"v": 7.0, "m": 3.5}),  # the final values are exact
    ]


def test_deferred_route_never_reads_a_logged_tensor_during_the_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mid-epoch refreshes convert only the reader's own host copies, never a tensor the step logged."""
    monkeypatch.setattr(host_read, "DEFER_CPU", True)
    read_ptrs: list[tuple[int, int]] = []
    state = {"in_batches": False}
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "numpy"):
        original = getattr(torch.Tensor, name)

        def wrapper(self: torch.Tensor, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            if state["in_batches"] and sys._getframe(1).f_code.co_filename.startswith(FULMEN_SRC):
                read_ptrs.append(self.untyped_storage().data_ptr())
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)

    class Marker(L.Callback):
        def on_train_epoch_start(self, *args: Any) -> None:
            state["in_batches"] = True

        def on_train_batch_end(self, *args: Any) -> None:
            state["in_batches"] = True

        def on_train_epoch_end(self, *args: Any) -> None:
            state["in_batches"] = False

    bar = RecordingBar(2)
    model = Model()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Marker(), bar], default_root_dir=tmp_path,
    )
    trainer.fit(model, Data(8))
    assert read_ptrs, "the mid-epoch refreshes read the host copies"
    assert not set(read_ptrs) & {t.untyped_storage().data_ptr() for t in model.logged}


def test_reader_keeps_key_order_and_reads_numbers_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_read, "DEFER_CPU", True)
    reader = DeferredHostRead()
    assert reader.read({"a": torch.tensor(1.0), "n": 2, "b": torch.tensor(3)}) == {"n": 2.0}
    out = reader.read({"a": torch.tensor(5.0), "n": 4, "b": torch.tensor(6)})
    assert out == {"a": 1.0, "n": 4.0, "b": 3} and list(out) == ["a", "n", "b"]
    assert isinstance(out["b"], int)  # an integer tensor stays an int, as .item() gives it
    reader.settle({"a": 9.0})
    assert reader.read({"a": torch.tensor(7.0), "b": torch.tensor(8)}) == {"a": 9.0}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the non-blocking copy + event)")
def test_cuda_reader_copies_without_syncing() -> None:
    reader = DeferredHostRead()
    value = torch.tensor(3.5, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        first = reader.read({"x": value * 2})  # starts the copy; nothing on the host yet
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert first == {}
    torch.cuda.synchronize()  # (the test's own wait, so the copy is done)
    torch.cuda.set_sync_debug_mode("error")
    try:
        second = reader.read({"x": value})
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert second == {"x": 7.0}
