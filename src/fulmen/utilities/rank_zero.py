"""Rank-zero helpers: run or print something on the global rank 0 process only.

The rank is read once from the environment (RANK, SLURM_PROCID, LOCAL_RANK, ...) and updated by the
strategy when it sets up the process group (``rank_zero_only.rank = ...``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

log = logging.getLogger("fulmen")
T = TypeVar("T")


def _rank_from_env() -> int:
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(key)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                continue
    return 0


def rank_zero_only(fn: Callable[..., T], default: T | None = None) -> Callable[..., T | None]:
    """Decorate ``fn`` so it only runs on global rank 0 and returns ``default`` elsewhere."""

    @wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> T | None:
        if rank_zero_only.rank == 0:  # type: ignore[attr-defined]
            return fn(*args, **kwargs)
        return default

    return wrapped


rank_zero_only.rank = _rank_from_env()  # type: ignore[attr-defined]

# ``lightning_utilities`` (a separate package Lightning depends on) has its own ``rank_zero_only``, which raises
# "The `rank_zero_only.rank` needs to be set before use" until someone sets its rank; Lightning sets it at import
# and again when the strategy knows the global rank. Libraries built on it (lightning-hydra-template's
# RankedLogger, torchmetrics) rely on that, so fulmen sets it too, without importing the package itself here
# (it costs ~15-170 ms): only where it is already imported, or when the run starts (``sync_lightning_utilities``).
_LU_RANK_ZERO = "lightning_utilities.core.rank_zero"


def _set_lightning_utilities_rank(rank: int, overwrite: bool) -> None:
    module = sys.modules.get(_LU_RANK_ZERO)
    if module is None:
        return
    target = getattr(module, "rank_zero_only", None)
    if target is not None and (overwrite or getattr(target, "rank", None) is None):
        target.rank = rank


def set_global_rank(rank: int) -> None:
    """Set the global rank of this process for fulmen's rank-zero helpers and ``lightning_utilities``' ones.

    Strategies call this once the rank is known (in every process, spawned workers included).
    """
    rank_zero_only.rank = rank  # type: ignore[attr-defined]
    sync_lightning_utilities()  # a fresh worker may not have imported it yet
    _set_lightning_utilities_rank(rank, overwrite=True)


def sync_lightning_utilities(import_if_installed: bool = True) -> None:
    """Give ``lightning_utilities``' ``rank_zero_only`` this process's rank if it has none yet.

    With ``import_if_installed``, the package is imported first when it is installed (it is optional: nothing
    happens when it is not), so code that imports it later still finds the rank set.
    """
    if import_if_installed and _LU_RANK_ZERO not in sys.modules:
        try:
            if importlib.util.find_spec("lightning_utilities") is None:
                return
            importlib.import_module(_LU_RANK_ZERO)
        except ImportError:  # a broken or partial install: leave it alone
            return
    _set_lightning_utilities_rank(rank_zero_only.rank, overwrite=False)  # type: ignore[attr-defined]


_set_lightning_utilities_rank(rank_zero_only.rank, overwrite=False)  # type: ignore[attr-defined]


@rank_zero_only
def rank_zero_info(*args: Any, **kwargs: Any) -> None:
    log.info(*args, **kwargs)


@rank_zero_only
def rank_zero_debug(*args: Any, **kwargs: Any) -> None:
    log.debug(*args, **kwargs)


@rank_zero_only
def rank_zero_warn(message: str | Warning, category: type[Warning] = UserWarning, stacklevel: int = 4, **kw: Any) -> None:
    warnings.warn(message, category, stacklevel=stacklevel, **kw)


class LightningDeprecationWarning(DeprecationWarning):
    """Deprecation of a Lightning-compatible API."""


class PossibleUserWarning(UserWarning):
    """A warning about a likely user mistake."""


@rank_zero_only
def rank_zero_deprecation(message: str, stacklevel: int = 4) -> None:
    warnings.warn(message, LightningDeprecationWarning, stacklevel=stacklevel)


def rank_prefixed_message(message: str, rank: int | None) -> str:
    return f"[rank: {rank}] {message}" if rank is not None else message
