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

from fulmen.strategies import FSDPStrategy  # noqa: E402 - after the skip: needs FSDP2


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
    # the directory Fabric wrote consolidates into one file with the same entries, whole tensors
    from fulmen.checkpoint.sharded import consolidate_checkpoint_to_file

    consolidate_checkpoint_to_file(tmp_path / "sharded", tmp_path / "full.pt")
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    assert sorted(full) == ["model", "optimizer", "step"] and full["step"] == 4
    assert full["model"]["0.weight"].shape == (8, 4)
    # and a Fabric without FSDP loads the directory (consolidated on the fly)
    plain = Fabric(accelerator="cpu", devices=1)
    net = _net()
    assert plain.load(tmp_path / "sharded", {"model": net}, strict=False)["step"] == 4
    torch.testing.assert_close(net.state_dict(), full["model"])


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


class ValRegressor(Regressor):
    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("val_loss", loss, sync_dist=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def predict_step(self, batch, batch_idx):
        return self.net(batch[0])


def test_sharded_checkpoints_with_model_checkpoint_top_k_and_every_entry_point(tmp_path: Path) -> None:
    ds = _data()
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpts", monitor="val_loss", save_top_k=1, save_last=True)
    model = ValRegressor()
    trainer = _trainer(max_epochs=3, strategy=_strategy(), enable_checkpointing=True, callbacks=[ckpt_cb])
    trainer.fit(model, DataLoader(ds, batch_size=4), DataLoader(ds, batch_size=4))
    # top-1 plus last: older best directories were deleted (whole directories), both entries are sharded dirs
    entries = sorted(p.name for p in (tmp_path / "ckpts").iterdir())
    assert len(entries) == 2 and "last.ckpt" in entries, entries
    assert all((tmp_path / "ckpts" / e).is_dir() for e in entries)
    best = Path(ckpt_cb.best_model_path)
    assert best.is_dir() and best.name in entries
    assert best.name == "epoch=2-step=12.ckpt"  # val_loss fell every epoch: epoch 0's and 1's dirs were deleted

    # the final weights, and what validate/test/predict get from each checkpoint
    with torch.no_grad():
        expected_preds = model.net(ds.tensors[0])
    last = tmp_path / "ckpts" / "last.ckpt"
    fresh = ValRegressor()  # different (untrained) weights: only the checkpoint can make the numbers right
    evaluator = _trainer(strategy=_strategy())
    val = evaluator.validate(fresh, DataLoader(ds, batch_size=4), ckpt_path=last, verbose=False)[0]["val_loss"]
    assert val == pytest.approx(trainer.callback_metrics["val_loss"].item(), rel=1e-5)
    test = evaluator.test(fresh, DataLoader(ds, batch_size=4), ckpt_path=last, verbose=False)[0]["test_loss"]
    assert test == pytest.approx(val, rel=1e-5)
    preds = evaluator.predict(fresh, DataLoader(ds, batch_size=4), ckpt_path=last)
    torch.testing.assert_close(torch.cat(preds), expected_preds[0::2])

    # a non-FSDP Trainer and load_from_checkpoint read a sharded directory too (consolidated on the fly)
    one = _trainer(devices=1)
    single = one.validate(ValRegressor(), DataLoader(ds, batch_size=8), ckpt_path=last, verbose=False)[0]["val_loss"]
    assert single == pytest.approx(val, rel=1e-5)
    ddp = _trainer(strategy="ddp_fork")  # each DDP rank consolidates for itself
    on_ddp = ddp.validate(ValRegressor(), DataLoader(ds, batch_size=4), ckpt_path=last, verbose=False)[0]["val_loss"]
    assert on_ddp == pytest.approx(val, rel=1e-5)
    loaded = ValRegressor.load_from_checkpoint(last)
    _same(model, loaded)
    # and resumes training from it (optimizer states keyed by parameter name, as in full FSDP checkpoints)
    resumed = Regressor()
    _trainer(devices=1, max_epochs=4).fit(resumed, DataLoader(ds, batch_size=8), ckpt_path=last)
    continued = Regressor()  # ckpt_path="last" finds the last.ckpt directory
    again = ModelCheckpoint(dirpath=tmp_path / "ckpts", save_last=True)
    _trainer(max_epochs=4, strategy=_strategy(), enable_checkpointing=True, callbacks=[again]).fit(
        continued, DataLoader(ds, batch_size=4), ckpt_path="last"
    )
    _same(continued, resumed)


@pytest.mark.parametrize("devices", [1, 4])
def test_sharded_checkpoint_resumes_on_another_world_size(tmp_path: Path, devices: int) -> None:
    ds = _data()
    L.seed_everything(3, verbose=False)
    reference = Regressor()
    _trainer(max_epochs=2, strategy=_strategy()).fit(reference, DataLoader(ds, batch_size=4))
    first = Regressor()
    saver = SaveAtBatch(tmp_path / "epoch0.ckpt", 4)  # the last batch of epoch 0
    _trainer(max_epochs=1, strategy=_strategy(), callbacks=[saver]).fit(first, DataLoader(ds, batch_size=4))
    # written by 2 ranks, read by `devices` ranks (torch.distributed.checkpoint reshards); same global batch
    resumed = Regressor()
    trainer = _trainer(devices=devices, max_epochs=2, strategy=_strategy())
    trainer.fit(resumed, DataLoader(ds, batch_size=8 // devices), ckpt_path=tmp_path / "epoch0.ckpt")
    assert trainer.global_step == 8
    _same(reference, resumed)


class Deeper(ValRegressor):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1), nn.Linear(1, 1))


def test_sharded_checkpoint_that_does_not_match_the_model_names_the_keys(tmp_path: Path) -> None:
    saver = SaveAtBatch(tmp_path / "a.ckpt", 2)
    _trainer(max_epochs=1, strategy=_strategy(), callbacks=[saver]).fit(Regressor(), DataLoader(_data(), batch_size=4))
    trainer = _trainer(strategy=_strategy())
    with pytest.raises(Exception, match=r"does not match the model: missing keys \['net.3.bias', 'net.3.weight'\]"):
        trainer.validate(Deeper(), DataLoader(_data(), batch_size=4), ckpt_path=tmp_path / "a.ckpt")
    lenient = Deeper()
    lenient.strict_loading = False  # the matching keys load, the new layer keeps its initialization
    assert trainer.validate(lenient, DataLoader(_data(), batch_size=4), ckpt_path=tmp_path / "a.ckpt", verbose=False)
    from fulmen.checkpoint.sharded import consolidate_checkpoint

    saved = consolidate_checkpoint(tmp_path / "a.ckpt")["state_dict"]
    torch.testing.assert_close(lenient.net[0].weight.detach(), saved["net.0.weight"])


def test_fabric_consolidate_turns_a_sharded_checkpoint_into_one_file(tmp_path: Path, capsys) -> None:
    import subprocess
    import sys

    from fulmen.fabric._cli import main as fabric_cli

    ds = _data()
    model = Regressor()
    saver = SaveAtBatch(tmp_path / "mid.ckpt", 6)
    _trainer(max_epochs=2, strategy=_strategy(), callbacks=[saver]).fit(model, DataLoader(ds, batch_size=4))
    folder = tmp_path / "mid.ckpt"

    out = tmp_path / "full.ckpt"
    assert fabric_cli(["consolidate", str(folder), "--output_file", str(out)]) == 0
    ckpt = torch.load(out, weights_only=True)  # one ordinary file, safe-loadable
    assert ckpt["global_step"] == 6 and ckpt["state_dict"]["net.0.weight"].shape == (8, 4)
    assert ckpt["optimizer_states"][0]["state"]["net.0.weight"]["exp_avg"].shape == (8, 4)
    assert "sharded_keys" not in ckpt
    assert ValRegressor.load_from_checkpoint(out).net[0].weight.shape == (8, 4)
    # a non-distributed resume from the file equals an FSDP resume from the directory
    from_file, from_dir = Regressor(), Regressor()
    _trainer(devices=1, max_epochs=2).fit(from_file, DataLoader(ds, batch_size=8), ckpt_path=out)
    _trainer(max_epochs=2, strategy=_strategy()).fit(from_dir, DataLoader(ds, batch_size=4), ckpt_path=folder)
    _same(from_dir, from_file)

    # the console command, with the default output name next to the folder
    done = subprocess.run(
        [sys.executable, "-m", "fulmen", "fabric", "consolidate", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert torch.load(tmp_path / "mid.ckpt.consolidated", weights_only=True)["global_step"] == 6

    # bad input: clear errors, nothing written
    capsys.readouterr()
    assert fabric_cli(["consolidate", str(tmp_path / "nope"), "--output_file", str(tmp_path / "x.ckpt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert fabric_cli(["consolidate", str(out), "--output_file", str(tmp_path / "x.ckpt")]) == 2
    assert "is a file, not a sharded checkpoint directory" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    assert fabric_cli(["consolidate", str(tmp_path / "plain"), "--output_file", str(tmp_path / "x.ckpt")]) == 2
    assert "is not a sharded checkpoint" in capsys.readouterr().err
    assert fabric_cli(["consolidate", str(folder), "--output_file", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert not (tmp_path / "x.ckpt").exists()


class BF16Regressor(Regressor):
    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.net(x)
        assert out.dtype == torch.bfloat16, out.dtype  # autocast is on inside the FSDP step
        loss = nn.functional.mse_loss(out.float(), y)
        self.log("train_loss", loss, sync_dist=True)
        return loss


def _mse(model: Regressor) -> float:
    x, y = _data().tensors
    with torch.no_grad():
        return nn.functional.mse_loss(model.net(x), y).item()


@pytest.mark.parametrize("kind", ["sharded", "full"])
def test_fsdp_bf16_mixed_on_cpu_trains_and_round_trips_a_checkpoint(tmp_path: Path, kind: str) -> None:
    ds = _data()
    L.seed_everything(3, verbose=False)
    model = BF16Regressor()
    before = _mse(model)
    saver = SaveAtBatch(tmp_path / "mid.ckpt", 6)
    trainer = _trainer(max_epochs=3, strategy=_strategy(kind), precision="bf16-mixed", callbacks=[saver])
    trainer.fit(model, DataLoader(ds, batch_size=4, shuffle=True))
    assert model.net[0].weight.dtype == torch.float32  # fp32 master weights, bf16 compute
    assert _mse(model) < 0.9 * before  # (random targets: 0.60 -> 0.51 here)

    L.seed_everything(3, verbose=False)
    resumed = BF16Regressor()
    trainer = _trainer(max_epochs=3, strategy=_strategy(kind), precision="bf16-mixed")
    trainer.fit(resumed, DataLoader(ds, batch_size=4, shuffle=True), ckpt_path=tmp_path / "mid.ckpt")
    assert trainer.global_step == 12
    _same(model, resumed)


class KeepsAShardedCopy(L.Callback):
    """A callback whose state holds a sharded tensor (like averaged weights under FSDP)."""

    def __init__(self, expect_load: bool = False) -> None:
        self.copy = None
        self.loaded_shape = None
        self.expect_load = expect_load

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.copy = pl_module.net[0].weight.detach().clone()

    def state_dict(self):
        return {"copy": self.copy}

    def load_state_dict(self, state) -> None:
        self.loaded_shape = tuple(state["copy"].shape)

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.expect_load:
            assert self.loaded_shape == (8, 4), self.loaded_shape  # read whole (as without FSDP)


def test_sharded_callback_state_is_read_whole(tmp_path: Path) -> None:
    cb = KeepsAShardedCopy()
    _trainer(max_epochs=1, strategy=_strategy(), callbacks=[cb, SaveAtBatch(tmp_path / "c.ckpt", 2)]).fit(
        Regressor(), DataLoader(_data(), batch_size=4)
    )
    meta = torch.load(tmp_path / "c.ckpt" / "meta.pt", weights_only=True)
    assert "callbacks" in meta["sharded_keys"]
    # the resume reads only that entry whole; the weights and optimizer states stay for the per-rank read
    from fulmen.checkpoint.sharded import consolidate_checkpoint

    partial = consolidate_checkpoint(tmp_path / "c.ckpt", keys=["callbacks"])
    assert "state_dict" not in partial and "optimizer_states" not in partial
    assert next(iter(partial["callbacks"].values()))["copy"].shape == (8, 4)
    again = KeepsAShardedCopy(expect_load=True)
    trainer = _trainer(max_epochs=1, strategy=_strategy(), callbacks=[again])
    trainer.fit(Regressor(), DataLoader(_data(), batch_size=4), ckpt_path=tmp_path / "c.ckpt")
    assert trainer.global_step == 4
