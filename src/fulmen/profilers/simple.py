"""``SimpleProfiler``: wall-clock time per action, reported as a table."""

from __future__ import annotations

import time
from pathlib import Path

from fulmen.profilers.profiler import Profiler

__all__ = ["SimpleProfiler"]


class SimpleProfiler(Profiler):
    """Times every action with ``time.perf_counter`` and reports mean, count, total and share per action.

    Args:
        dirpath: Directory of the report file (default: ``trainer.log_dir``).
        filename: Write the report to ``{dirpath}/{stage}-{filename}.txt`` instead of logging it.
        extended: Add the share of the total wall time of the stage (the ``Percentage %`` column) and a
            ``Total`` row.

    Raises:
        ValueError: If ``stop`` is called for an action that was not started.
    """

    def __init__(
        self, dirpath: str | Path | None = None, filename: str | None = None, extended: bool = True
    ) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.extended = extended
        self.current_actions: dict[str, float] = {}
        self.recorded_durations: dict[str, list[float]] = {}
        self.start_time = time.perf_counter()

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        super().setup(stage, local_rank, log_dir)
        self.start_time = time.perf_counter()

    def start(self, action_name: str) -> None:
        if action_name in self.current_actions:
            raise ValueError(f"Attempted to start {action_name} which has already started.")
        self.current_actions[action_name] = time.perf_counter()

    def stop(self, action_name: str) -> None:
        end = time.perf_counter()
        start = self.current_actions.pop(action_name, None)
        if start is None:
            raise ValueError(
                f"Attempting to stop recording an action ({action_name}) which was never started."
            )
        durations = self.recorded_durations.get(action_name)
        if durations is None:
            self.recorded_durations[action_name] = [end - start]
        else:
            durations.append(end - start)

    def _reset(self) -> None:
        self.recorded_durations = {}
        self.current_actions = {}
        self.start_time = time.perf_counter()

    def summary(self) -> str:
        if not self.recorded_durations:
            return ""
        total = time.perf_counter() - self.start_time
        rows = []
        for name, durations in self.recorded_durations.items():
            s = sum(durations)
            rows.append(
                (name, s / len(durations), len(durations), s, 100.0 * s / total if total > 0 else 0.0)
            )
        rows.sort(key=lambda r: r[3], reverse=True)
        headers = ["Action", "Mean duration (s)", "Num calls", "Total time (s)"]
        if self.extended:
            headers.append("Percentage %")
        cells = [
            [name, f"{mean:.5g}", str(n), f"{tot:.5g}"] + ([f"{pct:.3g}"] if self.extended else [])
            for name, mean, n, tot, pct in rows
        ]
        if self.extended:
            n_calls = sum(len(d) for d in self.recorded_durations.values())
            cells.insert(0, ["Total", "-", str(n_calls), f"{total:.5g}", "100"])
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]

        def line(values: list[str]) -> str:
            return (
                "| "
                + " | ".join(
                    v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))
                )
                + " |"
            )

        sep = "-" * len(line(headers))
        out = [f"{(self._stage or 'fit').upper()} Profiler Report", sep, line(headers), sep]
        out += [line(c) for c in cells]
        out.append(sep)
        return "\n".join(out)
