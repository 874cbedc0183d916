"""Run corpus programs on the real Lightning (the reference side of test_corpus.py).

``python _lightning_reference.py program.py [args]`` runs one program as ``python program.py [args]``
would; ``python _lightning_reference.py --jobs jobs.json`` runs a list of them one after the other in this
one process (each in its own folder, with its own ``sys.argv`` and stdout file), because importing
Lightning costs several seconds per process and the corpus must stay fast.

The ``lightning`` umbrella package is the same code as ``pytorch_lightning`` + ``lightning_fabric`` under
other names; the test environment installs only ``pytorch-lightning==2.6.1``, so when ``import lightning``
fails, ``lightning.pytorch.X`` / ``lightning.fabric.X`` / ``lightning`` are pointed at those real modules.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import runpy
import sys
import types

_PREFIXES = {"lightning.pytorch": "pytorch_lightning", "lightning.fabric": "lightning_fabric"}


def _real_name(fullname: str) -> str | None:
    for alias, real in _PREFIXES.items():
        if fullname == alias or fullname.startswith(alias + "."):
            return real + fullname[len(alias) :]
    return None


class _Loader(importlib.abc.Loader):
    def __init__(self, real: str) -> None:
        self.real = real

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return importlib.import_module(self.real)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        if fullname == "lightning":
            umbrella = types.ModuleType("lightning")
            umbrella.__path__ = []  # type: ignore[attr-defined]
            import lightning_fabric
            import pytorch_lightning

            for name in ("LightningModule", "LightningDataModule", "Trainer", "Callback", "seed_everything"):
                setattr(umbrella, name, getattr(pytorch_lightning, name))
            umbrella.Fabric = lightning_fabric.Fabric  # type: ignore[attr-defined]
            umbrella.__version__ = pytorch_lightning.__version__  # type: ignore[attr-defined]
            sys.modules["lightning"] = umbrella
            return importlib.machinery.ModuleSpec("lightning", _Preloaded(umbrella), is_package=True)
        real = _real_name(fullname)
        if real is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Loader(real), is_package=True)


class _Preloaded(importlib.abc.Loader):
    def __init__(self, module: types.ModuleType) -> None:
        self.module = module

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return self.module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def _install() -> None:
    try:
        import lightning  # noqa: F401
    except ImportError:
        sys.modules.pop("lightning", None)
        sys.meta_path.insert(0, _Finder())


def _run_one(script: str, args: list[str]) -> None:
    script = os.path.abspath(script)
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(script)
    runpy.run_path(script, run_name="__main__")


def _run_jobs(path: str) -> None:
    """Each job: ``{"script", "args", "cwd", "out", "wait_for"?, "env"?}``; writes ``out`` (stdout + traceback)
    and ``out + ".rc"``. ``wait_for`` names a file another process creates when this job's input is ready;
    ``env`` holds environment variables set for this job only."""
    import contextlib
    import json
    import time
    import traceback

    with open(path) as f:
        jobs = json.load(f)
    home = os.getcwd()
    for job in jobs:
        rc = 0
        os.makedirs(job["cwd"], exist_ok=True)
        with open(job["out"], "w") as out, contextlib.redirect_stdout(out):
            try:
                deadline = time.monotonic() + 300
                while job.get("wait_for") and not os.path.exists(job["wait_for"]):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{job['wait_for']} never appeared")
                    time.sleep(0.1)
                os.chdir(job["cwd"])
                saved_env = {k: os.environ.get(k) for k in job.get("env") or {}}
                os.environ.update(job.get("env") or {})
                try:
                    _run_one(job["script"], job["args"])
                finally:
                    for k, v in saved_env.items():
                        if v is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = v
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # noqa: BLE001 - reported in the job output, like a crashed process
                rc = 1
                print("TRACEBACK\n" + traceback.format_exc())
            finally:
                os.chdir(home)
        # written whole, then renamed: the test polls for this file and reads it as soon as it exists
        with open(job["out"] + ".rc.tmp", "w") as f:
            f.write(str(rc))
        os.replace(job["out"] + ".rc.tmp", job["out"] + ".rc")


if __name__ == "__main__":
    _install()
    if sys.argv[1] == "--jobs":
        _run_jobs(sys.argv[2])
    else:
        _run_one(sys.argv[1], sys.argv[2:])
