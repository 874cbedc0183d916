"""The public Strategy API Lightning programs call directly: ``precision_plugin=``/``precision=`` keywords,
``strategy.precision_plugin``, ``tensor_init_context(empty_init)`` and ``module_init_context(empty_init)``."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from fulmen import Fabric
from fulmen.plugins.precision import HalfPrecision, MixedPrecision, Precision
from fulmen.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy, Strategy
from fulmen.utilities.exceptions import MisconfigurationException


@pytest.mark.parametrize("cls", [Strategy, SingleDeviceStrategy, DDPStrategy, FSDPStrategy])
def test_precision_plugin_keyword(cls: type) -> None:
    """Lightning's Trainer-side strategies take ``precision_plugin=``, Fabric's ``precision=``: both work."""
    plugin = HalfPrecision("bf16-true")
    by_trainer_name = cls(precision_plugin=plugin)
    by_fabric_name = cls(precision=plugin)
    assert by_trainer_name.precision is plugin and by_trainer_name.precision_plugin is plugin
    assert by_fabric_name.precision_plugin is plugin
    with pytest.raises(MisconfigurationException, match="both were given.*pass only one"):
        cls(precision=plugin, precision_plugin=HalfPrecision())
    with pytest.raises(MisconfigurationException, match="expected a precision plugin"):
        cls(precision_plugin="bf16-mixed")


def test_precision_plugin_keeps_lightnings_positional_slot() -> None:
    """``DDPStrategy(accelerator, parallel_devices, cluster_environment, checkpoint_io, precision, ...)``: the fifth
    positional argument is still the precision plugin in both namespaces."""
    plugin = HalfPrecision()
    assert DDPStrategy(None, None, None, None, plugin).precision is plugin
    pl = pytest.importorskip("pytorch_lightning")
    theirs = list(inspect.signature(pl.strategies.DDPStrategy.__init__).parameters)[1:6]
    ours = list(inspect.signature(DDPStrategy.__init__).parameters)[1:6]
    assert ours[:4] == theirs[:4] and theirs[4] == "precision_plugin" and ours[4] == "precision"


def test_a_strategys_own_plugin_survives_fabric() -> None:
    plugin = MixedPrecision("bf16-mixed", "cpu")
    fabric = Fabric(accelerator="cpu", strategy=SingleDeviceStrategy("cpu", precision_plugin=plugin))
    assert fabric.strategy.precision_plugin is plugin and fabric.precision is plugin
    strategy = SingleDeviceStrategy("cpu")
    strategy.precision_plugin = plugin  # the setter Lightning's connectors use
    assert strategy.precision is plugin


def test_tensor_init_context_device_and_dtype() -> None:
    strategy = SingleDeviceStrategy("cpu", precision_plugin=HalfPrecision("bf16-true"))
    with strategy.tensor_init_context():
        x = torch.empty(2)
        layer = nn.Linear(2, 2)
    assert x.dtype == torch.bfloat16 and x.device == torch.device("cpu")
    assert layer.weight.dtype == torch.bfloat16
    assert torch.get_default_dtype() == torch.float32  # restored
    with SingleDeviceStrategy("cpu").tensor_init_context():
        assert torch.empty(1).dtype == torch.float32


@pytest.mark.parametrize("method", ["tensor_init_context", "module_init_context"])
def test_empty_init_skips_nn_init(method: str) -> None:
    strategy = SingleDeviceStrategy("cpu")
    t = torch.zeros(3)
    with getattr(strategy, method)(empty_init=True):
        out = nn.init.constant_(t, 5.0)
        nn.init.kaiming_uniform_(torch.empty(2, 2))  # no error, nothing done
        made = torch.full((2,), 3.0)  # other tensor ops still run
    assert out is t and torch.equal(t, torch.zeros(3)) and torch.equal(made, torch.full((2,), 3.0))
    with getattr(strategy, method)(empty_init=False):
        nn.init.constant_(t, 5.0)
    assert torch.equal(t, torch.full((3,), 5.0))


def test_fsdp_empty_init_is_the_meta_device() -> None:
    strategy = FSDPStrategy()
    with strategy.tensor_init_context(empty_init=True):
        layer = nn.Linear(2, 2)
    assert layer.weight.device == torch.device("meta")


def test_tensor_init_context_signature_matches_lightning() -> None:
    pl = pytest.importorskip("pytorch_lightning")
    lf = pytest.importorskip("lightning_fabric")
    # the Trainer's strategies have tensor_init_context(empty_init), Fabric's module_init_context(empty_init)
    for theirs_cls, name in ((pl.strategies.Strategy, "tensor_init_context"), (lf.strategies.Strategy, "module_init_context")):
        theirs = inspect.signature(getattr(theirs_cls, name)).parameters
        ours = inspect.signature(getattr(Strategy, name)).parameters
        assert list(ours) == list(theirs) and ours["empty_init"].default is None


def test_optimizer_step_goes_through_the_precision_plugin() -> None:
    calls = []

    class Recording(Precision):
        def optimizer_step(self, optimizer, closure, after_closure=None, **kw):  # type: ignore[no-untyped-def]
            calls.append(optimizer)
            return super().optimizer_step(optimizer, closure, after_closure, **kw)

    strategy = SingleDeviceStrategy("cpu", precision_plugin=Recording())
    layer = nn.Linear(2, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer(torch.ones(1, 2)).sum().backward()
    before = layer.weight.detach().clone()
    strategy.optimizer_step(opt)
    assert calls == [opt] and not torch.equal(before, layer.weight)
