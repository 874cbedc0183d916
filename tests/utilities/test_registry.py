"""Name registries: Lightning's registry API on fulmen's accelerator and strategy registries, and the strategy
modules registering their own names when first needed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fulmen.accelerators import ACCELERATOR_REGISTRY, AcceleratorRegistry, CPUAccelerator
from fulmen.strategies import STRATEGY_REGISTRY, SingleDeviceStrategy, StrategyRegistry
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.registry import Registry, UnknownNameError


class _Custom:
    def __init__(self, param1: str, param2: int) -> None:
        self.param1, self.param2 = param1, param2


def test_register_get_remove_like_lightning() -> None:
    assert AcceleratorRegistry is ACCELERATOR_REGISTRY and StrategyRegistry is STRATEGY_REGISTRY
    for registry, kind in ((ACCELERATOR_REGISTRY, "accelerator"), (STRATEGY_REGISTRY, "strategy")):
        registry.register("custom_x", _Custom, description="Custom", param1="abc", param2=123)
        try:
            assert "custom_x" in registry
            assert registry["custom_x"] == {
                "description": "Custom",
                "init_params": {"param1": "abc", "param2": 123},
                kind: _Custom,
                f"{kind}_name": "custom_x",
            }
            built = registry.get("custom_x")
            assert isinstance(built, _Custom) and (built.param1, built.param2) == ("abc", 123)
            with pytest.raises(ValueError, match="already present.*override=True"):
                registry.register("custom_x", _Custom)
            registry.register("custom_x", _Custom, override=True, param1="z", param2=0)
            assert registry.get("custom_x").param1 == "z"
        finally:
            registry.remove("custom_x")
        assert "custom_x" not in registry


def test_decorator_default_and_unknown_names() -> None:
    registry: Registry[object] = Registry("thing")

    @registry.register("deco", description="decorated", value=3)
    class Deco:
        def __init__(self, value: int) -> None:
            self.value = value

    assert Deco.__name__ == "Deco" and registry.get("deco").value == 3
    sentinel = object()
    assert registry.get("nope", sentinel) is sentinel
    with pytest.raises(UnknownNameError, match=r"Unknown thing 'nope'. Expected one of \['deco'\]") as info:
        registry.get("nope")
    assert isinstance(info.value, KeyError) and isinstance(info.value, MisconfigurationException)
    with pytest.raises(KeyError):
        registry["nope"]
    with pytest.raises(TypeError, match="class or function"):
        registry.register("bad", 3)  # type: ignore[arg-type]
    assert list(registry) == ["deco"] and len(registry) == 1


def test_available_names_match_lightning_where_fulmen_has_them() -> None:
    assert {"cpu", "cuda", "mps"} <= set(ACCELERATOR_REGISTRY.available_accelerators())
    assert isinstance(ACCELERATOR_REGISTRY.get("cpu"), CPUAccelerator)
    assert isinstance(STRATEGY_REGISTRY.get("single_device"), SingleDeviceStrategy)
    real = pytest.importorskip("pytorch_lightning.strategies")
    theirs = set(real.StrategyRegistry.available_strategies())
    ours = set(STRATEGY_REGISTRY.available_strategies())
    # every Lightning name is known to fulmen (the XLA ones raise "not supported" when built)
    assert theirs <= ours, sorted(theirs - ours)
    for name in ("ddp", "ddp_spawn_find_unused_parameters_true", "fsdp_cpu_offload", "deepspeed_stage_3_offload"):
        assert STRATEGY_REGISTRY[name]["init_params"] == real.StrategyRegistry[name]["init_params"], name


def test_strategy_modules_register_their_own_names_lazily() -> None:
    """``import fulmen`` imports no strategy module; looking up 'ddp' imports ddp.py only, not fsdp.py."""
    code = (
        "import sys, fulmen\n"
        "from fulmen.strategies import STRATEGY_REGISTRY as R\n"
        "before = {m for m in ('fulmen.strategies.ddp', 'fulmen.strategies.fsdp') if m in sys.modules}\n"
        "assert 'ddp_spawn' in R\n"
        "print(sorted(before), 'fulmen.strategies.ddp' in sys.modules, 'fulmen.strategies.fsdp' in sys.modules)\n"
        "assert 'fsdp' in R and 'fulmen.strategies.fsdp' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] True False"
