"""``lightning.*.utilities.imports`` under ``fulmen run``: the version and availability flags users read.

Lightning code often does ``from lightning.fabric.utilities.imports import _TORCH_GREATER_EQUAL_2_4`` or
``..._TORCHVISION_AVAILABLE``. These are computed here on first use from the installed packages.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import torch
from packaging.version import Version

_TORCH_VERSION = Version(Version(torch.__version__).base_version)
_GREATER_EQUAL = re.compile(r"^_TORCH_(GREATER_EQUAL|LESS_EQUAL|LESS)_(\d+)_(\d+)(?:_(\d+))?$")
_AVAILABLE = re.compile(r"^_([A-Z0-9_]+)_AVAILABLE$")

# Flags whose package name is not the lowercased flag name.
_PACKAGE_NAMES = {"LIGHTNING": "fulmen", "PYTHON_GREATER_EQUAL_3_10": "", "OMEGACONF": "omegaconf"}


def __getattr__(name: str) -> Any:
    match = _GREATER_EQUAL.match(name)
    if match:
        kind, major, minor, patch = match.groups()
        bound = Version(f"{major}.{minor}.{patch or 0}")
        value: bool = {
            "GREATER_EQUAL": _TORCH_VERSION >= bound,
            "LESS_EQUAL": _TORCH_VERSION <= bound,
            "LESS": _TORCH_VERSION < bound,
        }[kind]
        globals()[name] = value
        return value
    match = _AVAILABLE.match(name)
    if match:
        package = _PACKAGE_NAMES.get(match.group(1), match.group(1).lower())
        value = bool(package) and importlib.util.find_spec(package) is not None
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
