"""Fabric: the hardware layer (devices, precision, strategies, checkpoints) for your own loop."""

from typing import Any

from fulmen.fabric.fabric import Fabric, _FabricDataLoader, _FabricModule, _FabricOptimizer


def is_wrapped(obj: Any) -> bool:
    """Whether ``obj`` is a model, optimizer or dataloader returned by ``fabric.setup*`` (also under ``torch.compile``).

    Example: ``if not is_wrapped(model): model = fabric.setup_module(model)``.
    """
    original = getattr(obj, "_orig_mod", None)  # a torch.compile'd module keeps what it compiled here
    if original is not None:
        obj = original
    return isinstance(obj, (_FabricModule, _FabricOptimizer, _FabricDataLoader))


__all__ = ["Fabric", "is_wrapped"]
