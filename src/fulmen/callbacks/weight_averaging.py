"""Weight averaging (SWA-style equal averaging, or EMA) of the model during training.

Built on :class:`torch.optim.swa_utils.AveragedModel`. The plain helpers (:func:`make_averaged_model`,
:func:`swap_weights`, :func:`copy_weights`) work without a Trainer. The callbacks:

- update the averaged copy after optimizer steps (or epochs) chosen by :meth:`WeightAveraging.should_update`;
- swap the averaged weights in for validation and back out afterwards;
- copy the averaged weights into the model when training ends (as Lightning);
- save the averaged weights as the checkpoint's ``state_dict`` (what ``load_from_checkpoint`` gives you),
  keeping the raw weights under ``current_model_state`` and ``n_averaged`` under ``averaging_state``,
  so a resumed run continues both.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from typing_extensions import override

from fulmen.callbacks.callback import Callback
from fulmen.utilities.exceptions import misconfig
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from fulmen.core.module import LightningModule
    from fulmen.trainer.trainer import Trainer


def _shared_refs(module: nn.Module) -> dict[int, Any]:
    # Objects a LightningModule points to that must be shared, not copied, by deepcopy (the trainer,
    # the fabric): a copy of the trainer would duplicate the whole run.
    memo: dict[int, Any] = {}
    for sub in module.modules():
        for attr in ("_trainer", "_fabric"):
            ref = sub.__dict__.get(attr)
            if ref is not None:
                memo[id(ref)] = ref
    return memo


def make_averaged_model(
    module: nn.Module, device: torch.device | str | int | None = None, use_buffers: bool = True, **kwargs: Any
) -> AveragedModel:
    """An :class:`~torch.optim.swa_utils.AveragedModel` of ``module`` that does not copy its trainer.

    Args:
        module: the model to average.
        device: where the averaged copy lives (``None``: where ``module`` is).
        use_buffers: average the buffers too (e.g. BatchNorm statistics).
        **kwargs: more :class:`AveragedModel` arguments (``avg_fn``, ``multi_avg_fn``).

    Returns:
        The averaged model, with ``n_averaged == 0``.
    """
    # AveragedModel deep-copies what it is given; give it a trivial module, then attach our own copy.
    if isinstance(device, str):
        device = torch.device(device)
    averaged = AveragedModel(nn.Module(), device=device, use_buffers=use_buffers, **kwargs)
    clone = copy.deepcopy(module, memo=_shared_refs(module))
    averaged.module = clone.to(device) if device is not None else clone
    return averaged


def _tensors(module: nn.Module, with_buffers: bool) -> Iterator[torch.Tensor]:
    return (
        itertools.chain(module.parameters(), module.buffers()) if with_buffers else iter(module.parameters())
    )


@torch.no_grad()
def swap_weights(a: nn.Module, b: nn.Module, with_buffers: bool = True) -> None:
    """Exchange the values of ``a``'s and ``b``'s parameters (and buffers) in place (devices may differ)."""
    for x, y in zip(_tensors(a, with_buffers), _tensors(b, with_buffers), strict=True):
        tmp = x.detach().clone()
        x.copy_(y.detach())
        y.copy_(tmp)


@torch.no_grad()
def copy_weights(src: nn.Module, dst: nn.Module, with_buffers: bool = True) -> None:
    """Copy ``src``'s parameter (and buffer) values into ``dst`` in place."""
    for s, d in zip(_tensors(src, with_buffers), _tensors(dst, with_buffers), strict=True):
        d.copy_(s.detach())


def _is_overridden_by_user(obj: Any, name: str) -> bool:
    for cls in type(obj).__mro__:
        if name in vars(cls):
            return not cls.__module__.startswith("fulmen.")
    return False


class WeightAveraging(Callback):
    r"""Keep an averaged copy of the model, updated after training steps (SWA by default).

    Extra keyword arguments go to :class:`~torch.optim.swa_utils.AveragedModel` (``avg_fn`` or
    ``multi_avg_fn``); without one, the average is the equal-weight mean of the weights (SWA).
    Override :meth:`should_update` to choose when to update. During validation and after training the
    model holds the averaged weights.

    Args:
        device: the device of the averaged copy (``None``: the model's device).
        use_buffers: average the buffers (BatchNorm statistics) too; with ``False`` the model's own
            buffers are used with the averaged parameters.
        **kwargs: forwarded to :class:`~torch.optim.swa_utils.AveragedModel`.

    Raises:
        MisconfigurationException: for an invalid ``device`` or unknown keyword arguments.

    Example::

        trainer = Trainer(callbacks=[WeightAveraging()])  # SWA over every step
    """

    _ALLOWED_KWARGS = frozenset({"avg_fn", "multi_avg_fn"})

    def __init__(
        self, device: torch.device | str | int | None = None, use_buffers: bool = True, **kwargs: Any
    ) -> None:
        super().__init__()
        if device is not None and not isinstance(device, (torch.device, str, int)):
            raise misconfig(
                f"{type(self).__name__}(device=...)",
                device,
                "None, a torch.device, a str or an int",
                "pass e.g. device='cpu' to keep the averaged copy off the accelerator",
            )
        unknown = sorted(set(kwargs) - self._ALLOWED_KWARGS)
        if unknown:
            raise misconfig(
                f"{type(self).__name__}(**kwargs)",
                unknown,
                f"AveragedModel arguments {sorted(self._ALLOWED_KWARGS)}",
                "remove the unknown arguments",
            )
        for name in self._ALLOWED_KWARGS:
            fn = kwargs.get(name)
            if fn is not None and not callable(fn):
                raise misconfig(
                    f"{type(self).__name__}({name}=...)", fn, "a callable", f"pass a function or {name}=None"
                )
        self._device = device
        self._use_buffers = use_buffers
        self._kwargs = kwargs
        self._average_model: AveragedModel | None = None
        self._latest_update_step = 0
        self._latest_update_epoch = -1
        self._pending_checkpoint: dict[str, Any] | None = None

    @property
    def average_model(self) -> AveragedModel | None:
        """The :class:`~torch.optim.swa_utils.AveragedModel` (``None`` before ``fit`` sets it up)."""
        return self._average_model

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Whether to update the average after optimizer step ``step_idx`` / epoch ``epoch_idx``.

        Called with exactly one of the two. The default updates after every optimizer step.
        """
        return step_idx is not None

    # ---- hooks ---------------------------------------------------------------------------------

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if _is_overridden_by_user(pl_module, "configure_model"):
            rank_zero_warn(
                f"You're using {type(self).__name__} with a model that overrides `configure_model`. The "
                "averaged "
                "copy is a full (unsharded) copy of the model, so you may run out of memory."
            )
            # The layers must exist before they are copied; ``configure_model`` must be idempotent.
            pl_module.configure_model()
        device = self._device if self._device is not None else pl_module.device
        self._average_model = make_averaged_model(
            pl_module, device=device, use_buffers=self._use_buffers, **self._kwargs
        )
        if self._pending_checkpoint is not None:
            pending, self._pending_checkpoint = self._pending_checkpoint, None
            self._restore_from_checkpoint(pl_module, pending)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # ``setup`` runs before the strategy moves the model to its device; follow it there, so that
        # per-step updates do not copy the weights across devices.
        if self._device is None and self._average_model is not None:
            self._average_model.to(pl_module.device)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # One update per optimizer step (several batches may share one under gradient accumulation).
        if trainer.global_step > self._latest_update_step and self.should_update(
            step_idx=trainer.global_step - 1
        ):
            assert self._average_model is not None
            self._average_model.update_parameters(pl_module)
            self._latest_update_step = trainer.global_step

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch > self._latest_update_epoch and self.should_update(
            epoch_idx=trainer.current_epoch
        ):
            assert self._average_model is not None
            self._average_model.update_parameters(pl_module)
            self._latest_update_epoch = trainer.current_epoch

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._average_model is None:
            return
        copy_weights(self._average_model.module, pl_module, with_buffers=self._use_buffers)
        rank_zero_info(f"{type(self).__name__}: the model now holds the averaged weights.")

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._average_model is not None and trainer.state.fn == "fit":
            swap_weights(self._average_model.module, pl_module, with_buffers=self._use_buffers)

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._average_model is not None and trainer.state.fn == "fit":
            swap_weights(self._average_model.module, pl_module, with_buffers=self._use_buffers)

    # ---- state ---------------------------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "latest_update_step": self._latest_update_step,
            "latest_update_epoch": self._latest_update_epoch,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._latest_update_step = int(state_dict["latest_update_step"])
        self._latest_update_epoch = int(state_dict.get("latest_update_epoch", -1))

    @override
    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._average_model is None:
            rank_zero_warn(
                f"You're using {type(self).__name__}, but saving a checkpoint outside `fit`: the averaged "
                "weights "
                "are not saved."
            )
            return
        averaged = self._average_model.module.state_dict()
        current = checkpoint["state_dict"]
        if not self._use_buffers:
            # Buffers are not averaged: the model's own (e.g. BatchNorm statistics) go with the average.
            buffer_names = {name for name, _ in pl_module.named_buffers()}
            averaged = {
                k: (current[k] if k in buffer_names and k in current else v) for k, v in averaged.items()
            }
        checkpoint["current_model_state"] = current
        checkpoint["state_dict"] = averaged
        checkpoint["averaging_state"] = {"n_averaged": self._average_model.n_averaged.detach().clone()}

    @override
    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._average_model is None:
            if trainer.state.fn == "fit":
                # Restored before ``setup`` built the averaged copy: finish in ``setup``.
                self._pending_checkpoint = checkpoint
            # Outside fit the module simply evaluates the averaged weights (the checkpoint's state_dict).
            return
        self._restore_from_checkpoint(pl_module, checkpoint)

    def _restore_from_checkpoint(self, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        assert self._average_model is not None
        if "current_model_state" in checkpoint and "averaging_state" in checkpoint:
            self._average_model.module.load_state_dict(checkpoint["state_dict"])
            n_averaged = checkpoint["averaging_state"]["n_averaged"]
            self._average_model.n_averaged.copy_(torch.as_tensor(n_averaged))
            pl_module.load_state_dict(checkpoint["current_model_state"])
        else:
            rank_zero_warn(
                f"The checkpoint was not created with {type(self).__name__}: the averaged and the current "
                "model "
                "both start from its `state_dict`."
            )
            copy_weights(pl_module, self._average_model.module, with_buffers=True)


class EMAWeightAveraging(WeightAveraging):
    r"""Exponential moving average of the weights: ``avg = decay * avg + (1 - decay) * weights``.

    Args:
        device: the device of the averaged copy (``None``: the model's device).
        use_buffers: average the buffers too.
        decay: the EMA decay, in ``[0, 1]``.
        update_every_n_steps: update after every this many optimizer steps.
        update_starting_at_step: first optimizer step (0-indexed) that updates the average.
        update_starting_at_epoch: first epoch (0-indexed) whose steps update the average.
        **kwargs: forwarded to :class:`~torch.optim.swa_utils.AveragedModel` (not ``multi_avg_fn``).

    Raises:
        MisconfigurationException: for an out-of-range ``decay`` or a non-positive/negative schedule.

    Example::

        trainer = Trainer(callbacks=[EMAWeightAveraging(decay=0.999, update_starting_at_step=100)])
    """

    def __init__(
        self,
        device: torch.device | str | int | None = None,
        use_buffers: bool = True,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        update_starting_at_epoch: int | None = None,
        **kwargs: Any,
    ) -> None:
        if (
            isinstance(decay, bool)
            or not isinstance(decay, (int, float))
            or math.isnan(decay)
            or not 0 <= decay <= 1
        ):
            raise misconfig(
                "EMAWeightAveraging(decay=...)", decay, "a float in [0, 1]", "pass e.g. decay=0.999"
            )
        if (
            isinstance(update_every_n_steps, bool)
            or not isinstance(update_every_n_steps, int)
            or update_every_n_steps < 1
        ):
            raise misconfig(
                "EMAWeightAveraging(update_every_n_steps=...)",
                update_every_n_steps,
                "an int >= 1",
                "pass e.g. update_every_n_steps=1",
            )
        for name, value in (
            ("update_starting_at_step", update_starting_at_step),
            ("update_starting_at_epoch", update_starting_at_epoch),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise misconfig(
                    f"EMAWeightAveraging({name}=...)", value, "None or an int >= 0", f"pass e.g. {name}=0"
                )
        if "multi_avg_fn" in kwargs or "avg_fn" in kwargs:
            raise misconfig(
                "EMAWeightAveraging(avg_fn/multi_avg_fn=...)",
                sorted(k for k in kwargs if "avg_fn" in k),
                "no averaging function (EMA defines its own)",
                "use WeightAveraging(multi_avg_fn=...) for a custom one",
            )
        ema_fn = get_ema_multi_avg_fn(decay)  # type: ignore[no-untyped-call]
        super().__init__(device=device, use_buffers=use_buffers, multi_avg_fn=ema_fn, **kwargs)
        self.decay = float(decay)
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self.update_starting_at_epoch = update_starting_at_epoch
        self._current_epoch = 0

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._current_epoch = trainer.current_epoch

    @override
    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is None:
            return False
        if self.update_starting_at_step is not None and step_idx < self.update_starting_at_step:
            return False
        if self.update_starting_at_epoch is not None and self._current_epoch < self.update_starting_at_epoch:
            return False
        return step_idx % self.update_every_n_steps == 0


__all__ = ["EMAWeightAveraging", "WeightAveraging", "copy_weights", "make_averaged_model", "swap_weights"]
