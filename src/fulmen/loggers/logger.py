"""The ``Logger`` base class (mirrors ``lightning.pytorch.loggers.logger``).

A logger receives what the Trainer reports (hyperparameters, metrics, checkpoints) and writes it
to one experiment-tracking tool. The Trainer calls, on every rank:

* ``log_hyperparams(params)`` and ``log_graph(model)`` once at the start of a run;
* ``log_metrics(metrics, step)`` whenever logged values are due;
* ``after_save_checkpoint(checkpoint_callback)`` after each checkpoint is written;
* ``save()`` periodically and ``finalize(status)`` at the end of ``fit``/``validate``/``test``.

Writing happens on global rank 0 only: the built-in loggers decorate their writing methods with
:func:`~fulmen.utilities.rank_zero.rank_zero_only` and their ``experiment`` property with
:func:`rank_zero_experiment`, which hands other ranks a :class:`DummyExperiment` that swallows calls.
"""

from __future__ import annotations

import functools
import statistics
from abc import ABC, abstractmethod
from argparse import Namespace
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from torch import nn

from fulmen.utilities.rank_zero import rank_zero_only

_T = TypeVar("_T")
_L = TypeVar("_L", bound="Logger")


class DummyExperiment:
    """Stands in for a real experiment object on non-zero ranks: every attribute access, call and
    item access returns the dummy itself, so chains like ``logger.experiment.config.update(...)``
    are no-ops instead of errors."""

    def nop(self, *args: Any, **kwargs: Any) -> DummyExperiment:
        """Do nothing and return the dummy."""
        return self

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):  # keep pickle/copy protocols intact
            raise AttributeError(name)
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> DummyExperiment:
        return self

    def __getitem__(self, idx: Any) -> DummyExperiment:
        return self

    def __setitem__(self, idx: Any, value: Any) -> None:
        pass

    def __repr__(self) -> str:
        return "DummyExperiment()"


def rank_zero_experiment(fn: Callable[[_L], _T]) -> Callable[[_L], _T | DummyExperiment]:
    """Decorate a logger's ``experiment`` getter so non-zero ranks get a :class:`DummyExperiment`.

    Use it under ``@property``::

        @property
        @rank_zero_experiment
        def experiment(self) -> SummaryWriter: ...

    The real experiment (a file writer, a tracking-server run) is then only created on global
    rank 0, and code such as ``logger.experiment.add_image(...)`` runs unchanged on every rank.
    """

    @functools.wraps(fn)
    def experiment(self: _L) -> _T | DummyExperiment:
        if getattr(rank_zero_only, "rank", 0) > 0:
            return DummyExperiment()
        return fn(self)

    return experiment


class Logger(ABC):
    """Base class for experiment loggers.

    Subclasses implement :attr:`name`, :attr:`version`, :meth:`log_metrics` and
    :meth:`log_hyperparams`; everything else has a working default. Write only on global rank 0
    (decorate writing methods with ``rank_zero_only`` and ``experiment`` with
    :func:`rank_zero_experiment`).

    Example:
        >>> class PrintLogger(Logger):
        ...     name = "print"
        ...     version = 0
        ...     def log_metrics(self, metrics, step=None):
        ...         print(step, metrics)
        ...     def log_hyperparams(self, params, *args, **kwargs):
        ...         print(params)
        >>> PrintLogger().log_metrics({"loss": 0.5}, step=3)
        3 {'loss': 0.5}
    """

    @property
    @abstractmethod
    def name(self) -> str | None:
        """The experiment's name (e.g. the folder under ``save_dir``, or the tracking project)."""

    @property
    @abstractmethod
    def version(self) -> int | str | None:
        """The experiment's version: an ``int`` for ``version_N`` folders, or a run id string."""

    @property
    def root_dir(self) -> str | None:
        """The directory that holds all versions of this experiment, or ``None`` for remote-only loggers."""
        return None

    @property
    def log_dir(self) -> str | None:
        """The directory this version's files are written to, or ``None`` for remote-only loggers."""
        return None

    @property
    def save_dir(self) -> str | None:
        """The local root directory given to the logger, or ``None`` if it writes nothing locally.

        The Trainer puts checkpoints under ``save_dir/name/version/checkpoints`` by default.
        """
        return None

    @property
    def group_separator(self) -> str:
        """The character that groups metrics in the tool's UI (``"train/loss"``)."""
        return "/"

    @property
    def experiment(self) -> Any:
        """The underlying tool's object (a ``SummaryWriter``, an ``MlflowClient``, a W&B ``Run``, ...)."""
        return None

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record metric values.

        Args:
            metrics: Metric name to value (a number or a one-element tensor).
            step: The training step these values belong to (``trainer.global_step`` based);
                ``None`` lets the logger count by itself.
        """

    @abstractmethod
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Record the run's hyperparameters.

        Args:
            params: A dict (possibly nested), ``argparse.Namespace``, ``AttributeDict`` or dataclass.
            *args: Logger-specific extra arguments.
            **kwargs: Logger-specific extra arguments.
        """

    def log_graph(self, model: nn.Module, input_array: Any = None) -> None:
        """Record the model's computational graph, if the tool supports it (default: do nothing).

        Args:
            model: The model.
            input_array: An example input; loggers that need one fall back to
                ``model.example_input_array``.
        """

    def save(self) -> None:
        """Flush buffered data to storage (default: do nothing)."""

    def finalize(self, status: str) -> None:
        """Finish the experiment; called at the end of ``fit``, ``validate``, ``test`` and ``predict``.

        Args:
            status: ``"success"`` when the run ended normally, ``"failed"`` when it raised.
        """
        self.save()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Called after a checkpoint is written, e.g. to upload it (default: do nothing).

        Args:
            checkpoint_callback: The ``ModelCheckpoint`` that saved it; loggers read its
                ``best_k_models``, ``best_model_path``, ``last_model_path`` and ``dirpath``.
        """


class DummyLogger(Logger):
    """A logger that records nothing. The Trainer uses it for ``fast_dev_run`` runs.

    Any method call, including tool-specific ones like ``log_image``, is accepted and ignored,
    and ``dummy[0]`` returns the dummy (for code written against a list of loggers).
    """

    def __init__(self) -> None:
        self._experiment = DummyExperiment()

    @property
    def experiment(self) -> DummyExperiment:
        """A :class:`DummyExperiment`."""
        return self._experiment

    @property
    def name(self) -> str:
        """Always ``""``."""
        return ""

    @property
    def version(self) -> str:
        """Always ``""``."""
        return ""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Ignore the metrics."""

    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Ignore the hyperparameters."""

    def __getitem__(self, idx: int) -> DummyLogger:
        return self

    def __iter__(self) -> Any:
        # __getitem__ alone would make iteration endless
        yield self

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)

        def method(*args: Any, **kwargs: Any) -> None:
            return None

        return method


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values)


def merge_dicts(
    dicts: Sequence[Mapping[str, Any]],
    agg_key_funcs: Mapping[str, Any] | None = None,
    default_func: Callable[[Sequence[float]], float] = _mean,
) -> dict[str, Any]:
    """Merge a sequence of (possibly nested) dicts, aggregating the values found under each key.

    Args:
        dicts: The dicts to merge.
        agg_key_funcs: Key to the function that aggregates its values (e.g. ``{"loss": max}``); for
            a nested dict, either one function for all its keys or a nested mapping of functions.
        default_func: The aggregation for other keys (default: the mean).

    Returns:
        One dict with every key of ``dicts``; nested dicts are merged recursively, ``None`` values
        are ignored, and a key whose values are all ``None`` is dropped.

    Example:
        >>> merge_dicts([{"a": 1, "b": {"c": 1}}, {"a": 3, "b": {"c": 5}}], {"a": max})
        {'a': 3, 'b': {'c': 3.0}}
    """
    funcs = dict(agg_key_funcs or {})
    keys: list[str] = []
    for d in dicts:
        keys.extend(k for k in d if k not in keys)
    merged: dict[str, Any] = {}
    for key in keys:
        values = [d[key] for d in dicts if key in d and d[key] is not None]
        if not values:
            continue
        func = funcs.get(key)
        if all(isinstance(v, Mapping) for v in values):
            nested_funcs = func if isinstance(func, Mapping) else None
            nested_default = func if callable(func) else default_func
            merged[key] = merge_dicts(values, nested_funcs, nested_default)
        else:
            merged[key] = (func if callable(func) else default_func)(values)
    return merged
