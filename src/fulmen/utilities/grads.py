"""Gradient statistics for logging (mirrors ``lightning.pytorch.utilities.grad_norm``)."""

from __future__ import annotations

import torch
from torch import nn


def grad_norm(
    module: nn.Module, norm_type: float | str, group_separator: str = "/"
) -> dict[str, torch.Tensor]:
    """The ``norm_type``-norm of each parameter's gradient, and of all of them together.

    Keys are Lightning's: ``grad_{p}_norm{sep}{parameter name}`` and ``grad_{p}_norm_total`` (``p`` as a float,
    e.g. ``grad_2.0_norm/layer.weight``). Parameters without a gradient are left out. The values stay on
    the gradients' device (no host sync), ready for ``self.log_dict``::

        def on_before_optimizer_step(self, optimizer):
            self.log_dict(grad_norm(self.layer, norm_type=2))

    Raises:
        ValueError: ``norm_type`` is not a positive number (``"inf"`` is allowed).
    """
    p = float(norm_type)
    if not p > 0:
        raise ValueError(f"grad_norm(norm_type={norm_type!r}): expected a positive number or 'inf'.")
    prefix = f"grad_{p}_norm"
    norms = {
        f"{prefix}{group_separator}{name}": torch.linalg.vector_norm(param.grad.detach(), ord=p)
        for name, param in module.named_parameters()
        if param.grad is not None
    }
    if norms:
        norms[f"{prefix}_total"] = torch.linalg.vector_norm(torch.stack(list(norms.values())), ord=p)
    return norms


__all__ = ["grad_norm"]
