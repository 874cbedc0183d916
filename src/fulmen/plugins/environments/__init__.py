"""Cluster environments: how processes were started and how they find each other.

``detect_cluster_environment()`` returns the first environment whose variables are present, in the
order of ``ENVIRONMENTS`` (most specific first: torchrun inside a SLURM job is torchrun), else the
local :class:`LightningEnvironment`. A new environment registers itself by appending to ``ENVIRONMENTS``.
"""

from __future__ import annotations

from fulmen.plugins.environments.base import ClusterEnvironment
from fulmen.plugins.environments.kubeflow import KubeflowEnvironment
from fulmen.plugins.environments.lightning import LightningEnvironment
from fulmen.plugins.environments.lsf import LSFEnvironment
from fulmen.plugins.environments.mpi import MPIEnvironment
from fulmen.plugins.environments.slurm import SLURMEnvironment
from fulmen.plugins.environments.torchelastic import TorchElasticEnvironment

ENVIRONMENTS: list[type[ClusterEnvironment]] = [
    TorchElasticEnvironment,
    SLURMEnvironment,
    KubeflowEnvironment,
    LSFEnvironment,
    MPIEnvironment,
]


def detect_cluster_environment() -> ClusterEnvironment:
    for env_type in ENVIRONMENTS:
        if env_type.detect():
            return env_type()
    return LightningEnvironment()


__all__ = [
    "ENVIRONMENTS",
    "ClusterEnvironment",
    "KubeflowEnvironment",
    "LSFEnvironment",
    "LightningEnvironment",
    "MPIEnvironment",
    "SLURMEnvironment",
    "TorchElasticEnvironment",
    "detect_cluster_environment",
]
