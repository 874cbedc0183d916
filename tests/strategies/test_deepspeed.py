"""DeepSpeed (an optional extra).

Without ``deepspeed`` installed (CI, the main venv): every registered name and ``DeepSpeedStrategy(...)`` raise
a clear error that says how to install it. With it installed (see docs/hardware.md: a separate venv with
``pip install deepspeed --no-build-isolation``), 2 CPU processes on gloo with DeepSpeed's CPU accelerator:
ZeRO-1/2/3 training equals DDP on the same data, checkpoints (engine directories plus fulmen's run state) resume
exactly, and Fabric drives the engine.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import ModelCheckpoint
from fulmen.fabric import Fabric
from fulmen.fabric.connector import build_strategy
from fulmen.utilities.exceptions import MisconfigurationException, RankFailedError

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(
    not HAS_DEEPSPEED,
    reason="deepspeed is not installed (optional extra: pip install deepspeed --no-build-isolation, see "
    "docs/hardware.md)",
)

NAMES = {
    "deepspeed": (2, False, False),
    "deepspeed_stage_1": (1, False, False),
    "deepspeed_stage_1_offload": (1, True, False),
    "deepspeed_stage_2": (2, False, False),
    "deepspeed_stage_2_offload": (2, True, False),
    "deepspeed_stage_3": (3, False, False),
    "deepspeed_stage_3_offload": (3, True, True),
    "deepspeed_stage_3_offload_nvme": (3, True, True),
}


# ---------------------------------------------------------------------- without deepspeed
@pytest.mark.skipif(HAS_DEEPSPEED, reason="deepspeed is installed here; this checks the error without it")
@pytest.mark.parametrize("name", sorted(NAMES))
def test_every_name_says_how_to_install_deepspeed(name: str) -> None:
    with pytest.raises(MisconfigurationException, match="pip install deepspeed") as info:
        build_strategy("cpu", name, 2)
    assert "not installed" in str(info.value) and "strategy='fsdp'" in str(info.value)
    with pytest.raises(MisconfigurationException, match="pip install deepspeed"):
        L.Trainer(accelerator="cpu", devices=2, strategy=name, logger=False)
    with pytest.raises(MisconfigurationException, match="pip install deepspeed"):
        Fabric(accelerator="cpu", devices=2, strategy=name)


@pytest.mark.skipif(HAS_DEEPSPEED, reason="deepspeed is installed here; this checks the error without it")
def test_strategy_class_without_deepspeed_says_how_to_install() -> None:
    from fulmen.strategies import DeepSpeedStrategy

    with pytest.raises(MisconfigurationException, match=r"ZeRO stage 3\) needs the `deepspeed` package"):
        DeepSpeedStrategy(stage=3, offload_optimizer=True, config={"zero_optimization": {"stage": 3}})


def test_deepspeed_precision_is_importable_without_deepspeed() -> None:
    from fulmen.plugins import DeepSpeedPrecision

    assert DeepSpeedPrecision("bf16-mixed").precision == "bf16-mixed"
    assert DeepSpeedPrecision(16).precision == "16-mixed"
    with pytest.raises(MisconfigurationException, match="expected '32-true'"):
        DeepSpeedPrecision("64-true")


# ---------------------------------------------------------------------- configuration (deepspeed installed)
@needs_deepspeed
@pytest.mark.parametrize("name", sorted(NAMES))
def test_names_set_stage_and_offload(name: str) -> None:
    from fulmen.strategies import DeepSpeedStrategy

    s = build_strategy("cpu", name, 2, precision="bf16-mixed")
    assert isinstance(s, DeepSpeedStrategy) and s.world_size == 2
    stage, offload_opt, offload_params = NAMES[name]
    config = s._build_config()
    zero = config["zero_optimization"]
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero) is offload_opt
    assert ("offload_param" in zero) is offload_params
    if name.endswith("nvme"):
        assert zero["offload_param"]["device"] == zero["offload_optimizer"]["device"] == "nvme"
        assert "aio" in config
    assert config["bf16"] == {"enabled": True}  # the precision flag became the engine's section
    assert type(s.precision).__name__ == "DeepSpeedPrecision"


@needs_deepspeed
def test_config_argument_dict_and_json_path(tmp_path: Path) -> None:
    from fulmen.strategies import DeepSpeedStrategy

    user = {
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "gradient_clipping": 0.5,
    }
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(user))
    for config in (user, str(path), path):
        s = DeepSpeedStrategy(config=config)
        built = s._build_config(accumulate_grad_batches=4)
        assert built["zero_optimization"] == user["zero_optimization"]
        assert built["gradient_accumulation_steps"] == 4 and built["train_micro_batch_size_per_gpu"] == 1
        assert built["gradient_clipping"] == 0.5
    assert user == {
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "gradient_clipping": 0.5,
    }  # the caller's dict is not changed
    s = DeepSpeedStrategy(stage=1)
    assert s._build_config(gradient_clip_val=2.0)["gradient_clipping"] == 2.0
    assert (
        s._build_config()["gradient_clipping"] == 0.0
    )  # no clipping unless asked (DeepSpeed's default is 1.0)
    with pytest.raises(MisconfigurationException, match="by norm only"):
        s._build_config(gradient_clip_val=1.0, gradient_clip_algorithm="value")
    with pytest.raises(MisconfigurationException, match="set only one"):
        DeepSpeedStrategy(config=user)._build_config(gradient_clip_val=1.0)
    with pytest.raises(MisconfigurationException, match="remove gradient_accumulation_steps"):
        DeepSpeedStrategy(config={"gradient_accumulation_steps": 2})._build_config(accumulate_grad_batches=4)


@needs_deepspeed
def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    from fulmen.strategies import DeepSpeedStrategy

    with pytest.raises(MisconfigurationException, match=r"stage=5.*expected a ZeRO stage"):
        DeepSpeedStrategy(stage=5)
    with pytest.raises(MisconfigurationException, match="no such file"):
        DeepSpeedStrategy(config=str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MisconfigurationException, match="not valid JSON"):
        DeepSpeedStrategy(config=tmp_path / "bad.json")
    with pytest.raises(MisconfigurationException, match="needs ZeRO stage 3"):
        DeepSpeedStrategy(stage=2, offload_parameters=True)
    with pytest.raises(MisconfigurationException, match="expected 'cpu' or 'nvme'"):
        DeepSpeedStrategy(remote_device="disk")
    with pytest.raises(MisconfigurationException, match="expected a dict or the path"):
        DeepSpeedStrategy(config=42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- training (deepspeed installed)
def _data(n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g))


def _net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


class Regressor(L.LightningModule):
    def __init__(self, sgd: bool = False) -> None:
        super().__init__()
        self.net = _net()
        self.sgd = sgd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), sync_dist=True)

    def configure_optimizers(self):
        if self.sgd:  # plain SGD sees a gradient's scale (AdamW would hide a wrongly scaled gradient)
            opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        else:
            opt = torch.optim.AdamW(self.parameters(), lr=0.02, weight_decay=0.01)
        return {
            "optimizer": opt,
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
        }


def _trainer(strategy, **kw) -> L.Trainer:
    kw.setdefault("max_epochs", 2)
    kw.setdefault("enable_checkpointing", False)
    return L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def _ds(stage: int, **kw):
    from fulmen.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(stage=stage, start_method="fork", **kw)


def _loaders():
    return DataLoader(_data(), batch_size=2), DataLoader(_data(16), batch_size=4)


def _same(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), msg=name, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def ddp_reference() -> tuple[Regressor, float]:
    """2-process DDP, gradient accumulation 2 and clipping by norm (the DeepSpeed runs map both to the engine)."""
    model = Regressor(sgd=True)
    trainer = _trainer("ddp_fork", accumulate_grad_batches=2, gradient_clip_val=0.8)
    trainer.fit(model, *_loaders())
    assert trainer.global_step == 8
    return model, float(trainer.callback_metrics["val_loss"])


@needs_deepspeed
@pytest.mark.parametrize(
    ("stage", "offload"),
    [
        (1, {}),
        (2, {}),
        (3, {}),
        (2, {"offload_optimizer": True}),
        (3, {"offload_optimizer": True, "offload_parameters": True}),
    ],
    ids=["zero1", "zero2", "zero3", "zero2-offload", "zero3-offload"],
)
def test_zero_stages_train_like_ddp(
    stage: int, offload: dict, ddp_reference: tuple[Regressor, float], tmp_path: Path
) -> None:
    reference, val_loss = ddp_reference
    model = Regressor(sgd=True)
    trainer = _trainer(_ds(stage, **offload), accumulate_grad_batches=2, gradient_clip_val=0.8)
    trainer.fit(model, *_loaders())
    assert trainer.global_step == 8
    _same(reference, model)  # full weights back in the calling process (gathered under ZeRO-3)
    assert float(trainer.callback_metrics["val_loss"]) == pytest.approx(val_loss, rel=1e-5)
    trained = [torch.equal(p, q) for p, q in zip(_net().parameters(), model.net.parameters())]
    assert not all(trained)
    # after fit the engine is gone: save_checkpoint writes one ordinary file with the full weights
    trainer.save_checkpoint(tmp_path / "final.ckpt")
    _same(reference, Regressor.load_from_checkpoint(tmp_path / "final.ckpt", sgd=True))
    assert "optimizer_states" not in torch.load(tmp_path / "final.ckpt", weights_only=False)


class ManualRegressor(Regressor):
    def __init__(self) -> None:
        super().__init__(sgd=True)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return loss


@needs_deepspeed
def test_manual_optimization_steps_through_the_engine() -> None:
    reference = ManualRegressor()
    _trainer("ddp_fork", max_epochs=1).fit(reference, *_loaders())
    model = ManualRegressor()
    trainer = _trainer(_ds(2), max_epochs=1)
    trainer.fit(model, *_loaders())
    assert trainer.global_step == 8
    _same(reference, model)


@needs_deepspeed
def test_accumulation_schedule_changes_the_window_per_epoch() -> None:
    from fulmen.callbacks import GradientAccumulationScheduler

    def fit(strategy):
        model = Regressor(sgd=True)
        trainer = _trainer(strategy, callbacks=[GradientAccumulationScheduler({0: 1, 1: 4})])
        trainer.fit(model, *_loaders())
        assert trainer.global_step == 8 + 2
        return model

    _same(fit("ddp_fork"), fit(_ds(2)))


class CheckDtype(L.Callback):
    def on_train_end(self, trainer, pl_module):
        # DeepSpeed's bf16 section: the engine holds the module in bfloat16 (fp32 master weights in the optimizer)
        assert {p.dtype for p in pl_module.parameters()} == {torch.bfloat16}


@needs_deepspeed
def test_bf16_precision_becomes_the_engine_bf16_section(ddp_reference: tuple[Regressor, float]) -> None:
    reference, _ = ddp_reference
    model = Regressor(sgd=True)
    trainer = _trainer(
        _ds(2),
        precision="bf16-mixed",
        accumulate_grad_batches=2,
        gradient_clip_val=0.8,
        callbacks=[CheckDtype()],
    )
    trainer.fit(model, *_loaders())
    assert trainer.global_step == 8
    for p, q in zip(
        reference.parameters(), model.parameters()
    ):  # bfloat16 forward/backward: close, not equal
        torch.testing.assert_close(p.detach(), q.detach().float(), rtol=0.05, atol=0.02)


class SaveInsideWindow(L.Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 0 and batch_idx == 0:  # the first batch of a 2-batch accumulation window
            import warnings

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                trainer.save_checkpoint(self.path)
            said = [str(w.message) for w in caught]
            if trainer.global_rank == 0:
                assert any("inside a gradient-accumulation window" in m for m in said), said


@needs_deepspeed
def test_checkpoint_inside_an_accumulation_window_warns(tmp_path: Path) -> None:
    trainer = _trainer(
        _ds(2), max_epochs=1, accumulate_grad_batches=2, callbacks=[SaveInsideWindow(tmp_path / "w")]
    )
    trainer.fit(Regressor(), *_loaders())
    assert (tmp_path / "w" / "checkpoint").is_dir()


_ONE_PROCESS = """
import sys
sys.path.insert(0, {tests!r})
import torch
import fulmen as L
import test_deepspeed as T
from fulmen.strategies import DeepSpeedStrategy

def fit(strategy):
    model = T.Regressor(sgd=True)
    L.Trainer(accelerator="cpu", devices=1, strategy=strategy, max_epochs=1, logger=False, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False, accumulate_grad_batches=2).fit(
        model, *T._loaders())
    return model

plain = fit("auto")
offloaded = fit(DeepSpeedStrategy(stage=2, offload_optimizer=True))
T._same(plain, offloaded)
print("SAME")
"""


@needs_deepspeed
def test_one_process_zero_offload_trains_like_plain_training(tmp_path: Path) -> None:
    # its own interpreter: a process group made in the pytest process would outlive the test in DeepSpeed's state
    import subprocess
    import sys

    script = tmp_path / "one.py"
    script.write_text(_ONE_PROCESS.format(tests=str(Path(__file__).parent)))
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(L.__file__).parents[1]), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, str(script)], check=False, env=env, capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0 and "SAME" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]


def _fp16_on_cpu(fabric: Fabric) -> None:
    net = _net()
    with pytest.raises(
        MisconfigurationException, match=r"does not support its fp16 mode.*precision='bf16-mixed'"
    ):
        fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))


@needs_deepspeed
def test_fp16_on_the_cpu_accelerator_is_a_clear_error() -> None:
    Fabric(accelerator="cpu", devices=2, strategy=_ds(2), precision="16-mixed").launch(_fp16_on_cpu)


@needs_deepspeed
@pytest.mark.parametrize("stage", [2, 3])
def test_checkpoint_directory_resumes_exactly(stage: int, tmp_path: Path) -> None:
    straight = Regressor()
    _trainer(_ds(stage)).fit(straight, *_loaders())

    first = Regressor()
    _trainer(
        _ds(stage),
        max_epochs=1,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)],
    ).fit(first, *_loaders())
    last = tmp_path / "last.ckpt"
    assert last.is_dir()  # the engine's directory: every rank wrote its shard of the optimizer state
    shards = sorted(p.name for p in (last / "checkpoint").glob("*optim_states.pt"))
    assert len(shards) == 2, shards
    client = torch.load(
        next((last / "checkpoint").glob("*rank_0*model_states.pt")), weights_only=False, map_location="cpu"
    )
    assert (
        client["global_step"] == 8
        and client["epoch"] == 0
        and "fulmen" in client
        and "lr_schedulers" in client
    )

    resumed = Regressor()
    trainer = _trainer(_ds(stage))
    trainer.fit(resumed, *_loaders(), ckpt_path=last)
    assert trainer.global_step == 16
    _same(straight, resumed)  # weights, AdamW moments, scheduler and run state all came back

    # one ordinary file with the consolidated weights: loads anywhere, without DeepSpeed's engine
    from fulmen.strategies.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    convert_zero_checkpoint_to_fp32_state_dict(last, tmp_path / "weights.ckpt")
    _same(first, Regressor.load_from_checkpoint(tmp_path / "weights.ckpt"))
    with pytest.raises(
        RankFailedError, match="holds weights only"
    ):  # the launcher names the rank that raised
        _trainer(_ds(stage)).fit(Regressor(), *_loaders(), ckpt_path=tmp_path / "weights.ckpt")
    with pytest.raises(MisconfigurationException, match="not a DeepSpeed checkpoint directory"):
        convert_zero_checkpoint_to_fp32_state_dict(tmp_path, tmp_path / "x.ckpt")


def _full_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    if any(hasattr(p, "ds_id") for p in module.parameters()):  # ZeRO-3 partitioned them: gather (collective)
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            return {k: v.detach().clone() for k, v in module.state_dict().items()}
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _fabric_run(fabric: Fabric, out: Path) -> dict[str, torch.Tensor]:
    net = _net()
    model, opt = fabric.setup(net, torch.optim.AdamW(net.parameters(), lr=0.02))
    loader = fabric.setup_dataloaders(DataLoader(_data(), batch_size=2))
    batches = list(loader)
    for i, (x, y) in enumerate(batches[:6]):  # accumulate over 2 batches
        with fabric.no_backward_sync(model, enabled=i % 2 == 0):
            fabric.backward(nn.functional.mse_loss(model(x), y) / 2, model=model)
        if i % 2 == 1:
            opt.step()
    fabric.save(out / "ds", {"model": model, "optimizer": opt, "step": 3})
    assert (out / "ds").is_dir()

    def one_step() -> dict[str, torch.Tensor]:
        x, y = batches[6]
        fabric.backward(nn.functional.mse_loss(model(x), y), model=model)
        opt.step()
        return _full_weights(model.module)

    after_save = one_step()
    state = {"model": model, "optimizer": opt, "step": 0}
    rest = fabric.load(out / "ds", state)
    assert state["step"] == 3 and rest == {}
    again = one_step()  # from the restored weights and AdamW moments: the same step again
    for k in after_save:
        torch.testing.assert_close(after_save[k], again[k], msg=k)
    with pytest.raises(MisconfigurationException, match="engine clips gradients"):
        fabric.clip_gradients(model, opt, max_norm=1.0)
    with pytest.raises(MisconfigurationException, match="set up together"):
        fabric.setup_optimizers(torch.optim.SGD(_net().parameters(), lr=0.1))
    return {k: v.clone() for k, v in after_save.items()}


@needs_deepspeed
@pytest.mark.parametrize("stage", [2, 3])
def test_fabric_setup_backward_step_save_load(stage: int, tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu", devices=2, strategy=_ds(stage))
    weights = fabric.launch(_fabric_run, tmp_path)
    # data parallel over 2 ranks equals one process on the whole (sampler-ordered) batches: DDP on the same data
    ddp = Fabric(accelerator="cpu", devices=2, strategy="ddp_fork").launch(_fabric_ddp_run)
    for k in ddp:
        torch.testing.assert_close(weights[k], ddp[k], msg=k, rtol=1e-5, atol=1e-6)


def _fabric_ddp_run(fabric: Fabric) -> dict[str, torch.Tensor]:
    net = _net()
    model, opt = fabric.setup(net, torch.optim.AdamW(net.parameters(), lr=0.02))
    batches = list(fabric.setup_dataloaders(DataLoader(_data(), batch_size=2)))
    for i, (x, y) in enumerate(batches[:6]):
        with fabric.no_backward_sync(model, enabled=i % 2 == 0):
            fabric.backward(nn.functional.mse_loss(model(x), y) / 2)
        if i % 2 == 1:
            opt.step()
            opt.zero_grad()
    x, y = batches[6]
    fabric.backward(nn.functional.mse_loss(model(x), y))
    opt.step()
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}
