"""Kubeflow ``PyTorchJob``: the operator starts one process per pod and sets ``MASTER_ADDR``, ``WORLD_SIZE`` and ``RANK``."""

from __future__ import annotations

import os

from fulmen.plugins.environments.base import ClusterEnvironment, _check_world, _env_int


class KubeflowEnvironment(ClusterEnvironment):
    """One process per pod (a pod is a node). For several GPUs per pod, run ``torchrun`` in the pod instead."""

    _REQUIRED = ("KUBERNETES_PORT", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return os.environ["MASTER_ADDR"]

    @property
    def main_port(self) -> int:
        return _env_int("MASTER_PORT")

    @staticmethod
    def detect() -> bool:
        return all(k in os.environ for k in KubeflowEnvironment._REQUIRED)

    def world_size(self) -> int:
        return _env_int("WORLD_SIZE")

    def set_world_size(self, size: int) -> None: ...

    def global_rank(self) -> int:
        return _env_int("RANK")

    def set_global_rank(self, rank: int) -> None: ...

    def local_rank(self) -> int:
        return 0

    def node_rank(self) -> int:
        return self.global_rank()

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        _check_world(
            self,
            num_devices,
            num_nodes,
            "The PyTorchJob",
            "set devices=1 and num_nodes to the number of replicas (Master + Workers).",
        )
