"""A stop (``trainer.should_stop``) or skip-the-rest-of-the-epoch (``on_train_batch_start`` returning -1) asked
for on ONE rank mid-epoch ends every rank's epoch after the same batch (2 CPU processes, gloo, fork launcher).

Each rank records the batches it trained, its global_step, epoch and weights in ``on_fit_end``; the tests compare
the ranks. Steps sleep a little, as real ones take time, so that the peer learns of a request (its watchdog polls
every 0.1 s) well before the epoch ends; no assertion depends on timing beyond "before the epoch's end".
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

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available"),
    pytest.mark.filterwarnings("ignore:.*no val dataloader was found"),
]

N_BATCHES = 16  # per rank and epoch: 128 samples, batch 4, 2 ranks
STEP_S = 0.03


def _loader(batch_size: int = 4) -> DataLoader:
    """N_BATCHES per rank and epoch: batch 4 on each of 2 ranks, or batch 8 on one process (the same steps)."""
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(128, 4, generator=g), torch.randn(128, 1, generator=g))
    return DataLoader(data, batch_size=batch_size)


class Recorder(L.LightningModule):
    """``stops``/``skips``: {(rank, epoch, batch_idx)} where this rank sets should_stop (in on_train_batch_end)
    or returns -1 from on_train_batch_start."""

    def __init__(self, out: Path, stops: Any = (), skips: Any = (), manual: bool = False) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.out = out
        self.stops, self.skips = set(stops), set(skips)
        self.automatic_optimization = not manual
        self.trained: list[list[int]] = []
        self.started: list[list[int]] = []

    def _at(self, batch_idx: int) -> tuple[int, int, int]:
        return (self.global_rank, self.current_epoch, batch_idx)

    def on_train_batch_start(self, batch, batch_idx):
        self.started.append([self.current_epoch, batch_idx])
        if self._at(batch_idx) in self.skips:
            return -1
        return None

    def training_step(self, batch, batch_idx):
        time.sleep(STEP_S)
        self.trained.append([self.current_epoch, batch_idx])
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, sync_dist=True)
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return None

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self._at(batch_idx) in self.stops:
            self.trainer.should_stop = True

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def on_fit_end(self) -> None:
        rank = self.global_rank
        record = {
            "trained": self.trained,
            "started": self.started,
            "global_step": self.trainer.global_step,
            "epoch": self.trainer.current_epoch,
            "should_stop": self.trainer.should_stop,
        }
        (self.out / f"rank{rank}.json").write_text(json.dumps(record))
        torch.save({k: v.clone() for k, v in self.net.state_dict().items()}, self.out / f"weights{rank}.pt")


def _fit(tmp_path: Path, module: Recorder, devices: int = 2, **kw: Any) -> list[dict[str, Any]]:
    kw.setdefault("max_epochs", 3)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_fork" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )
    bs = 4 if devices == 2 else 8
    trainer.fit(module, _loader(bs), _loader(bs) if "val_check_interval" in kw else None)  # returns normally
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(devices)]
    if devices == 2:
        assert records[0]["trained"] == records[1]["trained"], "the ranks trained different batches"
        assert records[0]["global_step"] == records[1]["global_step"]
        assert records[0]["epoch"] == records[1]["epoch"]
        w0, w1 = (torch.load(tmp_path / f"weights{r}.pt") for r in range(2))
        for name in w0:
            torch.testing.assert_close(w0[name], w1[name], rtol=0, atol=0, msg=name)
    return records


def _batches(record: dict[str, Any], epoch: int) -> list[int]:
    return [b for e, b in record["trained"] if e == epoch]


@pytest.mark.parametrize(
    "config",
    [{}, {"accumulate_grad_batches": 2}, {"manual": True}, {"val_check_interval": 4}],
    ids=["plain", "accumulate", "manual", "in_epoch_val"],
)
def test_should_stop_on_one_rank_mid_epoch_stops_every_rank_after_the_same_batch(
    tmp_path: Path, config: dict[str, Any]
) -> None:
    config = dict(config)
    module = Recorder(tmp_path, stops={(1, 0, 2)}, manual=config.pop("manual", False))
    rank0, rank1 = _fit(tmp_path, module, **config)
    ran = _batches(rank0, 0)
    # ended mid-epoch 0, after the batch that asked (the peer learns of it within a poll) and before the last
    assert ran == list(range(len(ran))) and 3 <= len(ran) < N_BATCHES
    assert {e for e, _ in rank0["trained"]} == {0}  # no later epoch ran
    assert rank0["epoch"] == 0  # the cut-short epoch is not counted (as on one process)
    assert rank0["should_stop"] and rank1["should_stop"]  # every rank was told to stop
    assert rank0["global_step"] > 0


def test_should_stop_on_every_rank_at_once_stops_after_that_batch_as_on_one_process(tmp_path: Path) -> None:
    """A collective decision (every rank asks at the same batch, e.g. EarlyStopping's reduced flag) acts at once."""
    rank0, _ = _fit(tmp_path, Recorder(tmp_path, stops={(0, 0, 5), (1, 0, 5)}))
    (tmp_path / "one").mkdir()
    (single,) = _fit(tmp_path / "one", Recorder(tmp_path / "one", stops={(0, 0, 5)}), devices=1)
    assert _batches(rank0, 0) == _batches(single, 0) == list(range(6))
    assert rank0["global_step"] == 6


def test_min_epochs_keeps_every_rank_training_as_on_one_process(tmp_path: Path) -> None:
    # a stop asked in epoch 0 is held back by min_epochs=2 (the run goes on); one asked in epoch 2 is honoured
    rank0, _ = _fit(tmp_path, Recorder(tmp_path, stops={(1, 0, 2), (1, 2, 3)}), max_epochs=4, min_epochs=2)
    (tmp_path / "one").mkdir()
    single_module = Recorder(tmp_path / "one", stops={(0, 0, 2), (0, 2, 3)})
    (single,) = _fit(tmp_path / "one", single_module, devices=1, max_epochs=4, min_epochs=2)
    for record in (rank0, single):
        assert _batches(record, 0) == _batches(record, 1) == list(range(N_BATCHES))
        assert 4 <= len(_batches(record, 2)) < N_BATCHES and _batches(record, 3) == []
        assert record["epoch"] == 2
    assert _batches(single, 2) == list(range(4))  # one process: right after the batch that asked


def test_skip_on_one_rank_ends_that_epoch_on_every_rank_and_the_next_runs_fully(tmp_path: Path) -> None:
    rank0, rank1 = _fit(tmp_path, Recorder(tmp_path, skips={(0, 0, 2)}), max_epochs=2)
    ran = _batches(rank0, 0)
    assert ran == list(range(len(ran))) and 3 <= len(ran) < N_BATCHES
    assert _batches(rank0, 1) == list(range(N_BATCHES))  # the next epoch ran fully
    assert rank0["epoch"] == 2 and not rank0["should_stop"] and not rank1["should_stop"]


@pytest.mark.parametrize("batch_idx", [N_BATCHES - 1, N_BATCHES - 2])
def test_a_stop_asked_at_the_end_of_an_epoch_stops_after_it(tmp_path: Path, batch_idx: int) -> None:
    # at the last batch the epoch ends anyway; one before it, the request is still pending when it ends
    rank0, _ = _fit(tmp_path, Recorder(tmp_path, stops={(1, 0, batch_idx)}))
    assert _batches(rank0, 0) == list(range(N_BATCHES)) and _batches(rank0, 1) == []
    assert rank0["epoch"] == 1 and rank0["global_step"] == N_BATCHES


def test_a_skip_asked_at_the_last_batch_changes_nothing(tmp_path: Path) -> None:
    rank0, _ = _fit(tmp_path, Recorder(tmp_path, skips={(0, 0, N_BATCHES - 1)}), max_epochs=2)
    assert _batches(rank0, 0) == _batches(rank0, 1) == list(range(N_BATCHES))


def test_two_requests_in_one_run(tmp_path: Path) -> None:
    # a skip in epoch 0 (rank 0), then a stop in epoch 1 (rank 1): each ends its epoch on every rank
    rank0, _ = _fit(tmp_path, Recorder(tmp_path, skips={(0, 0, 2)}, stops={(1, 1, 4)}), max_epochs=4)
    first, second = _batches(rank0, 0), _batches(rank0, 1)
    assert 3 <= len(first) < N_BATCHES and 5 <= len(second) < N_BATCHES
    assert _batches(rank0, 2) == [] and rank0["epoch"] == 1


def test_a_request_left_pending_at_an_epoch_end_does_not_leak_into_the_next(tmp_path: Path) -> None:
    # the skip at the epoch's second-to-last batch is still pending when epoch 0 ends: it is dropped there, and the
    # skip asked in epoch 1 is a new request that ends epoch 1 early
    skips = {(0, 0, N_BATCHES - 2), (1, 1, 3)}
    rank0, _ = _fit(tmp_path, Recorder(tmp_path, skips=skips), max_epochs=3)
    assert _batches(rank0, 0) == list(range(N_BATCHES))
    assert 4 <= len(_batches(rank0, 1)) < N_BATCHES
    assert _batches(rank0, 2) == list(range(N_BATCHES))


def test_stop_asked_in_on_train_epoch_start_on_one_rank(tmp_path: Path) -> None:
    class StopsAtEpochStart(Recorder):
        def on_train_epoch_start(self) -> None:
            if self.global_rank == 1 and self.current_epoch == 1:
                self.trainer.should_stop = True

    rank0, _ = _fit(tmp_path, StopsAtEpochStart(tmp_path))
    assert _batches(rank0, 0) == list(range(N_BATCHES)) and _batches(rank0, 1) == []
    assert rank0["epoch"] == 1
