"""Finding the loaders for a stage and computing how many batches run (limits, fractions, overfit)."""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

from torch.utils._pytree import tree_unflatten
from torch.utils.data import DataLoader, SequentialSampler

from fulmen.utilities.combined_loader import CombinedLoader, flatten_iterables
from fulmen.utilities.data import has_len
from fulmen.utilities.exceptions import (
    MisconfigurationException,
    MisconfigurationTypeError,
    MisconfigurationValueError,
    NotSupportedYetError,
)

_HOOK = {"train": "train_dataloader", "val": "val_dataloader", "test": "test_dataloader", "predict": "predict_dataloader"}


def _defines(obj: Any, name: str, base: type) -> bool:
    """Whether ``obj`` defines ``name`` beyond ``base`` (an attribute set to None, Lightning's way of disabling a
    step or a loader hook, does not count)."""
    from fulmen.core.dispatch import _overrides

    return obj is not None and _overrides(obj, base, name)


def source_loaders(stage: str, explicit: Any, module: Any, datamodule: Any, dispatcher: Any) -> Any:
    """The loaders for ``stage`` from, in order: the explicit argument, the datamodule, the module."""
    from fulmen.core.datamodule import LightningDataModule
    from fulmen.core.module import LightningModule

    if explicit is not None:
        return explicit
    name = _HOOK[stage]
    if _defines(datamodule, name, LightningDataModule):
        return getattr(datamodule, name)()
    if _defines(module, name, LightningModule):
        return dispatcher.module_hook(name)
    return None


def as_eval_list(loaders: Any) -> list[Any]:
    """Evaluation loaders as a list (a dict's values in order; a CombinedLoader's flattened iterables)."""
    if loaders is None:
        return []
    if isinstance(loaders, CombinedLoader):
        return list(loaders.flattened)
    # nested dicts/lists/tuples: flattened in order, as Lightning's CombinedLoader(mode="sequential") does
    return list(flatten_iterables(loaders)[0])


def check_iterable(loader: Any, stage: str) -> None:
    if isinstance(loader, (str, bytes)) or not isinstance(loader, Iterable):
        raise MisconfigurationTypeError(
            f"The {stage} dataloader is {type(loader).__name__} ({loader!r:.80}); expected an iterable such as "
            "torch.utils.data.DataLoader. Fix: return a DataLoader from "
            f"{_HOOK[stage]}() or pass one to the Trainer method."
        )


def as_train_loader(loaders: Any) -> Any:
    if isinstance(loaders, (Mapping, list, tuple)) and not isinstance(loaders, CombinedLoader):
        return CombinedLoader(loaders, mode="max_size_cycle")
    return loaders


def num_batches(loader: Any, limit: int | float, arg: str) -> int | float:
    """Batches to run from ``loader`` under ``limit`` (an int count or a float fraction)."""
    n: int | float = len(loader) if has_len(loader) else math.inf
    if isinstance(limit, int):
        return min(n, limit)
    if n == math.inf:
        if limit not in (0.0, 1.0):
            raise MisconfigurationException(
                f"Trainer({arg}={limit}) is a fraction, but the dataloader has no length (an IterableDataset?). "
                f"Fix: pass an int number of batches, e.g. {arg}=100."
            )
        return 0 if limit == 0.0 else math.inf
    result = int(n * limit)
    if limit > 0 and result == 0 and n > 0:
        raise MisconfigurationException(
            f"Trainer({arg}={limit}) of {n} batches selects 0 batches. Fix: use a larger fraction or an int, e.g. "
            f"{arg}=1."
        )
    return result


def overfit_loader(loader: Any, mode: str = "train") -> Any:
    """For ``overfit_batches``: the same loader without shuffling, as Lightning (train and val loaders).

    A loader whose sampler is not sequential (``shuffle=True``, a custom sampler) is rebuilt with a
    ``SequentialSampler``, with Lightning's warning.
    """
    if isinstance(loader, DataLoader) and not isinstance(loader.sampler, SequentialSampler) and hasattr(loader.dataset, "__len__"):
        from fulmen.utilities.rank_zero import rank_zero_warn

        rank_zero_warn(
            f"You requested to overfit but enabled {mode} dataloader shuffling. We are turning off the {mode} "
            "dataloader shuffling for you."
        )
        return DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            shuffle=False,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            drop_last=loader.drop_last,
            pin_memory=loader.pin_memory,
        )
    return loader


class DataManager:
    """Holds the current run's loaders and batch counts (public through Trainer properties)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.reset()

    def reset(self) -> None:
        self.explicit: dict[str, Any] = {}
        self.train_loader: Any = None
        self.num_training_batches: int | float = math.inf
        self.val_loaders: list[Any] = []
        self.num_val_batches: list[int | float] = []
        self.test_loaders: list[Any] = []
        self.num_test_batches: list[int | float] = []
        self.predict_loaders: list[Any] = []
        self.num_predict_batches: list[int | float] = []
        # per evaluation stage, its loaders in the structure the user gave (a dict, nested lists, ...), what
        # trainer.val_dataloaders & co. return as in Lightning; the loops run the flat lists above
        self.eval_iterables: dict[str, Any] = {}
        # None when val_check_interval is time-based (Lightning's value too): the fit loop reads a clock instead
        self.val_check_batch: int | float | None = math.inf
        # seconds of the time-based val_check_interval, else None
        self.val_check_seconds: float | None = None
        self._train_loaded_epoch = -1
        # per dataloader: the logger step of the next evaluation batch's on_step values (as in Lightning, it
        # counts the batches seen since the evaluation loaders were last loaded, so it runs on across the
        # validation runs of one fit and starts at 0 for each validate/test call)
        self.eval_log_steps: dict[int, int] = {}
        # a stateful train loader's state from the checkpoint, applied before its first iteration
        self.pending_loader_state: Any = None
        # the train loader's own generators' states from the checkpoint, applied when the loader is built
        self.pending_generator_states: list[Any] | None = None

    def _source(self, stage: str) -> Any:
        t = self.trainer
        return source_loaders(stage, self.explicit.get(stage), t.lightning_module, t.datamodule, t._dispatcher)

    # ---- train
    def load_train(self) -> None:
        t = self.trainer
        cfg = t.config
        loaders = self._source("train")
        if loaders is None:
            raise MisconfigurationTypeError(
                "No training data: pass train_dataloaders to trainer.fit, give the module or datamodule a "
                "train_dataloader() method, or pass a datamodule."
            )
        if isinstance(loaders, CombinedLoader) and loaders.mode == "sequential":
            raise ValueError(
                '`_FitLoop` does not support the `CombinedLoader(mode="sequential")` mode. The available modes are: '
                "['min_size', 'max_size_cycle', 'max_size']"
            )
        for ld in loaders.flattened if isinstance(loaders, CombinedLoader) else flatten_iterables(loaders)[0]:
            check_iterable(ld, "train")
        loader = as_train_loader(self._distribute(loaders, "train"))
        if cfg.overfit_batches:
            loader = overfit_loader(loader)
        self.train_loader = loader
        pending, self.pending_generator_states = self.pending_generator_states, None
        if pending is not None:
            _set_generator_states(loader, pending)
        n = num_batches(loader, cfg.limit_train_batches, "limit_train_batches")
        if n == 0 and has_len(loader) and len(loader) == 0:
            raise MisconfigurationException(
                "The train dataloader is empty (len 0). Fix: check the dataset and batch_size/drop_last settings."
            )
        self.num_training_batches = n
        self._compute_val_check_batch()
        self._train_loaded_epoch = t.run_state.epoch

    def maybe_reload_train(self, epoch: int) -> bool:
        """Start of an epoch: reload the loaders if asked to, and give distributed samplers the epoch.

        Returns whether the loaders were reloaded."""
        n = self.trainer.config.reload_dataloaders_every_n_epochs
        reloaded = False
        if n and epoch != self._train_loaded_epoch and epoch % n == 0:
            self.load_train()
            self.load_val()
            reloaded = True
        if self.trainer.strategy.is_distributed:
            from fulmen.utilities.distributed import set_sampler_epoch

            set_sampler_epoch(self.train_loader, epoch)  # a new, rank-consistent shuffle each epoch (before hooks)
        return reloaded

    def _compute_val_check_batch(self) -> None:
        cfg = self.trainer.config
        vci = cfg.val_check_interval
        n = self.num_training_batches
        self.val_check_seconds = None
        if isinstance(vci, _dt.timedelta):
            strategy = self.trainer.strategy
            # several processes: each reads its own clock, and the ranks agree on the batch after which all validate
            # (strategy.val_check_agreement); a strategy without that agreement could hang in validation
            if strategy.is_distributed and strategy.val_check_agreement is None:
                raise NotSupportedYetError(
                    f"Trainer(val_check_interval={vci!r}): a time-based validation interval with several "
                    f"processes needs the ranks to agree on when to validate, which {type(strategy).__name__} "
                    "cannot do here (no rank coordinator). Fix: pass an int number of batches or a float fraction "
                    "of the epoch."
                )
            self.val_check_batch = None
            self.val_check_seconds = vci.total_seconds()
        elif isinstance(vci, int):
            if cfg.check_val_every_n_epoch is not None and n != math.inf and vci > n:
                # a ValueError as Lightning's, with Lightning's wording (programs match on it)
                raise MisconfigurationValueError(
                    f"`val_check_interval` ({vci}) must be less than or equal to the number of the training batches "
                    f"({n}). Trainer(val_check_interval={vci}) is larger than the number of training batches per "
                    f"epoch. Fix: use val_check_interval <= {n}, a float fraction, set `limit_val_batches=0.0` to "
                    "disable validation, or check_val_every_n_epoch=None to count batches across epochs."
                )
            self.val_check_batch = vci
        elif n == math.inf:
            if vci != 1.0:
                raise MisconfigurationException(
                    f"Trainer(val_check_interval={vci}) is a fraction, but the train dataloader has no length. "
                    "Fix: pass an int number of batches."
                )
            self.val_check_batch = math.inf
        else:
            self.val_check_batch = max(1, int(n * vci)) if vci != 1.0 else n

    def capture_epoch_rng(self) -> dict[str, Any]:
        """The RNG state that decides this epoch's batch order (global torch RNG and the loader's own generators)."""
        import torch

        state: dict[str, Any] = {"torch": torch.get_rng_state()}
        gens = _loader_generators(self.train_loader)
        if gens:
            state["generators"] = [g.get_state() for g in gens]
        return state

    def capture_generator_states(self) -> list[Any] | None:
        """The current states of the train loader's own generators (``DataLoader(generator=...)``, a sampler's
        ``generator``), for a checkpoint: they advance every epoch, so a resume must continue them, not restart
        them from the seed the script gave them. None without a loader or such generators."""
        gens = _loader_generators(self.train_loader)
        return [g.get_state() for g in gens] if gens else None

    def iterate_train(self, loader: Any, rs: Any, start: int) -> Any:
        """Yield ``(batch, is_last)``; with ``start > 0`` (mid-epoch resume) the epoch's batch order is rebuilt."""
        n = self.num_training_batches
        if self.trainer.strategy.is_distributed:
            from fulmen.utilities.distributed import set_sampler_epoch

            set_sampler_epoch(loader, rs.epoch)  # also on resume, where the epoch starts mid-way
        pending, self.pending_loader_state = self.pending_loader_state, None
        if pending is not None and hasattr(loader, "load_state_dict"):
            # a stateful loader (torchdata StatefulDataLoader, litdata, ...) restores its own position
            loader.load_state_dict(pending)
            iterator = iter(loader)
        elif start > 0 and rs.epoch_rng_state is not None:
            import torch

            resume_state = torch.get_rng_state()
            torch.set_rng_state(rs.epoch_rng_state["torch"])
            if "generators" in rs.epoch_rng_state:
                _set_generator_states(loader, rs.epoch_rng_state["generators"])
            elif "sampler_generator" in rs.epoch_rng_state:  # a checkpoint from before "generators"
                gen = _sampler_generator(loader)
                if gen is not None:
                    gen.set_state(rs.epoch_rng_state["sampler_generator"])
            iterator = _skip(loader, start)
            torch.set_rng_state(resume_state)
        else:
            iterator = _iter_batches(loader)
        if n != math.inf:
            # A loader used in full is run to its end, as `for batch in loader` does: samplers draw from their
            # generator at exhaustion too (RandomSampler's remainder permutation), so stopping one batch short
            # would change every later epoch's order. It is done before the last batch is handed out, so it
            # happens even if the caller stops iterating after that batch.
            full = has_len(loader) and n >= len(loader)
            idx = start
            for batch in iterator:
                idx += 1
                if idx >= n:
                    if full:
                        next(iterator, None)
                    yield batch, True
                    return
                yield batch, False
            return
        # unknown length: look one batch ahead to know which is last
        try:
            current = next(iterator)
        except StopIteration:
            return
        for nxt in iterator:
            yield current, False
            current = nxt
        yield current, True

    # ---- evaluation
    def _distribute(self, loaders: Any, mode: str) -> Any:
        """Give this rank its share of every loader (``use_distributed_sampler``; multi-process strategies only), and,
        as Lightning, after ``seed_everything(workers=True)`` give every loader without a ``worker_init_fn`` one that
        seeds each worker's torch/random/numpy distinctly per worker and rank (``pl_worker_init_function``)."""
        from fulmen.utilities.seed import _auto_add_worker_init_fn

        t = self.trainer
        distribute = t.config.use_distributed_sampler and t.strategy.is_distributed
        if not distribute and os.environ.get("PL_SEED_WORKERS", "0") != "1":
            return loaders  # nothing to do (the common case: no tree walk)

        def one(ld: Any) -> Any:
            if distribute:
                ld = t.strategy.process_dataloader(ld, mode)
            _auto_add_worker_init_fn(ld, t.global_rank)
            return ld

        if isinstance(loaders, CombinedLoader):
            return CombinedLoader(self._distribute(loaders.iterables, mode), mode=loaders.mode)
        leaves, spec = flatten_iterables(loaders)  # nested dicts/lists/tuples of loaders keep their structure
        return tree_unflatten([one(v) for v in leaves], spec)

    def _eval(self, stage: str, limit: int | float, arg: str) -> tuple[list[Any], list[int | float]]:
        source = self._source(stage)
        loaders = as_eval_list(source)
        for ld in loaders:
            check_iterable(ld, stage)
        loaders = self._distribute(loaders, "predict" if stage == "predict" else "eval")
        if stage == "val" and self.trainer.config.overfit_batches:
            loaders = [overfit_loader(ld, "val") for ld in loaders]
        structure = source.iterables if isinstance(source, CombinedLoader) else source
        self.eval_iterables[stage] = tree_unflatten(loaders, flatten_iterables(structure)[1]) if loaders else None
        return loaders, [num_batches(ld, limit, arg) for ld in loaders]

    def load_val(self) -> None:
        cfg = self.trainer.config
        src = self.explicit.get("val")
        module = self.trainer.lightning_module
        from fulmen.core.module import LightningModule

        has_step = _defines(module, "validation_step", LightningModule)
        if src is not None and not has_step:
            from fulmen.utilities.rank_zero import rank_zero_warn

            # a warning, as in Lightning (``validation_step = None`` is a documented way to turn validation off)
            rank_zero_warn(
                f"You passed in a `val_dataloader` but {type(module).__name__} has no `validation_step`. Skipping "
                "val loop. Fix: define validation_step(self, batch, batch_idx), or stop passing val_dataloaders."
            )
        self.eval_log_steps = {}
        if not has_step or cfg.limit_val_batches == 0:
            self.val_loaders, self.num_val_batches = [], []
            self.eval_iterables.pop("val", None)
            return
        self.val_loaders, self.num_val_batches = self._eval("val", cfg.limit_val_batches, "limit_val_batches")
        if not self.val_loaders:
            from fulmen.utilities.rank_zero import rank_zero_warn

            rank_zero_warn(
                f"{type(module).__name__} defines validation_step but no val dataloader was found, so validation "
                "is skipped. Fix: pass val_dataloaders to trainer.fit or define val_dataloader()."
            )

    def load_eval(self, stage: str) -> tuple[list[Any], list[int | float]]:
        cfg = self.trainer.config
        limit = {"val": cfg.limit_val_batches, "test": cfg.limit_test_batches, "predict": cfg.limit_predict_batches}[stage]
        arg = {"val": "limit_val_batches", "test": "limit_test_batches", "predict": "limit_predict_batches"}[stage]
        loaders, counts = self._eval(stage, limit, arg)
        self.eval_log_steps = {}
        if not loaders:
            hook = _HOOK[stage]
            raise MisconfigurationException(
                f"No {stage} data: pass dataloaders=... or a datamodule, or define {hook}() on the module. "
                f"Fix: e.g. trainer.{'validate' if stage == 'val' else stage}(model, dataloaders=loader)."
            )
        if stage == "test":
            self.test_loaders, self.num_test_batches = loaders, counts
        elif stage == "predict":
            self.predict_loaders, self.num_predict_batches = loaders, counts
        else:
            self.val_loaders, self.num_val_batches = loaders, counts
        return loaders, counts


def _iter_batches(loader: Any) -> Any:
    """An iterator over the train batches: a CombinedLoader's combined batches alone (iterating it yields
    Lightning's ``(batch, batch_idx, dataloader_idx)``)."""
    return loader._iter_batches() if isinstance(loader, CombinedLoader) else iter(loader)


def _loader_generators(loader: Any) -> list[Any]:
    """The distinct ``torch.Generator`` objects that decide a loader's order and worker seeds: the loader's own
    (``DataLoader(generator=...)``, which also shuffles when the loader built its RandomSampler), the sampler's and
    the batch sampler's sampler's; for a CombinedLoader, those of each of its loaders."""
    import torch

    loaders = list(loader.flattened) if isinstance(loader, CombinedLoader) else [loader]
    out: list[Any] = []
    for ld in loaders:
        sampler = getattr(ld, "sampler", None)
        batch_sampler = getattr(ld, "batch_sampler", None)
        for gen in (getattr(ld, "generator", None), getattr(sampler, "generator", None),
                    getattr(getattr(batch_sampler, "sampler", None), "generator", None)):
            if isinstance(gen, torch.Generator) and not any(gen is g for g in out):
                out.append(gen)
    return out


def _set_generator_states(loader: Any, states: list[Any]) -> None:
    gens = _loader_generators(loader)
    if len(gens) != len(states):  # another loader than the one saved: leave its generators as they are
        from fulmen.utilities.rank_zero import rank_zero_warn

        rank_zero_warn(
            f"The checkpoint holds the states of {len(states)} train loader generator(s) but this train loader has "
            f"{len(gens)}; they are left as the script seeded them, so the data order after resuming differs from "
            "the interrupted run's. Fix: resume with the same DataLoader setup."
        )
        return
    for gen, state in zip(gens, states):
        gen.set_state(state)


def _sampler_generator(loader: Any) -> Any:
    sampler = getattr(loader, "sampler", None)
    gen = getattr(sampler, "generator", None)
    if gen is None:
        batch_sampler = getattr(loader, "batch_sampler", None)
        gen = getattr(getattr(batch_sampler, "sampler", None), "generator", None)
    return gen


def _skip(loader: Any, n: int) -> Any:
    """An iterator over ``loader`` positioned after ``n`` batches.

    The loader's own iterator is created (so it draws its seeds exactly as in the original run). With
    ``num_workers=0`` the skipped batches are skipped at the index level: the sampler advances, nothing is
    loaded. With worker processes the indices are already dispatched, so skipped batches are loaded and
    dropped (still never run through the model).
    """
    it = _iter_batches(loader)
    sampler_iter = getattr(it, "_sampler_iter", None)
    if isinstance(loader, DataLoader) and loader.num_workers == 0 and sampler_iter is not None:
        for _ in range(n):
            next(sampler_iter, None)
        it._num_yielded += n
        return it
    for _ in range(n):
        next(it, None)
    return it
