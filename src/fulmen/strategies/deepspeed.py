"""``DeepSpeedStrategy``: an optional extra. Without the ``deepspeed`` package the names ``deepspeed*`` raise a
clear error that says how to install it; with it, fulmen does not drive DeepSpeed's engine yet and says so
(ZeRO-style sharding is available through ``strategy="fsdp"``)."""

from __future__ import annotations

import importlib.util
from typing import Any

from fulmen.utilities.exceptions import MisconfigurationException, NotSupportedYetError


class DeepSpeedStrategy:
    strategy_name = "deepspeed"

    def __init__(self, *args: Any, stage: int = 2, **kwargs: Any) -> None:
        if importlib.util.find_spec("deepspeed") is None:
            raise MisconfigurationException(
                f"strategy='deepspeed' (ZeRO stage {stage}) needs the `deepspeed` package, which is not installed. "
                "Fix: `pip install deepspeed` (CUDA machines), or use strategy='fsdp', which shards parameters, "
                "gradients and optimizer state like ZeRO-3 with plain PyTorch."
            )
        raise NotSupportedYetError(
            "DeepSpeed is installed, but fulmen's DeepSpeed strategy is not implemented yet. Fix: use "
            "strategy='fsdp' (ZeRO-3-like sharding) or 'ddp'."
        )


__all__ = ["DeepSpeedStrategy"]
