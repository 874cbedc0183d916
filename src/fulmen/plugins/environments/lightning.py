"""The default environment: processes on this machine (or nodes started by hand with the MASTER_* variables)."""

from __future__ import annotations

import os

from fulmen.plugins.environments.base import ClusterEnvironment, _env_int
from fulmen.utilities.distributed import find_free_network_port


class LightningEnvironment(ClusterEnvironment):
    """Rendezvous on ``MASTER_ADDR:MASTER_PORT`` (default ``127.0.0.1`` and a free port).

    fulmen's own launchers start the processes; a process that finds ``LOCAL_RANK`` already set was
    started by one of them (or by hand) and joins instead of launching. Multi-node by hand: run the
    same command on every node with ``MASTER_ADDR``, ``MASTER_PORT`` and ``NODE_RANK`` set.
    """

    def __init__(self) -> None:
        self._main_port = -1
        self._global_rank = 0
        self._world_size = 1

    @property
    def creates_processes_externally(self) -> bool:
        return "LOCAL_RANK" in os.environ

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        if self._main_port == -1:
            self._main_port = _env_int("MASTER_PORT", default=0) or find_free_network_port()
        return self._main_port

    @staticmethod
    def detect() -> bool:
        return True

    def world_size(self) -> int:
        return self._world_size

    def set_world_size(self, size: int) -> None:
        self._world_size = size

    def global_rank(self) -> int:
        return self._global_rank

    def set_global_rank(self, rank: int) -> None:
        self._global_rank = rank

    def local_rank(self) -> int:
        return _env_int("LOCAL_RANK", default=0)

    def node_rank(self) -> int:
        return _env_int("NODE_RANK", "GROUP_RANK", default=0)

    def teardown(self) -> None:
        os.environ.pop("WORLD_SIZE", None)
