"""Processes started the way users start them: ``strategy="ddp"`` relaunching the script, ``torchrun``, and
``fulmen fabric run``. Each test runs a script in a subprocess (2 CPU processes, gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

SCRIPT = Path(__file__).parent / "_ddp_script.py"


def _env() -> dict[str, str]:
    env = os.environ.copy()
    for key in (
        "LOCAL_RANK",
        "RANK",
        "WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "NODE_RANK",
        "PYTEST_CURRENT_TEST",
    ):
        env.pop(key, None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _reference_weights() -> dict[str, torch.Tensor]:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import _ddp_script as s
    finally:
        sys.path.pop(0)
    net = s.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for _ in range(2):
        for x, y in DataLoader(s.data(), batch_size=8):
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            opt.step()
    return net.state_dict()


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, check=False)


def _assert_weights(path: Path, key_prefix: str = "") -> None:
    got = torch.load(path, weights_only=True)
    for k, v in _reference_weights().items():
        torch.testing.assert_close(got[key_prefix + k], v, msg=k)


def test_script_launcher_runs_the_script_once_per_device(tmp_path: Path) -> None:
    r = _run([sys.executable, str(SCRIPT), "trainer", str(tmp_path)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (
        (tmp_path / "done0.txt").read_text() == (tmp_path / "done1.txt").read_text() == "LightningEnvironment"
    )
    _assert_weights(tmp_path / "weights.pt")


def test_script_launcher_a_failing_child_ends_every_rank_naming_it(tmp_path: Path) -> None:
    start = time.monotonic()
    r = _run([sys.executable, str(SCRIPT), "trainer_fail", str(tmp_path)])
    elapsed = time.monotonic() - start
    assert r.returncode != 0
    assert "Rank 1 raised ValueError: boom on rank 1" in r.stderr
    assert (tmp_path / "rank1.txt").read_text() == "ValueError: boom on rank 1"
    assert (tmp_path / "rank0.txt").read_text().startswith("RankFailedError: Rank 1 raised ValueError")
    assert elapsed < 60, f"{elapsed:.1f}s"


def test_torchrun_environment_is_detected(tmp_path: Path) -> None:
    r = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            str(SCRIPT),
            "trainer",
            str(tmp_path),
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "done1.txt").read_text() == "TorchElasticEnvironment"
    _assert_weights(tmp_path / "weights.pt")


def test_two_nodes_under_slurm(tmp_path: Path) -> None:
    """num_nodes=2 through SLURM's variables (two "nodes" on this machine, one task each, as srun starts them)."""
    from fulmen.utilities.distributed import find_free_network_port

    port = find_free_network_port()
    procs = []
    for rank in (0, 1):
        env = _env()
        env.update(
            SLURM_NTASKS="2",
            SLURM_PROCID=str(rank),
            SLURM_LOCALID="0",
            SLURM_NODEID=str(rank),
            SLURM_NODELIST="localhost",
            SLURM_JOB_ID="4242",
            SLURM_JOB_NAME="train",
            SLURM_NNODES="2",
            SLURM_NTASKS_PER_NODE="1",
            MASTER_PORT=str(port),
        )
        cmd = [sys.executable, str(SCRIPT), "nodes", str(tmp_path)]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
    assert (tmp_path / "done0.txt").read_text() == "SLURMEnvironment node 0"
    assert (tmp_path / "done1.txt").read_text() == "SLURMEnvironment node 1"
    _assert_weights(tmp_path / "weights.pt")


def test_fulmen_fabric_run_cli(tmp_path: Path) -> None:
    r = _run(
        [
            sys.executable,
            "-m",
            "fulmen",
            "fabric",
            "run",
            str(SCRIPT),
            "--devices",
            "2",
            "--accelerator",
            "cpu",
            "--",
            "fabric",
            str(tmp_path),
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "done0.txt").read_text() == (tmp_path / "done1.txt").read_text() == "2"
    ckpt = torch.load(tmp_path / "fabric.ckpt", weights_only=True)
    _assert_weights_dict(ckpt["model"])


def _assert_weights_dict(got: dict[str, torch.Tensor]) -> None:
    for k, v in _reference_weights().items():
        torch.testing.assert_close(got[k], v, msg=k)


@pytest.mark.parametrize("argv", [["fabric", "run", "--help"], ["fabric", "--help"]])
def test_fabric_cli_help(argv: list[str]) -> None:
    from fulmen.__main__ import main

    with pytest.raises(SystemExit) if "run" in argv else _nothing():
        assert main(argv) == 0


class _nothing:
    def __enter__(self) -> None: ...

    def __exit__(self, *a: object) -> bool:
        return False
