"""``PyTorchProfiler``: a ``torch.profiler`` trace of the run (operators, CPU/GPU time, memory).

Every action is a ``torch.profiler.record_function`` range, so hooks and steps appear as named spans
above the operators they ran. The trace is a Chrome-trace JSON file (``*.pt.trace.json``) that opens in
Perfetto (https://ui.perfetto.dev), ``chrome://tracing`` and TensorBoard's profiler plugin.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from fulmen.profilers.profiler import Profiler

__all__ = ["PyTorchProfiler"]

_STEP_ACTION = "run_training_batch"


class PyTorchProfiler(Profiler):
    """Profile with ``torch.profiler.profile``.

    Args:
        dirpath: Directory of the trace and report (default: ``trainer.log_dir``).
        filename: Base name of the report ``{stage}-{filename}.txt`` and the trace
            ``{stage}-{filename}.pt.trace.json``. Without it the report is logged and the trace is written as
            ``{stage}-trace.pt.trace.json``.
        group_by_input_shapes: Group the operator table by input shapes (records shapes).
        export_to_chrome: Write the Chrome-trace JSON file (on by default).
        row_limit: Rows of the operator table in the report (-1 for all).
        sort_by_key: Column that sorts the table (default ``cpu_time_total``, or ``cuda_time_total`` on GPU).
        record_module_names: Kept for Lightning compatibility; actions are always named.
        table_kwargs: Extra keyword arguments for ``key_averages().table``.
        **profiler_kwargs: Passed to ``torch.profiler.profile`` (``activities``, ``schedule``,
            ``on_trace_ready``, ``record_shapes``, ``profile_memory``, ``with_stack``, ...). With a
            ``schedule``, the profiler steps once per training batch.

    Raises:
        MisconfigurationException: If ``sort_by_key`` is not a column ``torch.profiler`` knows.
    """

    _SORT_KEYS: ClassVar[frozenset[str]] = frozenset(
        {
            "cpu_time",
            "cuda_time",
            "cpu_time_total",
            "cuda_time_total",
            "cpu_memory_usage",
            "cuda_memory_usage",
            "self_cpu_memory_usage",
            "self_cuda_memory_usage",
            "count",
            "self_cpu_time_total",
            "self_cuda_time_total",
            "device_time",
            "device_time_total",
            "self_device_time_total",
            "xpu_time_total",
        }
    )

    def __init__(
        self,
        dirpath: str | Path | None = None,
        filename: str | None = None,
        group_by_input_shapes: bool = False,
        emit_nvtx: bool = False,
        export_to_chrome: bool = True,
        row_limit: int = 20,
        sort_by_key: str | None = None,
        record_module_names: bool = True,
        table_kwargs: dict[str, Any] | None = None,
        **profiler_kwargs: Any,
    ) -> None:
        from fulmen.utilities.exceptions import MisconfigurationException

        super().__init__(dirpath=dirpath, filename=filename)
        if emit_nvtx:
            from fulmen.utilities.exceptions import NotSupportedYetError

            raise NotSupportedYetError("PyTorchProfiler(emit_nvtx=True) is not supported yet. Fix: drop it.")
        if sort_by_key is not None and sort_by_key not in self._SORT_KEYS:
            raise MisconfigurationException(
                f"PyTorchProfiler(sort_by_key={sort_by_key!r}): expected one of {sorted(self._SORT_KEYS)}. "
                "Fix: e.g. sort_by_key='cpu_time_total'."
            )
        self.group_by_input_shapes = group_by_input_shapes and profiler_kwargs.get("record_shapes", True)
        if group_by_input_shapes:
            profiler_kwargs.setdefault("record_shapes", True)
        self.export_to_chrome = export_to_chrome
        self.row_limit = row_limit
        self.sort_by_key = sort_by_key
        self.record_module_names = record_module_names
        self.table_kwargs = table_kwargs or {}
        self.profiler_kwargs = profiler_kwargs
        self.profiler: Any = None
        self._ranges: dict[str, Any] = {}
        self._scheduled = profiler_kwargs.get("schedule") is not None
        self._report = ""
        self.trace_path: str | None = None

    def _start_profiler(self) -> None:
        kwargs = dict(self.profiler_kwargs)
        if "activities" not in kwargs:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            kwargs["activities"] = activities
        self.profiler = torch.profiler.profile(**kwargs)
        self.profiler.__enter__()

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        super().setup(stage, local_rank, log_dir)
        if self.profiler is None:
            self._start_profiler()

    def start(self, action_name: str) -> None:
        if self.profiler is None:
            self._start_profiler()
        if action_name in self._ranges:
            raise ValueError(f"Attempted to start {action_name} which has already started.")
        rf = torch.profiler.record_function(action_name)
        rf.__enter__()  # type: ignore[no-untyped-call]
        self._ranges[action_name] = rf

    def stop(self, action_name: str) -> None:
        rf = self._ranges.pop(action_name, None)
        if rf is None:
            raise ValueError(
                f"Attempting to stop recording an action ({action_name}) which was never started."
            )
        rf.__exit__(None, None, None)
        if self._scheduled and action_name == _STEP_ACTION and self.profiler is not None:
            self.profiler.step()

    def _stop_profiler(self) -> None:
        prof = self.profiler
        if prof is None:
            return
        for rf in reversed(list(self._ranges.values())):
            rf.__exit__(None, None, None)
        self._ranges.clear()
        prof.__exit__(None, None, None)
        self.profiler = None
        if self._scheduled and prof.profiler is None:
            return  # the schedule's on_trace_ready handler wrote what it recorded
        try:
            averages = prof.key_averages(group_by_input_shape=self.group_by_input_shapes)
        except (AssertionError, RuntimeError):  # nothing was recorded
            return
        sort_by = self.sort_by_key or ("cuda_time_total" if torch.cuda.is_available() else "cpu_time_total")
        self._report = averages.table(sort_by=sort_by, row_limit=self.row_limit, **self.table_kwargs)
        if self.export_to_chrome and not self._scheduled:
            path = self._trace_file()
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            prof.export_chrome_trace(path)
            self.trace_path = path

    def _trace_file(self) -> str:
        dirpath = self.dirpath if self.dirpath is not None else (self._log_dir or os.getcwd())
        base = self.filename or "trace"
        name = base if self._stage is None else f"{self._stage}-{base}"
        if self._local_rank not in (None, 0):
            name = f"{name}-rank{self._local_rank}"
        return os.path.join(os.fspath(dirpath), name + ".pt.trace.json")

    def summary(self) -> str:
        self._stop_profiler()
        return self._report

    def _reset(self) -> None:
        self._report = ""

    def teardown(self, stage: str | None) -> None:
        self._stop_profiler()
