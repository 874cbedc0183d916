"""``AdvancedProfiler``: a ``cProfile`` profile per action (function-level detail)."""

from __future__ import annotations

import cProfile
import io
import os
import pstats
from pathlib import Path

from fulmen.profilers.profiler import Profiler

__all__ = ["AdvancedProfiler"]


class AdvancedProfiler(Profiler):
    """Runs ``cProfile`` while each action runs; the report lists the slowest functions per action.

    Args:
        dirpath: Directory of the report file (default: ``trainer.log_dir``).
        filename: Write the report to ``{dirpath}/{stage}-{filename}.txt`` instead of logging it.
        line_count_restriction: How many lines of ``pstats`` output per action: an int, or a float in
            (0, 1] for a fraction of them.
        dump_stats: Also write each action's raw stats to ``{dirpath}/{stage}-{filename}-{action}.prof``
            (open with ``snakeviz`` or ``pstats``); needs ``filename``.

    Raises:
        ValueError: If ``stop`` is called for an action that was not started.
    """

    def __init__(
        self,
        dirpath: str | Path | None = None,
        filename: str | None = None,
        line_count_restriction: float = 1.0,
        dump_stats: bool = False,
    ) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.profiled_actions: dict[str, cProfile.Profile] = {}
        self.line_count_restriction = line_count_restriction
        self.dump_stats = dump_stats
        self._stack: list[str] = []

    def start(self, action_name: str) -> None:
        if action_name in self._stack:
            raise ValueError(f"Attempted to start {action_name} which has already started.")
        pr = self.profiled_actions.get(action_name)
        if pr is None:
            pr = self.profiled_actions[action_name] = cProfile.Profile()
        # one cProfile can be active per thread: pause the enclosing action while a nested one runs (so
        # each action's stats exclude its nested actions), and resume it when the nested one stops
        if self._stack:
            self.profiled_actions[self._stack[-1]].disable()
        self._stack.append(action_name)
        pr.enable()

    def stop(self, action_name: str) -> None:
        if action_name not in self._stack:
            raise ValueError(
                f"Attempting to stop recording an action ({action_name}) which was never started."
            )
        # actions stop in reverse order of their start; tolerate an out-of-order stop by unwinding to it
        while self._stack:
            name = self._stack.pop()
            self.profiled_actions[name].disable()
            if name == action_name:
                break
        if self._stack:
            self.profiled_actions[self._stack[-1]].enable()

    def summary(self) -> str:
        parts = []
        for name, pr in self.profiled_actions.items():
            s = io.StringIO()
            try:
                stats = pstats.Stats(pr, stream=s)
            except TypeError:  # an action that never ran any Python code
                continue
            if self.dump_stats and self.filename is not None:
                path = self._output_path(extension="")
                assert path is not None
                safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                stats.dump_stats(f"{path}-{safe}.prof")
            stats.strip_dirs().sort_stats("cumulative").print_stats(self.line_count_restriction)
            parts.append(f"Profile stats for: {name}\n{s.getvalue()}")
        return "\n".join(parts)

    def _reset(self) -> None:
        self.profiled_actions = {}
        self._stack = []
