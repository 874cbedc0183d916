"""Checkpoint dump and restore: the run state serialized in Lightning's layout (spec §2.1-2.2).

Beyond Lightning, a fulmen checkpoint holds the RNG states and the data position (``fulmen`` key),
which is what makes a mid-epoch resume exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fulmen.__about__ import LIGHTNING_COMPAT_VERSION, __version__
from fulmen.checkpoint.sharded import ShardedEntry
from fulmen.core.hparams import to_plain_data
from fulmen.core.saving import load_state_dict_strictly
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.seed import collect_rng_states, set_rng_states

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer


def dump_checkpoint(trainer: Trainer, weights_only: bool = False) -> dict[str, Any]:
    module = trainer.lightning_module
    rs = trainer.run_state
    manual = not module.automatic_optimization
    ckpt: dict[str, Any] = {
        "epoch": rs.epoch,
        "global_step": rs.global_step,
        "pytorch-lightning_version": LIGHTNING_COMPAT_VERSION,
        "fulmen_version": __version__,
        "state_dict": trainer.strategy.module_state_dict(module),  # gathered when the strategy shards it
        "loops": rs.to_lightning_loops(manual, trainer._data_loader_state()),
    }
    if not weights_only:
        cb_states: dict[str, Any] = {}
        for cb in trainer.callbacks:
            state = cb.state_dict()
            if state:
                cb_states[cb.state_key] = state
        ckpt["callbacks"] = cb_states
        ckpt["optimizer_states"] = [trainer.strategy.optimizer_state(o) for o in trainer.optimizers]
        ckpt["lr_schedulers"] = [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs]
        prec_state = trainer.strategy.precision.state_dict()
        if prec_state:
            ckpt[type(trainer.strategy.precision).__qualname__] = prec_state
        live = trainer.fit_loop.current_results if trainer.state.fn == "fit" else None
        rs.val_time_elapsed = trainer.fit_loop.val_time_elapsed() if trainer.state.fn == "fit" else 0.0
        rs.train_results = live.state_dict() if live is not None else None
        gather_grads = getattr(trainer.strategy, "accumulated_gradients", None)  # FSDP: reduced + sharded
        rs.grads = (
            (
                gather_grads(module)
                if gather_grads is not None
                else {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
            )
            if trainer._accumulating
            else None
        )
        rng = _rng_to_plain(collect_rng_states())
        loader_rng = trainer._data.capture_generator_states()
        ckpt["fulmen"] = {"run_state": rs.state_dict(), "rng": rng, **_per_rank_rng(trainer, rng, loader_rng)}
        if loader_rng is not None:
            ckpt["fulmen"]["loader_generators"] = loader_rng  # rank 0's (read where no per-rank list fits)
        rs.train_results = rs.grads = None
    if module.hparams:
        ckpt[module.CHECKPOINT_HYPER_PARAMS_NAME] = None
        ckpt[module.CHECKPOINT_HYPER_PARAMS_KEY] = to_plain_data(dict(module.hparams))
    dm = trainer.datamodule
    if dm is not None:
        if dm.hparams:
            ckpt[dm.CHECKPOINT_HYPER_PARAMS_NAME] = None
            ckpt[dm.CHECKPOINT_HYPER_PARAMS_KEY] = to_plain_data(dict(dm.hparams))
        dm_state = dm.state_dict()
        if dm_state:
            ckpt[type(dm).__qualname__] = dm_state
    if not weights_only:
        trainer._dispatcher.callbacks_hook("on_save_checkpoint", ckpt)
    prev = trainer._current_fx
    trainer._current_fx = "on_save_checkpoint"
    try:
        module.on_save_checkpoint(ckpt)
    finally:
        trainer._current_fx = prev
    return ckpt


def restore_module_and_callbacks(trainer: Trainer, ckpt: dict[str, Any]) -> None:
    """Before setup: datamodule state, module hook + weights, callback states."""
    module = trainer.lightning_module
    dm = trainer.datamodule
    if dm is not None and type(dm).__qualname__ in ckpt:
        dm.load_state_dict(ckpt[type(dm).__qualname__])
    module.on_load_checkpoint(ckpt)
    if not isinstance(ckpt.get("state_dict"), ShardedEntry):  # sharded: read after the model is sharded
        load_state_dict_strictly(module, ckpt["state_dict"], module.strict_loading, trainer.ckpt_path)
    trainer._dispatcher.callbacks_hook("on_load_checkpoint", ckpt)
    states = ckpt.get("callbacks", {})
    for cb in trainer.callbacks:
        state = states.get(cb.state_key, states.get(type(cb)))
        if state:
            cb.load_state_dict(state)


def restore_sharded_weights(trainer: Trainer, ckpt: dict[str, Any]) -> None:
    """After the strategy set the model up: the weights of a sharded checkpoint, each rank reading its shards."""
    if isinstance(ckpt.get("state_dict"), ShardedEntry):
        module = trainer.lightning_module
        _sharded_loader(trainer)(ckpt, module, None, strict=module.strict_loading)


def _sharded_loader(trainer: Trainer) -> Any:
    load = getattr(trainer.strategy, "load_sharded_entries", None)
    if load is None:
        raise MisconfigurationException(
            f"The checkpoint {trainer.ckpt_path!r} is sharded, and {type(trainer.strategy).__name__} cannot read "
            "shards in place. Fix: resume with strategy=FSDPStrategy(...), or consolidate it first with "
            "`fulmen fabric consolidate <dir> --output_file <file>.ckpt`."
        )
    return load


def restore_training_state(trainer: Trainer, ckpt: dict[str, Any]) -> None:
    """After on_fit_start: precision, loops (run state), optimizers, schedulers, RNG."""
    module = trainer.lightning_module
    run_state = (ckpt.get("fulmen") or {}).get("run_state") or {}
    if isinstance(ckpt.get("optimizer_states"), ShardedEntry) or isinstance(run_state.get("grads"), ShardedEntry):
        # a sharded checkpoint: optimizer states (and open-window gradients) read into the sharded optimizers
        _sharded_loader(trainer)(ckpt, module, trainer.optimizers, strict=module.strict_loading)
    rs = trainer.run_state
    prec = trainer.strategy.precision
    key = type(prec).__qualname__
    if key in ckpt:
        prec.load_state_dict(ckpt[key])
    elif "native_amp_scaling_state" in ckpt:
        prec.load_state_dict(ckpt["native_amp_scaling_state"])
    opt_states = ckpt.get("optimizer_states")
    if opt_states is None:
        raise MisconfigurationException(
            f"The checkpoint {trainer.ckpt_path!r} holds weights only (no optimizer state), so training cannot "
            "resume from it. Fix: load the weights with load_from_checkpoint and start a new fit, or resume from a "
            "full checkpoint (save_weights_only=False)."
        )
    extra = ckpt.get("fulmen")
    if extra is not None:
        rs.load_state_dict(extra["run_state"])
    elif "loops" in ckpt:
        rs.load_lightning_loops(ckpt["loops"], manual=not module.automatic_optimization)
        ep = rs.epoch_progress
        in_progress = ep.total_started > ep.total_completed
        if not in_progress or ep.total_processed > ep.total_completed or rs.is_last_batch:
            # written after fit, at an epoch end or on the epoch's last batch: continue with the next epoch
            rs.epoch = ep.current_completed + int(in_progress)
            rs.batch_in_epoch = 0
            rs.is_last_batch = False
        elif rs.batch_in_epoch:
            from fulmen.utilities.rank_zero import rank_zero_warn

            rank_zero_warn(
                "This Lightning checkpoint was written mid-epoch and holds no data position or RNG state; the epoch "
                "restarts its data from the beginning (Lightning's own behaviour). fulmen checkpoints resume exactly."
            )
    loader_state = ckpt.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader")
    trainer._data.pending_loader_state = loader_state
    # applied when the train loader is built: its own generators continue where the saved run's were (each rank
    # its own when the checkpoint has them for this number of processes, else rank 0's)
    loader_gens = (extra or {}).get("loader_generators")
    per_rank_gens = (extra or {}).get("loader_generators_per_rank")
    if per_rank_gens is not None and len(per_rank_gens) == trainer.world_size:
        loader_gens = per_rank_gens[trainer.global_rank]
    trainer._data.pending_generator_states = loader_gens
    cfg = trainer.config
    if cfg.max_epochs >= 0 and rs.epoch > cfg.max_epochs:  # type: ignore[operator]  # resolved (not None) by now
        raise MisconfigurationException(
            f"You restored a checkpoint with current_epoch={rs.epoch}, but max_epochs={cfg.max_epochs}. Fix: raise "
            "max_epochs to continue training, or use a checkpoint from an earlier epoch."
        )
    if len(opt_states) != len(trainer.optimizers):
        raise MisconfigurationException(
            f"The checkpoint has {len(opt_states)} optimizer state(s) but configure_optimizers returned "
            f"{len(trainer.optimizers)}. Fix: resume with the same optimizer setup."
        )
    for opt, state in zip(trainer.optimizers, opt_states):
        trainer.strategy.load_optimizer_state(opt, state)
    for cfg_s, state in zip(trainer.lr_scheduler_configs, ckpt.get("lr_schedulers", [])):
        cfg_s.scheduler.load_state_dict(state)
    if extra is not None:
        # after the optimizer states: FSDP's optimizer loading may run a zero-gradient step that clears gradients
        _restore_partial_state(trainer, module, rs)
    if extra is not None:
        _restore_rng(trainer, extra, rs)


def _per_rank_rng(trainer: Trainer, rng: dict[str, Any], loader_rng: list[Any] | None) -> dict[str, Any]:
    """Every rank's RNG states (``rng_per_rank``), the states its current epoch's data order was drawn from
    (``epoch_rng_per_rank``) and its train loader's own generators (``loader_generators_per_rank``, when the loader
    has any), gathered once per save: ranks that seed or draw differently (``seed + rank``, a rank-dependent number
    of random calls, ``RandomSampler(generator=...)`` seeded per rank) each resume their own streams. Collective,
    like the save itself."""
    strategy = trainer.strategy
    epoch_rng = trainer.run_state.epoch_rng_state
    if trainer.world_size == 1:
        out = {"rng_per_rank": [rng], "epoch_rng_per_rank": [epoch_rng]}
        if loader_rng is not None:
            out["loader_generators_per_rank"] = [loader_rng]
        return out
    # before the gather: a save called on some ranks only fails with the "save is collective" error, not a hang
    strategy.sync_point("save_checkpoint (gathering every rank's RNG states)")
    gathered = strategy._all_gather_object((rng, epoch_rng, loader_rng))
    if gathered is None:  # a rank failed (a checkpoint written on exception): rank 0's states only
        return {}
    out = {"rng_per_rank": [g[0] for g in gathered], "epoch_rng_per_rank": [g[1] for g in gathered]}
    if any(g[2] is not None for g in gathered):
        out["loader_generators_per_rank"] = [g[2] for g in gathered]
    return out


def _restore_rng(trainer: Trainer, extra: dict[str, Any], rs: Any) -> None:
    """Each rank its own RNG states when the checkpoint has them for this world size; else rank 0's on every rank
    (checkpoints from before per-rank states, or a resume on another number of processes)."""
    per_rank = extra.get("rng_per_rank")
    world_size, rank = trainer.world_size, trainer.global_rank
    if per_rank is not None and len(per_rank) == world_size:
        set_rng_states(_rng_from_plain(per_rank[rank]))
        epoch_per_rank = extra.get("epoch_rng_per_rank")
        if epoch_per_rank is not None and len(epoch_per_rank) == world_size:
            rs.epoch_rng_state = epoch_per_rank[rank]
        return
    if per_rank is not None:
        from fulmen.utilities.rank_zero import rank_zero_info

        rank_zero_info(
            f"The checkpoint {trainer.ckpt_path!r} holds the RNG states of {len(per_rank)} process(es) but this run "
            f"has {world_size}: every process resumes with rank 0's RNG states (per-rank random streams, such as "
            "dropout seeded per rank, do not continue exactly)."
        )
    if "rng" in extra:
        set_rng_states(_rng_from_plain(extra["rng"]))


def _rng_to_plain(states: dict[str, Any]) -> dict[str, Any]:
    """RNG states as tensors and builtins only, so the checkpoint loads with ``weights_only=True``."""
    import torch

    out = dict(states)
    if "numpy" in out:
        name, keys, pos, has_gauss, cached = out["numpy"]
        out["numpy"] = [str(name), torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]
    if "python" in out:
        version, state, gauss = out["python"]
        out["python"] = [version, list(state), gauss]
    return out


def _rng_from_plain(states: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    out = dict(states)
    if "numpy" in out:
        name, keys, pos, has_gauss, cached = out["numpy"]
        out["numpy"] = (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    if "python" in out:
        version, state, gauss = out["python"]
        out["python"] = (version, tuple(state), gauss)
    return out


def _restore_partial_state(trainer: Trainer, module: Any, rs: Any) -> None:
    """Epoch accumulators of logged metrics and gradients of an open accumulation window."""
    from fulmen.core.results import ResultCollection

    if rs.train_results is not None:
        results = trainer.fit_loop._new_results()
        results.load_state_dict(rs.train_results)
        trainer.fit_loop.restored_results = results
    if rs.grads:
        params = dict(module.named_parameters())
        place = getattr(trainer.strategy, "place_gradient", None)  # FSDP: a whole gradient cut to the shard
        for name, grad in rs.grads.items():
            if name in params:
                params[name].grad = place(params[name], grad) if place else grad.to(params[name].device)
        trainer._accumulating = True
    rs.train_results = rs.grads = None
    _ = ResultCollection
