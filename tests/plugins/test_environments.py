"""Cluster environments: detection order and what each reads from its launcher's variables."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from fulmen.plugins.environments import (
    KubeflowEnvironment,
    LightningEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
    detect_cluster_environment,
)
from fulmen.plugins.environments.slurm import resolve_root_node_address
from fulmen.utilities.exceptions import MisconfigurationException

_ALL_VARS = [
    "RANK",
    "GROUP_RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NODEID",
    "SLURM_NODELIST",
    "SLURM_JOB_ID",
    "SLURM_JOB_NAME",
    "SLURM_NTASKS_PER_NODE",
    "SLURM_NNODES",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "KUBERNETES_PORT",
    "LSB_JOBID",
    "LSB_DJOB_RANKFILE",
    "JSM_NAMESPACE_LOCAL_RANK",
    "JSM_NAMESPACE_SIZE",
    "JSM_NAMESPACE_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "PMI_SIZE",
    "PMI_RANK",
    "PMIX_SIZE",
    "PMIX_RANK",
]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in _ALL_VARS:
        monkeypatch.delenv(var, raising=False)


def _set(monkeypatch: pytest.MonkeyPatch, **values: object) -> None:
    for k, v in values.items():
        monkeypatch.setenv(k, str(v))


def test_local_default(monkeypatch: pytest.MonkeyPatch) -> None:
    env = detect_cluster_environment()
    assert isinstance(env, LightningEnvironment)
    assert not env.creates_processes_externally
    assert env.main_address == "127.0.0.1" and 1024 <= env.main_port < 65536
    assert env.main_port == env.main_port  # chosen once
    env.set_world_size(4)
    env.set_global_rank(3)
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (4, 3, 0, 0)
    _set(monkeypatch, LOCAL_RANK=1, NODE_RANK=2, MASTER_ADDR="10.0.0.1", MASTER_PORT=1234)
    env = LightningEnvironment()
    assert env.creates_processes_externally and (env.local_rank(), env.node_rank()) == (1, 2)
    assert (env.main_address, env.main_port) == ("10.0.0.1", 1234)


def test_torchelastic(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(
        monkeypatch,
        RANK=5,
        GROUP_RANK=1,
        LOCAL_RANK=1,
        LOCAL_WORLD_SIZE=4,
        WORLD_SIZE=8,
        MASTER_ADDR="h0",
        MASTER_PORT=29500,
        SLURM_NTASKS=2,
    )  # torchrun inside a SLURM job is torchrun
    env = detect_cluster_environment()
    assert isinstance(env, TorchElasticEnvironment) and env.creates_processes_externally
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (8, 5, 1, 1)
    assert (env.main_address, env.main_port) == ("h0", 29500)
    env.validate_settings(num_devices=4, num_nodes=2)
    with pytest.raises(MisconfigurationException, match="torchrun started 8 processes"):
        env.validate_settings(num_devices=2, num_nodes=2)


def test_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(
        monkeypatch,
        SLURM_NTASKS=8,
        SLURM_PROCID=6,
        SLURM_LOCALID=2,
        SLURM_NODEID=1,
        SLURM_JOB_ID=123456,
        SLURM_NODELIST="gpu[07-08]",
        SLURM_JOB_NAME="train",
        SLURM_NTASKS_PER_NODE=4,
        SLURM_NNODES=2,
    )
    env = detect_cluster_environment()
    assert isinstance(env, SLURMEnvironment) and env.creates_processes_externally
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (8, 6, 2, 1)
    assert env.main_address == "gpu07" and env.main_port == 15000 + 3456
    env.validate_settings(num_devices=4, num_nodes=2)
    with pytest.raises(MisconfigurationException, match="ntasks-per-node"):
        env.validate_settings(num_devices=2, num_nodes=2)
    with pytest.raises(MisconfigurationException, match="--nodes=4"):
        env.validate_settings(num_devices=4, num_nodes=4)
    assert env.requeue_command() == ["scontrol", "requeue", "123456"]
    assert env.auto_requeue and env.requeue_signal == signal.SIGUSR1


def test_slurm_interactive_session_is_local(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, SLURM_NTASKS=1, SLURM_JOB_NAME="bash")
    assert isinstance(detect_cluster_environment(), LightningEnvironment)


def test_slurm_array_job_and_requeue_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, SLURM_ARRAY_JOB_ID=77, SLURM_ARRAY_TASK_ID=3, SLURM_JOB_ID=80)
    env = SLURMEnvironment(requeue_signal=signal.SIGUSR2)
    assert env.job_id() == "77_3" and env.requeue_command()[-1] == "77_3"
    seen: list[int] = []
    restore = env.register_requeue_handler(lambda signum, frame: seen.append(signum))
    try:
        signal.raise_signal(signal.SIGUSR2)
    finally:
        restore()
    assert seen == [signal.SIGUSR2]
    assert "SIGUSR2" in repr(env)


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [
        ("node1", "node1"),
        ("gpu[03-05,9],cpu1", "gpu03"),
        ("a-b[1-2]-ib", "a-b1-ib"),
        ("x[2],y[1-3]", "x2"),
        ("n1,n2", "n1"),
    ],
)
def test_slurm_nodelist(nodelist: str, first: str) -> None:
    assert resolve_root_node_address(nodelist) == first


def test_kubeflow(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(
        monkeypatch,
        KUBERNETES_PORT="tcp://10.0.0.1:443",
        MASTER_ADDR="job-master-0",
        MASTER_PORT=23456,
        WORLD_SIZE=3,
        RANK=2,
    )
    env = detect_cluster_environment()
    assert isinstance(env, KubeflowEnvironment)
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (3, 2, 0, 2)
    assert (env.main_address, env.main_port) == ("job-master-0", 23456)
    env.validate_settings(num_devices=1, num_nodes=3)
    with pytest.raises(MisconfigurationException, match="PyTorchJob"):
        env.validate_settings(num_devices=2, num_nodes=3)


def test_lsf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import socket

    rankfile = tmp_path / "rankfile"
    rankfile.write_text(f"batch01\n{socket.gethostname()}\n{socket.gethostname()}\nother02\nother02\n")
    _set(
        monkeypatch,
        LSB_JOBID=4242,
        LSB_DJOB_RANKFILE=rankfile,
        JSM_NAMESPACE_LOCAL_RANK=1,
        JSM_NAMESPACE_SIZE=4,
        JSM_NAMESPACE_RANK=1,
    )
    env = detect_cluster_environment()
    assert isinstance(env, LSFEnvironment)
    assert env.main_address == socket.gethostname() and env.main_port == 10242
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (4, 1, 1, 0)


def test_mpi(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(
        monkeypatch,
        OMPI_COMM_WORLD_SIZE=4,
        OMPI_COMM_WORLD_RANK=3,
        OMPI_COMM_WORLD_LOCAL_RANK=1,
        OMPI_COMM_WORLD_LOCAL_SIZE=2,
        MASTER_ADDR="m0",
        MASTER_PORT=4000,
    )
    env = detect_cluster_environment()
    assert isinstance(env, MPIEnvironment)
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (4, 3, 1, 1)
    assert (env.main_address, env.main_port) == ("m0", 4000)


def test_mpi_without_address_or_mpi4py_explains(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, PMI_SIZE=2, PMI_RANK=0)
    monkeypatch.setitem(__import__("sys").modules, "mpi4py", None)
    env = detect_cluster_environment()
    assert isinstance(env, MPIEnvironment)
    with pytest.raises(MisconfigurationException, match="mpi4py"):
        env.main_address  # noqa: B018


def test_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, LOCAL_RANK="one")
    with pytest.raises(MisconfigurationException, match="LOCAL_RANK='one'"):
        LightningEnvironment().local_rank()
