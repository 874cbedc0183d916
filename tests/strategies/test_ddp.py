"""DDP with 2 CPU processes (gloo), started with the fork launcher so each test costs a fraction of a second.

Every comparison is against one process on the combined batch (batch 4 per rank x 2 ranks == batch 8):
with shuffling off, DistributedSampler gives rank r the samples r, r+2, ..., so each step's two rank
batches together are exactly the single process's batch, and DDP's averaged gradient is its gradient.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import ModelCheckpoint
from fulmen.utilities.exceptions import RankFailedError, RanksOutOfSyncError

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

FAST_FAILURE_S = 15.0  # a failing rank must end the run (both processes) well within this


def _data(n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g))


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 0.05, bn: bool = False, opt: str = "sgd") -> None:
        super().__init__()
        torch.manual_seed(1)
        layers: list[nn.Module] = [nn.Linear(4, 8)]
        if bn:
            layers.append(nn.BatchNorm1d(8))
        layers += [nn.Tanh(), nn.Linear(8, 1)]
        self.net = nn.Sequential(*layers)
        self.lr = lr
        self.opt = opt

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def predict_step(self, batch, batch_idx):
        return self.net(batch[0])

    def configure_optimizers(self):
        if self.opt == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _trainer(devices: int = 2, **kw) -> L.Trainer:
    kw.setdefault("max_epochs", 2)
    kw.setdefault("enable_checkpointing", False)
    kw.setdefault("num_sanity_val_steps", 0)
    strategy = kw.pop("strategy", "ddp_fork" if devices > 1 else "auto")
    return L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def _assert_same_params(a: nn.Module, b: nn.Module, **tol) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, msg=lambda m, n=name: f"{n}: {m}", **tol)


def test_weights_equal_one_process_on_the_combined_batch() -> None:
    ds = _data()
    single = Regressor()
    _trainer(devices=1).fit(single, DataLoader(ds, batch_size=8))
    ddp = Regressor()
    trainer = _trainer()
    trainer.fit(ddp, DataLoader(ds, batch_size=4))
    assert trainer.global_step == 8 and trainer.world_size == 2 and trainer.num_devices == 2
    _assert_same_params(single, ddp)


def test_gradient_accumulation_skips_sync_and_matches_one_process() -> None:
    ds = _data()
    single = Regressor()
    _trainer(devices=1, accumulate_grad_batches=2).fit(single, DataLoader(ds, batch_size=8))
    ddp = Regressor()
    _trainer(accumulate_grad_batches=2).fit(ddp, DataLoader(ds, batch_size=4))
    _assert_same_params(single, ddp)


def test_sync_dist_metrics_equal_the_single_process_metrics() -> None:
    ds = _data()
    single, ddp = Regressor(), Regressor()
    t1 = _trainer(devices=1, max_epochs=1)
    t1.fit(single, DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8))
    t2 = _trainer(max_epochs=1)
    t2.fit(ddp, DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=4))
    for key in ("train_loss_epoch", "val_loss", "train_loss_step"):
        torch.testing.assert_close(t2.callback_metrics[key], t1.callback_metrics[key], msg=key)
    # trainer.validate returns the synced numbers too
    r1 = _trainer(devices=1).validate(single, DataLoader(ds, batch_size=8), verbose=False)
    r2 = _trainer().validate(ddp, DataLoader(ds, batch_size=4), verbose=False)
    assert r2[0]["val_loss"] == pytest.approx(r1[0]["val_loss"], rel=1e-5)


def test_sync_batchnorm_matches_batchnorm_on_the_combined_batch() -> None:
    ds = _data()
    single, ddp = Regressor(bn=True), Regressor(bn=True)
    _trainer(devices=1).fit(single, DataLoader(ds, batch_size=8))
    _trainer(sync_batchnorm=True).fit(ddp, DataLoader(ds, batch_size=4))
    _assert_same_params(single, ddp, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ddp.net[1].running_mean, single.net[1].running_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ddp.net[1].running_var, single.net[1].running_var, rtol=1e-4, atol=1e-5)
    assert type(ddp.net[1]) is nn.BatchNorm1d or "SyncBatchNorm" in type(ddp.net[1]).__name__


class ManualRegressor(Regressor):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()


def test_manual_optimization_synchronizes_gradients() -> None:
    ds = _data()
    single, ddp = ManualRegressor(), ManualRegressor()
    _trainer(devices=1).fit(single, DataLoader(ds, batch_size=8))
    _trainer().fit(ddp, DataLoader(ds, batch_size=4))
    _assert_same_params(single, ddp)


class Collectives(Regressor):
    def on_train_start(self) -> None:
        s = self.trainer.strategy
        rank = self.global_rank
        assert s.world_size == 2 and s.is_global_zero == (rank == 0)
        assert s.broadcast({"from": rank}) == {"from": 0}
        assert s.broadcast(rank, src=1) == 1
        gathered = self.all_gather(torch.tensor([rank, 10 + rank]))
        assert gathered.tolist() == [[0, 10], [1, 11]]
        assert s.reduce(torch.tensor(float(rank + 1)), reduce_op="sum").item() == 3.0
        assert s.reduce(torch.tensor(float(rank + 1)), reduce_op="mean").item() == 1.5
        assert s.reduce_boolean_decision(rank == 0, all=False) is True
        assert s.reduce_boolean_decision(rank == 0, all=True) is False
        s.barrier("test")
        sizes = self.all_gather(torch.ones(rank + 1))  # different shapes come back as a list
        assert [t.numel() for t in sizes] == [1, 2]
        # a grad-carrying all_gather: each rank gets its slice's gradient summed over the ranks' (equal) losses
        w = torch.ones(2, requires_grad=True)
        (self.all_gather(w * (rank + 1), sync_grads=True).sum()).backward()
        assert w.grad.tolist() == [2.0 * (rank + 1)] * 2
        sampler = self.trainer.train_dataloader.sampler
        assert type(sampler).__name__ == "DistributedSampler" and sampler.rank == rank
        assert self.trainer.distributed_sampler_kwargs == {"num_replicas": 2, "rank": rank}


def test_strategy_collectives_and_sampler_injection() -> None:
    trainer = _trainer(max_epochs=1)
    trainer.fit(Collectives(), DataLoader(_data(), batch_size=4, shuffle=True))
    assert trainer.global_step == 4  # 32 samples / 2 ranks / batch 4


def test_shuffled_epochs_differ_and_agree_across_ranks(tmp_path: Path) -> None:
    class Record(Regressor):
        def on_train_epoch_start(self) -> None:
            order = list(iter(self.trainer.train_dataloader.sampler))
            (tmp_path / f"e{self.current_epoch}_r{self.global_rank}.json").write_text(json.dumps(order))

    _trainer(max_epochs=2).fit(Record(), DataLoader(_data(), batch_size=4, shuffle=True))
    r = {(e, k): json.loads((tmp_path / f"e{e}_r{k}.json").read_text()) for e in (0, 1) for k in (0, 1)}
    assert sorted(r[0, 0] + r[0, 1]) == list(range(32))  # the ranks split the epoch between them
    assert r[0, 0] != r[1, 0]  # set_epoch: a new shuffle each epoch


def test_ddp_checkpoint_resumes_on_one_process(tmp_path: Path) -> None:
    ds = _data()
    reference = Regressor(opt="adam", lr=0.01)
    _trainer(devices=1, max_epochs=2).fit(reference, DataLoader(ds, batch_size=8))
    first = Regressor(opt="adam", lr=0.01)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = _trainer(max_epochs=1, enable_checkpointing=True, callbacks=[ckpt])
    trainer.fit(first, DataLoader(ds, batch_size=4))
    assert (tmp_path / "last.ckpt").exists() and ckpt.last_model_path.endswith("last.ckpt")
    resumed = Regressor(opt="adam", lr=0.01)
    t2 = _trainer(devices=1, max_epochs=2)
    t2.fit(resumed, DataLoader(ds, batch_size=8), ckpt_path=tmp_path / "last.ckpt")
    assert t2.global_step == 8
    _assert_same_params(reference, resumed)


def test_one_process_checkpoint_resumes_under_ddp(tmp_path: Path) -> None:
    ds = _data()
    reference = Regressor(opt="adam", lr=0.01)
    _trainer(devices=1, max_epochs=2).fit(reference, DataLoader(ds, batch_size=8))
    first = Regressor(opt="adam", lr=0.01)
    t1 = _trainer(devices=1, max_epochs=1)
    t1.fit(first, DataLoader(ds, batch_size=8))
    t1.save_checkpoint(tmp_path / "one.ckpt")
    resumed = Regressor(opt="adam", lr=0.01)
    t2 = _trainer(max_epochs=2)
    t2.fit(resumed, DataLoader(ds, batch_size=4), ckpt_path=tmp_path / "one.ckpt")
    assert t2.global_step == 8
    _assert_same_params(reference, resumed)


def test_validate_and_predict_after_fit() -> None:
    ds = _data()
    model = Regressor()
    trainer = _trainer(max_epochs=1)
    trainer.fit(model, DataLoader(ds, batch_size=4))
    assert trainer.validate(model, DataLoader(ds, batch_size=4), verbose=False)[0]["val_loss"] > 0
    preds = trainer.predict(model, DataLoader(ds, batch_size=4))
    assert sum(p.shape[0] for p in preds) == 16  # rank 0's half, as with Lightning's spawn launchers


# ------------------------------------------------------------------ reliability
class Failing(Regressor):
    """Raises ``ValueError('boom in <where>')`` on one rank; every rank records what it saw in ``on_exception``."""

    def __init__(self, where: str, rank: int, out: Path) -> None:
        super().__init__()
        self.where, self.bad_rank, self.out = where, rank, out

    def _maybe_fail(self, where: str) -> None:
        if where == self.where and self.global_rank == self.bad_rank:
            raise ValueError(f"boom in {where}")

    def training_step(self, batch, batch_idx):
        if batch_idx == 2:
            self._maybe_fail("training_step")
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        if batch_idx == 1:
            self._maybe_fail("validation_step")
        return super().validation_step(batch, batch_idx)

    def on_save_checkpoint(self, checkpoint) -> None:
        self._maybe_fail("on_save_checkpoint")

    def on_exception(self, exception: BaseException) -> None:
        (self.out / f"rank{self.global_rank}.txt").write_text(f"{type(exception).__name__}: {exception}")


@pytest.mark.parametrize(
    ("where", "rank"), [("training_step", 1), ("validation_step", 0), ("on_save_checkpoint", 1)]
)
def test_a_failing_rank_ends_every_rank_quickly_naming_the_rank(
    tmp_path: Path, where: str, rank: int
) -> None:
    model = Failing(where, rank, tmp_path)
    trainer = _trainer(
        enable_checkpointing=where == "on_save_checkpoint",
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt")] if where == "on_save_checkpoint" else None,
    )
    start = time.monotonic()
    with pytest.raises(RankFailedError, match=f"Rank {rank} raised ValueError: boom in {where}") as info:
        trainer.fit(model, DataLoader(_data(), batch_size=4), DataLoader(_data(), batch_size=4))
    elapsed = time.monotonic() - start
    assert elapsed < FAST_FAILURE_S, f"took {elapsed:.1f}s"
    assert info.value.rank == rank and "boom" in info.value.remote_traceback
    assert isinstance(info.value.__cause__, ValueError)
    # the other rank stopped because of it, and was told which rank failed and why
    other = (tmp_path / f"rank{1 - rank}.txt").read_text()
    assert other.startswith("RankFailedError") and f"Rank {rank} raised ValueError" in other
    assert (tmp_path / f"rank{rank}.txt").read_text() == f"ValueError: boom in {where}"


class SavesOnOneRank(Regressor):
    def on_train_epoch_end(self) -> None:
        if self.trainer.is_global_zero:  # the classic mistake: save_checkpoint is collective
            self.trainer.save_checkpoint("one_rank.ckpt")


def test_a_save_on_one_rank_only_raises_instead_of_hanging() -> None:
    start = time.monotonic()
    with pytest.raises(RanksOutOfSyncError, match="Saving a checkpoint is collective"):
        _trainer().fit(SavesOnOneRank(), DataLoader(_data(), batch_size=4))
    assert time.monotonic() - start < FAST_FAILURE_S


class StopsOnOneRank(Regressor):
    def __init__(self, at_epoch_end: bool) -> None:
        super().__init__()
        self.at_epoch_end = at_epoch_end

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if not self.at_epoch_end and batch_idx == 1 and self.global_rank == 1:
            self.trainer.should_stop = True

    def on_train_epoch_end(self) -> None:
        if self.at_epoch_end and self.global_rank == 1:
            self.trainer.should_stop = True


def test_should_stop_is_collective_at_epoch_end() -> None:
    trainer = _trainer(max_epochs=3)
    trainer.fit(StopsOnOneRank(at_epoch_end=True), DataLoader(_data(), batch_size=4))
    assert trainer.current_epoch == 1 and trainer.global_step == 4  # both ranks stopped after epoch 0


def test_should_stop_on_one_rank_mid_epoch_stops_every_rank() -> None:
    # the stop is agreed between the ranks (tests/strategies/test_collective_stop.py has the details)
    trainer = _trainer(max_epochs=3)
    trainer.fit(StopsOnOneRank(at_epoch_end=False), DataLoader(_data(), batch_size=4))
    assert trainer.current_epoch <= 1 and 2 <= trainer.global_step <= 4  # no rank ran epoch 1


class UnevenData(Regressor):
    def train_dataloader(self) -> DataLoader:
        n = 16 if self.global_rank == 0 else 20  # rank 1 has one more batch
        return DataLoader(_data(n), batch_size=4)


def test_ranks_with_different_numbers_of_batches_are_reported() -> None:
    start = time.monotonic()
    with pytest.raises(RanksOutOfSyncError, match="rank 1 went past"):
        _trainer(use_distributed_sampler=False).fit(UnevenData())
    assert time.monotonic() - start < FAST_FAILURE_S


def test_fork_launcher_reports_a_worker_killed_without_an_error() -> None:
    class Killed(Regressor):
        def training_step(self, batch, batch_idx):
            if batch_idx == 1 and self.global_rank == 1:
                os._exit(7)
            return super().training_step(batch, batch_idx)

    start = time.monotonic()
    with pytest.raises((RankFailedError, RuntimeError), match="(exited with code 7|rank 1)"):
        _trainer().fit(Killed(), DataLoader(_data(), batch_size=4))
    assert time.monotonic() - start < FAST_FAILURE_S


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_world_size_one_runs_in_this_process(strategy: str) -> None:
    """devices=1 with a multi-process strategy: no launch, a process group of one (the GPU tests' NCCL path)."""
    single, one = Regressor(), Regressor()
    _trainer(devices=1, max_epochs=1).fit(single, DataLoader(_data(), batch_size=8))
    trainer = _trainer(devices=1, strategy=strategy, max_epochs=1)
    try:
        trainer.fit(one, DataLoader(_data(), batch_size=8))
        assert trainer.world_size == 1 and torch.distributed.is_initialized()
        for p, q in zip(single.parameters(), one.parameters()):  # FSDP leaves the model sharded (DTensors)
            torch.testing.assert_close(p, q.full_tensor() if hasattr(q, "full_tensor") else q)
    finally:
        trainer.strategy.finalize()  # leave no process group behind in the test process
    assert not torch.distributed.is_initialized()


class SignalledOnOneRank(Regressor):
    def training_step(self, batch, batch_idx):
        if self.global_rank == 1 and self.current_epoch == 0 and batch_idx == 1:
            import signal

            os.kill(os.getpid(), signal.SIGUSR1)  # SLURM's "time is up soon", seen by rank 1 only
        time.sleep(
            0.05
        )  # steps as slow as real ones: the other rank learns of the signal within a poll (0.1 s)
        return super().training_step(batch, batch_idx)


def test_preemption_seen_by_one_rank_is_a_collective_checkpoint(tmp_path: Path) -> None:
    ds = _data()
    reference = Regressor(opt="adam", lr=0.01)
    _trainer(devices=1, max_epochs=4).fit(reference, DataLoader(ds, batch_size=8))
    model = SignalledOnOneRank(opt="adam", lr=0.01)
    trainer = _trainer(max_epochs=4, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=tmp_path)])
    with pytest.raises(SystemExit) as info:
        trainer.fit(model, DataLoader(ds, batch_size=4))
    assert info.value.code == 138
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert 2 <= ckpt["global_step"] < 16  # saved mid-run, at the step both ranks agreed on
    resumed = Regressor(opt="adam", lr=0.01)
    _trainer(devices=1, max_epochs=4).fit(
        resumed, DataLoader(ds, batch_size=8), ckpt_path=tmp_path / "last.ckpt"
    )
    _assert_same_params(reference, resumed)


class RankDependentModel(Regressor):
    def configure_model(self) -> None:
        if self.global_rank == 1:
            self.net.append(nn.Linear(1, 1))  # a rank-dependent layer: the ranks' models differ


def test_ranks_that_build_different_models_are_reported() -> None:
    with pytest.raises(RankFailedError, match="built different models"):
        _trainer(max_epochs=1).fit(RankDependentModel(), DataLoader(_data(), batch_size=4))
