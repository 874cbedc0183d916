"""Hyperparameter sweeps on Optuna: ``fulmen sweep`` (unmodified scripts) and :func:`fulmen.sweep.run` (objectives).

Optuna owns sampling, pruning and storage; this package owns the search-expression parser
(:mod:`fulmen.sweep.space`), placement (disjoint devices or cores per trial), the trial context a
Trainer finds in its environment (:mod:`fulmen.sweep.context`), the reporting/pruning callback
(:class:`PruningCallback`, decided on rank 0 and obeyed by every rank), and resume. Optuna is the
``fulmen[sweep]`` extra and is imported only when a sweep runs. See docs/sweeps.md.
"""

from __future__ import annotations

from typing import Any

from fulmen.sweep.space import Param, SearchExpressionError, SearchSpace, parse_expression

__all__ = ["Param", "PruningCallback", "SearchExpressionError", "SearchSpace", "parse_expression", "run"]


def __getattr__(name: str) -> Any:
    if name == "PruningCallback":
        from fulmen.sweep.callback import PruningCallback

        return PruningCallback
    if name == "run":
        from fulmen.sweep.api import run

        return run
    raise AttributeError(f"module 'fulmen.sweep' has no attribute {name!r}")
