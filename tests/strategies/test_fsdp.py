"""FSDP2 (fully_shard) on 2 CPU processes with gloo: training equals one process, checkpoints round-trip
(full: one file that loads anywhere; sharded: a torch.distributed.checkpoint directory)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import ModelCheckpoint
from fulmen.fabric import Fabric
from fulmen.utilities.exceptions import MisconfigurationException

fsdp = pytest.importorskip("torch.distributed.fsdp")
if not hasattr(fsdp, "fully_shard"):
    pytest.skip("this torch has no FSDP2 (fully_shard)", allow_module_level=True)

from fulmen.strategies import FSDPStrategy


def _data(n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g))


def _net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


class Regressor(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = _net()

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, sync_dist=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def _trainer(devices: int = 2, **kw) -> L.Trainer:
    kw.setdefault("max_epochs", 2)
    kw.setdefault("enable_checkpointing", False)
    strategy = kw.pop("strategy", None) or (
        FSDPStrategy(start_method="fork", auto_wrap_policy={nn.Linear}) if devices > 1 else "auto"
    )
    return L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def _same(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), msg=name)


def test_fsdp_trains_like_one_process_and_resumes_from_its_full_checkpoint(tmp_path: Path) -> None:
    ds = _data()
    reference = Regressor()
    _trainer(devices=1).fit(reference, DataLoader(ds, batch_size=8))
    sharded = Regressor()
    trainer = _trainer()
    trainer.fit(sharded, DataLoader(ds, batch_size=4))
    assert trainer.global_step == 8
    _same(reference, sharded)  # weights come back to the caller gathered

    # 1 epoch under FSDP, checkpoint (full state dict: one ordinary file), resume on 1 process for epoch 2
    first = Regressor()
    _trainer(
        max_epochs=1, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)]
    ).fit(first, DataLoader(ds, batch_size=4))
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}["net.0.weight"] == (
        8,
        4,
    )  # full, not a shard
    assert ckpt["optimizer_states"][0]["state"]  # Adam moments included
    resumed = Regressor()
    _trainer(devices=1).fit(resumed, DataLoader(ds, batch_size=8), ckpt_path=tmp_path / "last.ckpt")
    _same(reference, resumed)

    # and the same checkpoint resumes under FSDP again
    again = Regressor()
    _trainer().fit(again, DataLoader(ds, batch_size=4), ckpt_path=tmp_path / "last.ckpt")
    _same(reference, again)


def test_fsdp_sync_dist_metric_and_shard_group_policy() -> None:
    ds = _data()
    single = _trainer(devices=1, max_epochs=1)
    single.fit(Regressor(), DataLoader(ds, batch_size=8))
    root_only = _trainer(max_epochs=1, strategy=FSDPStrategy(start_method="fork"))
    root_only.fit(Regressor(), DataLoader(ds, batch_size=4))
    torch.testing.assert_close(
        root_only.callback_metrics["train_loss"], single.callback_metrics["train_loss"]
    )


def _fabric_loop(fabric: Fabric, out: Path) -> dict[str, torch.Tensor]:
    model = fabric.setup_module(_net())
    opt = fabric.setup_optimizers(torch.optim.Adam(model.parameters(), lr=0.01))
    loader = fabric.setup_dataloaders(DataLoader(_data(), batch_size=4))
    for x, y in loader:
        fabric.backward(nn.functional.mse_loss(model(x), y))
        opt.step()
        opt.zero_grad()
    fabric.save(out / "sharded", {"model": model, "optimizer": opt, "step": 4})
    assert (out / "sharded").is_dir()
    fresh = fabric.setup_module(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)))
    fresh_opt = fabric.setup_optimizers(torch.optim.Adam(fresh.parameters(), lr=0.01))
    rest = fabric.load(out / "sharded", {"model": fresh, "optimizer": fresh_opt})
    assert rest == {"step": 4}
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(p.full_tensor(), q.full_tensor())
    assert fresh_opt.state_dict()["state"]  # optimizer moments restored
    # one more identical step on both: equal afterwards (the optimizer state really was restored)
    for m, o in ((model, opt), (fresh, fresh_opt)):
        x, y = next(iter(loader))
        fabric.backward(nn.functional.mse_loss(m(x), y))
        o.step()
    for p, q in zip(model.parameters(), fresh.parameters()):
        torch.testing.assert_close(p.full_tensor(), q.full_tensor())
    with pytest.raises(MisconfigurationException, match="created after the model is set up"):
        fabric.setup_optimizers(torch.optim.SGD(_net().parameters(), lr=0.1))
    return {"ok": torch.tensor(1)}


def test_fabric_fsdp_sharded_checkpoint_round_trip(tmp_path: Path) -> None:
    fabric = Fabric(
        accelerator="cpu",
        devices=2,
        strategy=FSDPStrategy(start_method="fork", state_dict_type="sharded", auto_wrap_policy={nn.Linear}),
    )
    assert fabric.launch(_fabric_loop, tmp_path)["ok"].item() == 1


def test_fsdp_names_resolve() -> None:
    t = L.Trainer(accelerator="cpu", devices=2, strategy="fsdp", logger=False)
    assert isinstance(t.strategy, FSDPStrategy) and t.strategy.start_method == "popen"
    t = L.Trainer(accelerator="cpu", devices=2, strategy="fsdp_cpu_offload", logger=False)
    assert t.strategy.cpu_offload
    with pytest.raises(MisconfigurationException, match="sharding_strategy"):
        FSDPStrategy(sharding_strategy="NO_SHARD")


class EncoderHead(L.LightningModule):
    """Steps that call submodules directly (``self.encoder(x)``), as Lightning users write them, besides ``self(x)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.encoder(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        whole = self(x)
        parts = self.head(self.encoder(x))  # after self(x): the root group's parameters must still be gathered
        return nn.functional.mse_loss(whole, y) + nn.functional.mse_loss(parts, y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_mse", nn.functional.mse_loss(self.head(self.encoder(x)), y), sync_dist=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        z = self.encoder(x)
        self.log("test_mse", nn.functional.mse_loss(self(x), y) + z.mean() * 0, sync_dist=True)

    def predict_step(self, batch, batch_idx):
        return self.head(self.encoder(batch[0]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


@pytest.mark.parametrize("policy", [None, {nn.Linear}], ids=["root-group", "linear-groups"])
def test_fsdp_steps_may_call_submodules_directly(policy) -> None:
    ds = _data()
    reference = EncoderHead()
    one = _trainer(devices=1, max_epochs=1)
    one.fit(reference, DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=4))
    expected_val = one.validate(reference, DataLoader(ds, batch_size=4), verbose=False)[0]["val_mse"]
    expected_test = one.test(reference, DataLoader(ds, batch_size=4), verbose=False)[0]["test_mse"]

    model = EncoderHead()
    trainer = _trainer(max_epochs=1, strategy=FSDPStrategy(start_method="fork", auto_wrap_policy=policy))
    trainer.fit(model, DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=4))  # sanity check + val epoch
    _same(reference, model)
    assert trainer.validate(model, DataLoader(ds, batch_size=4), verbose=False)[0]["val_mse"] == pytest.approx(
        expected_val, rel=1e-5
    )
    assert trainer.test(model, DataLoader(ds, batch_size=4), verbose=False)[0]["test_mse"] == pytest.approx(
        expected_test, rel=1e-5
    )
    preds = trainer.predict(model, DataLoader(ds, batch_size=4))
    with torch.no_grad():
        expected = reference(ds.tensors[0])
    torch.testing.assert_close(torch.cat(preds), expected[0::2])  # rank 0's share: every other sample


class UsesShardedWeight(EncoderHead):
    def validation_step(self, batch, batch_idx):
        x, _ = batch
        self.log("v", (x @ self.encoder[0].weight.T).mean())  # a parameter of its own shard group, not called


def test_fsdp_step_using_an_ungathered_parameter_names_the_fix() -> None:
    from fulmen.utilities.exceptions import RankFailedError

    trainer = _trainer(max_epochs=1, strategy=FSDPStrategy(start_method="fork", auto_wrap_policy={nn.Linear}))
    with pytest.raises(RankFailedError, match=r"UsesShardedWeight.validation_step used a parameter that FSDP had not"):
        trainer.fit(UsesShardedWeight(), DataLoader(_data(), batch_size=4), DataLoader(_data(), batch_size=4))


# ---------------------------------------------------------------- sharded checkpoints and the Trainer
class SaveAtBatch(L.Callback):
    """``trainer.save_checkpoint(path)`` once, after the given number of training batches."""

    def __init__(self, path: Path, batches: int) -> None:
        self.path, self.batches = path, batches

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.run_state.batch_progress.total_completed == self.batches:
            trainer.save_checkpoint(self.path)


def _shuffled() -> DataLoader:
    return DataLoader(_data(), batch_size=4, shuffle=True)


def _strategy(kind: str = "sharded", **kw) -> FSDPStrategy:
    return FSDPStrategy(start_method="fork", state_dict_type=kind, auto_wrap_policy={nn.Linear}, **kw)


@pytest.mark.parametrize(
    ("kind", "batches", "accumulate"),
    [("sharded", 6, 1), ("sharded", 5, 2), ("full", 5, 2)],
    ids=["sharded-mid-epoch", "sharded-inside-accumulation-window", "full-inside-accumulation-window"],
)
def test_fsdp_trainer_resumes_exactly(tmp_path: Path, kind: str, batches: int, accumulate: int) -> None:
    # 32 samples, 2 ranks, batch 4: 4 batches per epoch; the save lands mid-epoch (and inside a window of 2, where
    # FSDP holds the gradients unreduced and unsharded: the checkpoint gets them reduced and sharded)
    L.seed_everything(3, verbose=False)
    full = Regressor()
    saver = SaveAtBatch(tmp_path / "mid.ckpt", batches)
    _trainer(max_epochs=3, strategy=_strategy(kind), callbacks=[saver], accumulate_grad_batches=accumulate).fit(
        full, _shuffled()
    )
    ckpt = tmp_path / "mid.ckpt"
    assert ckpt.is_dir() == (kind == "sharded")

    L.seed_everything(3, verbose=False)  # the same seed: the distributed sampler's shuffle seed comes from it
    resumed = Regressor()
    trainer = _trainer(max_epochs=3, strategy=_strategy(kind), accumulate_grad_batches=accumulate)
    trainer.fit(resumed, _shuffled(), ckpt_path=ckpt)
    assert trainer.global_step == 12 // accumulate
    _same(full, resumed)  # equal only if the weights, Adam's moments, data position (and open gradients) came back
    if kind == "sharded":
        meta = torch.load(ckpt / "meta.pt", weights_only=True)
        assert set(meta["sharded_keys"]) >= {"state_dict", "optimizer_states"}
        assert ("fulmen_sharded_grads" in meta["sharded_keys"]) == (accumulate > 1)
    else:
        grads = torch.load(ckpt, weights_only=True)["fulmen"]["run_state"]["grads"]
        assert grads["net.0.weight"].shape == (8, 4)  # whole, reduced gradients in a full checkpoint
