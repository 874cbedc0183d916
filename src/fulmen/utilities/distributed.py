"""Collectives and process-group helpers: the one module outside strategies and checkpoint that imports
``torch.distributed`` (DESIGN.md). Everything here is a plain function that works, as an identity, when no
process group is initialized, so callers never branch on "am I distributed?".

Also here: the samplers that split data across ranks and the DataLoader re-instantiation that injects them,
because both need ``torch.utils.data.distributed``.
"""

from __future__ import annotations

import inspect
import os
import socket
from collections.abc import Iterator, Sized
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)
from torch.utils.data.distributed import DistributedSampler

from fulmen.utilities.apply_func import apply_to_collection
from fulmen.utilities.exceptions import MisconfigurationException

default_pg_timeout = timedelta(minutes=30)

_REDUCE_OPS = {
    "sum": "SUM",
    "mean": "SUM",  # then divided by the world size
    "avg": "SUM",
    "max": "MAX",
    "min": "MIN",
    "product": "PRODUCT",
    "prod": "PRODUCT",
}


# ------------------------------------------------------------------ process group
def is_available() -> bool:
    return dist.is_available()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank(group: Any = None) -> int:
    return dist.get_rank(group) if is_initialized() else 0


def get_world_size(group: Any = None) -> int:
    return dist.get_world_size(group) if is_initialized() else 1


def default_backend(device: torch.device) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_process_group(
    backend: str,
    rank: int,
    world_size: int,
    main_address: str,
    main_port: int,
    timeout: timedelta = default_pg_timeout,
    device: torch.device | None = None,
) -> None:
    """Join the default process group (``env://`` rendezvous on ``main_address:main_port``)."""
    if is_initialized():
        return
    os.environ["MASTER_ADDR"] = main_address
    os.environ["MASTER_PORT"] = str(main_port)
    kwargs: dict[str, Any] = {"backend": backend, "rank": rank, "world_size": world_size, "timeout": timeout}
    if (
        device is not None
        and device.type == "cuda"
        and "device_id" in inspect.signature(dist.init_process_group).parameters
    ):
        kwargs["device_id"] = device  # eager NCCL init: the first collective does not pay for it
    dist.init_process_group(**kwargs)


def destroy_process_group() -> None:
    if is_initialized():
        dist.destroy_process_group()


def get_default_store() -> Any:
    """The rendezvous key-value store of the default group (used for out-of-band coordination)."""
    return dist.distributed_c10d._get_default_store()


def new_group(backend: str | None = None) -> Any:
    return dist.new_group(backend=backend)


# The torch.distributed calls ``fulmen.plugins.collectives.TorchCollective`` forwards to, so that module needs no
# torch.distributed import of its own (this module is the one place outside strategies/checkpoint that has it).
_COLLECTIVE_CALLS = frozenset({
    "send", "recv", "broadcast", "all_reduce", "reduce", "all_gather", "gather", "scatter", "reduce_scatter",
    "all_to_all", "barrier", "monitored_barrier", "all_gather_object", "broadcast_object_list", "gather_object",
    "scatter_object_list", "init_process_group", "new_group", "destroy_process_group", "get_rank",
    "get_world_size", "is_available", "is_initialized",
})


def collective_call(name: str) -> Any:
    """The ``torch.distributed`` function ``name`` (one of the collectives and group calls).

    Raises:
        ValueError: ``name`` is not a torch.distributed collective or group call.
    """
    if name not in _COLLECTIVE_CALLS:
        raise ValueError(f"{name!r} is not a torch.distributed collective; expected one of {sorted(_COLLECTIVE_CALLS)}.")
    return getattr(dist, name)


def reduce_op_type() -> Any:
    """``torch.distributed.ReduceOp``."""
    return dist.ReduceOp


def group_member(group: Any) -> bool:
    """Whether this process belongs to ``group`` (False for ``GroupMember.NON_GROUP_MEMBER``)."""
    return group is not dist.GroupMember.NON_GROUP_MEMBER


def find_free_network_port() -> int:
    """A port that was free a moment ago (the OS picks it). Used for the rendezvous of local runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ collectives
def barrier(group: Any = None, device: torch.device | None = None) -> None:
    if not is_initialized():
        return
    if device is not None and device.type == "cuda" and dist.get_backend(group) == "nccl":
        dist.barrier(group=group, device_ids=[device.index or 0])
    else:
        dist.barrier(group=group)


def broadcast_object(obj: Any, src: int = 0, group: Any = None, device: torch.device | None = None) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group, device=device)
    return box[0]


def all_gather_object(obj: Any, group: Any = None) -> list[Any]:
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def _reduce_op(reduce_op: Any) -> Any:
    if reduce_op is None:
        return dist.ReduceOp.SUM
    if isinstance(reduce_op, str):
        name = _REDUCE_OPS.get(reduce_op.lower())
        if name is None:
            raise MisconfigurationException(
                f"reduce_op={reduce_op!r} is not supported; expected one of {sorted(_REDUCE_OPS)} or a "
                "torch.distributed.ReduceOp. Fix: e.g. reduce_op='mean'."
            )
        return getattr(dist.ReduceOp, name)
    return reduce_op


def all_reduce(tensor: torch.Tensor, group: Any = None, reduce_op: Any = "mean") -> torch.Tensor:
    """Reduce ``tensor`` over all ranks (a new tensor; ``mean`` divides the sum by the world size)."""
    if not is_initialized():
        return tensor
    out = tensor.clone() if isinstance(tensor, torch.Tensor) else torch.tensor(tensor)
    is_mean = isinstance(reduce_op, str) and reduce_op.lower() in ("mean", "avg")
    if is_mean and not out.is_floating_point():
        out = out.float()
    dist.all_reduce(out, op=_reduce_op(reduce_op), group=group)
    if is_mean:
        out = out / get_world_size(group)
    return out


def all_reduce_collection(data: Any, group: Any = None, reduce_op: Any = "mean") -> Any:
    return apply_to_collection(data, torch.Tensor, all_reduce, group=group, reduce_op=reduce_op)


class _AllGatherGrad(torch.autograd.Function):
    """``all_gather`` whose backward sends each rank its slice of the summed gradient."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        out = [torch.zeros_like(tensor) for _ in range(get_world_size(group))]
        dist.all_gather(out, tensor.contiguous(), group=group)
        return torch.stack(out)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> Any:
        grad = torch.cat(grads).contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[get_rank(ctx.group)], None


def all_gather(tensor: torch.Tensor, group: Any = None, sync_grads: bool = False) -> torch.Tensor:
    """Stack every rank's ``tensor`` into shape ``(world_size, *shape)``.

    Tensors may differ in size along any dimension; they are padded for the transfer and trimmed
    after it, so each slice ``out[r]`` is rank ``r``'s tensor only when the shapes agree (otherwise a
    list is returned).
    """
    if not is_initialized():
        return tensor.unsqueeze(0) if isinstance(tensor, torch.Tensor) else tensor
    world = get_world_size(group)
    if tensor.ndim == 0:
        tensor = tensor.reshape(1)
        squeeze = True
    else:
        squeeze = False
    if sync_grads:
        out: torch.Tensor = _AllGatherGrad.apply(tensor, group)  # type: ignore[no-untyped-call]
        return out.squeeze(-1) if squeeze else out
    shape = torch.tensor(tensor.shape, device=tensor.device)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=group)
    if all(torch.equal(s, shape) for s in shapes):
        out_list = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(out_list, tensor.contiguous(), group=group)
        out = torch.stack(out_list)
        return out.squeeze(-1) if squeeze else out
    # different shapes: pad every dimension to the maximum, gather, trim
    max_shape = torch.stack(shapes).max(dim=0).values.tolist()
    padded = tensor.new_zeros(max_shape)
    padded[tuple(slice(0, n) for n in tensor.shape)] = tensor
    out_list = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out_list, padded, group=group)
    return [o[tuple(slice(0, int(n)) for n in s.tolist())] for o, s in zip(out_list, shapes)]  # type: ignore[return-value]


def all_gather_collection(data: Any, group: Any = None, sync_grads: bool = False) -> Any:
    def gather(t: torch.Tensor) -> Any:
        return all_gather(t, group=group, sync_grads=sync_grads)

    return apply_to_collection(data, torch.Tensor, gather)


def reduce_boolean_decision(
    decision: bool, all: bool = True, group: Any = None, device: torch.device | None = None
) -> bool:
    """``all=True``: every rank said yes; ``all=False``: at least one rank did."""
    if not is_initialized():
        return bool(decision)
    t = torch.tensor(int(bool(decision)), device=device or torch.device("cpu"))
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    votes = int(t.item())
    return votes == get_world_size(group) if all else votes > 0


# ------------------------------------------------------------------ samplers
class DistributedSamplerWrapper(DistributedSampler[Any]):
    """Split the indices that any sampler yields across ranks (keeps the sampler's own order/weights)."""

    def __init__(self, sampler: Sampler[Any], *args: Any, **kwargs: Any) -> None:
        self._wrapped = sampler
        super().__init__(_SamplerAsDataset(sampler), *args, **kwargs)

    def __iter__(self) -> Iterator[Any]:
        self.dataset._reset()  # type: ignore[attr-defined]
        indices = list(super().__iter__())
        items = self.dataset.items  # type: ignore[attr-defined]
        return iter(items[i] for i in indices)


class _SamplerAsDataset(Dataset[Any]):
    def __init__(self, sampler: Sampler[Any]) -> None:
        self.sampler = sampler
        self.items: list[Any] = []

    def _reset(self) -> None:
        self.items = list(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


class UnrepeatedDistributedSampler(DistributedSampler[Any]):
    """Like ``DistributedSampler`` but without padding: no sample is seen twice (ranks may get one fewer).

    Used for prediction, where duplicated samples would produce duplicated outputs.
    """

    def __init__(self, dataset: Sized, *args: Any, **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)  # type: ignore[arg-type]
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(len(self.dataset), generator=g).tolist()  # type: ignore[arg-type]
        else:
            indices = list(range(len(self.dataset)))  # type: ignore[arg-type]
        return iter(indices[self.rank : self.total_size : self.num_replicas])


def _loader_init_kwargs(loader: DataLoader[Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
    }
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    if getattr(loader, "pin_memory_device", ""):
        kwargs["pin_memory_device"] = loader.pin_memory_device
    if getattr(loader, "in_order", True) is not True:
        kwargs["in_order"] = loader.in_order
    return kwargs


def distributed_sampler_for(loader: DataLoader[Any], num_replicas: int, rank: int, mode: str) -> Sampler[Any]:
    """The rank-aware sampler replacing ``loader``'s sampler. ``mode``: ``train``, ``eval`` or ``predict``."""
    sampler: Any = loader.sampler
    dataset: Any = loader.dataset
    seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
    shuffle = type(sampler) is RandomSampler
    if mode == "predict":
        return UnrepeatedDistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
    if type(sampler) in (RandomSampler, SequentialSampler):  # subclasses have their own order: wrapped below
        return DistributedSampler(
            loader.dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed
        )
    return DistributedSamplerWrapper(sampler, num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed)


def inject_distributed_sampler(loader: Any, num_replicas: int, rank: int, mode: str = "train") -> Any:
    """A copy of ``loader`` whose sampler gives this rank its share of the data.

    Loaders that already use a ``DistributedSampler``, iterate an ``IterableDataset`` or are not
    ``DataLoader`` instances are returned unchanged (they are responsible for their own split).

    Raises:
        MisconfigurationException: when the loader's class cannot be re-created with a new sampler.
    """
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    batch_sampler: Any = loader.batch_sampler
    if batch_sampler is not None and isinstance(getattr(batch_sampler, "sampler", None), DistributedSampler):
        return loader
    new_sampler = distributed_sampler_for(loader, num_replicas, rank, mode)
    kwargs = _loader_init_kwargs(loader)
    if batch_sampler is None:
        kwargs.update(batch_size=None, sampler=new_sampler)
    elif type(batch_sampler) is BatchSampler:
        kwargs.update(batch_size=loader.batch_size, drop_last=loader.drop_last, sampler=new_sampler)
    else:
        try:
            new_bs = type(batch_sampler)(
                new_sampler,
                batch_size=batch_sampler.batch_size,
                drop_last=batch_sampler.drop_last,
            )
        except Exception as exc:
            raise MisconfigurationException(
                f"The dataloader uses a custom batch sampler {type(batch_sampler).__name__} that fulmen cannot "
                f"re-create with a DistributedSampler ({exc}). Fix: make it rank-aware yourself and pass "
                "use_distributed_sampler=False."
            ) from exc
        kwargs.update(batch_sampler=new_bs)
    cls = type(loader)
    try:
        return cls(loader.dataset, **kwargs)
    except TypeError as exc:
        if cls is DataLoader:
            raise
        raise MisconfigurationException(
            f"fulmen needs to re-create your {cls.__name__} with a DistributedSampler, but its __init__ does not take "
            f"DataLoader's arguments ({exc}). Fix: accept **kwargs and pass them to DataLoader, or add a "
            "DistributedSampler yourself and set use_distributed_sampler=False."
        ) from exc


def set_sampler_epoch(loader: Any, epoch: int) -> None:
    """Call ``set_epoch`` on the loader's sampler(s) so every epoch shuffles differently (and identically on every rank)."""
    for obj in (
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    ):
        if obj is not None and callable(getattr(obj, "set_epoch", None)):
            obj.set_epoch(epoch)
    for inner in getattr(loader, "flattened", None) or ():
        set_sampler_epoch(inner, epoch)


__all__ = [
    "DistributedSamplerWrapper",
    "UnrepeatedDistributedSampler",
    "all_gather",
    "all_gather_collection",
    "all_gather_object",
    "all_reduce",
    "all_reduce_collection",
    "barrier",
    "broadcast_object",
    "default_backend",
    "default_pg_timeout",
    "destroy_process_group",
    "find_free_network_port",
    "get_default_store",
    "get_rank",
    "get_world_size",
    "init_process_group",
    "inject_distributed_sampler",
    "is_available",
    "is_initialized",
    "reduce_boolean_decision",
    "set_sampler_epoch",
]


class _AllReduceSumGrad(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the upstream gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def differentiable_all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``all_reduce(SUM)`` that autograd can differentiate (used by the any-device SyncBatchNorm)."""
    if not is_initialized():
        return tensor
    out: torch.Tensor = _AllReduceSumGrad.apply(tensor)  # type: ignore[no-untyped-call]
    return out
