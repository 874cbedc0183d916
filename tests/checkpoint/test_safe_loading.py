"""Safe (weights_only=True) loading: malicious files do not run, fulmen's types do load, and the
allowlist registry behaves."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import pathlib
import pickle
import shlex
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest
import torch

import fulmen.checkpoint as fc
from fulmen.checkpoint import TorchCheckpointIO, UnsafeCheckpointError
from fulmen.utilities import cloud_io, safe_loading
from fulmen.utilities.parsing import AttributeDict


@pytest.fixture(autouse=True)
def _restore_registry() -> Any:
    saved = dict(cloud_io._SAFE_GLOBALS)
    torch_before = torch.serialization.get_safe_globals()
    yield
    cloud_io._SAFE_GLOBALS.clear()
    cloud_io._SAFE_GLOBALS.update(saved)
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(torch_before)


class _Malicious:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.fixture
def malicious(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "malicious.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"x": _Malicious(marker)}}, path)
    return path, marker


def test_payload_is_real_when_unsafe_loading_is_chosen(malicious: tuple[Path, Path]) -> None:
    # Guards the test below: the payload does create the marker when full unpickling is allowed.
    path, marker = malicious
    fc.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "how", ["load", "load weights_only=None", "TorchCheckpointIO", "TorchCheckpointIO None"]
)
def test_malicious_payload_does_not_run_by_default(malicious: tuple[Path, Path], how: str) -> None:
    path, marker = malicious
    with pytest.raises(UnsafeCheckpointError) as info:
        if how == "load":
            fc.load(path)
        elif how == "load weights_only=None":
            fc.load(path, weights_only=None)
        elif how == "TorchCheckpointIO":
            TorchCheckpointIO().load_checkpoint(path)
        else:
            TorchCheckpointIO().load_checkpoint(path, weights_only=None)
    assert not marker.exists()
    error = info.value
    assert isinstance(error, pickle.UnpicklingError)
    message = str(error)
    assert str(path) in message
    assert "posix.system" in message or "nt.system" in message
    assert "arbitrary code" in message
    assert "weights_only=False" in message
    for api in ("trainer.fit(", "load_from_checkpoint(", "fabric.load("):
        assert api in message
    assert error.globals and error.globals[0].endswith(".system")
    assert error.path == str(path)


def test_all_offending_globals_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    torch.save({"a": torch.nn.MSELoss(), "b": Path("/x")}, path)  # Path is allowlisted, MSELoss is not
    with pytest.raises(UnsafeCheckpointError) as info:
        fc.load(path)
    assert "torch.nn.modules.loss.MSELoss" in info.value.globals
    assert not any("pathlib" in name for name in info.value.globals)
    assert fc.load(path, weights_only=False)["a"].__class__ is torch.nn.MSELoss


def test_attribute_dict_hparams_load_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "hp.ckpt"
    hparams = AttributeDict(lr=0.1, layers=[1, 2], nested={"a": 1}, data_dir=pathlib.Path("/data"))
    TorchCheckpointIO().save_checkpoint(
        {"hyper_parameters": hparams, "state_dict": {"w": torch.ones(2)}}, path
    )
    loaded = TorchCheckpointIO().load_checkpoint(path, weights_only=True)["hyper_parameters"]
    assert type(loaded) is AttributeDict
    assert loaded == hparams
    assert loaded.lr == 0.1 and loaded.data_dir == pathlib.Path("/data")


def test_namespace_and_paths_are_allowlisted(tmp_path: Path) -> None:
    path = tmp_path / "ns.ckpt"
    ns = argparse.Namespace(lr=0.1, root=pathlib.PurePosixPath("/a/b"))
    fc.atomic_save({"hparams": ns}, path)
    assert fc.load(path)["hparams"] == ns


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


def test_registered_enum_and_dataclass_load_safely(tmp_path: Path) -> None:
    path = tmp_path / "cfg.ckpt"
    fc.atomic_save({"color": Color.BLUE, "cfg": OptimConfig(lr=0.5)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"add_safe_globals\(\[MyConfig\]\)") as info:
        fc.load(path)
    assert {f"{__name__}.Color", f"{__name__}.OptimConfig"} <= set(info.value.globals)

    fc.add_safe_globals([Color, OptimConfig])
    loaded = fc.load(path)
    assert loaded["color"] is Color.BLUE
    assert loaded["cfg"] == OptimConfig(lr=0.5)
    assert Color in fc.get_safe_globals() and AttributeDict in fc.get_safe_globals()


def test_registry_does_not_leak_into_torch_global_allowlist(tmp_path: Path) -> None:
    path = tmp_path / "hp.ckpt"
    fc.atomic_save({"hp": AttributeDict(a=1)}, path)
    before = set(torch.serialization.get_safe_globals())
    fc.load(path)
    assert set(torch.serialization.get_safe_globals()) == before
    with pytest.raises(pickle.UnpicklingError):  # plain torch.load does not see fulmen's allowlist
        torch.load(path, weights_only=True)


def test_users_own_torch_allowlist_entries_survive_fulmen_loads(tmp_path: Path) -> None:
    torch.serialization.add_safe_globals([AttributeDict])
    path = tmp_path / "hp.ckpt"
    fc.atomic_save({"hp": AttributeDict(a=1)}, path)
    fc.load(path)
    assert AttributeDict in torch.serialization.get_safe_globals()


def test_concurrent_loads_share_the_allowlist(tmp_path: Path) -> None:
    path = tmp_path / "hp.ckpt"
    fc.atomic_save({"hp": AttributeDict(a=1), "w": torch.randn(10_000)}, path)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(20):
                assert fc.load(path)["hp"].a == 1
        except BaseException as err:  # noqa: BLE001 - collected and asserted on the main thread
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert safe_loading._active_count == 0


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (Color, r"wrap it in a list, e.g. add_safe_globals\(\[Color\]\)"),
        ("my.module.Type", "expected a list of classes"),
        ([OptimConfig(lr=1.0)], "pass the class itself, not an instance"),
        ([(OptimConfig, 3)], "expected a class, a function, or an"),
        ([3], "expected a class"),
    ],
)
def test_add_safe_globals_rejects_bad_input(bad: Any, match: str) -> None:
    before = fc.get_safe_globals()
    with pytest.raises(TypeError, match=match):
        fc.add_safe_globals(bad)
    assert fc.get_safe_globals() == before


def test_add_safe_globals_tuple_loads_a_class_saved_under_its_old_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Write a file whose pickle names "old_project_config.OptimConfig", as if the class had moved since.
    old_module = types.ModuleType("old_project_config")
    monkeypatch.setitem(sys.modules, "old_project_config", old_module)
    monkeypatch.setattr(OptimConfig, "__module__", "old_project_config")
    old_module.OptimConfig = OptimConfig  # type: ignore[attr-defined]
    path = tmp_path / "old.ckpt"
    fc.atomic_save({"cfg": OptimConfig(lr=0.25)}, path)
    monkeypatch.undo()

    with pytest.raises(UnsafeCheckpointError, match="old_project_config.OptimConfig"):
        fc.load(path)
    fc.add_safe_globals([(OptimConfig, "old_project_config.OptimConfig")])
    assert fc.load(path)["cfg"] == OptimConfig(lr=0.25)
