"""Fabric: the hardware layer (devices, precision, strategies, checkpoints) for your own loop."""

from fulmen.fabric.fabric import Fabric

__all__ = ["Fabric"]
