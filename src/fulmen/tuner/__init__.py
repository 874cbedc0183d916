"""Tuning (mirrors ``lightning.pytorch.tuner``): ``Tuner(trainer).lr_find(model)`` and ``.scale_batch_size(model)``.

Which module owns what:

* ``tuning.py``: :class:`Tuner`, which runs a fit (or evaluation) that a tuning callback ends early;
* ``lr_finder.py``: the learning-rate range test and its result :class:`LRFinder`;
* ``batch_size_scaling.py``: the power / binary-search batch size finder;
* ``_trial.py``: short trial runs on the user's Trainer, restoring the model and Trainer state after;
* the callbacks :class:`~fulmen.callbacks.LearningRateFinder` and :class:`~fulmen.callbacks.BatchSizeFinder`
  run the same functions at the start of a normal fit.
"""

from fulmen.tuner.lr_finder import LRFinder
from fulmen.tuner.tuning import Tuner

__all__ = ["LRFinder", "Tuner"]
