"""Lightning loggers fulmen does not implement yet. Constructing one raises instead of silently doing nothing."""

from __future__ import annotations

from typing import Any

from fulmen.utilities.exceptions import NotSupportedYetError

_ALTERNATIVES = (
    "Use CSVLogger, TensorBoardLogger, MLFlowLogger or WandbLogger from fulmen.loggers, or subclass"
    " fulmen.loggers.Logger (implement name, version, log_metrics and log_hyperparams) to write to another tool."
)


class _Unsupported:
    _why = "is not supported by fulmen yet"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotSupportedYetError(f"{type(self).__name__} {self._why}. {_ALTERNATIVES}")


class CometLogger(_Unsupported):
    """Lightning's Comet logger. Not supported yet: constructing it raises ``NotSupportedYetError``."""


class NeptuneLogger(_Unsupported):
    """Lightning's Neptune logger (removed from Lightning in 2.6.2). Constructing it raises ``NotSupportedYetError``."""

    _why = "is not supported by fulmen (Lightning itself removed it in 2.6.2)"


class LitLogger(_Unsupported):
    """Lightning AI's ``LitLogger`` (needs the Lightning AI platform). Constructing it raises ``NotSupportedYetError``."""

    _why = "is not supported by fulmen: it logs to the Lightning AI platform"
