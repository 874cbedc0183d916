"""``torchrun`` / TorchElastic: every process was started by the elastic agent, which set the ranks."""

from __future__ import annotations

import os

from fulmen.plugins.environments.base import ClusterEnvironment, _check_world, _env_int
from fulmen.utilities.rank_zero import rank_zero_warn


class TorchElasticEnvironment(ClusterEnvironment):
    _REQUIRED = ("RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        return _env_int("MASTER_PORT")

    @staticmethod
    def detect() -> bool:
        return all(k in os.environ for k in TorchElasticEnvironment._REQUIRED)

    def world_size(self) -> int:
        return _env_int("WORLD_SIZE")

    def set_world_size(self, size: int) -> None:
        if size != self.world_size():
            rank_zero_warn(
                f"torchrun set WORLD_SIZE={self.world_size()}; ignoring the requested world size {size}."
            )

    def global_rank(self) -> int:
        return _env_int("RANK")

    def set_global_rank(self, rank: int) -> None:
        if rank != self.global_rank():
            rank_zero_warn(f"torchrun set RANK={self.global_rank()}; ignoring the requested rank {rank}.")

    def local_rank(self) -> int:
        return _env_int("LOCAL_RANK")

    def node_rank(self) -> int:
        return _env_int("GROUP_RANK")

    def local_world_size(self) -> int:
        return _env_int("LOCAL_WORLD_SIZE")

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        _check_world(
            self,
            num_devices,
            num_nodes,
            "torchrun",
            "pass devices=--nproc-per-node and num_nodes=--nnodes (or devices='auto'), or change the torchrun flags.",
        )
