"""``fulmen run``: run an unmodified Lightning 2.x program on fulmen.

``fulmen run script.py [args...]`` behaves like ``python script.py [args...]`` (``sys.argv``,
``sys.path[0]``, ``__name__ == "__main__"``), with Lightning's imports resolving to fulmen.
``fulmen run -m package.module [args...]`` is the ``python -m`` form.
"""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Sequence
from typing import Any

from fulmen.compat._finder import enable_lightning_imports

USAGE = """usage: fulmen run [-h] (script.py | -m module) [args ...]

Run an unmodified PyTorch Lightning 2.x program on fulmen: for this process, imports of `lightning`,
`lightning.pytorch`, `pytorch_lightning`, `lightning.fabric` and `lightning_fabric` resolve to fulmen.
A Lightning name fulmen lacks raises an error that names it and says it is not supported yet.

  script.py      the program; the arguments after it are its sys.argv[1:]
  -m module      run a module as `python -m module` would
  -h, --help     show this message
"""

# Set for the program (and inherited by processes it starts), so relaunchers can start them under fulmen too.
SCRIPT_ENV = "FULMEN_COMPAT_SCRIPT"


# LightningCLI configs name Lightning classes (``class_path: lightning.pytorch.callbacks.EarlyStopping``). fulmen's
# CLI instantiates only allowlisted import paths; under ``fulmen run`` the Lightning spellings of the packages it
# allows by default resolve to the same fulmen classes, so they are allowed too (nothing else under ``lightning``).
_CLI_ENV = "FULMEN_CLI_ALLOWED_IMPORTS"
_CLI_PACKAGES = (
    "callbacks",
    "loggers",
    "profilers",
    "strategies",
    "accelerators",
    "plugins",
    "cli.ReduceLROnPlateau",
)


def _allow_lightning_class_paths_in_cli_configs() -> None:
    paths = [
        f"{root}.{package}"
        for root in ("lightning.pytorch", "pytorch_lightning")
        for package in _CLI_PACKAGES
    ]
    current = [p for p in os.environ.get(_CLI_ENV, "").split(",") if p.strip()]
    os.environ[_CLI_ENV] = ",".join(dict.fromkeys([*current, *paths]))


def relaunch_command() -> list[str] | None:
    """The command that starts this ``fulmen run`` program again, or None outside ``fulmen run``.

    A launcher that re-runs the main script per process (``strategy="ddp"``) must use this: the plain
    ``python script.py`` would import the real Lightning (or fail), not fulmen.
    """
    script = os.environ.get(SCRIPT_ENV)
    if not script or not sys.argv or os.path.abspath(sys.argv[0]) != script:
        return None
    return [sys.executable, "-m", "fulmen", "run", script, *sys.argv[1:]]


def _route_spawned_workers() -> None:
    """Make ``spawn`` workers import the script through :mod:`fulmen.compat._spawn_main`.

    A spawned worker re-imports the main script before unpickling its task; without the aliases the
    script's ``import lightning`` would fail (or load the real Lightning) there.
    """
    from multiprocessing import spawn

    original = spawn.get_preparation_data
    if getattr(original, "_fulmen_routed", False):
        return

    def get_preparation_data(name: str) -> dict[str, Any]:
        data: dict[str, Any] = original(name)
        if data.pop("init_main_from_path", None) is not None:
            data["init_main_from_name"] = "fulmen.compat._spawn_main"
        return data

    get_preparation_data._fulmen_routed = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = get_preparation_data


def _set_path0(entry: str) -> None:
    """``sys.path[0]`` as ``python script.py`` / ``python -m`` sets it (the script's folder / the cwd).

    The entry it replaces (the folder of the ``fulmen`` console script, or the cwd under ``python -m
    fulmen``) moves to the end, so fulmen itself stays importable without shadowing the program's modules.
    """
    if getattr(sys.flags, "safe_path", False):
        return
    old = sys.path[0] if sys.path else None
    if sys.path:
        sys.path[0] = entry
    else:
        sys.path.append(entry)
    if old is not None and old != entry and old not in sys.path:
        sys.path.append(old)


def run_script(path: str, args: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``path`` as ``__main__`` with ``sys.argv = [path, *args]`` and Lightning's imports on fulmen.

    Returns:
        The script's globals (as :func:`runpy.run_path` does).

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    script = os.path.abspath(path)
    if not os.path.exists(script):
        raise FileNotFoundError(f"fulmen run: can't open file {path!r}: no such file")
    enable_lightning_imports()
    os.environ[SCRIPT_ENV] = script
    _route_spawned_workers()
    _allow_lightning_class_paths_in_cli_configs()
    sys.argv = [script, *args]
    _set_path0(os.path.dirname(script) if os.path.isfile(script) else script)
    return runpy.run_path(script, run_name="__main__")


def run_module(module: str, args: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``module`` as ``python -m module`` would, with Lightning's imports on fulmen."""
    enable_lightning_imports()
    _allow_lightning_class_paths_in_cli_configs()
    sys.argv = [module, *args]
    _set_path0(os.getcwd())
    return runpy.run_module(module, run_name="__main__", alter_sys=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``fulmen run``'s entry point; ``argv`` excludes the subcommand name."""
    args = list(sys.argv[2:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="", file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] == "-m":
        if len(args) < 2:
            print("fulmen run: -m needs a module name\n\n" + USAGE, end="", file=sys.stderr)
            return 2
        run_module(args[1], args[2:])
        return 0
    if args[0].startswith("-"):
        print(f"fulmen run: unknown option {args[0]!r}\n\n" + USAGE, end="", file=sys.stderr)
        return 2
    if not os.path.exists(args[0]):
        print(f"fulmen run: can't open file {args[0]!r}: no such file", file=sys.stderr)
        return 2
    try:
        run_script(args[0], args[1:])
    except Exception as err:  # noqa: BLE001 - reported like `python script.py` reports it
        _print_user_traceback(err, os.path.abspath(args[0]))
        return 1
    return 0


def _print_user_traceback(err: BaseException, script: str) -> None:
    """Print the traceback from the script's first frame on, as ``python script.py`` would (no runpy frames)."""
    import traceback

    tb = err.__traceback__
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) != script:
        tb = tb.tb_next
    traceback.print_exception(type(err), err, tb if tb is not None else err.__traceback__)
