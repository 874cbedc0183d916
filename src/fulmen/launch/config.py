"""The launch configuration: one frozen, validated object that every spec generator reads.

Validation happens here, before anything is written or submitted: an unknown target, a script that does
not exist, non-positive node/device counts, a malformed ``--env`` or ``--time`` each raise a
:class:`LaunchError` that names what was given, what is expected and the fix.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import sys
from dataclasses import dataclass, field

TARGETS = ("slurm", "kubernetes", "skypilot", "local")

# the exit codes fulmen's Trainer uses after a preemption checkpoint (128 + signal): a rerun resumes
PREEMPTED_EXIT_CODES = (138, 143)


class LaunchError(ValueError):
    """A launch that cannot start: bad input, a missing tool, a failed submission."""


@dataclass(frozen=True)
class LaunchConfig:
    """What to run and where. Build it with :meth:`create` (validates); the spec generators only read it.

    Attributes:
        target: ``slurm``, ``kubernetes``, ``skypilot`` or ``local``.
        script: the user's training script (absolute path).
        script_args: its arguments.
        nodes: machines (SLURM nodes, Kubernetes pods, SkyPilot nodes).
        devices: processes per node (one per GPU; CPU processes with ``accelerator="cpu"``).
        accelerator: ``gpu`` or ``cpu`` (what each device is); ``gpu_type`` names the GPU for SkyPilot/Kubernetes.
        time: the wall-clock limit, ``[D-]HH:MM:SS`` (SLURM ``--time``); None: the scheduler's default.
        partition: the SLURM partition.
        spot: spot/preemptible instances (SkyPilot ``use_spot``; a node selector note on Kubernetes).
        env: extra environment variables for every process.
        run_dir: the run folder (spec, record, logs, checkpoints by default).
        name: the job name.
        image: the container image (Kubernetes).
        signal_seconds: how long before the time limit SLURM sends SIGUSR1 (``--signal=B:USR1@N``).
        grace_seconds: the Kubernetes termination grace period (SIGTERM, then SIGKILL).
        max_restarts: reruns after a preemption (local target, SkyPilot ``max_restarts_on_errors`` stays 0).
        python: the interpreter that runs the script on the target.
        checkpoint_dir: ``FULMEN_DEFAULT_ROOT_DIR`` of every process (logs and checkpoints when the script names
            no folder). Default: the run folder for ``slurm``/``local`` (a shared filesystem); none for
            ``kubernetes``/``skypilot`` (the pods do not see this machine: pass a shared or mounted path).
    """

    target: str
    script: str
    script_args: tuple[str, ...] = ()
    nodes: int = 1
    devices: int = 1
    accelerator: str = "gpu"
    gpu_type: str = "A100"
    time: str | None = None
    partition: str | None = None
    spot: bool = False
    env: tuple[tuple[str, str], ...] = ()
    run_dir: str = ""
    name: str = ""
    image: str = "pytorch/pytorch:latest"
    signal_seconds: int = 90
    grace_seconds: int = 120
    max_restarts: int = 100
    checkpoint_dir: str | None = None
    python: str = field(default_factory=lambda: sys.executable)

    @classmethod
    def create(cls, target: str, script: str, **kwargs: object) -> LaunchConfig:
        """Validate and build a config (see the class attributes for the keywords).

        Raises:
            LaunchError: on any bad input, before anything is written or submitted.
        """
        if target not in TARGETS:
            raise LaunchError(
                f"unknown launch target {target!r}; expected one of {', '.join(TARGETS)}. "
                "Fix: --target slurm|kubernetes|skypilot|local."
            )
        path = os.path.abspath(os.path.expanduser(script))
        if not os.path.isfile(path):
            raise LaunchError(
                f"the script {script!r} does not exist ({path}). Fix: pass the path of your training script."
            )
        for key in ("nodes", "devices", "signal_seconds", "grace_seconds"):
            value = kwargs.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LaunchError(f"--{key.replace('_', '-')}={value!r}; expected a positive integer.")
        accelerator = kwargs.get("accelerator", "gpu")
        if accelerator not in ("gpu", "cpu"):
            raise LaunchError(f"accelerator={accelerator!r}; expected 'gpu' or 'cpu'.")
        time = kwargs.get("time")
        if time is not None and not re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}", str(time)):
            raise LaunchError(
                f"--time {time!r} is not a time limit; expected [D-]HH:MM:SS (e.g. 4:00:00 or 1-00:00:00)."
            )
        env = kwargs.pop("env", ()) or ()
        pairs = parse_env(env) if not isinstance(env, tuple) else env
        name = str(
            kwargs.pop("name", "")
            or re.sub(r"[^a-z0-9-]+", "-", os.path.splitext(os.path.basename(path))[0].lower()).strip("-")
            or "job"
        )
        run_dir = str(kwargs.pop("run_dir", "") or os.path.join(os.getcwd(), "launches", name))
        args = tuple(str(a) for a in kwargs.pop("script_args", ()) or ())  # type: ignore[attr-defined]
        if kwargs.get("checkpoint_dir") is None and target in ("slurm", "local"):
            kwargs["checkpoint_dir"] = os.path.abspath(run_dir)
        return cls(
            target=target,
            script=path,
            script_args=args,
            env=pairs,
            name=name,
            run_dir=os.path.abspath(run_dir),
            **kwargs,  # type: ignore[arg-type]
        )

    @property
    def world_size(self) -> int:
        return self.nodes * self.devices

    def script_command(self, remote: bool = False) -> list[str]:
        """The command one process runs: ``python SCRIPT args`` (``python -m fulmen run`` for Lightning scripts).

        ``remote``: for a target that does not see this machine (Kubernetes, SkyPilot) the interpreter is
        ``python`` and the script's path is relative to the current folder (the image's working folder, or
        SkyPilot's synced ``workdir``).
        """
        python, script = self.python, self.script
        if remote:
            python = "python"
            rel = os.path.relpath(self.script)
            script = rel if not rel.startswith("..") else self.script
        if uses_lightning_imports(self.script):
            return [python, "-m", "fulmen", "run", script, *self.script_args]
        return [python, script, *self.script_args]

    def script_command_str(self) -> str:
        return shlex.join(self.script_command())


def parse_env(items: object) -> tuple[tuple[str, str], ...]:
    """``["K=V", ...]`` -> ``(("K", "V"), ...)``.

    Raises:
        LaunchError: an item without ``=`` or with an invalid variable name.
    """
    out: list[tuple[str, str]] = []
    for item in items or ():  # type: ignore[attr-defined]
        key, sep, value = str(item).partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise LaunchError(f"--env {item!r}; expected NAME=VALUE (e.g. --env WANDB_MODE=offline).")
        out.append((key, value))
    return tuple(out)


def uses_lightning_imports(script: str) -> bool:
    """Whether the script imports ``lightning``/``pytorch_lightning`` (then it runs under ``fulmen run``)."""
    try:
        with open(script, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        if any(n.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric") for n in names):
            return True
    return False


def script_trainer_args(script: str) -> dict[str, object]:
    """The literal ``devices=`` and ``num_nodes=`` of ``Trainer(...)`` calls in the script (for the mismatch warning)."""
    found: dict[str, object] = {}
    try:
        with open(script, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return found
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        fname = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if fname != "Trainer":
            continue
        for kw in node.keywords:
            if kw.arg in ("devices", "num_nodes"):
                try:
                    found[kw.arg] = ast.literal_eval(kw.value)
                except ValueError:
                    continue
    return found


def mismatch_warnings(config: LaunchConfig) -> list[str]:
    """Warnings for ``--nodes``/``--devices`` that contradict the script's literal Trainer arguments."""
    found = script_trainer_args(config.script)
    out = []
    for key, flag, value in (("devices", "--devices", config.devices), ("num_nodes", "--nodes", config.nodes)):
        given = found.get(key)
        if isinstance(given, int) and not isinstance(given, bool) and given != value:
            out.append(
                f"{flag} {value} contradicts the script's Trainer({key}={given}) in {config.script}: the scheduler "
                f"starts {config.world_size} processes and the Trainer will refuse a different world size. Fix: "
                f'pass {flag} {given}, or change the script to {key}={value} (or {key}="auto").'
            )
    return out


REMOTE_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "hf")


def remote_folders(config: LaunchConfig) -> list[str]:
    """The remote checkpoint folders the job will use: ``--checkpoint-dir`` when it is a URL, and every string
    literal in the script that is one (``ModelCheckpoint(dirpath="s3://bucket/run")``)."""
    found: list[str] = []
    if config.checkpoint_dir and "://" in config.checkpoint_dir:
        found.append(config.checkpoint_dir)
    try:
        with open(config.script, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return found
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            proto, sep, rest = node.value.partition("://")
            if sep and proto in REMOTE_PROTOCOLS and rest and node.value not in found:
                found.append(node.value)
    return found


def check_reachable(url: str, timeout: float = 20.0) -> None:
    """Raise :class:`LaunchError` unless the bucket of ``url`` can be listed from here within ``timeout`` seconds.

    Raises:
        LaunchError: the fsspec implementation is missing, or the bucket cannot be reached (the cause is named).
    """
    import concurrent.futures

    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as err:
        raise LaunchError(
            f"cannot check the checkpoint folder {url!r}: {err}. Fix: install the filesystem's package (s3fs for "
            "s3://, gcsfs for gs://, adlfs for az://), or pass --no-check-buckets."
        ) from err
    bucket = path.split("/", 1)[0]

    def probe() -> None:
        fs.ls(bucket)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(probe).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise LaunchError(
            f"the checkpoint bucket of {url!r} did not answer within {timeout:.0f} s. Fix: check the endpoint and "
            "network (AWS_ENDPOINT_URL, ...), or pass --no-check-buckets when only the cluster can reach it."
        ) from None
    except Exception as err:  # noqa: BLE001 - any filesystem error means unreachable; its text names the cause
        raise LaunchError(
            f"cannot reach the checkpoint bucket of {url!r}: {type(err).__name__}: {err}. Fix: create the bucket or "
            "fix the credentials/endpoint, or pass --no-check-buckets when only the cluster can reach it."
        ) from err
    finally:
        pool.shutdown(wait=False)
