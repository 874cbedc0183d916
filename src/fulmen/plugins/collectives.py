"""Collectives as objects (``lightning.fabric.plugins.collectives``): one process group each.

* :class:`Collective`: the interface. ``setup()`` joins the default process group, ``create_group()`` makes
  this object's own group (``ranks=[...]`` for a subset), every collective then runs on that group, and
  ``teardown()`` destroys it.
* :class:`TorchCollective`: ``torch.distributed``'s collectives, reached through
  :func:`fulmen.utilities.distributed.collective_call` (the one module allowed to import torch.distributed).
  Reductions take a ``torch.distributed.ReduceOp`` or its name (``"sum"``, ``"max"``, ``"avg"``...).
* :class:`SingleDeviceCollective`: the same calls for one process, as identities (no process group at all).

Tensor collectives return the tensor (or list) they filled, so calls chain.
"""

from __future__ import annotations

import datetime
import os
from abc import ABC, abstractmethod
from typing import Any

import torch
from typing_extensions import Self

from fulmen.utilities import distributed as fdist


class Collective(ABC):
    """One group of processes and the collectives run on it."""

    def __init__(self) -> None:
        self._group: Any = None

    @property
    def group(self) -> Any:
        """The group this object created.

        Raises:
            RuntimeError: :meth:`create_group` was not called (or the group was torn down).
        """
        if self._group is None:
            raise RuntimeError(
                f"`{type(self).__name__}` does not own a group. HINT: try `collective.create_group().group`"
            )
        return self._group

    @property
    @abstractmethod
    def rank(self) -> int: ...

    @property
    @abstractmethod
    def world_size(self) -> int: ...

    # tensor collectives
    @abstractmethod
    def broadcast(self, tensor: torch.Tensor, src: int) -> torch.Tensor: ...
    @abstractmethod
    def all_reduce(self, tensor: torch.Tensor, op: Any = "sum") -> torch.Tensor: ...
    @abstractmethod
    def reduce(self, tensor: torch.Tensor, dst: int, op: Any = "sum") -> torch.Tensor: ...
    @abstractmethod
    def all_gather(self, tensor_list: list[torch.Tensor], tensor: torch.Tensor) -> list[torch.Tensor]: ...
    @abstractmethod
    def gather(self, tensor: torch.Tensor, gather_list: list[torch.Tensor], dst: int = 0) -> list[torch.Tensor]: ...
    @abstractmethod
    def scatter(self, tensor: torch.Tensor, scatter_list: list[torch.Tensor], src: int = 0) -> torch.Tensor: ...
    @abstractmethod
    def reduce_scatter(self, output: torch.Tensor, input_list: list[torch.Tensor], op: Any = "sum") -> torch.Tensor: ...
    @abstractmethod
    def all_to_all(
        self, output_tensor_list: list[torch.Tensor], input_tensor_list: list[torch.Tensor]
    ) -> list[torch.Tensor]: ...
    @abstractmethod
    def send(self, tensor: torch.Tensor, dst: int, tag: int = 0) -> None: ...
    @abstractmethod
    def recv(self, tensor: torch.Tensor, src: int | None = None, tag: int = 0) -> torch.Tensor: ...
    @abstractmethod
    def barrier(self, device_ids: list[int] | None = None) -> None: ...

    # object collectives
    @abstractmethod
    def all_gather_object(self, object_list: list[Any], obj: Any) -> list[Any]: ...
    @abstractmethod
    def broadcast_object_list(
        self, object_list: list[Any], src: int, device: torch.device | None = None
    ) -> list[Any]: ...
    @abstractmethod
    def gather_object(self, obj: Any, object_gather_list: list[Any], dst: int = 0) -> list[Any]: ...
    @abstractmethod
    def scatter_object_list(
        self, scatter_object_output_list: list[Any], scatter_object_input_list: list[Any], src: int = 0
    ) -> list[Any]: ...

    # groups
    @classmethod
    @abstractmethod
    def is_available(cls) -> bool: ...
    @classmethod
    @abstractmethod
    def is_initialized(cls) -> bool: ...
    @classmethod
    @abstractmethod
    def init_group(cls, **kwargs: Any) -> None: ...
    @classmethod
    @abstractmethod
    def new_group(cls, **kwargs: Any) -> Any: ...
    @classmethod
    @abstractmethod
    def destroy_group(cls, group: Any) -> None: ...
    @classmethod
    @abstractmethod
    def _convert_to_native_op(cls, op: Any) -> Any: ...

    def setup(self, **kwargs: Any) -> Self:
        """Join the default group (``init_group(**kwargs)``) unless this process already has one."""
        if not self.is_initialized():
            self.init_group(**kwargs)
        return self

    def create_group(self, **kwargs: Any) -> Self:
        """Create this object's group (``new_group(**kwargs)``, e.g. ``ranks=[0, 1]``); call :meth:`setup` first.

        Raises:
            RuntimeError: this object already owns a group.
        """
        if self._group is not None:
            raise RuntimeError(f"`{type(self).__name__}` already owns a group.")
        self._group = self.new_group(**kwargs)
        return self

    def teardown(self) -> Self:
        """Destroy this object's group.

        Raises:
            RuntimeError: it owns none.
        """
        if self._group is None:
            raise RuntimeError(f"`{type(self).__name__}` does not own a group to destroy.")
        self.destroy_group(self._group)
        self._group = None
        return self


class TorchCollective(Collective):
    """``torch.distributed`` collectives on this object's group.

    ``setup(main_address=..., main_port=..., backend=..., rank=..., world_size=...)`` joins the default group
    (``MASTER_ADDR``/``MASTER_PORT`` are set for the rendezvous only, and removed again); the default group is
    destroyed by the ``teardown()`` that leaves it as the last group, if this class created it.
    """

    manages_default_group = False
    addr_key = "MASTER_ADDR"
    port_key = "MASTER_PORT"

    def __init__(self) -> None:
        if not fdist.is_available():
            raise RuntimeError("TorchCollective needs torch.distributed, which this torch build does not have.")
        super().__init__()

    @property
    def rank(self) -> int:
        return int(fdist.collective_call("get_rank")(self.group))

    @property
    def world_size(self) -> int:
        return int(fdist.collective_call("get_world_size")(self.group))

    def _call(self, name: str, **kwargs: Any) -> Any:
        return fdist.collective_call(name)(**kwargs, group=self.group)

    def broadcast(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        self._call("broadcast", tensor=tensor, src=src)
        return tensor

    def all_reduce(self, tensor: torch.Tensor, op: Any = "sum") -> torch.Tensor:
        self._call("all_reduce", tensor=tensor, op=self._convert_to_native_op(op))
        return tensor

    def reduce(self, tensor: torch.Tensor, dst: int, op: Any = "sum") -> torch.Tensor:
        self._call("reduce", tensor=tensor, dst=dst, op=self._convert_to_native_op(op))
        return tensor

    def all_gather(self, tensor_list: list[torch.Tensor], tensor: torch.Tensor) -> list[torch.Tensor]:
        self._call("all_gather", tensor_list=tensor_list, tensor=tensor)
        return tensor_list

    def gather(self, tensor: torch.Tensor, gather_list: list[torch.Tensor], dst: int = 0) -> list[torch.Tensor]:
        self._call("gather", tensor=tensor, gather_list=gather_list, dst=dst)
        return gather_list

    def scatter(self, tensor: torch.Tensor, scatter_list: list[torch.Tensor], src: int = 0) -> torch.Tensor:
        self._call("scatter", tensor=tensor, scatter_list=scatter_list, src=src)
        return tensor

    def reduce_scatter(self, output: torch.Tensor, input_list: list[torch.Tensor], op: Any = "sum") -> torch.Tensor:
        self._call("reduce_scatter", output=output, input_list=input_list, op=self._convert_to_native_op(op))
        return output

    def all_to_all(
        self, output_tensor_list: list[torch.Tensor], input_tensor_list: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        self._call("all_to_all", output_tensor_list=output_tensor_list, input_tensor_list=input_tensor_list)
        return output_tensor_list

    def send(self, tensor: torch.Tensor, dst: int, tag: int = 0) -> None:
        self._call("send", tensor=tensor, dst=dst, tag=tag)

    def recv(self, tensor: torch.Tensor, src: int | None = None, tag: int = 0) -> torch.Tensor:
        self._call("recv", tensor=tensor, src=src, tag=tag)
        return tensor

    def barrier(self, device_ids: list[int] | None = None) -> None:
        if device_ids is None:
            self._call("barrier")
        else:
            self._call("barrier", device_ids=device_ids)

    def monitored_barrier(self, timeout: datetime.timedelta | None = None, wait_all_ranks: bool = False) -> None:
        """A barrier that names the ranks that did not arrive within ``timeout`` (gloo only)."""
        self._call("monitored_barrier", timeout=timeout, wait_all_ranks=wait_all_ranks)

    def all_gather_object(self, object_list: list[Any], obj: Any) -> list[Any]:
        self._call("all_gather_object", object_list=object_list, obj=obj)
        return object_list

    def broadcast_object_list(self, object_list: list[Any], src: int, device: torch.device | None = None) -> list[Any]:
        self._call("broadcast_object_list", object_list=object_list, src=src, device=device)
        return object_list

    def gather_object(self, obj: Any, object_gather_list: list[Any], dst: int = 0) -> list[Any]:
        self._call("gather_object", obj=obj, object_gather_list=object_gather_list, dst=dst)
        return object_gather_list

    def scatter_object_list(
        self, scatter_object_output_list: list[Any], scatter_object_input_list: list[Any], src: int = 0
    ) -> list[Any]:
        self._call(
            "scatter_object_list",
            scatter_object_output_list=scatter_object_output_list,
            scatter_object_input_list=scatter_object_input_list,
            src=src,
        )
        return scatter_object_output_list

    def setup(self, main_address: str | None = None, main_port: str | int | None = None, **kwargs: Any) -> Self:
        if self.is_initialized():
            return self
        added = []
        for key, value in ((self.addr_key, main_address), (self.port_key, main_port)):
            if value is not None and key not in os.environ:
                os.environ[key] = str(value)
                added.append(key)
        try:
            super().setup(**kwargs)
        finally:
            for key in added:
                os.environ.pop(key, None)
        TorchCollective.manages_default_group = True
        return self

    def teardown(self) -> Self:
        member = fdist.group_member(self.group)
        super().teardown()
        if TorchCollective.manages_default_group and member and self.is_initialized():
            fdist.destroy_process_group()  # the default group, created by setup()
            TorchCollective.manages_default_group = False
        elif not self.is_initialized():
            TorchCollective.manages_default_group = False
        return self

    @classmethod
    def is_available(cls) -> bool:
        return fdist.is_available()

    @classmethod
    def is_initialized(cls) -> bool:
        return fdist.is_initialized()

    @classmethod
    def init_group(cls, **kwargs: Any) -> None:
        fdist.collective_call("init_process_group")(**kwargs)

    @classmethod
    def new_group(cls, **kwargs: Any) -> Any:
        return fdist.collective_call("new_group")(**kwargs)

    @classmethod
    def destroy_group(cls, group: Any) -> None:
        if fdist.group_member(group):  # non-members hold a placeholder that cannot be destroyed
            fdist.collective_call("destroy_process_group")(group)

    @classmethod
    def _convert_to_native_op(cls, op: Any) -> Any:
        """A ``ReduceOp`` from a ``ReduceOp`` (unchanged) or its case-insensitive name.

        Raises:
            ValueError: ``op`` is neither, or names no ``ReduceOp`` member.
        """
        reduce_op = fdist.reduce_op_type()
        if isinstance(op, (reduce_op, reduce_op.RedOpType)):
            return op
        if not isinstance(op, str):
            raise ValueError(f"Unsupported op {op!r} of type {type(op).__name__}; expected a ReduceOp or its name.")
        value = getattr(reduce_op, op.upper(), None)
        if value is None:
            raise ValueError(f"op {op.upper()!r} is not a member of `ReduceOp`. Fix: e.g. op='sum' or 'max'.")
        return value


class SingleDeviceCollective(Collective):
    """The collectives of a single process: each returns its input (gathers: the one element)."""

    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    def broadcast(self, tensor: torch.Tensor, *_: Any, **__: Any) -> torch.Tensor:
        return tensor

    def all_reduce(self, tensor: torch.Tensor, *_: Any, **__: Any) -> torch.Tensor:
        return tensor

    def reduce(self, tensor: torch.Tensor, *_: Any, **__: Any) -> torch.Tensor:
        return tensor

    def all_gather(self, tensor_list: list[torch.Tensor], tensor: torch.Tensor, **__: Any) -> list[torch.Tensor]:
        return [tensor]

    def gather(self, tensor: torch.Tensor, *_: Any, **__: Any) -> list[torch.Tensor]:
        return [tensor]

    def scatter(self, tensor: torch.Tensor, scatter_list: list[torch.Tensor], *_: Any, **__: Any) -> torch.Tensor:
        return scatter_list[0]

    def reduce_scatter(self, output: torch.Tensor, input_list: list[torch.Tensor], *_: Any, **__: Any) -> torch.Tensor:
        return input_list[0]

    def all_to_all(
        self, output_tensor_list: list[torch.Tensor], input_tensor_list: list[torch.Tensor], *_: Any, **__: Any
    ) -> list[torch.Tensor]:
        return input_tensor_list

    def send(self, *_: Any, **__: Any) -> None:
        pass

    def recv(self, tensor: torch.Tensor, *_: Any, **__: Any) -> torch.Tensor:
        return tensor

    def barrier(self, *_: Any, **__: Any) -> None:
        pass

    def all_gather_object(self, object_list: list[Any], obj: Any, *_: Any, **__: Any) -> list[Any]:
        return [obj]

    def broadcast_object_list(self, object_list: list[Any], *_: Any, **__: Any) -> list[Any]:
        return object_list

    def gather_object(self, obj: Any, *_: Any, **__: Any) -> list[Any]:
        return [obj]

    def scatter_object_list(
        self, scatter_object_output_list: list[Any], scatter_object_input_list: list[Any], *_: Any, **__: Any
    ) -> list[Any]:
        scatter_object_output_list[0] = scatter_object_input_list[0]
        return scatter_object_output_list

    @classmethod
    def is_available(cls) -> bool:
        return True

    @classmethod
    def is_initialized(cls) -> bool:
        return True

    @classmethod
    def init_group(cls, **_: Any) -> None:
        pass

    @classmethod
    def new_group(cls, **_: Any) -> Any:
        return object()  # a token: one process needs no real group

    @classmethod
    def destroy_group(cls, group: Any) -> None:
        pass

    @classmethod
    def _convert_to_native_op(cls, op: Any) -> Any:
        return op


__all__ = ["Collective", "SingleDeviceCollective", "TorchCollective"]
