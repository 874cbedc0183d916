"""Seeding of Python, NumPy and torch RNGs, and capture/restore of their states."""

from __future__ import annotations

import os
import random
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import torch

from fulmen.utilities.rank_zero import log, rank_zero_warn

max_seed_value = 4294967295
min_seed_value = 0


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed python's ``random``, numpy and torch (all devices); export ``PL_GLOBAL_SEED``.

    Args:
        seed: the seed; ``None`` reads ``PL_GLOBAL_SEED`` or picks 0.
        workers: when True, dataloader workers are seeded deterministically (``PL_SEED_WORKERS=1``).
        verbose: log the seed.

    Returns:
        The seed used.
    """
    if seed is None:
        env_seed = os.environ.get("PL_GLOBAL_SEED")
        if env_seed is None:
            seed = 0
            rank_zero_warn(f"No seed found, seed set to {seed}")
        else:
            try:
                seed = int(env_seed)
            except ValueError:
                seed = 0
                rank_zero_warn(f"Invalid seed found: {env_seed!r}, seed set to {seed}")
    elif not isinstance(seed, int):
        seed = int(seed)
    if not (min_seed_value <= seed <= max_seed_value):
        rank_zero_warn(f"{seed} is not in bounds, numpy accepts from {min_seed_value} to {max_seed_value}")
        seed = 0
    if verbose:
        log.info(f"Seed set to {seed}")
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    torch.manual_seed(seed)
    os.environ["PL_SEED_WORKERS"] = f"{int(workers)}"
    return seed


def reset_seed() -> None:
    """Re-seed from ``PL_GLOBAL_SEED`` if ``seed_everything`` was called (used in spawned processes)."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    if seed is None:
        return
    workers = os.environ.get("PL_SEED_WORKERS", "0")
    seed_everything(int(seed), workers=bool(int(workers)), verbose=False)


def pl_worker_init_function(worker_id: int, rank: int | None = None) -> None:
    """Give every dataloader worker on every rank a distinct, reproducible seed."""
    global_rank = rank if rank is not None else int(os.environ.get("RANK", 0))
    process_seed = torch.initial_seed()
    base_seed = process_seed - worker_id
    ss = _seed_sequence(base_seed, worker_id, global_rank)
    torch.manual_seed(ss[0])
    random.seed(ss[1])
    try:
        import numpy as np

        np.random.seed(ss[2] % (2**32))
    except ImportError:  # pragma: no cover
        pass


def _auto_add_worker_init_fn(loader: Any, rank: int) -> None:
    """Give ``loader`` :func:`pl_worker_init_function` (bound to ``rank``) when ``seed_everything(workers=True)``
    was called and the loader has no ``worker_init_fn`` of its own (as Lightning does)."""
    if os.environ.get("PL_SEED_WORKERS", "0") != "1" or not hasattr(loader, "worker_init_fn"):
        return
    if loader.worker_init_fn is None:
        import functools

        loader.worker_init_fn = functools.partial(pl_worker_init_function, rank=rank)


def _seed_sequence(base: int, worker_id: int, rank: int) -> list[int]:
    import numpy as np

    seq = np.random.SeedSequence([base & 0xFFFFFFFFFFFFFFFF, worker_id, rank])
    return [int(x) for x in seq.generate_state(3, dtype=np.uint64)]


def collect_rng_states(include_cuda: bool = True) -> dict[str, Any]:
    """The states of every global RNG (python, numpy, torch and, if initialised, cuda)."""
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    try:
        import numpy as np

        states["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover
        pass
    if include_cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`collect_rng_states`."""
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "python" in states:
        version, state, gauss = states["python"]
        random.setstate((version, tuple(state), gauss))
    if "numpy" in states:
        import numpy as np

        np.random.set_state(states["numpy"])
    if "torch.cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])


@contextmanager
def isolate_rng(include_cuda: bool = True) -> Generator[None, None, None]:
    """Run a block without touching the global RNG states seen after it."""
    states = collect_rng_states(include_cuda)
    try:
        yield
    finally:
        set_rng_states(states)
