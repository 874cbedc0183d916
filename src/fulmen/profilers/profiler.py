"""The ``Profiler`` base class and the do-nothing default, ``PassThroughProfiler``.

A profiler measures named *actions* (``start(name)`` / ``stop(name)``, or ``with profiler.profile(name)``).
The Trainer owns one (``Trainer(profiler=...)``, ``trainer.profiler``). When it is a real profiler, the run
is instrumented once (see ``_instrument.py``): every hook the dispatcher calls, the step methods, the
training batch and epoch, backward and zero_grad become actions. With the default
``PassThroughProfiler`` nothing is instrumented, so the step loop does no extra work at all.

At the end of every stage (fit, validate, test, predict) the Trainer calls ``describe()``, which writes
``summary()`` to ``{dirpath}/{stage}-{filename}.txt`` when ``filename`` is set (``dirpath`` defaults to
``trainer.log_dir``), and logs it otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path

from fulmen.utilities.rank_zero import rank_zero_only

log = logging.getLogger("fulmen.profilers")

__all__ = ["PassThroughProfiler", "Profiler"]


class Profiler(ABC):
    """Base class: subclasses implement :meth:`start`, :meth:`stop` and :meth:`summary`.

    Args:
        dirpath: Directory for the report; defaults to ``trainer.log_dir`` when the Trainer sets the
            profiler up.
        filename: If given, :meth:`describe` writes the report to ``{dirpath}/{stage}-{filename}.txt``
            instead of logging it.
    """

    #: ``False`` only for :class:`PassThroughProfiler`: the Trainer instruments the run only if ``True``.
    active: bool = True

    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None) -> None:
        self.dirpath = dirpath
        self.filename = filename
        self._stage: str | None = None
        self._local_rank: int | None = None
        self._log_dir: str | None = None

    @abstractmethod
    def start(self, action_name: str) -> None:
        """Start measuring ``action_name``."""

    @abstractmethod
    def stop(self, action_name: str) -> None:
        """Stop measuring ``action_name``."""

    def summary(self) -> str:
        """The report (a table, or the cProfile / torch.profiler statistics)."""
        return ""

    @contextmanager
    def profile(self, action_name: str) -> Generator[None, None, None]:
        """Measure the block as ``action_name``."""
        self.start(action_name)
        try:
            yield
        finally:
            self.stop(action_name)

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        """Called by the Trainer at the start of each stage."""
        self._stage = stage
        self._local_rank = local_rank
        self._log_dir = log_dir

    def teardown(self, stage: str | None) -> None:
        """Called by the Trainer after :meth:`describe` at the end of each stage."""

    def describe(self) -> None:
        """Write the summary (to the report file if ``filename`` is set, else to the log), then clear it."""
        report = self.summary()
        if report:
            self._write(report)
        self._reset()

    def _reset(self) -> None:
        """Forget what was recorded (called after :meth:`describe`, so each stage reports its own actions)."""

    def _output_path(self, extension: str = ".txt") -> str | None:
        if self.filename is None:
            return None
        dirpath = self.dirpath if self.dirpath is not None else (self._log_dir or os.getcwd())
        name = self.filename if self._stage is None else f"{self._stage}-{self.filename}"
        if self._local_rank not in (None, 0):
            name = f"{name}-rank{self._local_rank}"
        return os.path.join(os.fspath(dirpath), name + extension)

    @rank_zero_only
    def _log(self, report: str) -> None:
        log.info(report)
        print(report)

    def _write(self, report: str) -> None:
        path = self._output_path()
        if path is None:
            self._log(report)
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(report + "\n")

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        with contextlib.suppress(Exception):
            self.teardown(None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dirpath={self.dirpath!r}, filename={self.filename!r})"


class PassThroughProfiler(Profiler):
    """The default: records nothing. The Trainer does not instrument the run for it, so it costs nothing."""

    active = False

    def start(self, action_name: str) -> None:
        pass

    def stop(self, action_name: str) -> None:
        pass

    def describe(self) -> None:
        pass

    def __del__(self) -> None:
        pass
