"""``fulmen.sweep.run``: an Optuna-style objective, run over ``parallel`` warm worker processes.

Optuna's ``study.optimize(n_jobs=P)`` runs trials as threads of one interpreter: they share the GIL and
``torch.set_num_threads`` is global, so two trials each run slower than alone. Starting a fresh process per
trial costs an interpreter and a ``torch`` import (1-2 s, as much as a small trial). Here the P workers are
forked from the calling process once, with torch, fulmen and the objective's module already loaded, and each
runs many trials on its own cores (affinity and torch threads set once) until the study has ``trials``.
They coordinate only through the study's storage (SQLite in ``dir`` unless ``storage`` is given).
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from fulmen.sweep.engine import MODES, make_pruner, make_sampler, make_storage, optuna
from fulmen.sweep.placement import Slot, plan


def run(
    objective: Callable[[Any], float],
    trials: int = 10,
    parallel: int = 1,
    devices_per_trial: int = 1,
    *,
    direction: str = "minimize",
    sampler: Any = "tpe",
    pruner: Any = "median",
    seed: int | None = None,
    name: str | None = None,
    dir: str | None = None,
    storage: str | None = None,
    timeout: float | None = None,
    catch: Sequence[type[Exception]] = (),
    trials_per_device: int = 1,
) -> Any:
    """Run ``objective(trial)`` (Optuna-style: ``trial.suggest_*``, builds its own Trainer) ``trials`` times.

    Args:
        objective: returns the value to optimize; may raise ``optuna.TrialPruned`` (as
            :class:`fulmen.sweep.PruningCallback` does).
        trials: how many trials in all (the study's trials count, also those of an earlier run on the storage).
        parallel: trials at once, each in its own warm worker process on its own cores (CPU) or GPUs.
        devices_per_trial: GPUs per trial (each worker sees its own ``CUDA_VISIBLE_DEVICES``).
        direction: ``"minimize"``/``"maximize"`` (or ``"min"``/``"max"``).
        sampler: a name (tpe, random, cmaes) or an Optuna sampler. With a seed, each trial's sampler is seeded
            by ``seed + trial number``: ``parallel=1`` repeats exactly.
        pruner: a name (none, median, asha, hyperband) or an Optuna pruner.
        seed: the sampler's seed.
        name: the study's name (default ``"sweep"``).
        dir: where the SQLite study lives when ``parallel > 1`` and no ``storage`` is given (default: a new
            temporary folder).
        storage: an Optuna storage URL shared by the workers.
        timeout: start no new trial after this many seconds.
        catch: exception types a trial may raise without stopping the sweep (the trial is marked failed).
        trials_per_device: trials that may share one GPU.

    Returns:
        The ``optuna.Study`` (``study.best_trial``, ``study.trials_dataframe()``, ...).

    Raises:
        ValueError: a bad argument (the message names it), or more parallel trials than devices.
        RuntimeError: a worker process died (its exception is printed by the worker).
    """
    op = optuna()
    direction = MODES.get(direction, direction)
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction={direction!r}; expected 'minimize' or 'maximize' (or 'min'/'max').")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials={trials!r}; expected a positive integer.")
    if not callable(objective):
        raise ValueError(f"objective={objective!r} is not callable. Fix: pass a function objective(trial) -> float.")
    slots = plan(parallel, devices_per_trial, trials_per_device)
    name = name or "sweep"
    if storage is None and parallel > 1:
        folder = dir or tempfile.mkdtemp(prefix="fulmen-sweep-")
        os.makedirs(folder, exist_ok=True)
        storage = f"sqlite:///{os.path.join(folder, 'study.db')}"
    store = make_storage(storage) if storage is not None else None
    pruner_obj = make_pruner(pruner) if isinstance(pruner, str) else pruner
    study = op.create_study(study_name=name, storage=store, direction=direction, load_if_exists=True,
                            pruner=pruner_obj, sampler=_sampler(sampler, seed, 0))
    if parallel == 1:
        _work(study, objective, trials, sampler, seed, timeout, tuple(catch), None, slots[0])
        return study
    ctx = multiprocessing.get_context("fork")  # warm: the workers start with everything already imported
    counter = ctx.Value("i", len(study.get_trials(deepcopy=False)))
    procs = [ctx.Process(target=_worker, args=(name, storage, pruner, objective, trials, sampler, seed, timeout,
                                               tuple(catch), counter, slot), name=f"fulmen-sweep-{slot.index}")
             for slot in slots]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [p for p in procs if p.exitcode != 0]
    if failed:
        raise RuntimeError(
            f"{len(failed)} sweep worker(s) exited with {[p.exitcode for p in failed]}: a trial raised (see its "
            "traceback above). Fix the objective, or pass catch=(ExceptionType,) to mark such trials failed."
        )
    return op.load_study(study_name=name, storage=make_storage(storage))  # type: ignore[arg-type]


def _sampler(sampler: Any, seed: int | None, number: int) -> Any:
    if not isinstance(sampler, str):
        return sampler
    if sampler == "grid":
        raise ValueError("sampler='grid' needs the grid: pass optuna.samplers.GridSampler(search_space).")
    return make_sampler(sampler, None if seed is None else seed + number)


def _worker(name: str, storage: str, pruner: Any, objective: Callable[[Any], float], trials: int, sampler: Any,
            seed: int | None, timeout: float | None, catch: tuple[type[Exception], ...], counter: Any,
            slot: Slot) -> None:
    for key, value in slot.env().items():
        os.environ[key] = value
    slot.apply()
    import torch

    if slot.cores:
        torch.set_num_threads(len(slot.cores))
    op = optuna()
    study = op.load_study(study_name=name, storage=make_storage(storage),
                          pruner=make_pruner(pruner) if isinstance(pruner, str) else pruner)
    _work(study, objective, trials, sampler, seed, timeout, catch, counter, slot)


def _work(study: Any, objective: Callable[[Any], float], trials: int, sampler: Any, seed: int | None,
          timeout: float | None, catch: tuple[type[Exception], ...], counter: Any, slot: Slot) -> None:
    import time

    deadline = None if timeout is None else time.time() + timeout
    while deadline is None or time.time() < deadline:
        if counter is None:
            number = len(study.get_trials(deepcopy=False))
        else:
            with counter.get_lock():  # claim a trial: the study never gets more than ``trials``
                number = counter.value
                counter.value += 1
        if number >= trials:
            return
        study.sampler = _sampler(sampler, seed, number)
        study.optimize(objective, n_trials=1, catch=catch)
