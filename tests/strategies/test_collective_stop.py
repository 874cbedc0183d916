"""A stop (``trainer.should_stop``) or skip-the-rest-of-the-epoch (``on_train_batch_start`` returning -1) asked
for on ONE rank mid-epoch ends every rank's epoch after the same batch (2 CPU processes, gloo, fork launcher).

Each rank records the batches it trained, its global_step, epoch and weights in ``on_fit_end``; the tests compare
the ranks. Steps sleep a little, as real ones take time, so that the peer learns of a request (its watchdog polls
every 0.1 s) well before the epoch ends; no assertion depends on timing beyond "before the epoch's end".
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.strategies import _coordination
from fulmen.strategies._coordination import Coordinator

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

    def __init__(
        self, out: Path, stops: Any = (), skips: Any = (), manual: bool = False, slow: Any = ()
    ) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.out = out
        self.stops, self.skips, self.slow = set(stops), set(skips), set(slow)
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
        if self._at(batch_idx) in self.slow:
            time.sleep(0.3)  # the peer goes on into the next batch before this rank asks
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
        weights = {
            k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in self.net.state_dict().items()
        }
        torch.save({k: v.detach().clone() for k, v in weights.items()}, self.out / f"weights{rank}.pt")


def _fit(
    tmp_path: Path, module: Recorder, devices: int = 2, ckpt_path: str | None = None, **kw: Any
) -> list[dict[str, Any]]:
    kw.setdefault("max_epochs", 3)
    kw.setdefault("strategy", "ddp_fork" if devices > 1 else "auto")
    kw.setdefault("enable_checkpointing", False)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )
    bs = 4 if devices == 2 else 8
    val = _loader(bs) if "val_check_interval" in kw else None
    trainer.fit(module, _loader(bs), val, ckpt_path=ckpt_path)  # returns normally
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
    [{}, {"accumulate_grad_batches": 2}, {"manual": True}, {"val_check_interval": 4}, {"fsdp": True}],
    ids=["plain", "accumulate", "manual", "in_epoch_val", "fsdp"],
)
def test_should_stop_on_one_rank_mid_epoch_stops_every_rank_after_the_same_batch(
    tmp_path: Path, config: dict[str, Any]
) -> None:
    config = dict(config)
    if config.pop("fsdp", False):
        from fulmen.strategies import FSDPStrategy

        config["strategy"] = FSDPStrategy(start_method="fork")
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


def test_early_stopping_mid_epoch_stops_after_the_same_batch_as_one_process(tmp_path: Path) -> None:
    from fulmen.callbacks import EarlyStopping

    def stopper() -> EarlyStopping:  # the second in-epoch check (after batch 7) sees no improvement: stop
        return EarlyStopping(monitor="val_loss", patience=0, min_delta=1e6, check_on_train_epoch_end=False)

    rank0, _ = _fit(tmp_path, Recorder(tmp_path), val_check_interval=4, callbacks=[stopper()])
    (tmp_path / "one").mkdir()
    one = Recorder(tmp_path / "one")
    (single,) = _fit(tmp_path / "one", one, devices=1, val_check_interval=4, callbacks=[stopper()])
    assert _batches(rank0, 0) == _batches(single, 0) == list(range(8))
    assert rank0["global_step"] == single["global_step"] == 8


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


def test_a_stop_asked_at_the_last_batch_stops_after_the_epoch(tmp_path: Path) -> None:
    rank0, _ = _fit(tmp_path, Recorder(tmp_path, stops={(1, 0, N_BATCHES - 1)}))
    assert _batches(rank0, 0) == list(range(N_BATCHES)) and _batches(rank0, 1) == []
    assert rank0["epoch"] == 1 and rank0["global_step"] == N_BATCHES


def test_a_stop_still_pending_when_the_epoch_ends_stops_after_it(tmp_path: Path) -> None:
    # asked one batch before the end (after the peer went on into the last batch): the agreed step lies past the
    # epoch's end, which comes first; the epoch-end reduce of should_stop then stops every rank
    at = (1, 0, N_BATCHES - 2)
    rank0, _ = _fit(tmp_path, Recorder(tmp_path, stops={at}, slow={at}))
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
    rank0, _ = _fit(tmp_path, Recorder(tmp_path, skips=skips, slow={(0, 0, N_BATCHES - 2)}), max_epochs=3)
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


def test_a_checkpoint_written_while_a_stop_is_pending_resumes_exactly(tmp_path: Path) -> None:
    from fulmen.callbacks import ModelCheckpoint

    dirs = {name: tmp_path / name for name in ("stopped", "reference", "resumed", "ckpt")}
    for d in dirs.values():
        d.mkdir()
    # rank 1 asks to stop after batch 3 (after rank 0 went on); checkpoints are written at every step meanwhile
    at = (1, 0, 3)
    every_step = ModelCheckpoint(
        dirpath=dirs["ckpt"], filename="{step}", every_n_train_steps=1, save_top_k=-1
    )
    stopped, _ = _fit(
        dirs["stopped"],
        Recorder(dirs["stopped"], stops={at}, slow={at}),
        callbacks=[every_step],
        enable_checkpointing=True,
    )
    last = max(int(p.stem.split("=")[1]) for p in dirs["ckpt"].glob("step=*.ckpt"))
    # the last one was written after rank 1 asked, before the ranks acted on it
    assert last == stopped["global_step"] > 4
    reference, _ = _fit(dirs["reference"], Recorder(dirs["reference"]), max_epochs=2)
    resumed, _ = _fit(
        dirs["resumed"],
        Recorder(dirs["resumed"]),
        max_epochs=2,
        ckpt_path=str(dirs["ckpt"] / f"step={last}.ckpt"),
    )
    assert resumed["trained"] == [[0, b] for b in range(last, N_BATCHES)] + [[1, b] for b in range(N_BATCHES)]
    assert resumed["global_step"] == reference["global_step"] == 2 * N_BATCHES
    w_ref, w_res = (torch.load(dirs[name] / "weights0.pt") for name in ("reference", "resumed"))
    for name in w_ref:
        torch.testing.assert_close(w_res[name], w_ref[name], rtol=0, atol=0, msg=name)


# ------------------------------------------------------------------ the agreement protocol, rank by rank
# Two Coordinators on one in-process store stand for two ranks; the test plays each rank's loop (agree at a batch
# boundary) and watchdog (poll), in the orders that decide between acting at once and deferring.
def _ranks(world: int = 2) -> tuple[list[Coordinator], list[int]]:
    store = torch.distributed.HashStore()
    progress = [0] * world
    ranks = [
        Coordinator(store, r, world, 5.0, 5.0, progress=lambda r=r: progress[r], unblock=lambda: None)
        for r in range(world)
    ]
    return ranks, progress


def _in_threads(*calls: Any) -> list[Any]:
    out: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        out[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    return out


def test_agreement_acts_at_once_when_every_rank_asks_at_the_same_boundary() -> None:
    (r0, r1), progress = _ranks()
    progress[:] = [7, 7]
    values = _in_threads(lambda: r0.epoch_end.agree("stop", 3), lambda: r1.epoch_end.agree("skip", 3))
    assert values == [["stop", "skip"], ["stop", "skip"]]
    # the preemption agreement is the same protocol (and a separate one)
    assert _in_threads(lambda: r0.agree_preemption(15, 3), lambda: r1.agree_preemption(15, 3)) == [True, True]


def test_agreement_defers_when_a_peer_is_past_the_boundary() -> None:
    (r0, r1), progress = _ranks()
    notices: list[Any] = []
    r1.epoch_end.callbacks.append(notices.append)
    progress[:] = [7, 8]  # rank 1 already started the next batch
    asked = threading.Thread(target=lambda: notices.append(("rank0", r0.epoch_end.agree("stop", 3))))
    asked.start()
    while not r0.store.check([r0.epoch_end._key(0)]):
        time.sleep(0.001)
    r1.epoch_end.poll()  # rank 1's watchdog: tells its loop, and records that acting at once is impossible
    asked.join(timeout=10)
    assert notices == ["stop", ("rank0", None)]  # rank 0 did not wait for the 2 s bound: it goes on training
    # rank 1 joins at its next boundary (step 4); the agreed step is the largest post + 2 = 6, the same on both
    progress[:] = [9, 9]
    assert r1.epoch_end.agree("", 4) is None and r0.epoch_end.agree("stop", 4) is None
    assert r0.epoch_end.agree("stop", 5) is None and r1.epoch_end.agree("", 5) is None
    assert r0.epoch_end.agree("stop", 6) == r1.epoch_end.agree("", 6) == ["stop", ""]


def test_agreement_defers_after_waiting_in_vain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_coordination, "_SAME_BOUNDARY_WAIT_S", 0.05)
    (r0, r1), progress = _ranks()
    progress[:] = [7, 7]
    assert r0.epoch_end.agree("skip", 3) is None  # rank 1 never showed up at this boundary
    assert r1.epoch_end.agree("", 3) is None  # it comes later: the decision stays "defer"
    assert r0.epoch_end.agree("skip", 5) == r1.epoch_end.agree("", 5) == ["skip", ""]


def test_a_new_generation_starts_a_fresh_request() -> None:
    (r0, r1), progress = _ranks()
    progress[:] = [7, 7]
    _in_threads(lambda: r0.epoch_end.agree("stop", 3), lambda: r1.epoch_end.agree("", 3))
    notices: list[Any] = []
    r0.epoch_end.callbacks.append(notices.append)
    r1.epoch_end.callbacks.append(notices.append)
    cleared: list[int] = []
    for r in (r0, r1):  # every rank at the epoch's end
        r.epoch_end.next_generation(lambda r=r: cleared.append(r.rank))
    assert cleared == [0, 1]
    r0.epoch_end.poll()
    r1.epoch_end.poll()
    assert notices == []  # the finished request is not seen again
    # a request left pending (rank 1 never joined before the epoch ended) is dropped by the next generation
    progress[:] = [9, 10]
    pending = threading.Thread(target=lambda: notices.append(("rank0", r0.epoch_end.agree("skip", 5))))
    pending.start()
    while not r0.store.check([r0.epoch_end._key(0)]):
        time.sleep(0.001)
    r1.epoch_end.poll()
    pending.join(timeout=10)
    assert notices == ["skip", ("rank0", None)]
    for r in (r0, r1):
        r.epoch_end.next_generation()
    progress[:] = [12, 12]
    values = _in_threads(lambda: r0.epoch_end.agree("", 8), lambda: r1.epoch_end.agree("stop", 8))
    assert values == [["", "stop"], ["", "stop"]]
