"""Warning categories and switches (mirrors ``lightning.pytorch.utilities.warnings``)."""

from __future__ import annotations

import warnings

from fulmen.utilities.rank_zero import LightningDeprecationWarning, PossibleUserWarning


def disable_possible_user_warnings(module: str = "") -> None:
    """Silence :class:`PossibleUserWarning` (hints about settings that are often, but not always, mistakes)."""
    warnings.filterwarnings("ignore", category=PossibleUserWarning, module=module)


__all__ = ["LightningDeprecationWarning", "PossibleUserWarning", "disable_possible_user_warnings"]
