"""Layer synchronization plugins: ``TorchSyncBatchNorm`` (the ``sync_batchnorm=True`` flag)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fulmen.utilities.distributed import differentiable_all_reduce_sum, get_world_size


class LayerSync(ABC):
    """Converts layers of a model to versions that synchronize across processes, and back."""

    @abstractmethod
    def apply(self, model: nn.Module) -> nn.Module: ...

    @abstractmethod
    def revert(self, model: nn.Module) -> nn.Module: ...


class SyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are computed over the batch of every rank, on any device.

    torch's :class:`torch.nn.SyncBatchNorm` only runs on GPUs; this one all-reduces the per-channel sum,
    sum of squares and count (with gradients), so ``sync_batchnorm=True`` gives the same numbers on CPU
    processes as one process on the combined batch.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm expects at least 2D input (got {input.dim()}D)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not self.training or get_world_size() == 1:
            return super().forward(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        dims = [0, *range(2, input.dim())]
        x = input.float()
        local = torch.cat(
            [
                x.sum(dims),
                (x * x).sum(dims),
                torch.tensor([x.numel() / x.size(1)], device=x.device, dtype=x.dtype),
            ]
        )
        total = differentiable_all_reduce_sum(local)
        c = input.size(1)
        n = total[-1]
        mean = total[:c] / n
        var = total[c : 2 * c] / n - mean * mean
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                unbiased = var * n / (n - 1).clamp(min=1)
                self.running_mean.mul_(1 - factor).add_(
                    mean.detach().to(self.running_mean.dtype), alpha=factor
                )
                self.running_var.mul_(1 - factor).add_(
                    unbiased.detach().to(self.running_var.dtype), alpha=factor
                )
        shape = [1, c] + [1] * (input.dim() - 2)
        out = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        return out.to(input.dtype)


def _convert(module: nn.Module, to_sync: bool, use_torch: bool) -> nn.Module:
    out = module
    if (
        to_sync
        and isinstance(module, _BatchNorm)
        and not isinstance(module, (SyncBatchNorm, nn.SyncBatchNorm))
    ):
        cls: Any = nn.SyncBatchNorm if use_torch else SyncBatchNorm
        out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
    elif not to_sync and isinstance(module, (SyncBatchNorm, nn.SyncBatchNorm)):
        bn_cls = _BATCHNORM_BY_DIM.get(getattr(module, "_fulmen_dim", 1), nn.BatchNorm1d)
        out = bn_cls(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
    if out is not module:
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
        if to_sync:
            out._fulmen_dim = _dim_of(module)  # type: ignore[assignment]
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    for name, child in module.named_children():
        out.add_module(name, _convert(child, to_sync, use_torch))
    return out


_BATCHNORM_BY_DIM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _dim_of(module: nn.Module) -> int:
    for dim, cls in _BATCHNORM_BY_DIM.items():
        if isinstance(module, cls):
            return dim
    return 1


class TorchSyncBatchNorm(LayerSync):
    """Replace every batch norm with a synchronized one (torch's on CUDA, fulmen's any-device one elsewhere)."""

    def apply(self, model: nn.Module) -> nn.Module:
        param = next(model.parameters(), None)
        use_torch = param is not None and param.device.type == "cuda"
        return _convert(model, True, use_torch)

    def revert(self, model: nn.Module) -> nn.Module:
        return _convert(model, False, False)


__all__ = ["LayerSync", "SyncBatchNorm", "TorchSyncBatchNorm"]

_ = F
