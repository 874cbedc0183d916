"""``configure_optimizers`` parsing (the six return forms, spec §1.4) and ``LightningOptimizer``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
from torch.optim import Optimizer

from fulmen.utilities.exceptions import MisconfigurationException, MisconfigurationKeyError

if TYPE_CHECKING:
    from fulmen.core.module import LightningModule

_SCHEDULER_KEYS = {"scheduler", "name", "interval", "frequency", "reduce_on_plateau", "monitor", "strict", "opt_idx"}


@dataclass
class LRSchedulerConfig:
    scheduler: Any
    name: str | None = None
    interval: str = "epoch"
    frequency: int = 1
    reduce_on_plateau: bool = False
    monitor: str | None = None
    strict: bool = True
    opt_idx: int | None = None


class _MockOptimizer(Optimizer):
    """Stands in when ``configure_optimizers`` returns None (training without an optimizer).

    As Lightning's: no parameter groups (so LearningRateMonitor and the like find nothing to report), an empty
    state (checkpoints hold ``{}`` for it), and a ``step`` that only runs the closure.
    """

    def __init__(self) -> None:
        super().__init__([torch.zeros(1)], {})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        return None  # keeps param_groups empty, including during Optimizer.__init__

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        return None

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def __repr__(self) -> str:
        return "No Optimizer"


@functools.cache
def _make_lightning_optimizer_class(optimizer_cls: type) -> type:
    """A class deriving from both LightningOptimizer and the wrapped optimizer's class.

    ``LightningOptimizer.__class__`` reports it, so ``isinstance(wrapped, torch.optim.Adam)`` holds as in
    Lightning. It is never instantiated; one class per optimizer type is cached.
    """
    return type(f"Lightning{optimizer_cls.__name__}", (LightningOptimizer, optimizer_cls), {})


class LightningOptimizer:
    """Wraps a torch optimizer: ``step(closure)`` goes through the strategy and precision plugin.

    Everything else (``param_groups``, ``state_dict``, ``zero_grad``, ...) is forwarded to the wrapped
    optimizer. In manual optimization ``step`` also counts the step for ``global_step``.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        self._optimizer = optimizer
        # the loop installs the step implementation (precision-aware) once per run
        self._step_fn: Callable[[Callable[[], Any] | None, dict[str, Any]], Any] | None = None
        self._on_before_step: Callable[[], None] = lambda: None
        self._on_after_step: Callable[[], None] = lambda: None
        self._module: LightningModule | None = None

    @property
    def optimizer(self) -> Optimizer:
        return self._optimizer

    @classmethod
    def _to_lightning_optimizer(cls, optimizer: Any) -> LightningOptimizer:
        return optimizer if isinstance(optimizer, LightningOptimizer) else cls(optimizer)

    def __getattr__(self, name: str) -> Any:
        if name == "_optimizer":  # not set yet (an instance being rebuilt): no recursion through the lookup below
            raise AttributeError(name)
        return getattr(self._optimizer, name)

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled and deep-copied (torch.save(trainer), copy.deepcopy) as the wrapped optimizer: the step functions
        # the loop installs are closures over one run and are installed again by the next run
        return (LightningOptimizer, (self._optimizer,))

    def __repr__(self) -> str:
        return f"LightningOptimizer({self._optimizer!r})"

    @property  # type: ignore[misc]  # read-only on purpose: the class is the wrapped optimizer's
    def __class__(self) -> type:  # isinstance(opt, torch.optim.Adam) works as in Lightning
        return _make_lightning_optimizer_class(type(self._optimizer))  # type: ignore[arg-type]  # classes hash

    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        """Step the optimizer through the precision plugin; the closure (if any) computes the loss."""
        self._on_before_step()
        if self._step_fn is None:
            out = self._optimizer.step(closure=closure, **kwargs) if closure is not None else self._optimizer.step(**kwargs)
        else:
            out = self._step_fn(closure, kwargs)
        self._on_after_step()
        return out

    @contextmanager
    def toggle_model(self, sync_grad: bool = True) -> Any:
        """Make only this optimizer's parameters trainable inside the block (for multiple optimizers)."""
        module = self._module
        if module is not None:
            module.toggle_optimizer(self)
        try:
            yield
        finally:
            if module is not None:
                module.untoggle_optimizer(self)


def _err(given: Any, expected: str, fix: str) -> MisconfigurationException:
    return MisconfigurationException(
        f"configure_optimizers returned {given!r} ({type(given).__name__}); expected {expected}. Fix: {fix}"
    )


_FORMS = (
    "an optimizer; a list/tuple of optimizers; two lists ([optimizers], [schedulers]); a dict "
    "{'optimizer': opt, 'lr_scheduler': scheduler or config}; a tuple of such dicts; or None"
)


def init_optimizers(model: LightningModule) -> tuple[list[Optimizer], list[LRSchedulerConfig]]:
    """Call ``configure_optimizers`` and normalise its result (spec §1.4).

    Raises:
        MisconfigurationException: on any unknown return form, a scheduler config without ``scheduler``,
            ReduceLROnPlateau without ``monitor``, an unknown config key or a bad interval/frequency.
    """
    out = model.configure_optimizers()
    if out is None:
        # as in Lightning: a warning, and the fit runs with a stand-in optimizer whose step only runs the closure
        # (training_step and backward run every batch, global_step counts, no weight changes)
        from fulmen.utilities.rank_zero import rank_zero_warn

        rank_zero_warn(
            "`LightningModule.configure_optimizers` returned `None`, this fit will run with no optimizer. "
            "training_step still runs (and global_step counts), but no weights are updated. If this is not on "
            "purpose, return an optimizer from configure_optimizers, e.g. torch.optim.Adam(self.parameters())."
        )
        return [_MockOptimizer()], []
    optimizers: list[Optimizer]
    sched_items: list[Any] = []
    if isinstance(out, Optimizer):
        optimizers = [out]
    elif isinstance(out, Mapping):
        optimizers, sched_items = _from_dict(out)
    elif isinstance(out, (list, tuple)) and len(out) == 2 and isinstance(out[0], (list, tuple)):
        optimizers = list(out[0])
        sched_items = list(out[1]) if isinstance(out[1], (list, tuple)) else [out[1]]
    elif isinstance(out, (list, tuple)) and out and all(isinstance(d, Mapping) for d in out):
        optimizers = []
        for d in out:
            opts, scheds = _from_dict(d)
            optimizers.extend(opts)
            sched_items.extend(scheds)
    elif isinstance(out, (list, tuple)) and all(isinstance(o, Optimizer) for o in out):
        optimizers = list(out)
    else:
        raise _err(out, _FORMS, "return one of these forms (multiple optimizers need automatic_optimization=False).")
    for o in optimizers:
        if not isinstance(o, Optimizer):
            raise _err(out, _FORMS, f"every optimizer must be a torch.optim.Optimizer; {o!r} is not.")
    configs = [_scheduler_config(s, model) for s in sched_items]
    for cfg in configs:
        opt = getattr(cfg.scheduler, "optimizer", None)
        cfg.opt_idx = next((i for i, o in enumerate(optimizers) if o is opt), None)
        if opt is not None and cfg.opt_idx is None:
            raise MisconfigurationException(
                f"The scheduler {type(cfg.scheduler).__name__} is attached to an optimizer that "
                "configure_optimizers did not return. Fix: return that optimizer too."
            )
    return optimizers, configs


def _from_dict(d: Mapping[str, Any]) -> tuple[list[Optimizer], list[Any]]:
    extra = set(d) - {"optimizer", "lr_scheduler", "monitor"}
    if "optimizer" not in d:
        err = _err(dict(d), "a dict with an 'optimizer' key", "return {'optimizer': opt, 'lr_scheduler': ...}.")
        raise MisconfigurationKeyError(*err.args)  # Lightning: KeyError('optimizer')
    if extra:
        raise _err(dict(d), "only the keys 'optimizer', 'lr_scheduler' and 'monitor'", f"remove {sorted(extra)}.")
    sched = d.get("lr_scheduler")
    items: list[Any] = []
    if sched is not None:
        if isinstance(sched, Mapping):
            sched = dict(sched)
            if "monitor" in d and "monitor" not in sched:
                sched["monitor"] = d["monitor"]
        elif "monitor" in d:
            sched = {"scheduler": sched, "monitor": d["monitor"]}
        items.append(sched)
    return [d["optimizer"]], items


def _scheduler_config(item: Any, model: LightningModule) -> LRSchedulerConfig:
    if isinstance(item, Mapping):
        if "scheduler" not in item:
            raise MisconfigurationException(
                f"configure_optimizers returned the lr scheduler config {dict(item)!r}, which has no 'scheduler' key. "
                "Fix: {'scheduler': torch.optim.lr_scheduler.X(opt, ...), 'interval': 'epoch', ...}."
            )
        unknown = set(item) - _SCHEDULER_KEYS
        if unknown:
            raise MisconfigurationException(
                f"configure_optimizers returned an lr scheduler config with unknown keys {sorted(unknown)}; "
                f"expected a subset of {sorted(_SCHEDULER_KEYS - {'opt_idx'})}. Fix: remove or rename them."
            )
        cfg = LRSchedulerConfig(**{k: v for k, v in item.items() if k in {f.name for f in fields(LRSchedulerConfig)}})
    else:
        cfg = LRSchedulerConfig(scheduler=item)
    if cfg.interval not in ("epoch", "step"):
        raise MisconfigurationException(
            f"configure_optimizers returned an lr scheduler config with 'interval'={cfg.interval!r}; expected 'epoch' "
            "or 'step'. Fix: use 'interval': 'step' to step every optimizer step, or 'epoch'."
        )
    if not isinstance(cfg.frequency, int) or cfg.frequency < 1:
        raise MisconfigurationException(
            f"configure_optimizers returned an lr scheduler config with 'frequency'={cfg.frequency!r}; expected a "
            "positive int. Fix: e.g. 'frequency': 1."
        )
    sched = cfg.scheduler
    if not (hasattr(sched, "step") and hasattr(sched, "state_dict")):
        raise MisconfigurationException(
            f"configure_optimizers returned the lr scheduler {sched!r}, which has no step()/state_dict(); expected "
            "a torch.optim.lr_scheduler instance. Fix: return a scheduler object."
        )
    cfg.reduce_on_plateau = isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if cfg.reduce_on_plateau and cfg.monitor is None:
        raise MisconfigurationException(
            "configure_optimizers returned ReduceLROnPlateau without a metric to monitor. Fix: return "
            "{'optimizer': opt, 'lr_scheduler': {'scheduler': sched, 'monitor': 'val_loss'}}."
        )
    return cfg


def lr_scheduler_configs_to_plain(configs: Sequence[LRSchedulerConfig]) -> list[dict[str, Any]]:
    return [c.scheduler.state_dict() for c in configs]
