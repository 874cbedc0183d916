"""IBM LSF / ``jsrun`` (Summit-style clusters): ranks from ``JSM_NAMESPACE_*``, hosts from ``LSB_DJOB_RANKFILE``."""

from __future__ import annotations

import os
import socket

from fulmen.plugins.environments.base import ClusterEnvironment, _check_world, _env_int
from fulmen.utilities.exceptions import MisconfigurationException


class LSFEnvironment(ClusterEnvironment):
    _REQUIRED = ("LSB_JOBID", "LSB_DJOB_RANKFILE", "JSM_NAMESPACE_LOCAL_RANK", "JSM_NAMESPACE_SIZE")

    def __init__(self) -> None:
        self._hosts: list[str] | None = None

    @property
    def creates_processes_externally(self) -> bool:
        return True

    def _read_hosts(self) -> list[str]:
        if self._hosts is None:
            path = os.environ.get("LSB_DJOB_RANKFILE", "")
            try:
                with open(path) as f:
                    lines = [line.strip() for line in f if line.strip()]
            except OSError as exc:
                raise MisconfigurationException(
                    f"Cannot read the LSF rank file LSB_DJOB_RANKFILE={path!r}: {exc}"
                ) from exc
            # the first line is the launch (batch) node, which runs no ranks
            self._hosts = lines[1:] if len(lines) > 1 else lines
        return self._hosts

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR") or self._read_hosts()[0]

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in os.environ:
            return _env_int("MASTER_PORT")
        return 10000 + _env_int("LSB_JOBID") % 1000

    @staticmethod
    def detect() -> bool:
        return all(k in os.environ for k in LSFEnvironment._REQUIRED)

    def world_size(self) -> int:
        return _env_int("JSM_NAMESPACE_SIZE")

    def set_world_size(self, size: int) -> None: ...

    def global_rank(self) -> int:
        return _env_int("JSM_NAMESPACE_RANK")

    def set_global_rank(self, rank: int) -> None: ...

    def local_rank(self) -> int:
        return _env_int("JSM_NAMESPACE_LOCAL_RANK")

    def node_rank(self) -> int:
        unique = list(dict.fromkeys(self._read_hosts()))
        host = socket.gethostname()
        return unique.index(host) if host in unique else 0

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        _check_world(
            self, num_devices, num_nodes, "jsrun", "match devices and num_nodes to the jsrun resource sets."
        )
