"""Running a Trainer stage in worker processes (``ddp_spawn``/``ddp_fork``/``ddp_notebook``).

The workers run the stage; rank 0 sends back what the calling process's Trainer and model need
afterwards (weights, run state, callback states, metrics, the stage's return value), and the caller
applies it, so ``trainer.fit(model)`` leaves ``model`` trained and ``trainer.callback_metrics`` filled,
exactly as on one device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from fulmen.trainer.states import TrainerFn

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer


@dataclass
class WorkerOutput:
    result: Any
    weights: dict[str, Any]
    run_state: dict[str, Any]
    callbacks: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
    status: Any
    ckpt_path: str | None
    extra: dict[str, Any] = field(default_factory=dict)


def _cpu(obj: Any) -> Any:
    from fulmen.utilities.apply_func import apply_to_collection

    return apply_to_collection(obj, torch.Tensor, lambda t: t.detach().cpu())


def run_launched(
    run: Callable[..., Any],
    trainer: Trainer,
    fn: TrainerFn,
    model: Any,
    datamodule: Any,
    loaders: dict[str, Any],
    ckpt_path: Any,
    weights_only: bool | None,
    verbose: bool,
    return_predictions: bool,
) -> Any:
    # ``run`` is lifecycle._run, passed in by its caller (importing it here would close an import cycle)
    result = run(
        trainer, fn, model, datamodule, loaders, ckpt_path, weights_only, verbose, return_predictions
    )
    if not getattr(trainer.strategy.launcher, "in_worker", False):
        return result  # the script launcher ran the stage in this very process
    # the caller's model gets whole tensors, also when checkpoints are sharded (collective for sharded strategies)
    gather = getattr(trainer.strategy, "full_module_state_dict", trainer.strategy.module_state_dict)
    weights = gather(model)
    if trainer.global_rank != 0:
        return None
    return WorkerOutput(
        result=_cpu(result),
        weights=_cpu(weights),
        run_state=trainer.run_state.state_dict(),
        callbacks={cb.state_key: _cpu(cb.state_dict()) for cb in trainer.callbacks},
        metrics={
            "callback": _cpu(dict(trainer._metrics.callback)),
            "logged": _cpu(dict(trainer._metrics.logged)),
            "pbar": _cpu(dict(trainer._metrics.pbar)),
        },
        status=trainer.state.status,
        ckpt_path=trainer.ckpt_path,
    )


def apply_worker_output(trainer: Trainer, fn: TrainerFn, model: Any, datamodule: Any, out: Any) -> Any:
    if not isinstance(out, WorkerOutput):
        return out
    trainer.state.fn = fn
    trainer.lightning_module = model
    model.trainer = trainer
    if datamodule is not None:
        trainer.datamodule = datamodule
    model.load_state_dict(out.weights)
    trainer.run_state.load_state_dict(out.run_state)
    for cb in trainer.callbacks:
        state = out.callbacks.get(cb.state_key)
        if state:
            cb.load_state_dict(state)
    for name, target in (
        ("callback", trainer._metrics.callback),
        ("logged", trainer._metrics.logged),
        ("pbar", trainer._metrics.pbar),
    ):
        target.clear()
        target.update(out.metrics.get(name, {}))
    trainer.state.status = out.status
    trainer.state.stage = None
    trainer._ckpt_path = out.ckpt_path
    return out.result
