"""Freeze and progressively unfreeze parts of a model during training.

:class:`BaseFinetuning` holds the freezing helpers (static, usable without a Trainer) and the
bookkeeping that makes a resumed run rebuild the optimizer's param groups (by parameter *name*)
before the optimizer state is restored. :class:`BackboneFinetuning` is the ready-made policy that
trains the head first and unfreezes ``pl_module.backbone`` at a given epoch with a rising lr.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch.nn import Module, ModuleDict
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer
from typing_extensions import override

from fulmen.callbacks.callback import Callback
from fulmen.utilities.exceptions import MisconfigurationAttributeError, MisconfigurationException, misconfig
from fulmen.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from fulmen.core.module import LightningModule
    from fulmen.trainer.trainer import Trainer

log = logging.getLogger(__name__)


def multiplicative(epoch: int) -> float:
    """The default ``lambda_func`` of :class:`BackboneFinetuning`: double the backbone lr every epoch."""
    return 2.0


class BaseFinetuning(Callback):
    r"""Base class for finetuning callbacks.

    Override :meth:`freeze_before_training` (called at ``setup``) to freeze modules and
    :meth:`finetune_function` (called at every train epoch start, per optimizer) to unfreeze them,
    typically with :meth:`unfreeze_and_add_param_group`. The param groups that a run adds are saved in
    the checkpoint by parameter name and rebuilt on resume before the optimizer state is loaded.

    Example::

        class MyFinetuning(BaseFinetuning):
            def __init__(self, unfreeze_at_epoch=10):
                super().__init__()
                self._unfreeze_at_epoch = unfreeze_at_epoch

            def freeze_before_training(self, pl_module):
                self.freeze(pl_module.feature_extractor)

            def finetune_function(self, pl_module, current_epoch, optimizer):
                if current_epoch == self._unfreeze_at_epoch:
                    self.unfreeze_and_add_param_group(pl_module.feature_extractor, optimizer)
    """

    def __init__(self) -> None:
        super().__init__()
        # opt_idx -> param groups with parameter *names* instead of tensors (stable across processes).
        self._internal_optimizer_metadata: dict[int, list[dict[str, Any]]] = {}
        self._restarting = False

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"internal_optimizer_metadata": self._internal_optimizer_metadata}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restarting = True
        if "internal_optimizer_metadata" in state_dict:
            self._internal_optimizer_metadata = state_dict["internal_optimizer_metadata"]
        else:
            # Lightning checkpoints from before 1.6 stored the metadata at the top level.
            self._internal_optimizer_metadata = cast(dict[int, list[dict[str, Any]]], state_dict)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._restarting:
            return
        # Rebuild the param groups of the interrupted run, so the optimizer state (restored after
        # ``on_fit_start``) matches them group for group.
        named = dict(pl_module.named_parameters())
        for opt_idx, optimizer in enumerate(trainer.optimizers):
            saved = self._internal_optimizer_metadata.get(opt_idx)
            if saved is None:
                continue
            opt = _unwrap(optimizer)
            missing = [n for g in saved for n in g["params"] if n not in named]
            if missing:
                raise MisconfigurationException(
                    f"{type(self).__name__}: the checkpoint's optimizer {opt_idx} param groups name "
                    "parameters that "
                    f"the model does not have: {missing[:5]}. Fix: resume with the same model architecture."
                )
            num_configured = len(opt.param_groups)
            opt.param_groups = self._apply_mapping_to_param_groups(saved, named)
            # Groups added by unfreezing were trainable when saved; ``setup`` froze them again.
            for group in opt.param_groups[num_configured:]:
                for param in group["params"]:
                    param.requires_grad = True
        self._restarting = False

    # ---- static helpers (usable without a Trainer) ----------------------------------------------

    @staticmethod
    def flatten_modules(modules: Module | Iterable[Module | Iterable[Any]]) -> list[Module]:
        """The leaf modules of ``modules``, plus any parent module that owns parameters directly.

        Args:
            modules: a module, a ``ModuleDict`` or an iterable of (iterables of) modules.

        Returns:
            The flat list of modules.
        """
        if isinstance(modules, ModuleDict):
            modules = modules.values()
        if isinstance(modules, Iterable) and not isinstance(modules, Module):
            flat: list[Module] = []
            for m in modules:
                flat.extend(BaseFinetuning.flatten_modules(m))
            all_modules: Iterable[Module] = flat
        else:
            all_modules = modules.modules()
        return [m for m in all_modules if not list(m.children()) or m._parameters]

    @staticmethod
    def filter_params(
        modules: Module | Iterable[Module | Iterable[Any]], train_bn: bool = True, requires_grad: bool = True
    ) -> Generator[torch.nn.Parameter, None, None]:
        """Yield the parameters of ``modules`` whose ``requires_grad`` equals ``requires_grad``.

        Args:
            modules: the modules to search.
            train_bn: include BatchNorm parameters.
            requires_grad: the ``requires_grad`` value to select.
        """
        seen: set[int] = set()
        for mod in BaseFinetuning.flatten_modules(modules):
            if isinstance(mod, _BatchNorm) and not train_bn:
                continue
            # recurse=False: a parent with its own parameters is listed too; don't yield children twice.
            for param in mod.parameters(recurse=False):
                if param.requires_grad == requires_grad and id(param) not in seen:
                    seen.add(id(param))
                    yield param

    @staticmethod
    def make_trainable(modules: Module | Iterable[Module | Iterable[Any]]) -> None:
        """Unfreeze ``modules``: ``requires_grad=True`` and BatchNorm statistics tracked again."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm):
                module.track_running_stats = True
            for param in module.parameters(recurse=False):
                param.requires_grad = True

    @staticmethod
    def freeze_module(module: Module) -> None:
        """Freeze one module's own parameters (and stop BatchNorm from updating its statistics)."""
        if isinstance(module, _BatchNorm):
            module.track_running_stats = False
        for param in module.parameters(recurse=False):
            param.requires_grad = False

    @staticmethod
    def freeze(modules: Module | Iterable[Module | Iterable[Any]], train_bn: bool = True) -> None:
        """Freeze ``modules``; with ``train_bn=True`` BatchNorm layers stay trainable."""
        for mod in BaseFinetuning.flatten_modules(modules):
            if isinstance(mod, _BatchNorm) and train_bn:
                BaseFinetuning.make_trainable(mod)
            else:
                BaseFinetuning.freeze_module(mod)

    @staticmethod
    def filter_on_optimizer(
        optimizer: Optimizer, params: Iterable[torch.nn.Parameter]
    ) -> list[torch.nn.Parameter]:
        """Drop the parameters that already belong to a param group of ``optimizer`` (with a warning).

        Membership is by identity (Lightning compares values, which confuses equal-valued tensors).
        """
        opt = _unwrap(optimizer)
        in_optimizer = {id(p) for group in opt.param_groups for p in group["params"]}
        out_params: list[torch.nn.Parameter] = []
        removed: list[torch.nn.Parameter] = []
        for param in params:
            (removed if id(param) in in_optimizer else out_params).append(param)
        if removed:
            rank_zero_warn(
                "The provided params to be frozen already exist within another group of this optimizer."
                " Those parameters will be skipped.\n"
                "HINT: Did you init your optimizer in `configure_optimizer` as such:\n"
                f" {type(opt)}(filter(lambda p: p.requires_grad, self.parameters()), ...) ",
            )
        return out_params

    @staticmethod
    def unfreeze_and_add_param_group(
        modules: Module | Iterable[Module | Iterable[Any]],
        optimizer: Optimizer,
        lr: float | None = None,
        initial_denom_lr: float = 10.0,
        train_bn: bool = True,
    ) -> None:
        """Unfreeze ``modules`` and add their parameters to ``optimizer`` as a new param group.

        Args:
            modules: the modules to unfreeze.
            optimizer: the optimizer to extend.
            lr: the new group's lr; ``None`` uses the first group's lr divided by ``initial_denom_lr``.
            initial_denom_lr: the divisor used when ``lr`` is ``None``.
            train_bn: include BatchNorm parameters in the new group.

        Raises:
            MisconfigurationException: if ``initial_denom_lr`` is not positive.
        """
        if initial_denom_lr <= 0:
            raise misconfig(
                "unfreeze_and_add_param_group(initial_denom_lr=...)",
                initial_denom_lr,
                "a number > 0",
                "pass e.g. initial_denom_lr=10.0",
            )
        BaseFinetuning.make_trainable(modules)
        opt = _unwrap(optimizer)
        params_lr = opt.param_groups[0]["lr"] if lr is None else float(lr)
        denom_lr = initial_denom_lr if lr is None else 1.0
        params = BaseFinetuning.filter_params(modules, train_bn=train_bn, requires_grad=True)
        new_params = BaseFinetuning.filter_on_optimizer(opt, params)
        if new_params:
            opt.add_param_group({"params": new_params, "lr": params_lr / denom_lr})

    # ---- policy (override these) ---------------------------------------------------------------

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.freeze_before_training(pl_module)

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        """Override to freeze modules before the optimizers are created."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement `freeze_before_training(pl_module)`."
        )

    def finetune_function(self, pl_module: LightningModule, epoch: int, optimizer: Optimizer) -> None:
        """Override to unfreeze modules; called at the start of every train epoch for each optimizer."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement `finetune_function(pl_module, epoch, optimizer)`."
        )

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for opt_idx, optimizer in enumerate(trainer.optimizers):
            opt = _unwrap(optimizer)
            num_param_groups = len(opt.param_groups)
            self.finetune_function(pl_module, trainer.current_epoch, optimizer)
            self._store(pl_module, opt_idx, num_param_groups, opt.param_groups)

    # ---- bookkeeping ---------------------------------------------------------------------------

    @staticmethod
    def _apply_mapping_to_param_groups(
        param_groups: list[dict[str, Any]], mapping: dict[Any, Any]
    ) -> list[dict[str, Any]]:
        out = []
        for group in param_groups:
            state = {k: v for k, v in group.items() if k != "params"}
            state["params"] = [mapping[p] for p in group["params"]]
            out.append(state)
        return out

    def _store(
        self,
        pl_module: LightningModule,
        opt_idx: int,
        num_param_groups: int,
        current_param_groups: list[dict[str, Any]],
    ) -> None:
        mapping = {p: n for n, p in pl_module.named_parameters()}
        if opt_idx not in self._internal_optimizer_metadata:
            self._internal_optimizer_metadata[opt_idx] = self._apply_mapping_to_param_groups(
                current_param_groups, mapping
            )
        elif num_param_groups != len(current_param_groups):
            # Keep the groups the policy just added.
            self._internal_optimizer_metadata[opt_idx].extend(
                self._apply_mapping_to_param_groups(current_param_groups[num_param_groups:], mapping)
            )


def _unwrap(optimizer: Any) -> Optimizer:
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, Optimizer) else optimizer


class BackboneFinetuning(BaseFinetuning):
    r"""Train the head first, then unfreeze ``pl_module.backbone`` with its own, rising learning rate.

    At ``unfreeze_backbone_at_epoch`` the backbone joins the optimizer with lr
    ``backbone_initial_lr`` (or ``current_lr * backbone_initial_ratio_lr``); every later epoch its lr
    is multiplied by ``lambda_func(epoch + 1)``, capped at the head's lr when ``should_align``.

    Args:
        unfreeze_backbone_at_epoch: the (0-indexed) epoch at which the backbone is unfrozen.
        lambda_func: the per-epoch multiplier of the backbone lr.
        backbone_initial_ratio_lr: the backbone's initial lr as a fraction of the head's lr.
        backbone_initial_lr: the backbone's initial lr (overrides the ratio).
        should_align: cap the backbone lr at the head's lr.
        initial_denom_lr: kept for Lightning compatibility (used only when no lr is given).
        train_bn: train the backbone's BatchNorm layers while it is frozen.
        verbose: log the head and backbone learning rates every epoch.
        rounding: decimals of the logged learning rates.

    Raises:
        MisconfigurationException: for invalid arguments, or (at fit start) if the module has no
            ``backbone`` attribute that is an ``nn.Module``.

    Example::

        trainer = Trainer(callbacks=[BackboneFinetuning(unfreeze_backbone_at_epoch=5)])
    """

    def __init__(
        self,
        unfreeze_backbone_at_epoch: int = 10,
        lambda_func: Callable[[int], float] = multiplicative,
        backbone_initial_ratio_lr: float = 10e-2,
        backbone_initial_lr: float | None = None,
        should_align: bool = True,
        initial_denom_lr: float = 10.0,
        train_bn: bool = True,
        verbose: bool = False,
        rounding: int = 12,
    ) -> None:
        super().__init__()
        if (
            isinstance(unfreeze_backbone_at_epoch, bool)
            or not isinstance(unfreeze_backbone_at_epoch, int)
            or (unfreeze_backbone_at_epoch < 0)
        ):
            raise misconfig(
                "BackboneFinetuning(unfreeze_backbone_at_epoch=...)",
                unfreeze_backbone_at_epoch,
                "an int >= 0",
                "pass the 0-indexed epoch at which to unfreeze, e.g. 10",
            )
        if not callable(lambda_func):
            raise misconfig(
                "BackboneFinetuning(lambda_func=...)",
                lambda_func,
                "a callable epoch -> multiplier",
                "pass e.g. lambda_func=lambda epoch: 1.5",
            )
        if backbone_initial_ratio_lr <= 0:
            raise misconfig(
                "BackboneFinetuning(backbone_initial_ratio_lr=...)",
                backbone_initial_ratio_lr,
                "a number > 0",
                "pass e.g. 0.1",
            )
        if backbone_initial_lr is not None and backbone_initial_lr <= 0:
            raise misconfig(
                "BackboneFinetuning(backbone_initial_lr=...)",
                backbone_initial_lr,
                "None or a number > 0",
                "pass e.g. 1e-4, or None to use the ratio",
            )
        if initial_denom_lr <= 0:
            raise misconfig(
                "BackboneFinetuning(initial_denom_lr=...)", initial_denom_lr, "a number > 0", "pass e.g. 10.0"
            )
        self.unfreeze_backbone_at_epoch = unfreeze_backbone_at_epoch
        self.lambda_func = lambda_func
        self.backbone_initial_ratio_lr = backbone_initial_ratio_lr
        self.backbone_initial_lr = backbone_initial_lr
        self.should_align = should_align
        self.initial_denom_lr = initial_denom_lr
        self.train_bn = train_bn
        self.verbose = verbose
        self.rounding = rounding
        self.previous_backbone_lr: float | None = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "internal_optimizer_metadata": self._internal_optimizer_metadata,
            "previous_backbone_lr": self.previous_backbone_lr,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_backbone_lr = state_dict["previous_backbone_lr"]
        super().load_state_dict(state_dict)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not isinstance(getattr(pl_module, "backbone", None), Module):
            raise MisconfigurationAttributeError(
                f"BackboneFinetuning: the LightningModule {type(pl_module).__name__} should have a "
                "`backbone` "
                "attribute that is an nn.Module. Fix: assign the feature extractor to `self.backbone`."
            )
        super().on_fit_start(trainer, pl_module)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not isinstance(getattr(pl_module, "backbone", None), Module):
            raise MisconfigurationAttributeError(
                f"BackboneFinetuning: the LightningModule {type(pl_module).__name__} should have a "
                "`backbone` "
                "attribute that is an nn.Module. Fix: assign the feature extractor to `self.backbone`."
            )
        super().setup(trainer, pl_module, stage)

    @override
    def freeze_before_training(self, pl_module: LightningModule) -> None:
        self.freeze(pl_module.backbone)

    @override
    def finetune_function(self, pl_module: LightningModule, epoch: int, optimizer: Optimizer) -> None:
        opt = _unwrap(optimizer)
        if epoch == self.unfreeze_backbone_at_epoch:
            current_lr = opt.param_groups[0]["lr"]
            initial_backbone_lr = (
                self.backbone_initial_lr
                if self.backbone_initial_lr is not None
                else current_lr * self.backbone_initial_ratio_lr
            )
            self.previous_backbone_lr = initial_backbone_lr
            self.unfreeze_and_add_param_group(
                pl_module.backbone,
                opt,
                initial_backbone_lr,
                train_bn=self.train_bn,
                initial_denom_lr=self.initial_denom_lr,
            )
            if self.verbose:
                log.info(
                    f"Current lr: {round(current_lr, self.rounding)}, "
                    f"Backbone lr: {round(initial_backbone_lr, self.rounding)}"
                )
        elif epoch > self.unfreeze_backbone_at_epoch and self.previous_backbone_lr is not None:
            current_lr = opt.param_groups[0]["lr"]
            next_lr = self.lambda_func(epoch + 1) * self.previous_backbone_lr
            if self.should_align and next_lr > current_lr:
                next_lr = current_lr
            opt.param_groups[-1]["lr"] = next_lr
            self.previous_backbone_lr = next_lr
            if self.verbose:
                log.info(
                    f"Current lr: {round(current_lr, self.rounding)}, Backbone lr: "
                    f"{round(next_lr, self.rounding)}"
                )


__all__ = ["BackboneFinetuning", "BaseFinetuning", "multiplicative"]
