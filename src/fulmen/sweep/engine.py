"""Optuna, imported lazily: samplers, pruners and storages by name. fulmen writes none of its own."""

from __future__ import annotations

import re
from typing import Any

SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("none", "median", "asha", "hyperband")
MODES = {"min": "minimize", "max": "maximize"}


def optuna() -> Any:
    """The ``optuna`` module.

    Raises:
        ModuleNotFoundError: optuna is not installed; the message names the extra.
    """
    try:
        import optuna as _optuna
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "fulmen.sweep runs on Optuna, which is not installed. Fix: pip install 'fulmen[sweep]'."
        ) from exc
    _optuna.logging.set_verbosity(_optuna.logging.WARNING)
    return _optuna


def check_choice(option: str, value: str, allowed: tuple[str, ...] | dict[str, str]) -> str:
    """``value`` if it is one of ``allowed``.

    Raises:
        ValueError: names the option, the value and the allowed ones.
    """
    if value not in allowed:
        raise ValueError(f"{option} {value!r} is not known; expected one of {', '.join(allowed)}. Fix: pick one.")
    return value


def make_sampler(name: str, seed: int | None, grid: dict[str, list[Any]] | None = None) -> Any:
    """An Optuna sampler by name (``grid`` needs the grid from :meth:`SearchSpace.grid`).

    The CLI driver crosses its grid itself (the points are enqueued, see ``driver.Sweep._ask``); the Python API
    uses Optuna's GridSampler.
    """
    check_choice("--sampler", name, SAMPLERS)
    samplers = optuna().samplers
    if name == "grid":
        return samplers.GridSampler(grid or {}, seed=seed)
    if name == "random":
        return samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return samplers.TPESampler(seed=seed)


def make_pruner(name: str) -> Any:
    """An Optuna pruner by name; ``none`` never prunes."""
    check_choice("--pruner", name, PRUNERS)
    pruners = optuna().pruners
    if name == "median":
        return pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "asha":
        return pruners.SuccessiveHalvingPruner()
    if name == "hyperband":
        return pruners.HyperbandPruner()
    return pruners.NopPruner()


def redact(url: str) -> str:
    """A storage URL with its password replaced by ``***`` (safe to print or to write in a file)."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def make_storage(url: str, heartbeat: int | None = None) -> Any:
    """Optuna's RDB storage for ``url`` (``sqlite:///path``, ``postgresql://...``), with heartbeats if asked.

    Raises:
        ValueError: the storage cannot be reached or opened; the message shows the URL without its password.
    """
    op = optuna()
    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs["heartbeat_interval"] = heartbeat
        kwargs["grace_period"] = heartbeat * 3
        # a stale trial (its worker died) is failed and enqueued again with its parameters and folder
        import inspect

        key = "heartbeat_stale_trial_callback"  # Optuna 5's name; earlier ones call it failed_trial_callback
        if key not in inspect.signature(op.storages.RDBStorage).parameters:
            key = "failed_trial_callback"
        kwargs[key] = op.storages.RetryFailedTrialCallback(max_retry=3)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}  # many processes share the file: wait for the lock
    elif url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        return op.storages.RDBStorage(_with_driver(url), engine_kwargs=engine_kwargs, **kwargs)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy/driver errors: shown without the password
        message = str(exc).replace(url, redact(url))
        raise ValueError(
            f"--storage {redact(url)}: cannot open the storage ({type(exc).__name__}: {redact(message)}). "
            "Fix: check the URL, that the server is running and reachable, and that its driver is installed "
            "(psycopg2-binary for PostgreSQL)."
        ) from None


def _with_driver(url: str) -> str:
    """``postgresql://`` names no driver: SQLAlchemy 2.1 picks psycopg (3), 2.0 psycopg2. Use the one installed."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url
