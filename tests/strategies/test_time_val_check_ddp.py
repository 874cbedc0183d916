"""Time-based ``val_check_interval`` with several processes (2 CPU processes, gloo, fork launcher).

Each rank reads its own clock; a fake clock (the fit loop's ``_clock``, one copy per forked rank) stands still
except where a test makes it jump past the one-hour interval on one rank, or on both, after a given batch. Every
rank must validate after the same batch, the same number of times (validation runs collectives: a rank that
validated alone would hang), and fit must end normally. Steps sleep a little, as real ones take time, so that the
peer learns of a request (its watchdog polls every 0.1 s) before the epoch ends; no assertion depends on timing
beyond "before the epoch's end".
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.trainer.loops import fit as fit_loop

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
]

N_BATCHES = 16  # per rank and epoch: 128 samples, batch 4, 2 ranks
STEP_S = 0.03
HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(128, 4, generator=g), torch.randn(128, 1, generator=g)), batch_size=4
    )


class Recorder(L.LightningModule):
    """``jumps``: {(rank, epoch, batch_idx)} where this rank's clock moves on by an hour (in training_step);
    ``stops``: where this rank sets should_stop; ``slow``: where this rank dawdles in on_train_batch_end (the peer
    goes on into the next batch before this rank asks)."""

    def __init__(
        self, out: Path, clock: Clock, jumps: Any = (), stops: Any = (), slow: Any = (), tick: float = 0.0
    ) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.out, self.clock = out, clock
        self.jumps, self.stops, self.slow = set(jumps), set(stops), set(slow)
        self.trained: list[list[int]] = []
        self.val_at: list[list[int]] = []  # (epoch, batches trained in the epoch) at each validation's start
        self.done = 0
        self.tick = tick  # seconds every training batch takes on every rank's clock

    def _at(self, batch_idx: int) -> tuple[int, int, int]:
        return (self.global_rank, self.current_epoch, batch_idx)

    def training_step(self, batch, batch_idx):
        time.sleep(STEP_S)
        self.clock.now += self.tick
        if self._at(batch_idx) in self.jumps:
            self.clock.now += HOUR
        self.trained.append([self.current_epoch, batch_idx])
        self.done = batch_idx + 1
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self._at(batch_idx) in self.slow:
            time.sleep(0.3)
        if self._at(batch_idx) in self.stops:
            self.trainer.should_stop = True

    def on_validation_start(self) -> None:
        self.val_at.append([self.current_epoch, self.done])

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def on_fit_end(self) -> None:
        record = {
            "trained": self.trained,
            "val_at": self.val_at,
            "global_step": self.trainer.global_step,
            "epoch": self.trainer.current_epoch,
        }
        (self.out / f"rank{self.global_rank}.json").write_text(json.dumps(record))


def _fit(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    strategy: Any = "ddp_fork",
    trainer_kw: Any = None,
    ckpt_path: str | None = None,
    **kw: Any,
) -> dict[str, Any]:
    clock = Clock()
    monkeypatch.setattr(fit_loop, "_clock", clock)  # each forked rank gets its own copy of the clock
    module = Recorder(tmp_path, clock, **kw)
    trainer_kw = {"max_epochs": 2, "enable_checkpointing": False, **(trainer_kw or {})}
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        val_check_interval="00:01:00:00",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **trainer_kw,
    )
    # returns normally: no rank hung in a validation the other skipped
    trainer.fit(module, _loader(), _loader(), ckpt_path=ckpt_path)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert rank0["trained"] == rank1["trained"], "the ranks trained different batches"
    assert rank0["val_at"] == rank1["val_at"], "the ranks validated after different batches"
    assert rank0["global_step"] == rank1["global_step"]
    return rank0


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_interval_elapsing_on_one_rank_validates_every_rank_after_the_same_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsdp: bool
) -> None:
    strategy: Any = "ddp_fork"
    if fsdp:
        from fulmen.strategies import FSDPStrategy

        strategy = FSDPStrategy(start_method="fork")
    # only rank 1's clock says the hour passed (after batch 3 of epoch 0); only rank 0's does in epoch 1
    record = _fit(tmp_path, monkeypatch, strategy=strategy, jumps={(1, 0, 3), (0, 1, 5)})
    assert len(record["val_at"]) == 2  # once per elapsed interval: the timer restarts on every rank after it
    (e0, after0), (e1, after1) = record["val_at"]
    assert e0 == 0 and 4 <= after0 <= N_BATCHES  # after the batch that asked (the peer joins within a poll)
    assert e1 == 1 and 6 <= after1 <= N_BATCHES
    assert record["epoch"] == 2 and record["global_step"] == 2 * N_BATCHES  # fit ran to its end


def test_interval_elapsing_on_every_rank_at_once_validates_right_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = _fit(tmp_path, monkeypatch, jumps={(0, 0, 5), (1, 0, 5)})
    assert record["val_at"] == [[0, 6]]  # exactly where one process would validate
    assert record["epoch"] == 2


def test_a_validation_still_pending_at_the_last_batch_runs_there_on_every_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rank 1 asks one batch before the end, after rank 0 went on into the last batch: the agreed step lies past the
    # epoch's end; the last batch (which every rank reaches) runs the asked-for validation on every rank
    at = (1, 0, N_BATCHES - 2)
    record = _fit(tmp_path, monkeypatch, jumps={at}, slow={at})
    assert record["val_at"] == [[0, N_BATCHES]]


def test_interval_elapsing_at_the_last_batch_on_one_rank_validates_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = _fit(tmp_path, monkeypatch, jumps={(0, 0, N_BATCHES - 1)})
    assert record["val_at"] == [[0, N_BATCHES]]
    assert record["epoch"] == 2


def test_a_validation_and_a_stop_asked_at_the_same_batch_on_one_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # both requests are agreed on separately; the ranks act on them at the same batches, and fit ends normally
    at = (1, 0, 3)
    record = _fit(tmp_path, monkeypatch, jumps={at}, stops={at})
    ran = [b for e, b in record["trained"] if e == 0]
    assert 4 <= len(ran) < N_BATCHES and record["epoch"] == 0  # stopped mid-epoch 0
    assert len(record["val_at"]) <= 1 and all(v[1] <= len(ran) for v in record["val_at"])


def test_a_validation_on_one_rank_and_a_stop_on_the_other_at_the_same_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rank 1 asks to validate and rank 0 to stop after batch 3: each agreement settles (neither rank waits for the
    # other at that batch in vain), the ranks act at the same batches, and fit ends normally
    record = _fit(tmp_path, monkeypatch, jumps={(1, 0, 3)}, stops={(0, 0, 3)})
    ran = [b for e, b in record["trained"] if e == 0]
    assert 4 <= len(ran) < N_BATCHES and record["epoch"] == 0  # stopped mid-epoch 0
    assert len(record["val_at"]) <= 1 and all(v[1] <= len(ran) for v in record["val_at"])


def test_resume_keeps_the_time_since_the_last_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fulmen.callbacks import ModelCheckpoint

    for name in ("full", "resumed", "ckpt"):
        (tmp_path / name).mkdir()
    # every batch takes 1000 s on both clocks: the hour has passed after every 4th batch
    every_step = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=1, save_top_k=-1
    )
    full = _fit(
        tmp_path / "full",
        monkeypatch,
        tick=1000.0,
        trainer_kw={"max_epochs": 1, "callbacks": [every_step], "enable_checkpointing": True},
    )
    assert full["val_at"] == [[0, 4], [0, 8], [0, 12], [0, 16]]
    # resumed from step 6 (2000 s after the validation at batch 4): validates after the same batches as the full run
    resumed = _fit(
        tmp_path / "resumed",
        monkeypatch,
        tick=1000.0,
        trainer_kw={"max_epochs": 1},
        ckpt_path=str(tmp_path / "ckpt" / "step=6.ckpt"),
    )
    assert resumed["trained"] == [[0, b] for b in range(6, N_BATCHES)]
    assert resumed["val_at"] == [[0, 8], [0, 12], [0, 16]]


def test_a_rank_past_its_decision_point_tells_an_asking_peer_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank-by-rank (two Coordinators on one in-process store): rank 1 went past its validation check at the batch
    where rank 0 asks, and waits at that same batch elsewhere (its progress does not move): its watchdog records
    "defer" at once, so rank 0 does not wait for the same-boundary bound (made huge here) and goes on training."""
    import threading

    from fulmen.strategies import _coordination
    from fulmen.strategies._coordination import Coordinator

    monkeypatch.setattr(_coordination, "_SAME_BOUNDARY_WAIT_S", 3600.0)
    store = torch.distributed.HashStore()
    progress = [7, 7]
    r0, r1 = (
        Coordinator(store, r, 2, 5.0, 5.0, progress=lambda r=r: progress[r], unblock=lambda: None)
        for r in range(2)
    )
    notices: list[Any] = []
    r1.val_check.callbacks.append(notices.append)
    r1.val_check.poll()
    assert notices == []  # nobody asked
    r1.val_check.pass_boundary()  # rank 1's loop at progress 7: its clock has not run out, it does not ask
    asked = threading.Thread(
        target=lambda: notices.append(("rank0", r0.val_check.agree("val", 3))), daemon=True
    )
    asked.start()
    while not store.check([r0.val_check._key(0)]):
        time.sleep(0.001)
    r1.val_check.poll()  # same progress as rank 0's post, but past its decision point there
    asked.join(timeout=10)
    assert not asked.is_alive()
    assert notices == ["val", ("rank0", None)]
    # rank 1 joins at its next boundary; both validate at the agreed step (largest post + 2), then start afresh
    progress[:] = [9, 9]
    assert r1.val_check.agree("", 4) is None and r0.val_check.agree("val", 4) is None
    assert r0.val_check.agree("val", 6) == r1.val_check.agree("", 6) == ["val", ""]
    for r in (r0, r1):
        r.val_check.next_generation()
    assert r0.val_check.generation == r1.val_check.generation == 1
