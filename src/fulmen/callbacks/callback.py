"""The ``Callback`` and ``Checkpoint`` base classes (defined in :mod:`fulmen.core.callback`).

They live in ``core`` because the hook dispatcher needs them; this module keeps Lightning's import path
``from lightning.pytorch.callbacks.callback import Callback``.
"""

from fulmen.core.callback import Callback, Checkpoint

__all__ = ["Callback", "Checkpoint"]
