"""The version and availability flags of Lightning's modules, computed for this environment.

Lightning modules export flags that user code imports: ``from lightning.pytorch.utilities.imports import
_TORCHVISION_AVAILABLE``, ``from lightning.fabric.utilities.imports import _TORCH_GREATER_EQUAL_2_4, _IS_WINDOWS``,
``from lightning.pytorch.loggers.tensorboard import _TENSORBOARD_AVAILABLE``. Under ``fulmen run`` every Lightning
alias module answers a flag name it does not otherwise have from :func:`flag_value` here, so the flag is found in
whichever Lightning module the program imports it from.

Each value is a fact about this environment, computed on first use (``importlib.util.find_spec`` and package
metadata, never an import of the package itself), then cached: nothing here is hard-coded true.

* ``_X_AVAILABLE``: whether the package for ``X`` is importable (``_PACKAGE_NAMES`` maps the flags whose module
  is not ``x.lower()``; ``_SPECIAL`` the few that need more than one package or a minimum version);
* ``_TORCH_GREATER_EQUAL_2_4`` / ``_TORCH_LESS_EQUAL_2_6`` / ``_TORCH_LESS_2_1``: torch's base version against
  the bound; ``_X_GREATER_EQUAL_1_2`` the same for another installed distribution (False when it is missing);
* ``_PYTHON_GREATER_EQUAL_3_10_0``: the interpreter version; ``_IS_WINDOWS``, ``_IS_INTERACTIVE``: the platform.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Callable
from typing import Any

_VERSION_FLAG = re.compile(r"^_([A-Z0-9_]+?)_(GREATER_EQUAL|LESS_EQUAL|LESS)_(\d+)_(\d+)(?:_(\d+))?$")
_AVAILABLE = re.compile(r"^_([A-Z0-9_]+)_AVAILABLE$")

# Flags whose importable module is not the lowercased flag name.
_PACKAGE_NAMES = {
    "LIGHTNING": "fulmen",  # the framework itself: here, fulmen
    "TENSORBOARDX": "tensorboardX",
    "COMET": "comet_ml",
    "XLA": "torch_xla",
    "TORCH_XLA": "torch_xla",
    "SKLEARN": "sklearn",
    "TORCH_TRT": "torch_tensorrt",
    "HPU": "habana_frameworks",
    "HABANA": "habana_frameworks",
    "IPU": "poptorch",
    "POPTORCH": "poptorch",
    "FAIRSCALE": "fairscale",
    "LITLOGGER": "litlogger",
    "LIGHTNING_SDK": "lightning_sdk",
    "HYDRA": "hydra",
    "HIVEMIND": "hivemind",
    "TORCHDATA": "torchdata",
    "TORCHTEXT": "torchtext",
    "YAML": "yaml",
    "PIL": "PIL",
}

# Distribution names (for versions) whose name differs from the lowercased flag prefix.
_DIST_NAMES = {"TORCH": "torch", "TENSORBOARDX": "tensorboardX", "SKLEARN": "scikit-learn", "COMET": "comet_ml"}


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _dist_version(dist: str) -> tuple[int, ...] | None:
    """The base release of an installed distribution, e.g. ``(2, 13, 0)``; None if it is not installed."""
    try:
        raw = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    numbers = re.match(r"^\s*v?(\d+(?:\.\d+)*)", raw)
    return tuple(int(p) for p in numbers.group(1).split(".")) if numbers else None


def _at_least(dist: str, *bound: int) -> bool:
    version = _dist_version(dist)
    return version is not None and _compare(version, bound, "GREATER_EQUAL")


def _compare(version: tuple[int, ...], bound: tuple[int, ...], kind: str) -> bool:
    width = max(len(version), len(bound))
    v = version + (0,) * (width - len(version))
    b = bound + (0,) * (width - len(bound))
    return {"GREATER_EQUAL": v >= b, "LESS_EQUAL": v <= b, "LESS": v < b}[kind]


def _torch_version() -> tuple[int, ...]:
    import torch  # already imported by anything that reaches a Lightning alias

    numbers = re.match(r"^(\d+(?:\.\d+)*)", torch.__version__)
    return tuple(int(p) for p in numbers.group(1).split(".")) if numbers else (0,)


def _kineto() -> bool:
    import torch.autograd

    return bool(torch.autograd.kineto_available())


def _interactive() -> bool:
    return hasattr(sys, "ps1") or bool(sys.flags.interactive)


# Flags that need more than "is the module there".
_SPECIAL: dict[str, Callable[[], bool]] = {
    "_IS_WINDOWS": lambda: sys.platform == "win32",
    "_IS_INTERACTIVE": _interactive,
    "_KINETO_AVAILABLE": _kineto,
    "_MLFLOW_SYNCHRONOUS_AVAILABLE": lambda: _at_least("mlflow", 2, 8) or _at_least("mlflow-skinny", 2, 8),
    "_JSONARGPARSE_SIGNATURES_AVAILABLE": lambda: _module_exists("jsonargparse")
    and _module_exists("docstring_parser")
    and _module_exists("typeshed_client"),
    "_TORCHVISION_AVAILABLE": lambda: _module_exists("torchvision"),
}


def _compute(name: str) -> bool | None:
    special = _SPECIAL.get(name)
    if special is not None:
        return bool(special())
    match = _VERSION_FLAG.match(name)
    if match:
        package, kind, major, minor, patch = match.groups()
        bound = (int(major), int(minor), int(patch or 0))
        if package == "PYTHON":
            return _compare(tuple(sys.version_info[:3]), bound, kind)
        if package == "TORCH":
            return _compare(_torch_version(), bound, kind)
        version = _dist_version(_DIST_NAMES.get(package, package.lower()))
        return version is not None and _compare(version, bound, kind)
    match = _AVAILABLE.match(name)
    if match:
        return _module_exists(_PACKAGE_NAMES.get(match.group(1), match.group(1).lower()))
    return None


def is_flag(name: str) -> bool:
    """Whether ``name`` has the form of a Lightning version/availability flag."""
    return name in _SPECIAL or bool(_VERSION_FLAG.match(name) or _AVAILABLE.match(name))


def flag_value(name: str) -> bool | None:
    """The value of the flag ``name`` in this environment (cached), or None if ``name`` is not a flag."""
    cached = globals().get(name)
    if isinstance(cached, bool):
        return cached
    value = _compute(name)
    if value is not None:
        globals()[name] = value
    return value


def __getattr__(name: str) -> Any:
    value = flag_value(name)
    if value is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return value
