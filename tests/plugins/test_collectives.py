"""``fulmen.plugins.collectives`` (``lightning.fabric.plugins.collectives``): TorchCollective on 2 CPU processes
with gloo, SingleDeviceCollective, op conversion and group ownership errors."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest
import torch

from fulmen.plugins.collectives import Collective, SingleDeviceCollective, TorchCollective
from fulmen.utilities import distributed as fdist


def _worker(rank: int, port: int, queue: Any) -> None:
    try:
        collective = TorchCollective().setup(
            main_address="127.0.0.1", main_port=port, backend="gloo", rank=rank, world_size=2
        )
        collective.create_group()
        out: dict[str, Any] = {"rank": collective.rank, "world_size": collective.world_size}
        out["all_reduce_max"] = collective.all_reduce(torch.tensor(rank + 1.0), op="max").item()
        out["all_reduce_sum"] = collective.all_reduce(torch.tensor(rank + 1.0)).item()
        gathered = collective.all_gather([torch.zeros(2) for _ in range(2)], torch.full((2,), float(rank)))
        out["all_gather"] = [t.tolist() for t in gathered]
        out["broadcast"] = collective.broadcast(torch.tensor(float(rank)), src=1).item()
        out["objects"] = collective.all_gather_object([None, None], {"r": rank})
        out["reduce"] = collective.reduce(torch.tensor(rank + 1.0), dst=0, op="sum").item()
        if rank == 0:
            collective.send(torch.tensor([7.0]), dst=1)
        else:
            out["recv"] = collective.recv(torch.zeros(1), src=0).item()
        collective.barrier()
        collective.teardown()
        out["default_group_left"] = TorchCollective.is_initialized()
        queue.put((rank, out))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        queue.put((rank, {"error": repr(exc)}))


def test_torch_collective_two_processes_gloo() -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = fdist.find_free_network_port()
    procs = [ctx.Process(target=_worker, args=(rank, port, queue)) for rank in range(2)]
    for proc in procs:
        proc.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    for rank in (0, 1):
        res = results[rank]
        assert "error" not in res, res
        assert (res["rank"], res["world_size"]) == (rank, 2)
        assert res["all_reduce_max"] == 2.0 and res["all_reduce_sum"] == 3.0
        assert res["all_gather"] == [[0.0, 0.0], [1.0, 1.0]]
        assert res["broadcast"] == 1.0
        assert res["objects"] == [{"r": 0}, {"r": 1}]
        assert res["default_group_left"] is False  # setup() created the default group, the last teardown ends it
    assert results[0]["reduce"] == 3.0
    assert results[1]["recv"] == 7.0


def test_convert_ops() -> None:
    ReduceOp = torch.distributed.ReduceOp
    assert TorchCollective._convert_to_native_op("max") == ReduceOp.MAX
    assert TorchCollective._convert_to_native_op("BoR") == ReduceOp.BOR
    assert TorchCollective._convert_to_native_op(ReduceOp.SUM) == ReduceOp.SUM
    with pytest.raises(ValueError, match="Unsupported op 1 of type int"):
        TorchCollective._convert_to_native_op(1)
    with pytest.raises(ValueError, match="'INVALID' is not a member of `ReduceOp`"):
        TorchCollective._convert_to_native_op("invalid")


def test_group_ownership_errors() -> None:
    collective = TorchCollective()
    with pytest.raises(RuntimeError, match="does not own a group"):
        collective.group  # noqa: B018
    with pytest.raises(RuntimeError, match="does not own a group"):
        collective.teardown()


def test_single_device_collective() -> None:
    collective = SingleDeviceCollective().setup().create_group()
    assert isinstance(collective, Collective) and (collective.rank, collective.world_size) == (0, 1)
    t = torch.tensor([1.0, 2.0])
    assert collective.all_reduce(t, op="sum") is t and collective.broadcast(t, src=0) is t
    assert collective.all_gather([torch.zeros(2)], t) == [t]
    assert collective.all_gather_object([None], {"a": 1}) == [{"a": 1}]
    assert collective.scatter_object_list([None], ["x"]) == ["x"]
    collective.barrier()
    with pytest.raises(RuntimeError, match="already owns a group"):
        collective.create_group()
    collective.teardown()
    with pytest.raises(RuntimeError, match="does not own a group"):
        collective.group  # noqa: B018


def test_collectives_resolve_under_lightning_names() -> None:
    from fulmen.compat import lightning_imports

    with lightning_imports():
        from lightning.fabric.plugins.collectives import SingleDeviceCollective as S
        from lightning.fabric.plugins.collectives import TorchCollective as T
        from lightning.fabric.plugins.collectives.torch_collective import TorchCollective as T2

    assert T is T2 is TorchCollective and S is SingleDeviceCollective
