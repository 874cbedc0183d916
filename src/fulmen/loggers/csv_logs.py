"""CSV logger (mirrors ``lightning.pytorch.loggers.CSVLogger``): metrics and hyperparameters as plain files.

Layout: ``save_dir/name/version_N/metrics.csv`` and ``.../hparams.yaml``. ``metrics.csv`` has one
column per metric name plus ``step`` (and ``epoch`` when the Trainer logs it), sorted by name, and
one row per ``log_metrics`` call; a cell is empty when that metric wasn't logged in that call.
When a new metric name appears, the file is rewritten with the wider header.
"""

from __future__ import annotations

import csv
import io
import os
from argparse import Namespace
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fulmen.loggers._dir_logger import _DirectoryLogger
from fulmen.loggers.logger import rank_zero_experiment
from fulmen.loggers.utilities import (
    _PATH,
    _add_prefix,
    _atomic_write_text,
    _check_prefix,
    _convert_params,
    _makedirs,
    _metric_to_float,
    _save_hparams_to_yaml,
)
from fulmen.utilities.exceptions import misconfig
from fulmen.utilities.rank_zero import rank_zero_only, rank_zero_warn

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem  # type: ignore[import-untyped]


class _ExperimentWriter:
    """Buffers metric rows and writes ``metrics.csv`` and ``hparams.yaml`` into ``log_dir``.

    This is ``CSVLogger.experiment``. Rows stay in memory until :meth:`save`.
    """

    NAME_METRICS_FILE = "metrics.csv"
    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(self, log_dir: str, fs: AbstractFileSystem | None = None, owner: str = "CSVLogger") -> None:
        if fs is None:
            from fsspec.core import url_to_fs  # type: ignore[import-untyped]

            fs, _ = url_to_fs(log_dir)
        self._fs: AbstractFileSystem = fs
        self._owner = owner
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        self.hparams_file_path = os.path.join(log_dir, self.NAME_HPARAMS_FILE)
        self.metrics: list[dict[str, Any]] = []
        self.metrics_keys: list[str] = []
        self.hparams: dict[str, Any] = {}
        _makedirs(self._fs, log_dir, owner)
        if self._fs.isfile(self.metrics_file_path):
            # Lightning deletes an existing metrics.csv here; appending keeps the history of a run
            # resumed into the same version instead of silently dropping it.
            self.metrics_keys = self._read_header()
            rank_zero_warn(
                f"{owner}: {self.metrics_file_path!r} already exists (an explicit version= or a resumed run);"
                " new rows will be appended to it."
            )

    def log_hparams(self, params: Mapping[str, Any]) -> None:
        """Merge ``params`` into the hyperparameters written to ``hparams.yaml``."""
        self.hparams.update(params)

    def log_metrics(self, metrics_dict: Mapping[str, Any], step: int | None = None) -> None:
        """Buffer one row: the metric values plus ``step`` (``None``, as Lightning: the number of buffered rows)."""
        if step is None:
            step = len(self.metrics)
        row = dict(metrics_dict)
        row["step"] = step
        self.metrics.append(row)

    def save(self) -> None:
        """Write ``hparams.yaml`` (if any hyperparameters were logged) and the buffered rows."""
        if self.hparams:
            self.save_hparams()
        self._flush_metrics()

    def save_hparams(self) -> None:
        """Write ``hparams.yaml`` now."""
        _save_hparams_to_yaml(self._fs, self.hparams_file_path, self.hparams, self._owner)

    def _read_header(self) -> list[str]:
        with self._fs.open(self.metrics_file_path, "r", encoding="utf-8", newline="") as f:
            return next(csv.reader(f), [])

    def _flush_metrics(self) -> None:
        if not self.metrics:
            return
        known = set(self.metrics_keys)
        new_keys = {key for row in self.metrics for key in row} - known
        file_exists = self._fs.isfile(self.metrics_file_path)
        if new_keys or not file_exists:
            self.metrics_keys = sorted(known | new_keys)
            self._rewrite(include_old=file_exists)
        else:
            with self._fs.open(self.metrics_file_path, "a", encoding="utf-8", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                writer.writerows(self.metrics)
        self.metrics = []

    def _rewrite(self, include_old: bool) -> None:
        """Write the whole file with the current header (old rows first), atomically."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.metrics_keys)
        writer.writeheader()
        if include_old:
            with self._fs.open(self.metrics_file_path, "r", encoding="utf-8", newline="") as f:
                writer.writerows(csv.DictReader(f))
        writer.writerows(self.metrics)
        _atomic_write_text(self._fs, self.metrics_file_path, buffer.getvalue())


class ExperimentWriter(_ExperimentWriter):
    """``CSVLogger.experiment`` (Lightning's public ``lightning.pytorch.loggers.csv_logs.ExperimentWriter``).

    Writes ``metrics.csv`` (:attr:`NAME_METRICS_FILE`) and ``hparams.yaml`` (:attr:`NAME_HPARAMS_FILE`) into
    ``log_dir``; rows are buffered until :meth:`save`.
    """


class CSVLogger(_DirectoryLogger):
    r"""Log metrics to ``metrics.csv`` and hyperparameters to ``hparams.yaml``, with no dependencies.

    Files go to ``save_dir/name/version_N/``; read them with any CSV reader (``csv``, pandas).

    Example:
        >>> from fulmen.loggers import CSVLogger
        >>> logger = CSVLogger("logs", name="my_exp")  # doctest: +SKIP
        >>> trainer = Trainer(logger=logger)  # doctest: +SKIP

    Args:
        save_dir: The root directory (local path or fsspec URL).
        name: The experiment folder under ``save_dir``; ``None`` or ``""`` writes directly into ``save_dir``.
        version: ``None`` for the next free ``version_N``, an int for ``version_<int>``, or a str
            used as the folder name.
        prefix: Prepended to every metric name, joined with ``"-"``.
        flush_logs_every_n_steps: Write buffered rows to disk every this many steps (and on
            :meth:`save` / :meth:`finalize`).

    Raises:
        MisconfigurationException: If an argument has the wrong type or value, or ``save_dir`` is a file.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        save_dir: _PATH,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        super().__init__(save_dir, name, version)
        self._prefix = _check_prefix("CSVLogger", prefix)
        if (
            not isinstance(flush_logs_every_n_steps, int)
            or isinstance(flush_logs_every_n_steps, bool)
            or flush_logs_every_n_steps < 1
        ):
            raise misconfig(
                "CSVLogger(flush_logs_every_n_steps=...)",
                flush_logs_every_n_steps,
                "an int >= 1",
                "pass e.g. flush_logs_every_n_steps=100 (1 writes every row at once)",
            )
        self._flush_logs_every_n_steps = flush_logs_every_n_steps
        self._next_flush_step = flush_logs_every_n_steps
        self._rows_logged = 0
        self._experiment: ExperimentWriter | None = None

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer of ``metrics.csv`` and ``hparams.yaml``; creates ``log_dir`` on first access.

        Raises:
            MisconfigurationException: If the log directory can't be created.
        """
        if self._experiment is None:
            self._makedirs(self._experiment_dir)
            self._experiment = ExperimentWriter(self.log_dir, self._fs, type(self).__name__)
        return self._experiment

    @rank_zero_only
    def log_hyperparams(
        self, params: dict[str, Any] | Namespace | None = None, *args: Any, **kwargs: Any
    ) -> None:
        """Merge ``params`` into ``hparams.yaml`` and write it now.

        Values are kept nested and converted to plain YAML data; values with no plain form
        (classes, functions) are skipped with a warning.
        """
        self.experiment.log_hparams(_convert_params(params))
        self.experiment.save_hparams()

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Buffer one row of ``metrics.csv``.

        Args:
            metrics: Metric name to a number or a one-element tensor.
            step: The row's ``step`` value; ``None`` uses the number of rows logged so far.

        Raises:
            MisconfigurationException: If a value is not a scalar or ``step`` is not an int.
        """
        if step is None:
            step = self._rows_logged
        elif isinstance(step, bool) or not isinstance(step, int):
            step = _step_as_int(type(self).__name__, step)
        owner = type(self).__name__
        values = {
            key: _metric_to_float(owner, key, value)
            for key, value in _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR).items()
        }
        self.experiment.log_metrics(values, step)
        self._rows_logged += 1
        # Flush when a multiple of n steps was crossed (not only when hit exactly, which a run
        # logging every k steps may never do), and whenever n rows are buffered.
        if (
            step + 1 >= self._next_flush_step
            or len(self.experiment.metrics) >= self._flush_logs_every_n_steps
        ):
            n = self._flush_logs_every_n_steps
            self._next_flush_step = ((step + 1) // n + 1) * n
            self.save()

    @rank_zero_only
    def save(self) -> None:
        """Write buffered rows and the hyperparameters to disk."""
        self.experiment.save()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Write everything that is buffered. Does nothing if nothing was ever logged."""
        if self._experiment is None:
            return
        self.save()


def _step_as_int(owner: str, step: Any) -> int:
    """Accept numpy or one-element tensor integers as steps; reject anything else clearly."""
    item = getattr(step, "item", None)
    value = item() if callable(item) and getattr(step, "ndim", 0) == 0 else step
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise misconfig(
        f"{owner}.log_metrics(step=...)", step, "an int or None", "pass trainer.global_step or None"
    )
