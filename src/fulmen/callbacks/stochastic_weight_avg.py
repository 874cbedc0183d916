"""Stochastic Weight Averaging (Izmailov et al., 2018) on :mod:`torch.optim.swa_utils`.

From epoch ``swa_start`` on, the learning rate is annealed to ``swa_lrs`` by
:class:`~torch.optim.swa_utils.SWALR` (it replaces the user's scheduler for the rest of the run) and
the weights are averaged at the end of every epoch, the recipe of the PyTorch SWA tutorial. When the
last epoch completes, the model receives the averaged weights; if it has BatchNorm layers their
statistics are recomputed with one pass over the training data (as ``torch.optim.swa_utils.update_bn``).

Lightning averages at the *start* of each SWA epoch (so the last epoch's training is left out) and
recomputes BatchNorm statistics in an extra training epoch that bends the loop's limits; fulmen
averages after each SWA epoch and recomputes the statistics in a plain pass, with no extra epoch.

The averaged weights, ``n_averaged`` and the SWALR state are saved in the checkpoint, so a resumed
run continues the same average.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import SWALR, AveragedModel
from typing_extensions import override

from fulmen.callbacks.callback import Callback
from fulmen.callbacks.weight_averaging import copy_weights, make_averaged_model
from fulmen.utilities.apply_func import move_data_to_device
from fulmen.utilities.combined_loader import CombinedLoader
from fulmen.utilities.exceptions import MisconfigurationException, misconfig
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from fulmen.core.module import LightningModule
    from fulmen.trainer.trainer import Trainer

_CPU = torch.device("cpu")
_AvgFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def swa_epoch_range(swa_epoch_start: int | float, max_epochs: int) -> tuple[int, int]:
    """The first and last (0-indexed) epochs averaged by SWA.

    Args:
        swa_epoch_start: an int ``n >= 1`` starts at the ``n``-th epoch (1-indexed); a float in
            ``[0, 1]`` starts at ``int(swa_epoch_start * max_epochs)``, as in Lightning.
        max_epochs: the run's epoch count.

    Returns:
        ``(swa_start, swa_end)``, both 0-indexed and inclusive.
    """
    start = int(max_epochs * swa_epoch_start) if isinstance(swa_epoch_start, float) else swa_epoch_start
    return max(start - 1, 0), max_epochs - 1


def contains_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` has any BatchNorm layer (whose statistics need recomputing after averaging)."""
    return any(isinstance(m, _BatchNorm) for m in module.modules())


class StochasticWeightAveraging(Callback):
    r"""Average the weights over the last epochs of training with an annealed constant learning rate.

    Args:
        swa_lrs: the SWA learning rate: one float for every param group, or one per param group.
        swa_epoch_start: an int ``n >= 1`` starts SWA at the ``n``-th epoch; a float in ``[0, 1]`` at
            that fraction of ``max_epochs``.
        annealing_epochs: epochs over which the lr is annealed to ``swa_lrs``.
        annealing_strategy: ``"cos"`` or ``"linear"``.
        avg_fn: ``(averaged_param, current_param, num_averaged) -> new_averaged`` (default: equal mean).
        device: where the averaged copy lives (``None``: the model's device).

    Raises:
        MisconfigurationException: for invalid arguments, or at fit start for more than one optimizer
            or scheduler, or an unlimited ``max_epochs``.

    Example::

        trainer = Trainer(max_epochs=20, callbacks=[StochasticWeightAveraging(swa_lrs=1e-2)])
    """

    def __init__(
        self,
        swa_lrs: float | list[float],
        swa_epoch_start: int | float = 0.8,
        annealing_epochs: int = 10,
        annealing_strategy: Literal["cos", "linear"] = "cos",
        avg_fn: _AvgFn | None = None,
        device: torch.device | str | None = _CPU,
    ) -> None:
        super().__init__()
        if (
            isinstance(swa_epoch_start, bool)
            or not isinstance(swa_epoch_start, (int, float))
            or (isinstance(swa_epoch_start, int) and swa_epoch_start < 1)
            or (isinstance(swa_epoch_start, float) and not 0 <= swa_epoch_start <= 1)
        ):
            raise misconfig(
                "StochasticWeightAveraging(swa_epoch_start=...)",
                swa_epoch_start,
                "an int >= 1 (1-indexed epoch) or a float in [0, 1] (fraction of max_epochs)",
                "pass e.g. 0.8 or 5",
            )
        lrs = swa_lrs if isinstance(swa_lrs, list) else [swa_lrs]
        if not lrs or any(
            isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 for lr in lrs
        ):
            raise misconfig(
                "StochasticWeightAveraging(swa_lrs=...)",
                swa_lrs,
                "a positive float or a list of positive floats",
                "pass e.g. swa_lrs=1e-2",
            )
        if (
            isinstance(annealing_epochs, bool)
            or not isinstance(annealing_epochs, int)
            or annealing_epochs < 0
        ):
            raise misconfig(
                "StochasticWeightAveraging(annealing_epochs=...)",
                annealing_epochs,
                "an int >= 0",
                "pass e.g. annealing_epochs=10",
            )
        if annealing_strategy not in ("cos", "linear"):
            raise misconfig(
                "StochasticWeightAveraging(annealing_strategy=...)",
                annealing_strategy,
                "'cos' or 'linear'",
                "pass annealing_strategy='cos'",
            )
        if avg_fn is not None and not callable(avg_fn):
            raise misconfig(
                "StochasticWeightAveraging(avg_fn=...)", avg_fn, "a callable or None", "pass a function"
            )
        if device is not None and not isinstance(device, (torch.device, str)):
            raise misconfig(
                "StochasticWeightAveraging(device=...)",
                device,
                "a torch.device, a str or None",
                "pass e.g. 'cpu'",
            )
        self._swa_epoch_start = swa_epoch_start
        self._swa_lrs = swa_lrs
        self._annealing_epochs = annealing_epochs
        self._annealing_strategy = annealing_strategy
        self._avg_fn = avg_fn
        self._device = device
        self._average_model: AveragedModel | None = None
        self._swa_scheduler: SWALR | None = None
        self._scheduler_state: dict[str, Any] | None = None
        self._initialized = False
        self._latest_update_epoch = -1
        self._init_n_averaged = 0
        self._pending_average_state: dict[str, Any] | None = None
        self._max_epochs: int | None = None
        self._model_contains_batch_norm: bool | None = None

    # ---- properties ----------------------------------------------------------------------------

    @property
    def swa_start(self) -> int:
        """The first averaged epoch (0-indexed); valid once fit has started."""
        assert self._max_epochs is not None
        return swa_epoch_range(self._swa_epoch_start, self._max_epochs)[0]

    @property
    def swa_end(self) -> int:
        """The last averaged epoch (0-indexed); valid once fit has started."""
        assert self._max_epochs is not None
        return swa_epoch_range(self._swa_epoch_start, self._max_epochs)[1]

    @property
    def n_averaged(self) -> torch.Tensor | None:
        """How many models the average holds (``None`` before fit)."""
        return None if self._average_model is None else self._average_model.n_averaged

    @property
    def average_model(self) -> AveragedModel | None:
        """The :class:`~torch.optim.swa_utils.AveragedModel` (``None`` before fit)."""
        return self._average_model

    @staticmethod
    def pl_module_contains_batch_norm(pl_module: LightningModule) -> bool:
        return contains_batch_norm(pl_module)

    # ---- hooks ---------------------------------------------------------------------------------

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # Copy now, before the accelerator moves the model (the copy lives on ``device``).
        self._average_model = make_averaged_model(
            pl_module, device=self._device, use_buffers=False, avg_fn=self._avg_fn
        )
        if self._pending_average_state is not None:
            pending, self._pending_average_state = self._pending_average_state, None
            self._load_average_state(pending)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise MisconfigurationException(
                f"StochasticWeightAveraging works with exactly 1 optimizer; configure_optimizers returned "
                f"{len(trainer.optimizers)}. Fix: use one optimizer, or remove the callback."
            )
        if len(trainer.lr_scheduler_configs) > 1:
            raise MisconfigurationException(
                "StochasticWeightAveraging supports at most 1 lr scheduler; got "
                f"{len(trainer.lr_scheduler_configs)}. "
                "Fix: use one scheduler (SWA replaces it when averaging starts)."
            )
        max_epochs = trainer.max_epochs
        if max_epochs is None or max_epochs < 1:
            raise MisconfigurationException(
                "StochasticWeightAveraging needs a finite Trainer(max_epochs=...) to know when averaging "
                "ends; got "
                f"max_epochs={max_epochs}. Fix: set max_epochs."
            )
        self._max_epochs = max_epochs
        self._model_contains_batch_norm = contains_batch_norm(pl_module)
        n_groups = len(_unwrap(trainer.optimizers[0]).param_groups)
        if isinstance(self._swa_lrs, list) and len(self._swa_lrs) != n_groups:
            raise MisconfigurationException(
                f"StochasticWeightAveraging(swa_lrs=...) has {len(self._swa_lrs)} values but the optimizer "
                "has "
                f"{n_groups} param groups. Fix: pass one lr per param group, or a single float."
            )
        if self._scheduler_state is not None and trainer.lr_scheduler_configs:
            # Resuming inside the SWA phase: the checkpoint's scheduler state is SWALR's, not the user's
            # scheduler's, so drop the user's before the trainer restores schedulers; SWALR comes back
            # (with its state) at the next epoch start.
            trainer.lr_scheduler_configs.clear()

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._initialized or not self.swa_start <= trainer.current_epoch <= self.swa_end:
            return
        self._initialized = True
        assert self._average_model is not None
        optimizer = _unwrap(trainer.optimizers[0])
        swa_lrs = (
            self._swa_lrs
            if isinstance(self._swa_lrs, list)
            else [self._swa_lrs] * len(optimizer.param_groups)
        )
        self._swa_scheduler = SWALR(
            optimizer,
            swa_lr=swa_lrs,  # type: ignore[arg-type]  # SWALR accepts one lr per param group
            anneal_epochs=self._annealing_epochs,
            anneal_strategy=self._annealing_strategy,
        )
        if self._scheduler_state is not None:
            self._swa_scheduler.load_state_dict(self._scheduler_state)
        elif trainer.current_epoch != self.swa_start:
            rank_zero_warn(
                "SWA is initializing after swa_start without any checkpoint data; the annealing restarts "
                "from here."
            )
        from fulmen.core.optimizer import LRSchedulerConfig

        swa_config = LRSchedulerConfig(self._swa_scheduler, interval="epoch", frequency=1)
        if trainer.lr_scheduler_configs:
            old = trainer.lr_scheduler_configs[0]
            if old.interval != "epoch" or old.frequency != 1:
                rank_zero_warn(f"SWA is currently only supported every epoch. Found {old}")
            rank_zero_info(f"Swapping scheduler `{type(old.scheduler).__name__}` for `SWALR`")
            trainer.lr_scheduler_configs[0] = swa_config
        else:
            trainer.lr_scheduler_configs.append(swa_config)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.swa_start <= epoch <= self.swa_end and epoch > self._latest_update_epoch:
            assert self._average_model is not None
            self._average_model.update_parameters(pl_module)
            self._latest_update_epoch = epoch

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (
            self._average_model is None
            or self._max_epochs is None
            or self._latest_update_epoch != self.swa_end
        ):
            return  # stopped before the SWA phase completed: keep the trained weights (as Lightning)
        copy_weights(self._average_model.module, pl_module, with_buffers=False)
        if self._model_contains_batch_norm:
            self._update_batch_norm(trainer, pl_module)

    # ---- BatchNorm statistics ------------------------------------------------------------------

    def bn_update_forward(self, pl_module: LightningModule, batch: Any) -> None:
        """One forward pass of the BatchNorm update; the default is ``pl_module(batch[0])`` for a
        tuple/list batch and ``pl_module(batch)`` otherwise (``torch.optim.swa_utils.update_bn``'s
        convention). Override for other batch layouts."""
        pl_module(batch[0] if isinstance(batch, (list, tuple)) else batch)

    @torch.no_grad()
    def _update_batch_norm(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loader = trainer.train_dataloader
        if loader is None:
            rank_zero_warn(
                "SWA: no train dataloader to recompute BatchNorm statistics; they are left as trained."
            )
            return
        bns = [m for m in pl_module.modules() if isinstance(m, _BatchNorm)]
        momenta = {m: m.momentum for m in bns}
        was_training = pl_module.training
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass
        pl_module.train()
        limit = trainer.num_training_batches
        if isinstance(loader, (Mapping, list, tuple)):  # several train loaders, combined as the fit loop does
            loader = CombinedLoader(loader, "max_size_cycle")
        if isinstance(loader, CombinedLoader):  # its iteration yields (batch, batch_idx, dataloader_idx)
            loader = loader._iter_batches()
        try:
            for i, batch in enumerate(loader):
                if limit != math.inf and i >= limit:
                    break
                self.bn_update_forward(pl_module, move_data_to_device(batch, pl_module.device))
        finally:
            for m, momentum in momenta.items():
                m.momentum = momentum
            pl_module.train(was_training)

    # ---- state ---------------------------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        average_state = None
        if self._average_model is not None and int(self._average_model.n_averaged) > 0:
            # Before the first average the copy holds nothing worth saving (the first update overwrites it).
            average_state = self._average_model.module.state_dict()
        return {
            "n_averaged": 0 if self._average_model is None else int(self._average_model.n_averaged),
            "latest_update_epoch": self._latest_update_epoch,
            "scheduler_state": None if self._swa_scheduler is None else self._swa_scheduler.state_dict(),
            "average_model_state": average_state,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._init_n_averaged = int(state_dict["n_averaged"])
        self._latest_update_epoch = int(state_dict["latest_update_epoch"])
        self._scheduler_state = state_dict["scheduler_state"]
        average_state = state_dict.get("average_model_state")
        if average_state is None:
            return
        if self._average_model is None:
            self._pending_average_state = average_state  # applied once ``setup`` builds the copy
        else:
            self._load_average_state(average_state)

    def _load_average_state(self, average_state: dict[str, Any]) -> None:
        assert self._average_model is not None
        self._average_model.module.load_state_dict(average_state)
        self._average_model.n_averaged.fill_(self._init_n_averaged)


def _unwrap(optimizer: Any) -> torch.optim.Optimizer:
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


__all__ = ["StochasticWeightAveraging", "contains_batch_norm", "swa_epoch_range"]
