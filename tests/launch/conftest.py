"""A real single-node SLURM cluster for the launch tests: slurmctld + slurmd for this host, started once per session
with a throwaway config in a temporary folder and stopped after. Skips (with the reason) where slurm-wlm is not
installed or the daemons do not come up; never a fake scheduler."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Generator
from pathlib import Path

import pytest

_CONF = """\
ClusterName=fulmentest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser={user}
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ReturnToService=2
MpiDefault=none
KillWait=5
MinJobAge=3600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SlurmCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=60, check=False)

    def logs(self) -> str:
        return "".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in self.root.glob("*.log") if p.exists()
        )


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Generator[SlurmCluster, None, None]:
    missing = [tool for tool in ("slurmctld", "slurmd", "sbatch", "scontrol", "scancel") if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"SLURM is not installed here (missing {', '.join(missing)}): `make test` installs slurm-wlm with "
            "apt-get where it can (root, apt available)"
        )
    if os.geteuid() != 0:
        pytest.skip("slurmd must run as root to start jobs: run the SLURM tests as root")
    root = tmp_path_factory.mktemp("slurm")
    (root / "state").mkdir()
    (root / "spool").mkdir()
    cluster = SlurmCluster(root)
    cluster.conf.write_text(
        _CONF.format(root=root, ctld_port=_free_port(), d_port=_free_port(), user=getpass.getuser())
    )
    procs = [
        subprocess.Popen(
            ["slurmctld", "-D", "-i", "-f", str(cluster.conf)],
            env=cluster.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    time.sleep(0.5)
    procs.append(
        subprocess.Popen(
            ["slurmd", "-D", "-N", "localhost", "-f", str(cluster.conf)],
            env=cluster.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    try:
        deadline = time.monotonic() + 30
        state = ""
        while time.monotonic() < deadline:
            state = cluster.run("sinfo", "-h", "-o", "%t").stdout.strip()
            if state in ("idle", "mix", "alloc"):
                break
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.5)
        else:
            state = f"timeout ({state})"
        if state not in ("idle", "mix", "alloc"):
            pytest.skip(f"the local SLURM cluster did not come up (node state {state!r}):\n{cluster.logs()}")
        yield cluster
    finally:
        cluster.run("scancel", "--full", "--user", getpass.getuser())
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
