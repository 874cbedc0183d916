"""The Trainer and its loops."""

from fulmen.trainer.trainer import Trainer

__all__ = ["Trainer"]
