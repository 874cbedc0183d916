"""Rank-zero helpers: run or print something on the global rank 0 process only.

The rank is read once from the environment (RANK, SLURM_PROCID, LOCAL_RANK, ...) and updated by the
strategy when it sets up the process group (``rank_zero_only.rank = ...``).
"""

from __future__ import annotations

import logging
import os
import warnings
from functools import wraps
from typing import Any, Callable, TypeVar

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
