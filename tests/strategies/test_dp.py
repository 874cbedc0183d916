"""``DataParallelStrategy`` (``strategy="dp"``): torch.nn.DataParallel over the GPUs of one process, for Fabric.

On CPU-only machines the name ``"dp"`` means ``"ddp"`` with a warning (as in Lightning) and an explicit
``DataParallelStrategy()`` is refused with an error that says why. The GPU tests run where CUDA GPUs exist.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from fulmen import Fabric
from fulmen.strategies import STRATEGY_REGISTRY, DataParallelStrategy
from fulmen.utilities.exceptions import MisconfigurationException

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_dp_is_a_registered_name() -> None:
    assert "dp" in STRATEGY_REGISTRY.available_strategies()
    assert isinstance(STRATEGY_REGISTRY.get("dp"), DataParallelStrategy)


def test_dp_on_the_cpu_is_ddp_with_a_warning() -> None:
    with pytest.warns(UserWarning, match=r"strategy='dp' is not supported on accelerator='cpu'.*'ddp'"):
        fabric = Fabric(accelerator="cpu", strategy="dp", devices=1)
    assert type(fabric.strategy).__name__ == "DDPStrategy"
    lf = pytest.importorskip("lightning_fabric")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = lf.Fabric(accelerator="cpu", strategy="dp", devices=1)
    assert type(theirs.strategy).__name__ == "DDPStrategy"


def test_an_explicit_data_parallel_strategy_on_the_cpu_is_refused() -> None:
    with pytest.raises(MisconfigurationException, match=r"over CUDA GPUs.*strategy='ddp'"):
        Fabric(accelerator="cpu", devices=1, strategy=DataParallelStrategy())
    with pytest.raises(MisconfigurationException, match="CUDA GPUs"):
        DataParallelStrategy(parallel_devices=[torch.device("cpu")])
    with pytest.raises(MisconfigurationException, match="has no devices yet"):
        _ = DataParallelStrategy().root_device


@needs_cuda
def test_forward_is_split_over_the_gpus_and_matches_one_device() -> None:
    n = torch.cuda.device_count()
    fabric = Fabric(accelerator="cuda", strategy="dp", devices=n)
    assert isinstance(fabric.strategy, DataParallelStrategy) and fabric.device == torch.device("cuda", 0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    reference = copy.deepcopy(model).cuda()
    fmodel, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert isinstance(fmodel._forward_module, nn.DataParallel)
    x = torch.randn(4 * n, 8)
    loss = fmodel(x.cuda()).pow(2).mean()
    fabric.backward(loss)
    reference(x.cuda()).pow(2).mean().backward()
    for ours, ref in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours.grad, ref.grad)
    opt.step()
    state = fabric.strategy.module_state_dict(fmodel._forward_module)
    assert not any(k.startswith("module.") for k in state)


@needs_cuda
def test_step_methods_are_refused_under_dp() -> None:
    class WithStep(nn.Linear):
        _fabric = None

        def training_step(self, batch: torch.Tensor) -> torch.Tensor:
            return self(batch).sum()

    fabric = Fabric(accelerator="cuda", strategy="dp", devices=1)
    fmodel = fabric.setup(WithStep(2, 2))
    with pytest.raises(MisconfigurationException, match="DataParallel splits only forward"):
        fmodel.training_step(torch.ones(2, 2, device="cuda"))
