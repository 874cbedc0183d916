"""The ``fulmen`` console script (and ``python -m fulmen``): a small subcommand dispatcher.

Each subcommand is an entry of :data:`SUBCOMMANDS`: ``name -> (module, function, help)``. The module is
imported only when its subcommand runs, so ``fulmen --help`` stays fast and no optional dependency is
imported before it is needed. The function receives the arguments after the subcommand name and
returns an exit code (``None`` counts as 0). To add a subcommand, add an entry here.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "fit": ("fulmen.cli", "console_fit", "train a model with LightningCLI (`fulmen fit --help`)"),
    "validate": ("fulmen.cli", "console_validate", "validate a model with LightningCLI"),
    "test": ("fulmen.cli", "console_test", "test a model with LightningCLI"),
    "predict": ("fulmen.cli", "console_predict", "predict with a model with LightningCLI"),
    "fabric": (
        "fulmen.fabric._cli",
        "main",
        "run a Fabric script on several devices; consolidate a sharded checkpoint (`fulmen fabric --help`)",
    ),
    "sweep": (
        "fulmen.sweep.cli",
        "main",
        "run many trials of one unmodified script over a search space (`fulmen sweep --help`)",
    ),
    "launch": (
        "fulmen.launch.cli",
        "main",
        "run a script on SLURM, Kubernetes, SkyPilot or here, resumed after preemptions (`fulmen launch --help`)",
    ),
    "runs": ("fulmen.launch.cli", "runs_main", "list launches and their status (`fulmen runs --root DIR`)"),
    "logs": ("fulmen.launch.cli", "logs_main", "print or follow a launch's log (`fulmen logs ID [-f]`)"),
    "stop": ("fulmen.launch.cli", "stop_main", "cancel a launch (`fulmen stop ID`)"),
    "serve": (
        "fulmen.serve.cli",
        "main",
        "serve a checkpoint's predict_step or a file defining a LitAPI over HTTP (`fulmen serve --help`)",
    ),
    "run": (
        "fulmen.compat.run",
        "main",
        "run an unmodified Lightning 2.x script on fulmen (`fulmen run script.py`)",
    ),
}


def _usage() -> str:
    width = max(len(n) for n in SUBCOMMANDS)
    lines = ["usage: fulmen <command> [args...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {entry[2]}" for name, entry in sorted(SUBCOMMANDS.items())]
    lines += ["", "Run `fulmen <command> --help` for the arguments of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default: ``sys.argv[1:]``) to its subcommand; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from fulmen.__about__ import __version__

        print(f"fulmen {__version__}")
        return 0
    entry = SUBCOMMANDS.get(argv[0])
    if entry is None:
        print(f"fulmen: unknown command {argv[0]!r}.\n\n{_usage()}", file=sys.stderr)
        return 2
    module, function, _ = entry
    result = getattr(importlib.import_module(module), function)(argv[1:])
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
