"""The cluster-environment interface: where the rendezvous is and which rank this process is."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

from fulmen.utilities.exceptions import MisconfigurationException


class ClusterEnvironment(ABC):
    """Describes how processes were (or will be) started and how they find each other.

    Strategies read ranks and the rendezvous address from here; launchers ask
    :attr:`creates_processes_externally` whether they still have to start the processes.
    """

    @property
    @abstractmethod
    def creates_processes_externally(self) -> bool:
        """True when a tool (torchrun, srun, mpirun, a Kubernetes operator) already started every process."""

    @property
    @abstractmethod
    def main_address(self) -> str:
        """Host of the rank-0 process (the rendezvous store)."""

    @property
    @abstractmethod
    def main_port(self) -> int:
        """Port of the rendezvous store on :attr:`main_address`."""

    @staticmethod
    @abstractmethod
    def detect() -> bool:
        """Whether the current process runs under this environment."""

    @abstractmethod
    def world_size(self) -> int: ...

    @abstractmethod
    def set_world_size(self, size: int) -> None: ...

    @abstractmethod
    def global_rank(self) -> int: ...

    @abstractmethod
    def set_global_rank(self, rank: int) -> None: ...

    @abstractmethod
    def local_rank(self) -> int: ...

    @abstractmethod
    def node_rank(self) -> int: ...

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        """Raise when the Trainer/Fabric flags contradict what the environment started."""

    def teardown(self) -> None:
        """Undo environment changes made for the run."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _env_int(*names: str, default: int | None = None) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError as exc:
                raise MisconfigurationException(
                    f"The environment variable {name}={value!r} is not an integer. Fix: unset it or set a number."
                ) from exc
    if default is None:
        raise MisconfigurationException(
            f"None of the environment variables {', '.join(names)} is set. Fix: launch with the tool that sets them, "
            "or set them by hand."
        )
    return default


def _check_world(env: ClusterEnvironment, num_devices: int, num_nodes: int, tool: str, fix: str) -> None:
    expected = num_devices * num_nodes
    if env.world_size() != expected:
        raise MisconfigurationException(
            f"{tool} started {env.world_size()} processes, but the flags ask for devices={num_devices} x "
            f"num_nodes={num_nodes} = {expected}. Fix: {fix}"
        )
