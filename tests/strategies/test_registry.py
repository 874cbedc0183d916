"""Strategy names, the connector that builds a strategy from the flags, and the data helpers (no processes)."""

from __future__ import annotations

import importlib.util
import sys
from datetime import timedelta

import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)
from torch.utils.data.distributed import DistributedSampler

import fulmen as L
from fulmen.fabric.connector import build_strategy
from fulmen.strategies import STRATEGY_REGISTRY, DDPStrategy, SingleDeviceStrategy
from fulmen.strategies.launchers import MultiProcessingLauncher, SubprocessScriptLauncher
from fulmen.utilities import distributed as fdist
from fulmen.utilities.exceptions import MisconfigurationException, NotSupportedYetError

DDP_NAMES = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}


def test_every_lightning_strategy_name_is_registered() -> None:
    names = set(STRATEGY_REGISTRY.names())
    expected = {
        "single_device",
        "fsdp",
        "fsdp_cpu_offload",
        "deepspeed",
        "deepspeed_stage_3_offload_nvme",
        "xla",
    }
    expected |= set(DDP_NAMES) | {
        f"{b}_find_unused_parameters_{v}" for b in DDP_NAMES for v in ("true", "false")
    }
    assert expected <= names


@pytest.mark.parametrize("name", sorted(DDP_NAMES))
@pytest.mark.parametrize("unused", [None, True, False])
def test_ddp_names_build_their_strategy_and_launcher(name: str, unused: bool | None) -> None:
    full = name if unused is None else f"{name}_find_unused_parameters_{str(unused).lower()}"
    s = build_strategy("cpu", full, 2)
    assert isinstance(s, DDPStrategy) and s.start_method == DDP_NAMES[name]
    assert s._ddp_kwargs == ({} if unused is None else {"find_unused_parameters": unused})
    launcher_type = SubprocessScriptLauncher if name == "ddp" else MultiProcessingLauncher
    assert isinstance(s.launcher, launcher_type)
    assert s.world_size == 2 and s.global_rank == 0 and s.process_group_backend == "gloo"
    assert s.parallel_devices == [torch.device("cpu")] * 2


def test_auto_picks_ddp_for_several_devices_and_single_device_for_one() -> None:
    assert isinstance(build_strategy("cpu", "auto", 1), SingleDeviceStrategy)
    s = build_strategy("cpu", "auto", 2)
    assert isinstance(s, DDPStrategy) and s.start_method == "popen"
    s = build_strategy("cpu", "auto", 1, num_nodes=2)
    assert isinstance(s, DDPStrategy) and s.world_size == 2


def test_strategy_objects_take_their_arguments() -> None:
    s = DDPStrategy(
        process_group_backend="gloo",
        timeout=timedelta(seconds=42),
        static_graph=True,
        gradient_as_bucket_view=True,
        failure_timeout=3.0,
        start_method="spawn",
    )
    t = L.Trainer(accelerator="cpu", devices=2, strategy=s, logger=False)
    assert t.strategy is s and s._timeout == timedelta(seconds=42) and s.failure_timeout == 3.0
    assert s._ddp_kwargs == {"static_graph": True, "gradient_as_bucket_view": True}
    assert t.world_size == 2 and t.num_devices == 2 and t.device_ids == [0, 0]
    with pytest.raises(MisconfigurationException, match="start_method"):
        DDPStrategy(start_method="thread")


def test_clear_errors() -> None:
    with pytest.raises(MisconfigurationException, match="strategy='single_device' runs one process"):
        build_strategy("cpu", "single_device", 2)
    with pytest.raises(NotSupportedYetError, match="xla"):
        build_strategy("cpu", "xla", 1)
    with pytest.raises(MisconfigurationException, match="Unknown strategy 'dpp'"):
        build_strategy("cpu", "dpp", 2)
    if importlib.util.find_spec("deepspeed") is None:  # with it installed: tests/strategies/test_deepspeed.py
        with pytest.raises(MisconfigurationException, match="pip install deepspeed"):
            build_strategy("cpu", "deepspeed_stage_2", 2)


def test_ddp_script_launcher_refuses_to_relaunch_pytest(monkeypatch: pytest.MonkeyPatch) -> None:
    from fulmen.strategies.launchers.subprocess_script import script_command

    monkeypatch.setenv("PYTEST_CURRENT_TEST", "x")
    monkeypatch.setattr(sys, "argv", ["/usr/bin/pytest", "tests"])
    with pytest.raises(MisconfigurationException, match="ddp_fork"):
        script_command()


# ------------------------------------------------------------------ data
def _ds(n: int = 10) -> TensorDataset:
    return TensorDataset(torch.arange(n).float())


def test_sampler_injection_keeps_the_loader_settings() -> None:
    loader = DataLoader(_ds(), batch_size=3, shuffle=True, drop_last=True, num_workers=0)
    out = fdist.inject_distributed_sampler(loader, num_replicas=2, rank=1)
    assert isinstance(out.sampler, DistributedSampler) and out.sampler.shuffle and out.sampler.rank == 1
    assert out.batch_size == 3 and out.drop_last
    seq = fdist.inject_distributed_sampler(DataLoader(_ds(), batch_size=2), 2, 0, mode="eval")
    assert not seq.sampler.shuffle and [int(b[0][0]) for b in seq] == [0, 4, 8]
    assert fdist.inject_distributed_sampler(out, 2, 1) is out  # already distributed


def test_predict_sampler_does_not_repeat_samples() -> None:
    parts = [
        list(fdist.inject_distributed_sampler(DataLoader(_ds(5)), 2, r, mode="predict").sampler)
        for r in (0, 1)
    ]
    assert parts == [[0, 2, 4], [1, 3]]


def test_custom_samplers_are_wrapped_and_iterable_datasets_left_alone() -> None:
    class Reverse(SequentialSampler):
        def __iter__(self):
            return iter(reversed(range(len(self.data_source))))

    loader = DataLoader(_ds(6), sampler=Reverse(_ds(6)), batch_size=1)
    parts = [[int(b[0]) for b in fdist.inject_distributed_sampler(loader, 2, r)] for r in (0, 1)]
    assert sorted(parts[0] + parts[1]) == list(range(6)) and parts[0][0] == 5

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(3))

    stream = DataLoader(Stream())
    assert fdist.inject_distributed_sampler(stream, 2, 0) is stream

    class MyBatchSampler(BatchSampler):
        pass

    custom = DataLoader(
        _ds(8), batch_sampler=MyBatchSampler(RandomSampler(_ds(8)), batch_size=2, drop_last=False)
    )
    out = fdist.inject_distributed_sampler(custom, 2, 0)
    assert isinstance(out.batch_sampler, MyBatchSampler) and isinstance(
        out.batch_sampler.sampler, DistributedSampler
    )


def test_set_sampler_epoch() -> None:
    out = fdist.inject_distributed_sampler(DataLoader(_ds(), shuffle=True), 2, 0)
    fdist.set_sampler_epoch(out, 3)
    assert out.sampler.epoch == 3


def test_collectives_are_identities_without_a_process_group() -> None:
    t = torch.tensor([1.0, 2.0])
    assert fdist.all_reduce(t) is t and fdist.broadcast_object({"a": 1}) == {"a": 1}
    assert fdist.all_gather(t).shape == (1, 2) and fdist.reduce_boolean_decision(True)
    assert fdist.get_world_size() == 1 and fdist.get_rank() == 0
    fdist.barrier()
    with pytest.raises(MisconfigurationException, match="reduce_op='median'"):
        fdist._reduce_op("median")
