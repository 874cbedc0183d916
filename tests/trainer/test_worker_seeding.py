"""``seed_everything(workers=True)`` gives the Trainer's dataloaders ``pl_worker_init_function``, as Lightning does.

The function seeds each worker's torch, python and numpy RNGs from the worker id and the global rank (torch
alone seeds workers apart by id, not by rank). fulmen's per-worker seeds are its own derivation (not Lightning's numbers); what is compared with
Lightning is the behaviour: which loaders get the function, with which rank, and that every worker draws distinct
values, reproducibly.
"""

from __future__ import annotations

import importlib
import importlib.util
import random
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

HAS_LIGHTNING = importlib.util.find_spec("pytorch_lightning") is not None


class _Draws(Dataset):
    """Each item: the worker id and one draw from python's random, numpy's and torch's global RNGs."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        info = torch.utils.data.get_worker_info()
        return torch.tensor([float(info.id if info else -1), random.random(), float(np.random.rand()), torch.rand(()).item()],
                            dtype=torch.float64)


def _run(name: str, workers: bool, own_init: Any = None) -> tuple[Any, list[list[float]], Any]:
    L = importlib.import_module(name)
    seen: list[list[float]] = []

    class M(L.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            seen.extend(batch.tolist())
            return self.layer(batch.float()).sum()

        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            pass

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        L.seed_everything(7, workers=workers)
        train = DataLoader(_Draws(), batch_size=2, num_workers=2, worker_init_fn=own_init)
        val = DataLoader(_Draws(), batch_size=4)
        t = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, accelerator="cpu", num_sanity_val_steps=0)
        t.fit(M(), train, val)
    return train.worker_init_fn, seen, val.worker_init_fn


def _describe(fn: Any) -> Any:
    if fn is None or not hasattr(fn, "func"):
        return fn
    return (fn.func.__name__, fn.args, fn.keywords)


def _first_draws(seen: list[list[float]]) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for row in seen:
        out.setdefault(int(row[0]), row[1:])
    return out


def test_worker_init_fn_added_and_workers_seeded_apart_reproducibly() -> None:
    init, seen, val_init = _run("fulmen", workers=True)
    assert _describe(init) == ("pl_worker_init_function", (), {"rank": 0})
    assert _describe(val_init) == ("pl_worker_init_function", (), {"rank": 0})  # every stage's loaders
    first = _first_draws(seen)
    assert sorted(first) == [0, 1]
    for k in range(3):  # python, numpy, torch: each worker draws its own values
        assert first[0][k] != first[1][k]
    assert len({tuple(r[1:]) for r in seen}) == len(seen) == 8
    _, again, _ = _run("fulmen", workers=True)
    assert again == seen  # reproducible from the seed


def test_no_worker_init_fn_without_workers_flag_and_own_one_is_kept() -> None:
    init, _, val_init = _run("fulmen", workers=False)
    assert init is None and val_init is None
    own = _OwnInit()
    init, _, _ = _run("fulmen", workers=True, own_init=own)
    assert init is own


class _OwnInit:
    def __call__(self, worker_id: int) -> None:
        pass


@pytest.mark.skipif(not HAS_LIGHTNING, reason="compares with pytorch_lightning")
def test_which_loaders_get_it_equals_lightning() -> None:
    for workers in (True, False):
        ours = _run("fulmen", workers=workers)
        theirs = _run("pytorch_lightning", workers=workers)
        assert (_describe(ours[0]), _describe(ours[2])) == (_describe(theirs[0]), _describe(theirs[2]))
        for seen in (ours[1], theirs[1]):  # both: every worker draws its own python/numpy/torch values
            first = _first_draws(seen)
            assert all(first[0][k] != first[1][k] for k in range(3))
