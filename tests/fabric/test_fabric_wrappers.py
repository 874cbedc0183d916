"""What ``fabric.setup`` returns and the Fabric helpers around it, pinned against Lightning 2.6's Fabric.

The optimizer wrapper is an instance of the optimizer's class (LR schedulers built after ``setup`` accept it and
change the wrapped optimizer's learning rate); ``step``/``state_dict`` go through the strategy; the wrapped model
has ``.device``; ``call`` passes each callback only the keyword arguments it takes; ``seed_everything`` seeds
dataloader workers by default; ``load_raw`` loads plain state dicts; what ``setup`` returned is not set up again.
"""

from __future__ import annotations

import functools
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, Dataset

from fulmen import Fabric
from fulmen.plugins.precision import MixedPrecision
from fulmen.strategies import SingleDeviceStrategy
from fulmen.utilities.seed import pl_worker_init_function


def _fabric(**kwargs: Any) -> Fabric:
    return Fabric(accelerator="cpu", devices=1, **kwargs)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 2)


# ---------------------------------------------------------------------------------------------- the optimizer
def test_optimizer_wrapper_is_an_instance_of_the_optimizer_class_sharing_its_state() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    _, fopt = _fabric().setup(model, opt)
    assert isinstance(fopt, torch.optim.Optimizer) and isinstance(fopt, torch.optim.SGD)
    assert type(fopt).__name__ == "FabricSGD"  # Lightning's name for it
    assert fopt.optimizer is opt
    assert fopt.param_groups is opt.param_groups and fopt.state is opt.state and fopt.defaults is opt.defaults
    assert repr(fopt).startswith("FabricSGD (")
    # one wrapper class per optimizer class
    _, other = _fabric().setup(_model(), torch.optim.SGD(_model().parameters(), lr=0.1))
    assert type(other) is type(fopt)


def _sgd_and_scheduler(
    make: Callable[[torch.optim.Optimizer], Any], wrap: bool
) -> tuple[list[float], torch.optim.Optimizer]:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    target: Any = opt
    if wrap:
        model, target = _fabric().setup(model, opt)
    sched = make(target)  # built on the wrapper, after setup
    lrs = []
    for _ in range(4):
        target.zero_grad()
        model(torch.ones(3, 4)).sum().backward()
        target.step()
        if isinstance(sched, lr_scheduler.ReduceLROnPlateau):
            sched.step(1.0)  # a metric that never improves
        else:
            sched.step()
        lrs.append(opt.param_groups[0]["lr"])  # the *wrapped* optimizer's learning rate
    return lrs, opt


SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "StepLR": lambda o: lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, max_lr=2.0, total_steps=10),
    "LambdaLR": lambda o: lr_scheduler.LambdaLR(o, lambda step: 1.0 / (step + 1)),
    "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(o, patience=0, factor=0.1),
    "SequentialLR": lambda o: lr_scheduler.SequentialLR(
        o, [lr_scheduler.ConstantLR(o, factor=0.5, total_iters=2), lr_scheduler.ExponentialLR(o, 0.9)], milestones=[2]
    ),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_lr_schedulers_built_after_setup_drive_the_wrapped_optimizer(name: str) -> None:
    with warnings.catch_warnings():
        # torch warns when it thinks scheduler.step() ran before optimizer.step(): the wrapper's step must count
        warnings.filterwarnings("error", message=".*lr_scheduler.step.*")
        wrapped, _ = _sgd_and_scheduler(SCHEDULERS[name], wrap=True)
    plain, _ = _sgd_and_scheduler(SCHEDULERS[name], wrap=False)
    assert wrapped == pytest.approx(plain, rel=0, abs=0)
    assert len(set(wrapped)) > 1 or wrapped[0] != 1.0  # the schedule really moved the learning rate


def test_step_goes_through_the_precision_plugin() -> None:
    """With a GradScaler the loss is scaled in backward; a step that bypassed the plugin would apply the scaled
    (8x) gradient. The wrapper's step unscales first, so the update is lr * the true gradient."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=8.0))
    fabric = _fabric(plugins=[plugin])
    fmodel, fopt = fabric.setup(model, opt)
    assert plugin.scaler is not None
    before = model.weight.detach().clone()
    fabric.backward(fmodel(torch.ones(2, 4)).float().sum())
    scaled_grad = model.weight.grad.detach().clone()
    fopt.step()
    true_grad = scaled_grad / 8.0
    assert torch.isfinite(true_grad).all() and true_grad.abs().sum() > 0
    assert torch.allclose(model.weight.detach(), before - 0.1 * true_grad, atol=1e-6)


def test_step_calls_the_callbacks_after_the_step() -> None:
    seen: list[tuple[Any, Any]] = []

    class AfterStep:
        def on_after_optimizer_step(self, strategy: Any, optimizer: Any) -> None:
            seen.append((strategy, optimizer))

    fabric = _fabric(callbacks=[AfterStep()])
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fmodel, fopt = fabric.setup(model, opt)
    fabric.backward(fmodel(torch.ones(1, 4)).sum())
    fopt.step()
    assert seen == [(fabric.strategy, opt)]


def test_state_dict_zero_grad_and_load_state_dict() -> None:
    class Counting(SingleDeviceStrategy):
        def __init__(self) -> None:
            super().__init__("cpu")
            self.saved = self.loaded = 0

        def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
            self.saved += 1
            return super().optimizer_state(optimizer)

        def load_optimizer_state(self, optimizer: Any, state: dict[str, Any]) -> None:
            self.loaded += 1
            super().load_optimizer_state(optimizer, state)

    strategy = Counting()
    fabric = Fabric(accelerator="cpu", strategy=strategy)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    fmodel, fopt = fabric.setup(model, opt)
    fabric.backward(fmodel(torch.ones(1, 4)).sum())
    fopt.step()
    fopt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    state = fopt.state_dict()
    assert strategy.saved == 1
    assert state["state"][0]["step"].item() == 1
    fresh = torch.optim.Adam(_model().parameters(), lr=0.1)
    _, ffresh = fabric.setup(_model(), fresh)
    ffresh.load_state_dict(state)
    assert strategy.loaded == 1 and fresh.state_dict()["state"][0]["step"].item() == 1


def test_wrapper_pickles() -> None:
    model = _model()
    _, fopt = _fabric().setup(model, torch.optim.SGD(model.parameters(), lr=0.3))
    copy = pickle.loads(pickle.dumps(fopt))
    assert type(copy).__name__ == "FabricSGD" and copy.param_groups[0]["lr"] == 0.3


# ---------------------------------------------------------------------------------------------- the module
def test_module_device() -> None:
    fabric = _fabric()
    assert fabric.setup(_model()).device == torch.device("cpu")
    assert fabric.setup(nn.Identity()).device == fabric.device  # no parameters: the Fabric's device
    with torch.device("meta"):
        meta = nn.Linear(2, 2)
    assert fabric.setup(meta, move_to_device=False).device == torch.device("meta")


def test_what_setup_returned_is_not_set_up_again() -> None:
    fabric = _fabric()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fmodel, fopt = fabric.setup(model, opt)
    with pytest.raises(ValueError, match=r"A model should be passed only once to the `setup` method"):
        fabric.setup(fmodel)
    with pytest.raises(ValueError, match=r"A model should be passed only once to the `setup_module` method"):
        fabric.setup_module(fmodel)
    with pytest.raises(ValueError, match=r"An optimizer should be passed only once to the `setup` method"):
        fabric.setup(_model(), fopt)
    with pytest.raises(ValueError, match=r"An optimizer should be passed only once to the `setup_optimizers`"):
        fabric.setup_optimizers(fopt)
    loader = fabric.setup_dataloaders(DataLoader(list(range(4))))
    with pytest.raises(ValueError, match=r"A dataloader should be passed only once to the `setup_dataloaders`"):
        fabric.setup_dataloaders(loader)
    fabric.setup(model)  # the original module again is allowed, as in Lightning


def test_setup_refusals_read_like_lightning() -> None:
    lf = pytest.importorskip("lightning_fabric")
    messages = []
    for fab in (lf.Fabric(accelerator="cpu", devices=1), _fabric()):
        model = _model()
        fmodel, fopt = fab.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
        got = []
        for method, arg in (("setup", fmodel), ("setup_module", fmodel), ("setup_optimizers", fopt)):
            with pytest.raises(ValueError) as info:
                getattr(fab, method)(arg)
            got.append(str(info.value).split(":")[0].rstrip("."))
        messages.append(got)
    assert messages[0] == messages[1]


# ---------------------------------------------------------------------------------------------- call
class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def on_a(self, x: int) -> None:
        self.calls.append(("on_a", x))

    def on_b(self, x: int, y: int = 0, **rest: Any) -> None:
        self.calls.append(("on_b", (x, y, sorted(rest))))

    def on_c(self, *args: Any) -> None:
        self.calls.append(("on_c", args))

    on_d = 5  # not callable: skipped with a warning


def _run_calls(fabric: Any, recorder: _Recorder) -> list[tuple[str, Any]]:
    fabric.call("on_a", x=1, y=2, z=3)
    fabric.call("on_b", x=1, y=2, z=3)
    fabric.call("on_c", 1, 2, unused=3)
    fabric.call("on_missing", 1)
    with pytest.warns(UserWarning, match=r"Skipping the callback `_Recorder.on_d` because it is not callable"):
        fabric.call("on_d")
    return recorder.calls


def test_call_passes_only_the_keyword_arguments_a_callback_takes() -> None:
    rec = _Recorder()
    calls = _run_calls(_fabric(callbacks=[rec]), rec)
    assert calls == [("on_a", 1), ("on_b", (1, 2, ["z"])), ("on_c", (1, 2))]
    lf = pytest.importorskip("lightning_fabric")
    ref = _Recorder()
    assert _run_calls(lf.Fabric(accelerator="cpu", devices=1, callbacks=[ref]), ref) == calls


# ---------------------------------------------------------------------------------------------- seeding workers
class _NumpyDraws(Dataset[float]):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> float:
        return float(np.random.rand())  # numpy's state is copied into forked workers unless they are seeded


def _draws(fabric: Fabric, workers: bool | None) -> list[float]:
    fabric.seed_everything(7, workers=workers, verbose=False)
    loader = fabric.setup_dataloaders(DataLoader(_NumpyDraws(), batch_size=None, num_workers=2))
    return [float(x) for x in loader]


@pytest.fixture
def _seed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)


@pytest.mark.usefixtures("_seed_env")
def test_seed_everything_seeds_dataloader_workers_by_default() -> None:
    fabric = _fabric()
    first = _draws(fabric, workers=None)
    assert first == _draws(fabric, workers=None)  # reproducible
    # two workers, each with its own seed: their draws differ (unseeded forks would repeat each other's)
    assert first[0] != first[1]
    loader = fabric.setup_dataloaders(DataLoader(_NumpyDraws()))
    init = loader.worker_init_fn
    assert isinstance(init, functools.partial) and init.func is pl_worker_init_function and init.keywords == {"rank": 0}
    own = fabric.setup_dataloaders(DataLoader(_NumpyDraws(), worker_init_fn=print))
    assert own.worker_init_fn is print  # the user's own is kept
    fabric.seed_everything(7, workers=False, verbose=False)
    assert fabric.setup_dataloaders(DataLoader(_NumpyDraws())).worker_init_fn is None


@pytest.mark.usefixtures("_seed_env")
def test_seed_everything_workers_default_matches_lightning() -> None:
    import os

    lf = pytest.importorskip("lightning_fabric")
    lf.Fabric.seed_everything(3, verbose=False)
    theirs = os.environ["PL_SEED_WORKERS"]
    os.environ.pop("PL_SEED_WORKERS")
    Fabric.seed_everything(3, verbose=False)
    assert os.environ["PL_SEED_WORKERS"] == theirs == "1"


# ---------------------------------------------------------------------------------------------- load_raw
def test_load_raw(tmp_path: Path) -> None:
    fabric = _fabric()
    source = nn.Linear(4, 2)
    torch.save(source.state_dict(), tmp_path / "model.pt")
    fmodel = fabric.setup(nn.Linear(4, 2))
    fabric.load_raw(tmp_path / "model.pt", fmodel)
    assert torch.equal(fmodel.module.weight, source.weight)

    plain = nn.Linear(4, 2)
    fabric.load_raw(tmp_path / "model.pt", plain)  # a module not set up works too
    assert torch.equal(plain.weight, source.weight)

    torch.save({"extra": torch.zeros(1), **source.state_dict()}, tmp_path / "extra.pt")
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fabric.load_raw(tmp_path / "extra.pt", fmodel)
    fabric.load_raw(tmp_path / "extra.pt", fmodel, strict=False)

    opt = torch.optim.Adam(source.parameters())
    source(torch.ones(1, 4)).sum().backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    _, fopt = fabric.setup(nn.Linear(4, 2), torch.optim.Adam(nn.Linear(4, 2).parameters()))
    fabric.load_raw(tmp_path / "opt.pt", fopt)
    assert fopt.optimizer.state_dict()["state"][0]["step"].item() == 1

    with pytest.raises(TypeError, match="has no load_state_dict"):
        fabric.load_raw(tmp_path / "model.pt", {"model": plain})  # type: ignore[arg-type]


class _Opaque:
    def __init__(self, a: int) -> None:
        self.a = a


def test_load_raw_weights_only(tmp_path: Path) -> None:
    class TakesAnything(nn.Module):
        def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
            self.got = state_dict

    torch.save({"ns": _Opaque(1)}, tmp_path / "unsafe.pt")  # a class no allowlist names
    fabric = _fabric()
    with pytest.raises(pickle.UnpicklingError):
        fabric.load_raw(tmp_path / "unsafe.pt", TakesAnything(), weights_only=True)
    target = TakesAnything()
    fabric.load_raw(tmp_path / "unsafe.pt", target, weights_only=False)
    assert target.got["ns"].a == 1


def test_setup_calls_on_after_setup_and_a_lightning_module_receives_calls() -> None:
    from fulmen import LightningModule

    events: list[tuple[str, Any]] = []

    class Hooks:
        def on_after_setup(self, fabric: Fabric, module: Any) -> None:
            events.append(("on_after_setup", type(module).__name__))

    class Module(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(2, 2)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return self.layer(batch).sum()

        def on_train_start(self) -> None:
            events.append(("on_train_start", self.fabric is fabric))

    fabric = _fabric(callbacks=[Hooks()])
    module = Module()
    fabric.setup(module, torch.optim.SGD(module.parameters(), lr=0.1))
    fabric.call("on_train_start")
    fabric.setup(module)  # the original again: not added to the callbacks twice
    fabric.call("on_train_start")
    assert events == [
        ("on_after_setup", "_FabricModule"),
        ("on_train_start", True),
        ("on_after_setup", "_FabricModule"),
        ("on_train_start", True),
    ]


@pytest.mark.parametrize(
    "name",
    ["setup", "setup_module", "setup_optimizers", "setup_dataloaders", "load_raw", "call", "seed_everything"],
)
def test_signatures_match_lightning(name: str) -> None:
    import inspect

    lf = pytest.importorskip("lightning_fabric")
    theirs = inspect.signature(getattr(lf.Fabric, name)).parameters
    ours = inspect.signature(getattr(Fabric, name)).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [
        (p.name, p.kind, p.default) for p in theirs.values()
    ]
