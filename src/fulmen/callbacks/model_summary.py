"""Callbacks that print the model summary when ``fit`` starts: a plain-text table, or a rich one.

The summary itself is :class:`fulmen.utilities.model_summary.ModelSummary`; these callbacks only
decide when to build it (``on_fit_start``, after the model is configured and on its device) and
where it goes (rank 0 only).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from fulmen.callbacks.callback import Callback
from fulmen.callbacks.progress.rich_progress import _require_rich
from fulmen.utilities.exceptions import misconfig
from fulmen.utilities.model_summary import (
    ModelSummary as _Summary,
)
from fulmen.utilities.model_summary import (
    format_summary_table,
    get_human_readable_count,
    summarize,
    summary_totals,
)

if TYPE_CHECKING:
    from fulmen.core.module import LightningModule
    from fulmen.trainer.trainer import Trainer

__all__ = ["ModelSummary", "RichModelSummary"]

log = logging.getLogger("fulmen")


def _emit(text: str) -> None:
    """Send ``text`` to the ``fulmen`` logger when someone listens to it at INFO, else to stdout.

    Routing through logging lets applications capture or silence the summary; falling back to
    ``print`` keeps it visible in a plain script where logging was never configured.
    """
    if log.isEnabledFor(logging.INFO) and log.hasHandlers():
        log.info("\n%s", text)
    else:
        print(text, flush=True)


class ModelSummary(Callback):
    """Print a summary of the LightningModule's layers and parameter counts when fitting starts.

    Args:
        max_depth: How deep the table descends into submodules: ``1`` (default) lists the direct
            children, ``-1`` every submodule, ``0`` disables the summary.
        **summarize_kwargs: Options for :meth:`summarize` (the plain summary takes none;
            :class:`RichModelSummary` takes ``header_style``).

    Raises:
        fulmen.utilities.exceptions.MisconfigurationException: If ``max_depth`` is not an int
            ``>= -1`` or an unknown keyword is given.

    Example::

        trainer = Trainer(callbacks=[ModelSummary(max_depth=2)])
    """

    _SUMMARIZE_KWARGS: frozenset[str] = frozenset()

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < -1:
            raise misconfig(
                f"{type(self).__name__}(max_depth=...)",
                max_depth,
                "an int >= -1 (-1: all layers, 0: disabled)",
                "pass e.g. `max_depth=1` for the top-level layers, or `enable_model_summary=False` on the Trainer "
                "to turn the summary off",
            )
        unknown = sorted(set(summarize_kwargs) - self._SUMMARIZE_KWARGS)
        if unknown:
            allowed = ", ".join(sorted(self._SUMMARIZE_KWARGS)) or "none"
            raise misconfig(
                f"{type(self).__name__}(**summarize_kwargs)",
                unknown,
                f"only these keywords: {allowed}",
                "remove the unknown keywords"
                + ("" if self._SUMMARIZE_KWARGS else " (use RichModelSummary for `header_style`)"),
            )
        self._max_depth = max_depth
        self._summarize_kwargs = summarize_kwargs

    @property
    def max_depth(self) -> int:
        return self._max_depth

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._max_depth:
            return
        # Built on every rank: the example forward pass of a sharded model gathers parameters
        # collectively, so one rank alone would hang. Only rank 0 prints.
        model_summary = self._summary(trainer, pl_module)
        if trainer.is_global_zero:
            self.summarize(
                model_summary.get_summary_data(),
                model_summary.total_parameters,
                model_summary.trainable_parameters,
                model_summary.model_size,
                model_summary.total_training_modes,
                **self._summarize_kwargs,
            )

    def _summary(self, trainer: Trainer, pl_module: LightningModule) -> _Summary:
        return summarize(pl_module, max_depth=self._max_depth)

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        **summarize_kwargs: Any,
    ) -> None:
        """Render and emit the summary (override to send it elsewhere).

        Args:
            summary_data: ``(header, cells)`` columns from ``ModelSummary.get_summary_data()``.
            total_parameters: All parameters.
            trainable_parameters: Parameters with ``requires_grad``.
            model_size: Parameter size in MB.
            total_training_modes: ``{"train": n, "eval": m}`` submodule counts.
            **summarize_kwargs: Unused by the plain summary.
        """
        totals = summary_totals(total_parameters, trainable_parameters, model_size, total_training_modes)
        _emit(format_summary_table(summary_data, totals))


class RichModelSummary(ModelSummary):
    """:class:`ModelSummary` rendered as a rich table (requires the ``fulmen[rich]`` extra).

    Args:
        max_depth: As for :class:`ModelSummary`.
        header_style: Rich style of the column headers.
        **summarize_kwargs: Passed on to :meth:`summarize`.

    Raises:
        ModuleNotFoundError: If ``rich`` is not installed (install ``fulmen[rich]``).
    """

    _SUMMARIZE_KWARGS = frozenset({"header_style"})

    def __init__(
        self, max_depth: int = 1, header_style: str = "bold magenta", **summarize_kwargs: Any
    ) -> None:
        _require_rich("RichModelSummary")
        super().__init__(max_depth, header_style=header_style, **summarize_kwargs)

    @staticmethod
    @override
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        **summarize_kwargs: Any,
    ) -> None:
        """Print the summary as a rich table followed by the totals, laid out as Lightning 2.6's (no FLOPs)."""
        from rich import get_console
        from rich.table import Table
        from rich.text import Text

        console = get_console()
        header_style = summarize_kwargs.get("header_style", "bold magenta")
        table = Table(header_style=header_style)
        column_styles: dict[str, dict[str, Any]] = {
            " ": {"style": "dim"},
            "Name": {"justify": "left", "no_wrap": True},
            "Params": {"justify": "right"},
            "Params per Device": {"justify": "right"},
            "In sizes": {"justify": "right", "style": "white"},
            "Out sizes": {"justify": "right", "style": "white"},
        }
        for header, _ in summary_data:
            table.add_column(header, **column_styles.get(header, {}))
        for row in zip(*(cells for _, cells in summary_data)):
            table.add_row(*(Text(cell) for cell in row))  # cells are data, not markup
        console.print(table)
        counts = [trainable_parameters, total_parameters - trainable_parameters, total_parameters, int(model_size)]
        labels = ["Trainable params", "Non-trainable params", "Total params", "Total estimated model params size (MB)"]
        grid = Table.grid(expand=True)
        grid.add_column()
        grid.add_column()
        for label, count in zip(labels, counts):
            grid.add_row(f"[bold]{label}[/]: {get_human_readable_count(int(count)):<10}")
        grid.add_row(f"[bold]Modules in train mode[/]: {total_training_modes.get('train', 0)}")
        grid.add_row(f"[bold]Modules in eval mode[/]: {total_training_modes.get('eval', 0)}")
        console.print(grid)
