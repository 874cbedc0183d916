"""MPI launchers (``mpirun``/``mpiexec`` of Open MPI, MPICH, Intel MPI): ranks from the launcher's variables."""

from __future__ import annotations

import os
import socket

from fulmen.plugins.environments.base import ClusterEnvironment, _check_world, _env_int
from fulmen.utilities.exceptions import MisconfigurationException

_SIZE = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE")
_RANK = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
_LOCAL_RANK = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PALS_LOCAL_RANKID")
_LOCAL_SIZE = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PALS_LOCAL_SIZE")


class MPIEnvironment(ClusterEnvironment):
    """The rendezvous address comes from ``MASTER_ADDR``/``MASTER_PORT`` when set, else rank 0 shares its host
    and a free port over MPI (needs ``mpi4py``)."""

    def __init__(self) -> None:
        self._address: tuple[str, int] | None = None

    @property
    def creates_processes_externally(self) -> bool:
        return True

    def _rendezvous(self) -> tuple[str, int]:
        if self._address is None:
            if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
                self._address = (os.environ["MASTER_ADDR"], _env_int("MASTER_PORT"))
            else:
                try:
                    from mpi4py import MPI  # type: ignore[import-not-found]
                except ImportError as exc:
                    raise MisconfigurationException(
                        "Running under MPI without MASTER_ADDR/MASTER_PORT: fulmen needs mpi4py to share the rank-0 "
                        "address. Fix: `pip install mpi4py`, or export MASTER_ADDR=<rank-0 host> MASTER_PORT=<port>."
                    ) from exc
                from fulmen.utilities.distributed import find_free_network_port

                mine = (socket.gethostname(), find_free_network_port()) if self.global_rank() == 0 else None
                self._address = MPI.COMM_WORLD.bcast(mine, root=0)
        return self._address

    @property
    def main_address(self) -> str:
        return self._rendezvous()[0]

    @property
    def main_port(self) -> int:
        return self._rendezvous()[1]

    @staticmethod
    def detect() -> bool:
        return any(name in os.environ for name in _SIZE)

    def world_size(self) -> int:
        return _env_int(*_SIZE)

    def set_world_size(self, size: int) -> None: ...

    def global_rank(self) -> int:
        return _env_int(*_RANK)

    def set_global_rank(self, rank: int) -> None: ...

    def local_rank(self) -> int:
        return _env_int(*_LOCAL_RANK, default=0)

    def node_rank(self) -> int:
        local_size = _env_int(*_LOCAL_SIZE, default=0)
        return self.global_rank() // local_size if local_size else 0

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        _check_world(self, num_devices, num_nodes, "mpirun", "match -np to devices x num_nodes.")
