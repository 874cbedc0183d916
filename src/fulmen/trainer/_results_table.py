"""The table ``trainer.validate`` / ``trainer.test`` print, character for character as Lightning 2.6 prints it.

Users diff this output, so its format is Lightning's: one column per dataloader (``DataLoader 0``...), one row per
metric (the ``/dataloader_idx_N`` suffix dropped, sorted by name), every value written as Python writes it
(``f"{value}"``: ``0.12345679104328156``, ``3.0``), cells centered in columns at least 25 characters wide (at most
half the terminal), columns wrapping onto further tables when they do not fit the terminal width. With ``rich``
installed it is a rich table (cyan metric names, magenta values); without, plain text between rules of ``─``.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Iterator
from typing import Any


@functools.cache
def rich_available() -> bool:
    """``rich`` is installed in a version fulmen supports: Lightning then uses its rich bar, summary and table."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("rich") is None:
        return False
    try:
        major = int(importlib.metadata.version("rich").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return major >= 12


def _paths(data: dict[str, Any]) -> Iterator[tuple[str, ...]]:
    for key, value in data.items():
        if isinstance(value, dict):
            for rest in _paths(value):
                yield (key, *rest)
        else:
            yield (key,)


def _find(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _cell(value: Any) -> str:
    if value is None:
        return " "
    if hasattr(value, "item") and hasattr(value, "numel"):  # a tensor
        value = value.item() if value.numel() == 1 else value.tolist()
    return f"{value}"


def print_results(results: list[dict[str, Any]], stage: str) -> None:
    """Print ``results`` (one dict per dataloader) under the title ``"{stage} metric"`` (``Test``, ``Validate``)."""
    results = [{k.split("/dataloader_idx_")[0]: v for k, v in r.items()} for r in results]
    paths = sorted({p for r in results for p in _paths(r)}, key=lambda p: ":".join(p))
    if not paths:
        return
    names = [":".join(p) for p in paths]
    headers = [f"DataLoader {i}" for i in range(len(results))]
    term = shutil.get_terminal_size(fallback=(120, 30)).columns or 120
    width = int(min(max(max(map(len, names)), max(map(len, headers)), 25), term / 2))
    rows = [[_cell(_find(r, p)) for r in results] for p in paths]
    per_table = max(int((term - width) / width), 1)
    for start in range(0, len(headers), per_table):
        table_headers = [f"{stage} Metric".capitalize(), *headers[start : start + per_table]]
        table_rows = [row[start : start + per_table] for row in rows]
        if rich_available():
            _print_rich(table_headers, names, table_rows, width)
        else:
            _print_plain(table_headers, names, table_rows, width, term)


def _print_rich(headers: list[str], names: list[str], rows: list[list[str]], width: int) -> None:
    from rich import get_console
    from rich.table import Column, Table

    columns = [Column(h, justify="center", style="magenta", width=width) for h in headers]
    columns[0].style = "cyan"
    table = Table(*columns)
    for name, row in zip(names, rows):
        table.add_row(name, *row)
    get_console().print(table)


def _print_plain(headers: list[str], names: list[str], rows: list[list[str]], width: int, term: int) -> None:
    row_format = f"{{:^{width}}}" * len(headers)
    try:
        if sys.stdout.encoding is not None:
            "─".encode(sys.stdout.encoding)
        bar = "─" * term
    except UnicodeEncodeError:  # a terminal that cannot show the box character
        bar = "-" * term
    half = int(term / 2)
    lines = [bar, row_format.format(*headers).rstrip(), bar]
    blanks = [" "] * (len(headers) - 1)
    for name, row in zip(names, rows):
        if len(name) <= half:
            lines.append(row_format.format(name, *row).rstrip())
            continue
        # as Lightning: a name longer than half the terminal is cut into pieces, each shown with the values, the
        # rest on a line of its own
        while len(name) > half:
            lines.append(row_format.format(name[:half], *row).rstrip())
            name = name[half:]
        lines.append(row_format.format(name, *blanks).rstrip())
    lines.append(bar)
    print(os.linesep.join(lines))
