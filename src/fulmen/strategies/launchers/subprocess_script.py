"""``SubprocessScriptLauncher``: relaunch the script per local rank (``strategy="ddp"``)."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from fulmen.plugins.environments import ClusterEnvironment
from fulmen.utilities.exceptions import MisconfigurationException


class SubprocessScriptLauncher:
    """Start local ranks ``1..n-1`` as copies of the running command; this process becomes local rank 0.

    Each copy runs the script from the top; when it reaches ``Trainer.fit``/``Fabric.launch`` it finds
    ``LOCAL_RANK`` set and joins the process group instead of launching. Rank 0 watches its children: a
    child that dies without reporting is reported as that rank's failure, and at exit rank 0 waits for
    the children (after a failure only ``failure_timeout`` seconds, then it ends them).
    """

    is_interactive_compatible = False

    def __init__(self, cluster_environment: ClusterEnvironment, num_processes: int, num_nodes: int,
                 failure_timeout: float = 10.0) -> None:
        self.cluster_environment = cluster_environment
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        self.failure_timeout = failure_timeout
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._failed = False

    def launch(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self.cluster_environment.creates_processes_externally and self.num_processes > 1:
            self._call_children_scripts()
        return function(*args, **kwargs)

    def _call_children_scripts(self) -> None:
        command = script_command()
        env = self.cluster_environment
        node_rank = env.node_rank()
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        os.environ["NODE_RANK"] = str(node_rank)
        os.environ["WORLD_SIZE"] = str(self.num_processes * self.num_nodes)
        os.environ["LOCAL_RANK"] = "0"  # from now on this process counts as launched (a second fit joins)
        for local_rank in range(1, self.num_processes):
            child_env = os.environ.copy()
            child_env["LOCAL_RANK"] = str(local_rank)
            child_env["FULMEN_PARENT_PID"] = str(os.getpid())
            rank = node_rank * self.num_processes + local_rank
            self.procs[rank] = subprocess.Popen(command, env=child_env)
        atexit.register(self.wait_children)

    def liveness_checks(self) -> list[Callable[[], dict[str, Any] | None]]:
        return [self._check_children] if self.procs else []

    def _check_children(self) -> dict[str, Any] | None:
        for rank, proc in self.procs.items():
            code = proc.poll()
            if code is not None and code != 0:
                self._failed = True
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                return {"rank": rank, "kind": "exit", "type": "ProcessExit", "traceback": "", "time": time.time(),
                        "message": f"the process of rank {rank} {how} without reporting an error"}
        return None

    def wait_children(self) -> None:
        """At exit: wait for the children; after a failure give them ``failure_timeout`` seconds, then end them."""
        failed = self._failed or sys.exc_info()[0] is not None or getattr(sys, "last_value", None) is not None
        deadline = time.monotonic() + self.failure_timeout if failed else None
        for proc in self.procs.values():
            while proc.poll() is None:
                if deadline is None and any(p.poll() not in (None, 0) for p in self.procs.values()):
                    deadline = time.monotonic() + self.failure_timeout
                if deadline is not None and time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    break
                time.sleep(0.05)


def script_command() -> list[str]:
    """The command that started this process, to run it again.

    Raises:
        MisconfigurationException: in an interactive session (notebook, REPL, ``python -c``).
    """
    import __main__

    # `fulmen run script.py` (fulmen.compat.run) sets FULMEN_COMPAT_SCRIPT: the copies must start under it too, or
    # the script's `import lightning` would not resolve to fulmen there
    compat_script = os.environ.get("FULMEN_COMPAT_SCRIPT")
    if compat_script and sys.argv and os.path.abspath(sys.argv[0]) == compat_script:
        return [sys.executable, "-m", "fulmen", "run", compat_script, *sys.argv[1:]]
    if "PYTEST_CURRENT_TEST" in os.environ and any("pytest" in a for a in sys.argv[:2]):
        raise MisconfigurationException(
            "strategy='ddp' would relaunch the pytest command once per device. Fix: in tests use "
            "strategy='ddp_fork' or 'ddp_spawn', or run a script in a subprocess."
        )
    spec = getattr(__main__, "__spec__", None)
    if spec is not None and spec.name not in ("__main__", None):
        name = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return [sys.executable, "-m", name, *sys.argv[1:]]
    main_file = getattr(__main__, "__file__", None)
    if main_file is None or not os.path.exists(os.path.abspath(sys.argv[0] or "")):
        raise MisconfigurationException(
            "strategy='ddp' starts one process per device by running your script again, but this is an interactive "
            "session (notebook, REPL or `python -c`). Fix: use strategy='ddp_notebook' (or 'ddp_fork'/'ddp_spawn'), "
            "or run the code as a script."
        )
    return [sys.executable, os.path.abspath(sys.argv[0]), *sys.argv[1:]]
