"""The benchmark models: the same ``nn.Module`` and the same JSON request for every contestant."""

from __future__ import annotations

import torch
from torch import nn

SIZES = {"linear": 4, "digits": 64, "mlp10m": 1024}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "linear":  # trivial: what is measured is the serving machinery
        model: nn.Module = nn.Linear(4, 4)
    elif name == "digits":  # the digits demo's CNN shape (1x8x8 images, 10 classes)
        model = nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(32 * 16, 10),
        )
    elif name == "mlp10m":  # ~10M parameters
        model = nn.Sequential(nn.Linear(1024, 3072), nn.ReLU(), nn.Linear(3072, 2048), nn.ReLU(), nn.Linear(2048, 512))
    else:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(SIZES)}")
    return model.eval()


def payload(name: str) -> str:
    import json

    return json.dumps({"input": [0.5] * SIZES[name]})
