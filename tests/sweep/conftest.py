"""Shared helpers for the sweep tests: run `fulmen sweep` as a user does, read its folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent / "scripts"
ARGPARSE = str(SCRIPTS / "tiny_argparse.py")
LIGHTNING_CLI = str(SCRIPTS / "tiny_lightning_cli.py")


def sweep(*args: str, cwd: str | os.PathLike[str] | None = None, timeout: float = 170,
          check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("FULMEN_SWEEP_TRIAL", None)
    proc = subprocess.run([sys.executable, "-m", "fulmen", "sweep", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"fulmen sweep {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _pg_bin() -> str | None:
    import glob
    import shutil

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


PG_PASSWORD = "pg-s3cret-word"


@pytest.fixture(scope="session")
def postgres_url():
    """A real, throwaway PostgreSQL server on 127.0.0.1 with password authentication; stopped after the session.

    PostgreSQL refuses to run as root (the tests and CI do): the cluster is created and run as `nobody`.
    """
    import shutil
    import socket

    pytest.importorskip("psycopg2", reason="PostgreSQL storage needs psycopg2-binary (in the dev extra)")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql-15")
    import tempfile

    # not under pytest's tmp root: that is private to root (0700), and the server runs as another user
    root = Path(tempfile.mkdtemp(prefix="fulmen-pg-"))
    data, pwfile, log = root / "data", root / "pw", root / "log"
    pwfile.write_text(PG_PASSWORD + "\n")
    as_user: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root without `runuser`: PostgreSQL cannot be started as an unprivileged user")
        as_user = [runuser, "-u", "nobody", "--"]
        os.chmod(root, 0o777)
        shutil.chown(root, "nobody")
        shutil.chown(pwfile, "nobody")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = dict(check=True, capture_output=True, text=True, timeout=120, cwd=root)
    subprocess.run([*as_user, f"{bindir}/initdb", "-D", str(data), "-U", "fulmen", f"--pwfile={pwfile}",
                    "-A", "scram-sha-256", "--no-sync"], **run)
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
    subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", str(data), "-o", opts, "-l", str(log), "-w", "start"], **run)
    try:
        yield f"postgresql://fulmen:{PG_PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60, cwd=root)
        shutil.rmtree(root, ignore_errors=True)
