"""``fulmen.core.events.Event`` is the list of hooks: it matches the Callback class, its docstring shows every
hook, and the dispatcher accepts no other name."""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.core.dispatch import Dispatcher
from fulmen.core.events import CALLBACK_EVENTS, HOOK_NAMES, Event

SRC = Path(L.__file__).parent
DISPATCH_METHODS = {"module_hook", "both", "callbacks_hook", "has_callbacks", "module_overrides", "epoch_end"}
STAGES = ("validation", "test", "predict")


def _callback_hooks() -> set[str]:
    return {name for name, value in vars(L.Callback).items() if not name.startswith("_") and callable(value)}


def test_callback_hooks_and_callback_events_are_the_same_set() -> None:
    assert {e.value for e in CALLBACK_EVENTS} == _callback_hooks()


def test_every_other_event_is_a_module_or_datamodule_hook() -> None:
    others = [e.value for e in Event if e not in CALLBACK_EVENTS]
    assert others, "Event lists the LightningModule hooks too"
    stray = [n for n in others if not hasattr(L.LightningModule, n) and not hasattr(L.LightningDataModule, n)]
    assert not stray, f"Event values that are neither Callback nor LightningModule/DataModule hooks: {stray}"


def test_the_docstring_pseudocode_lists_every_event() -> None:
    doc = Event.__doc__ or ""
    missing = [e.value for e in Event if not re.search(rf"(?<![A-Za-z_]){e.value}(?![A-Za-z_])", doc)]
    assert not missing, f"Event's docstring does not show: {missing}"


def test_the_dispatcher_refuses_a_name_that_is_not_an_event() -> None:
    d = Dispatcher(None, L.LightningModule(), None, [L.Callback()])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'on_trian_start' is not a hook"):
        d.has_callbacks("on_trian_start")
    with pytest.raises(ValueError, match="'on_train_strat' is not a hook"):
        d.module_overrides("on_train_strat")
    with pytest.raises(ValueError, match="'prepare' is not a hook"):
        d.datamodule_hook("prepare")
    assert d.has_callbacks("on_train_start") is False  # the base Callback overrides nothing
    assert d.module_overrides("training_step") is False


def _names_passed_to_the_dispatcher() -> list[tuple[str, str]]:
    """(where, hook name) for every literal or f-string name passed to a dispatcher method in fulmen's source;
    ``{p}``-style fields are expanded over the stage prefixes (validation, test, predict)."""
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args):
                continue
            if node.func.attr not in DISPATCH_METHODS:
                continue
            arg = node.args[0]
            where = f"{path.relative_to(SRC)}:{node.lineno}"
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((where, arg.value))
            elif isinstance(arg, ast.JoinedStr):
                parts = [v.value if isinstance(v, ast.Constant) else None for v in arg.values]
                fields = parts.count(None)
                for combo in itertools.product(STAGES, repeat=fields):
                    it = iter(combo)
                    found.append((where, "".join(p if p is not None else next(it) for p in parts)))
    return found


def test_every_name_the_trainer_dispatches_is_an_event() -> None:
    names = _names_passed_to_the_dispatcher()
    assert len(names) > 40, "the scan finds the loops' hook calls"
    # module_hook is not checked at run time (per-call cost): this static check is its guard
    bad = [
        f"{where}: {name}"
        for where, name in names
        if name not in HOOK_NAMES and name != "on_predict_model_train"  # f"on_{p}_model_train": p is never predict
    ]
    assert not bad, "names dispatched that are not Event values:\n" + "\n".join(bad)


class _EveryHook(L.Callback):
    def __init__(self) -> None:
        self.seen: list[str] = []


def _record(name: str) -> Any:
    def hook(self: _EveryHook, *args: Any, **kwargs: Any) -> Any:
        self.seen.append(name)
        return {} if name == "state_dict" else None

    return hook


for _name in _callback_hooks():
    setattr(_EveryHook, _name, _record(_name))


class _Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.net(batch[0]).pow(2).mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("v", self.net(batch[0]).mean())

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.net(batch[0])

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.net(batch[0])

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_run_dispatches_only_events(tmp_path: Path) -> None:
    loader = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    cb = _EveryHook()
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_epochs=1, callbacks=[cb], logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=1,
    )
    model = _Model()
    trainer.fit(model, loader, loader)
    trainer.validate(model, loader, verbose=False)
    trainer.test(model, loader, verbose=False)
    trainer.predict(model, loader)
    seen = set(cb.seen)
    assert seen <= HOOK_NAMES
    assert {"on_sanity_check_start", "on_train_batch_end", "on_test_batch_end", "on_predict_epoch_end"} <= seen
