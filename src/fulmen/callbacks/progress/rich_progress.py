"""``RichProgressBar``: progress bars drawn with `rich <https://github.com/Textualize/rich>`_.

``rich`` is an optional dependency (``pip install 'fulmen[rich]'``); it is imported only when a
rich bar or summary is created, so ``import fulmen`` never imports it.

The bars are rich ``Progress`` tasks rendered without rich's background refresh thread
(``auto_refresh=False``): the callback redraws at its refresh points only (every ``refresh_rate``
batches, on a loader's last batch, at the end of an epoch or a validation run), and reads
``trainer.progress_bar_metrics`` (a device->host sync) only at the main bar's refresh points.

On a console that is not a terminal (CI logs, files) rich cannot redraw in place, so the bar
prints one line per finished training epoch instead, plus the final state of the other bars.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from fulmen.callbacks.progress.progress_bar import _StageProgressBar

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, ProgressColumn, Task, TaskID
    from rich.style import Style

    from fulmen.core.module import LightningModule
    from fulmen.trainer.trainer import Trainer

__all__ = ["RichProgressBar", "RichProgressBarTheme"]


def _require_rich(feature: str) -> None:
    """Raise a clear error naming the extra to install when ``rich`` is missing.

    Raises:
        ModuleNotFoundError: If ``rich`` cannot be imported.
    """
    if importlib.util.find_spec("rich") is None:
        raise ModuleNotFoundError(
            f"{feature} requires the `rich` package, which is not installed. "
            "Fix: `pip install 'fulmen[rich]'` (or `pip install rich`), or use the plain-text "
            "TQDMProgressBar / ModelSummary instead."
        )


@dataclass
class RichProgressBarTheme:
    """Styles of the rich progress bar (any rich style string or ``rich.style.Style``).

    Attributes:
        description: Style of the bar's description (``Epoch 3/9``, ``Validation``...).
        progress_bar: Style of the bar while in progress.
        progress_bar_finished: Style of a finished bar.
        progress_bar_pulse: Style of the bar when the total is unknown (an iterable without length).
        batch_progress: Style of the ``10/50`` batch counter.
        time: Style of the elapsed and remaining time.
        processing_speed: Style of the ``it/s`` speed.
        metrics: Style of the metrics text.
        metrics_text_delimiter: Separator between metrics.
        metrics_format: Format spec applied to float metrics.
    """

    description: str | Style = ""
    progress_bar: str | Style = "#6206E0"
    progress_bar_finished: str | Style = "#6206E0"
    progress_bar_pulse: str | Style = "#6206E0"
    batch_progress: str | Style = ""
    time: str | Style = "dim"
    processing_speed: str | Style = "dim underline"
    metrics: str | Style = "italic"
    metrics_text_delimiter: str = " "
    metrics_format: str = ".3f"


def _format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    return str(timedelta(seconds=max(0, int(seconds))))


def _columns(theme: RichProgressBarTheme) -> list[ProgressColumn]:
    """The bar's columns (rich is imported here, on first use)."""
    from rich.progress import BarColumn, ProgressColumn, TextColumn
    from rich.text import Text

    class BatchesColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            total = "?" if task.total is None else str(int(task.total))
            return Text(f"{int(task.completed)}/{total}", style=theme.batch_progress)

    class TimeColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            remaining = None if task.total is None else task.time_remaining
            return Text(f"{_format_duration(task.elapsed)} • {_format_duration(remaining)}", style=theme.time)

    class SpeedColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = f"{task.speed:>.2f}" if task.speed is not None else "0.00"
            return Text(f"{speed}it/s", style=theme.processing_speed)

    class MetricsColumn(ProgressColumn):
        # The text is formatted by the callback at refresh points: rendering never reads metrics.
        def render(self, task: Task) -> Text:
            return Text(str(task.fields.get("metrics", "")), style=theme.metrics)

    return [
        TextColumn("{task.description}", style=theme.description, markup=False),
        BarColumn(
            complete_style=theme.progress_bar,
            finished_style=theme.progress_bar_finished,
            pulse_style=theme.progress_bar_pulse,
        ),
        BatchesColumn(),
        TimeColumn(),
        SpeedColumn(),
        MetricsColumn(),
    ]


class RichProgressBar(_StageProgressBar):
    """Progress bars with rich formatting (requires the ``fulmen[rich]`` extra).

    Args:
        refresh_rate: Redraw every this many batches (and at epoch ends). ``0`` disables the bar.
        leave: Keep each finished epoch's bar on screen (a new bar per epoch).
        theme: Styles of the bar's parts.
        console_kwargs: Arguments for the ``rich.console.Console`` the bar draws on (e.g.
            ``{"force_terminal": True}``, ``{"file": f}``). Without them, rich's global console.

    Raises:
        ModuleNotFoundError: If ``rich`` is not installed.
        fulmen.utilities.exceptions.MisconfigurationException: If ``refresh_rate`` is not an int
            ``>= 0``.

    Example::

        trainer = Trainer(callbacks=[RichProgressBar(refresh_rate=10, leave=True)])
    """

    def __init__(
        self,
        refresh_rate: int = 1,
        leave: bool = False,
        theme: RichProgressBarTheme | None = None,
        console_kwargs: dict[str, Any] | None = None,
    ) -> None:
        _require_rich("RichProgressBar")
        super().__init__("RichProgressBar", refresh_rate, leave)
        self.theme = theme if theme is not None else RichProgressBarTheme()
        self._console_kwargs = dict(console_kwargs or {})
        self._console: Console | None = None
        # whether a refresh shows anything while the display runs (see _start); a file or CI log shows only
        # the final render, so building every intermediate one is skipped there
        self._live_redraws = True
        self.progress: Progress | None = None
        self._train_progress_bar: TaskID | None = None  # the main bar's task (`train_progress_bar_id`)
        self.val_sanity_progress_bar_id: TaskID | None = None
        self.val_progress_bar_id: TaskID | None = None
        self.test_progress_bar_id: TaskID | None = None
        self.predict_progress_bar_id: TaskID | None = None

    def __getstate__(self) -> dict[str, Any]:
        # the console and the live display hold locks and threads: drop them when pickled (spawn)
        state = self.__dict__.copy()
        state["progress"] = None
        state["_console"] = None
        return state

    # ----------------------------------------------------------------------------------------------
    # configuration
    # ----------------------------------------------------------------------------------------------
    @property
    def train_progress_bar_id(self) -> TaskID | None:
        """The rich task of the main (training) bar; ``None`` while it is not shown."""
        task: TaskID | None = self._train_progress_bar
        return task

    @train_progress_bar_id.setter
    def train_progress_bar_id(self, task: TaskID | None) -> None:
        self._train_progress_bar = task

    @property
    def console(self) -> Console | None:
        """The console being drawn on (``None`` before the first bar)."""
        return self._console

    def configure_columns(self, trainer: Trainer) -> list[ProgressColumn]:
        """The columns of every bar; override to change the layout. The last one shows the metrics."""
        return _columns(self.theme)

    # ----------------------------------------------------------------------------------------------
    # the rich Progress
    # ----------------------------------------------------------------------------------------------
    def _start(self, trainer: Trainer) -> Progress | None:
        if self.is_disabled:
            return None
        if self.progress is None:
            from rich import get_console
            from rich.console import Console
            from rich.progress import Progress

            if self._console is None:
                self._console = Console(**self._console_kwargs) if self._console_kwargs else get_console()
            self.progress = Progress(
                *self.configure_columns(trainer), console=self._console, auto_refresh=False
            )
            console = self._console
            # rich's Live draws while started only on Jupyter and on a (non-dumb) terminal; elsewhere a refresh
            # renders the whole table and discards it. The final render (at stop) and the finished-task lines
            # are drawn from the tasks' state either way, so the output is the same.
            self._live_redraws = console.is_jupyter or (console.is_terminal and not console.is_dumb_terminal)
            self.progress.start()
        return self.progress

    def _stop(self) -> None:
        progress, console = self.progress, self._console
        if progress is not None:
            self.progress = None
            nothing_shown = not any(task.visible for task in progress.tasks)
            if console is not None and nothing_shown and not console.is_terminal:
                # a file or CI log: rich would print an empty final render
                console.quiet = True
                try:
                    progress.stop()
                finally:
                    console.quiet = False
            else:
                progress.stop()
        self._train_progress_bar = None
        self.val_sanity_progress_bar_id = None
        self.val_progress_bar_id = None
        self.test_progress_bar_id = None
        self.predict_progress_bar_id = None

    def refresh(self) -> None:
        """Redraw now (the bar never redraws on its own)."""
        if self.progress is not None:
            self.progress.refresh()

    def _on_terminal(self) -> bool:
        return self._console is not None and self._console.is_terminal

    def _new_task(
        self, old: TaskID | None, description: str, total: float, keep_old: bool = False
    ) -> TaskID | None:
        """A fresh task replacing ``old`` (so an unknown total, ``None`` in rich, is set cleanly).

        With ``keep_old`` (a finished test/predict/validate dataloader), a non-terminal console gets
        the old task printed as a line first.
        """
        progress = self.progress
        if progress is None:
            return None
        if old is not None:
            if keep_old:
                self._print_finished(old)
            progress.remove_task(old)
        return progress.add_task(description, total=None if total == float("inf") else total, metrics="")

    def _print_finished(self, task_id: TaskID | None) -> None:
        """On a non-terminal console, print a task as a line before it leaves the display."""
        task = self._task(task_id)
        if self.progress is None or self._console is None or self._on_terminal():
            return
        if task is not None and task.visible:
            self._console.print(self.progress.make_tasks_table([task]))

    def _remove_task(self, task: TaskID | None) -> None:
        if self.progress is not None and task is not None:
            self.progress.remove_task(task)

    @override
    def _draw(self, bar: TaskID | None, n: int, **fields: Any) -> None:
        progress = self.progress
        if progress is None or bar is None:
            return
        found = self._task(bar)
        grown = found is not None and found.total is not None and n > found.total
        # `total=None` leaves the total alone; grow it when validation ran more often than scheduled
        progress.update(bar, completed=n, total=n if grown else None, **fields)
        if self._live_redraws:
            progress.refresh()

    def _task(self, task_id: TaskID | None) -> Task | None:
        if self.progress is None or task_id is None:
            return None
        # rich keeps its tasks in a dict by id; its public ``tasks`` copies them into a list under a lock, which
        # the per-batch redraw does not need (the scan is the fallback should rich ever drop the dict)
        by_id = getattr(self.progress, "_tasks", None)
        if isinstance(by_id, dict):
            return by_id.get(task_id)
        return next((task for task in self.progress.tasks if task.id == task_id), None)

    def _metrics_text(self, trainer: Trainer, pl_module: LightningModule) -> str:
        items = self.get_metrics(trainer, pl_module)
        parts = []
        for name, value in items.items():
            shown = format(value, self.theme.metrics_format) if isinstance(value, float) else str(value)
            parts.append(f"{name}: {shown}")
        return self.theme.metrics_text_delimiter.join(parts)

    @override
    def _refresh_main(self, trainer: Trainer, pl_module: LightningModule, with_metrics: bool) -> None:
        if self.is_disabled or self._train_progress_bar is None:
            return
        fields = {"metrics": self._metrics_text(trainer, pl_module)} if with_metrics else {}
        self._draw(self._train_progress_bar, self._main_n, **fields)

    def _train_description(self, trainer: Trainer) -> str:
        description = f"Epoch {trainer.current_epoch}"
        max_epochs = getattr(trainer, "max_epochs", None)
        if max_epochs is not None and max_epochs >= 0:
            description += f"/{max_epochs - 1}"
        # pad to the validation label's width so the bars do not jump when it appears
        return description.ljust(len(self.validation_description))

    @override
    def _open_main_bar(self, trainer: Trainer, total: float) -> None:
        self._start(trainer)
        description = self._train_description(trainer)
        self._train_progress_bar = self._new_task(self._train_progress_bar, description, total)
        self.refresh()

    @override
    def _end_epoch_bar(self) -> None:
        if not self._on_terminal():
            # no in-place redraws: print the finished epoch as one line, and drop it from the live display
            self._print_finished(self._train_progress_bar)
            self._remove_task(self._train_progress_bar)
            self._train_progress_bar = None
        elif self._leave:
            self._stop()  # the finished bar stays on screen; the next epoch starts a new display

    @override
    def _eval_bar(self, trainer: Trainer, stage: str) -> TaskID | None:
        if stage == "validate":
            return self.val_sanity_progress_bar_id if trainer.sanity_checking else self.val_progress_bar_id
        return self.test_progress_bar_id if stage == "test" else self.predict_progress_bar_id

    @override
    def _reset_eval_bar(self, trainer: Trainer, stage: str, dataloader_idx: int) -> None:
        if self.progress is None:
            return
        description = self._eval_bar_description(trainer, stage, dataloader_idx)
        old, total = self._eval_bar(trainer, stage), self._eval_total
        if stage == "validate" and trainer.sanity_checking:
            self.val_sanity_progress_bar_id = self._new_task(old, description, total)
        elif stage == "validate":
            self.val_progress_bar_id = self._new_task(old, description, total, keep_old=not self._fitting)
        elif stage == "test":
            self.test_progress_bar_id = self._new_task(old, description, total, keep_old=True)
        else:
            self.predict_progress_bar_id = self._new_task(old, description, total, keep_old=True)
        self.refresh()

    # ----------------------------------------------------------------------------------------------
    # sanity check
    # ----------------------------------------------------------------------------------------------
    @override
    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer)

    @override
    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_task(self.val_sanity_progress_bar_id)
        self.val_sanity_progress_bar_id = None
        self.reset_dataloader_idx_tracker()
        self.refresh()

    # ----------------------------------------------------------------------------------------------
    # training
    # ----------------------------------------------------------------------------------------------
    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fitting = True
        self._start(trainer)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.progress is not None:
            super().on_train_epoch_end(trainer, pl_module)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fitting = False

    # ----------------------------------------------------------------------------------------------
    # validation
    # ----------------------------------------------------------------------------------------------
    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            if self._fitting:
                self._remove_task(self.val_progress_bar_id)  # the main bar already counted these batches
                self.val_progress_bar_id = None
                self._refresh_main(trainer, pl_module, with_metrics=True)
            self.refresh()
        self.reset_dataloader_idx_tracker()

    # ----------------------------------------------------------------------------------------------
    # test and predict
    # ----------------------------------------------------------------------------------------------
    @override
    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer)

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.reset_dataloader_idx_tracker()

    @override
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer)

    @override
    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.reset_dataloader_idx_tracker()

    # ----------------------------------------------------------------------------------------------
    # teardown and printing
    # ----------------------------------------------------------------------------------------------
    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._fitting = False
        self._stop()
        self.reset_dataloader_idx_tracker()

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._fitting = False
        self._stop()

    @override
    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print above the bars (through the bar's console when it is drawing)."""
        if self._console is not None and self.progress is not None:
            self._console.print(*args, **kwargs)
        else:
            print(*args, **kwargs)
