"""``TQDMProgressBar``: the plain-terminal progress bar (tqdm is a core dependency).

Bars, top to bottom at ``2 * process_position``:

- the main bar, ``Epoch N``: counts the epoch's training batches plus the validation batches run
  inside the epoch, and shows ``v_num`` and the metrics logged with ``prog_bar=True``;
- under it, while validation runs during ``fit``: a ``Validation`` bar;
- ``Sanity Checking``, ``Validation`` (``trainer.validate``), ``Testing``, ``Predicting``: one bar
  each, shown while that stage runs.

Drawing happens only at refresh points: every ``refresh_rate`` batches, on a loader's last batch
and at the end of an epoch. Metrics (a device->host sync) are read only at the main bar's refresh
points and when a validation run or an epoch ends; between refreshes a hook only bumps integers.

When stdout is not a terminal (CI logs, files), the nested validation bar is not drawn during
``fit`` (moving the cursor between bars would write escape codes into the log); the main bar still
counts the validation batches, so the output stays one line per refresh.
"""

from __future__ import annotations

import math
import re
import sys
from numbers import Number
from typing import TYPE_CHECKING, Any

from tqdm import tqdm as _tqdm  # type: ignore[import-untyped,unused-ignore]
from tqdm.std import Bar as _TqdmBar  # type: ignore[import-untyped,unused-ignore]
from tqdm.utils import disp_len as _disp_len  # type: ignore[import-untyped,unused-ignore]
from tqdm.utils import disp_trim as _disp_trim  # type: ignore[import-untyped,unused-ignore]
from typing_extensions import override

from fulmen.callbacks.progress.progress_bar import _StageProgressBar, _validate_non_negative_int

if TYPE_CHECKING:
    from fulmen.core.module import LightningModule
    from fulmen.trainer.trainer import Trainer

__all__ = ["TQDMProgressBar", "Tqdm"]

_PAD_SIZE = 5  # floats are padded to this many characters so the postfix does not jitter
_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
# Anything but ASCII without ESC and the block characters tqdm draws bars with (U+2588-U+258F, one column
# wide each: east_asian_width "A", which tqdm counts as 1): text without it is as wide as it is long.
_NOT_NARROW = re.compile("[^\x00-\x1a\x1c-\x7f\u2588-\u258f]")
_INF = float("inf")


def _display_len(s: str) -> int:
    """tqdm's ``disp_len`` (on-screen width), with ``len`` for text of one-column characters and no escapes."""
    if _NOT_NARROW.search(s) is None:
        return len(s)
    return int(_disp_len(s))


_INTERVALS: dict[int, str] = {}


def _format_interval(t: float) -> str:
    """tqdm.format_interval (``[H:]MM:SS``); the texts of whole seconds are kept (a run shows few of them)."""
    if t >= 0:
        key = int(t)
        text = _INTERVALS.get(key)
        if text is None:
            if len(_INTERVALS) > 4096:
                _INTERVALS.clear()
            text = _INTERVALS[key] = str(_tqdm.format_interval(t))
        return text
    return str(_tqdm.format_interval(t))


def _meter(
    n: float, total: float | None, elapsed: float, ncols: int | None, prefix: str | None, ascii: bool | str | None,  # noqa: A002
    unit: str, rate: float | None, postfix: str | None, initial: float,
) -> str:
    """tqdm's ``format_meter`` output for ``_BAR_FORMAT`` with tqdm's default units (no scaling, no colour)."""
    if total and (n >= (total + 0.5) or total == _INF):
        total = None
    elapsed_str = _format_interval(elapsed)
    if rate is None and elapsed:
        rate = (n - initial) / elapsed
    inv_rate = 1 / rate if rate else None
    if inv_rate and inv_rate > 1:
        rate_fmt = f"{inv_rate:5.2f}s/{unit}"
    else:
        rate_fmt = (f"{rate:5.2f}" if rate else "?") + unit + "/s"
    postfix = ", " + postfix if postfix else ""
    remaining = (total - n) / rate if rate and total else 0
    remaining_str = _format_interval(remaining) if rate else "?"
    if prefix:
        l_bar = prefix if prefix[-2:] == ": " else prefix + ": "
    else:
        l_bar = ""
    r_text = f"| {n}/{total if total is not None else '?'} [{elapsed_str}<{remaining_str}, {rate_fmt}{postfix}]"
    if total:
        frac = n / total
        l_bar += f"{frac * 100:3.0f}%|"
        if ncols == 0:
            return l_bar[:-1] + r_text[1:]
        charset = _TqdmBar.ASCII if ascii is True else ascii or _TqdmBar.UTF
    else:
        frac = 0
        l_bar += "|"
        charset = _TqdmBar.BLANK
    width = max(1, ncols - _display_len(l_bar + r_text)) if ncols else 10
    line = l_bar + format(_TqdmBar(frac, width, charset=charset), "") + r_text
    if not ncols:
        return line
    return line[:ncols] if _display_len(line) == len(line) else str(_disp_trim(line, ncols))


class Tqdm(_tqdm):  # type: ignore[misc,type-arg,unused-ignore]
    """``tqdm`` that prints floats with 3 significant digits padded to a steady width (``0.100``)."""

    @staticmethod
    def format_num(n: float | str | Number) -> str:
        """Format a number for the postfix: ints as is, floats with 3 significant digits, zero-padded.

        Example::

            >>> Tqdm.format_num(0.1), Tqdm.format_num(2.0), Tqdm.format_num(0.12345), Tqdm.format_num(1e-5)
            ('0.100', '2.000', '0.123', '1e-5')
        """
        if isinstance(n, str):
            return n
        text: str = _tqdm.format_num(n)
        if isinstance(n, float) and math.isfinite(n) and "e" not in text:
            if "." not in text:
                text += "."
            text = text.ljust(_PAD_SIZE, "0")
        return text

    @staticmethod
    def format_meter(  # type: ignore[override]
        n: float, total: float | None, elapsed: float, ncols: int | None = None, prefix: str | None = "",
        ascii: bool | str | None = False, unit: str = "it", unit_scale: bool | float = False,  # noqa: A002
        rate: float | None = None, bar_format: str | None = None, postfix: Any = None, unit_divisor: float = 1000,
        initial: float = 0, colour: str | None = None, **extra_kwargs: Any,
    ) -> str:
        """tqdm's ``format_meter`` for this bar's own format, with the same output in a fraction of the time.

        A redraw spends most of its time in tqdm's general formatter (a character-by-character scan of the
        format string, an ETA timestamp it does not show, ...). For :attr:`TQDMProgressBar.BAR_FORMAT` with
        tqdm's default units the line is assembled directly; any other format or option goes to tqdm.
        """
        if (
            bar_format != _BAR_FORMAT or unit_scale or colour or (postfix is not None and not isinstance(postfix, str))
            or not isinstance(prefix, (str, type(None)))
        ):
            return str(_tqdm.format_meter(
                n, total, elapsed, ncols, prefix, ascii, unit, unit_scale, rate, bar_format, postfix, unit_divisor,
                initial, colour, **extra_kwargs,
            ))
        return _meter(n, total, elapsed, ncols, prefix, ascii, unit, rate, postfix, initial)

    def __str__(self) -> str:
        """``format_meter(**format_dict)``, with this bar's format drawn without building ``format_dict``."""
        cls = type(self)
        if (
            cls.format_meter is not Tqdm.format_meter or cls.format_dict is not _tqdm.format_dict
            or self.bar_format != _BAR_FORMAT or self.unit_scale or self.colour
            or (self.disable and not hasattr(self, "unit"))
            or not isinstance(self.postfix, (str, type(None))) or not isinstance(self.desc, (str, type(None)))
        ):
            return str(super().__str__())
        if self.dynamic_ncols:
            self.ncols, self.nrows = self.dynamic_ncols(self.fp)
        elapsed = self._time() - self.start_t if hasattr(self, "start_t") else 0
        dt = self._ema_dt()
        rate = self._ema_dn() / dt if dt else None
        return _meter(self.n, self.total, elapsed, self.ncols, self.desc, self.ascii, self.unit, rate, self.postfix,
                      self.initial)

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        """tqdm's ``set_postfix``; a plain dict of numbers and strings is formatted without tqdm's detours."""
        if kwargs or type(ordered_dict) is not dict:
            super().set_postfix(ordered_dict, refresh=refresh, **kwargs)
            return
        parts = []
        for key, value in ordered_dict.items():
            if type(value) is float or type(value) is int or isinstance(value, Number):
                value = self.format_num(value)
            elif not isinstance(value, str):
                value = str(value)
            parts.append(key + "=" + value.strip())
        self.postfix = ", ".join(parts)
        if refresh:
            self.refresh()

    @staticmethod
    def status_printer(file: Any) -> Any:
        """tqdm's line printer, measuring a plain-ASCII line with ``len``.

        tqdm pads each redraw to the previous line's on-screen width, which it measures character by
        character (``unicodedata.east_asian_width`` for each): about half the cost of a redraw. A line
        of ASCII and the bar's own block characters (all one column wide) without escape codes is as
        wide as it is long, so only other lines take that path.
        """
        fp = file
        fp_flush = getattr(fp, "flush", lambda: None)
        if fp in (sys.stderr, sys.stdout):
            getattr(sys.stderr, "flush", lambda: None)()
            getattr(sys.stdout, "flush", lambda: None)()
        last_len = [0]

        def print_status(s: str) -> None:
            len_s = _display_len(s)
            fp.write("\r" + s + (" " * max(last_len[0] - len_s, 0)))
            fp_flush()
            last_len[0] = len_s

        return print_status


def _total_or_none(total: float) -> int | None:
    """tqdm's ``total`` for a size: ``None`` (unknown) for ``inf``."""
    return None if total == float("inf") else int(total)


_BARS = ("_train_progress_bar", "_val_progress_bar", "_test_progress_bar", "_predict_progress_bar")
# the bar of each evaluation stage (`validate` includes the sanity check)
_EVAL_BARS = {"validate": _BARS[1], "test": _BARS[2], "predict": _BARS[3]}


def _bar_property(name: str) -> Any:
    """The settable ``<name>_progress_bar`` property: the bar while its stage runs, else a clear error."""
    attr = f"_{name}_progress_bar"

    def get(self: TQDMProgressBar) -> Tqdm:
        return _require_bar(getattr(self, attr), name)

    def set_(self: TQDMProgressBar, bar: Tqdm | None) -> None:
        setattr(self, attr, bar)

    return property(get, set_)


class TQDMProgressBar(_StageProgressBar):
    """The default text progress bar, drawn with tqdm.

    Args:
        refresh_rate: Redraw every this many batches (and at epoch ends). ``0`` disables the bar.
            In a notebook or a slow terminal, a higher value (e.g. 20) keeps the output light.
        process_position: Shift the bars down by ``2 * process_position`` lines, to run several
            trainers side by side without their bars overwriting each other.
        leave: Keep each finished epoch's bar on screen (a new bar per epoch) instead of reusing
            one bar for the whole run.

    Raises:
        fulmen.utilities.exceptions.MisconfigurationException: If ``refresh_rate`` or
            ``process_position`` is not an int ``>= 0``.

    Example::

        trainer = Trainer(callbacks=[TQDMProgressBar(refresh_rate=10)])
    """

    BAR_FORMAT = _BAR_FORMAT

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False) -> None:
        super().__init__("TQDMProgressBar", refresh_rate, leave)
        self._process_position = _validate_non_negative_int(
            "TQDMProgressBar", "process_position", process_position, "which pair of lines the bars use"
        )
        self._train_progress_bar: Tqdm | None = None
        self._val_progress_bar: Tqdm | None = None
        self._test_progress_bar: Tqdm | None = None
        self._predict_progress_bar: Tqdm | None = None

    def __getstate__(self) -> dict[str, Any]:
        # tqdm objects hold locks and file handles: drop them when the callback is pickled (spawn)
        state = self.__dict__.copy()
        for key in _BARS:
            state[key] = None
        return state

    # ----------------------------------------------------------------------------------------------
    # configuration
    # ----------------------------------------------------------------------------------------------
    @property
    def process_position(self) -> int:
        return self._process_position

    train_progress_bar = _bar_property("train")
    val_progress_bar = _bar_property("val")
    test_progress_bar = _bar_property("test")
    predict_progress_bar = _bar_property("predict")

    # ----------------------------------------------------------------------------------------------
    # bar factories (override to customize)
    # ----------------------------------------------------------------------------------------------
    def _new_bar(self, desc: str, position: int, leave: bool, total: int | None = None) -> Tqdm:
        bar = Tqdm(
            desc=desc,
            total=total,
            position=position,
            leave=leave,
            disable=self.is_disabled,
            # the width follows the terminal; a stream that is not one has no width, which tqdm would ask for
            # (and fail to get) at every redraw
            dynamic_ncols=self._stream_is_tty(sys.stdout),
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
            # tqdm draws at construction unless `delay > 0`; the bars are drawn first when their stage
            # sets the real total and description, so skip that placeholder draw ("Training: 0/?")
            delay=1e-9,
        )
        bar.delay = 0.0  # only the construction draw is skipped; `close` must treat the bar as shown
        return bar

    def init_sanity_tqdm(self) -> Tqdm:
        """The bar for the sanity-check validation run."""
        return self._new_bar(self.sanity_check_description, 2 * self._process_position, leave=False)

    def init_train_tqdm(self) -> Tqdm:
        """The main bar: training (and in-epoch validation) batches of an epoch."""
        return self._new_bar(self.train_description, 2 * self._process_position, leave=True)

    def init_validation_tqdm(self) -> Tqdm:
        """The validation bar: under the main bar during ``fit``, alone (and kept) in ``validate``."""
        has_main_bar = self._fitting
        return self._new_bar(
            self.validation_description,
            2 * self._process_position + int(has_main_bar),
            leave=not has_main_bar,
        )

    def init_test_tqdm(self) -> Tqdm:
        return self._new_bar(self.test_description, 2 * self._process_position, leave=True)

    def init_predict_tqdm(self) -> Tqdm:
        return self._new_bar(self.predict_description, 2 * self._process_position, leave=True)

    # ----------------------------------------------------------------------------------------------
    # drawing helpers
    # ----------------------------------------------------------------------------------------------
    @override
    def _refresh_main(self, trainer: Trainer, pl_module: LightningModule, with_metrics: bool) -> None:
        bar = self._train_progress_bar
        if bar is None or bar.disable:
            return
        if bar.total is not None and self._main_n > bar.total:
            bar.total = self._main_n  # validation ran more often than the schedule predicted
        bar.n = self._main_n
        if with_metrics:
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    @staticmethod
    def _reset_bar(bar: Tqdm, total: float, desc: str) -> None:
        bar.set_description(desc, refresh=False)
        bar.total = _total_or_none(total)
        bar.reset(total=bar.total)  # also redraws at 0

    @staticmethod
    @override
    def _draw(bar: Tqdm | None, n: int) -> None:
        if bar is not None and not bar.disable:
            if bar.total is not None and n > bar.total:
                bar.total = n
            bar.n = n
            bar.refresh()

    @override
    def _open_main_bar(self, trainer: Trainer, total: float) -> None:
        if self._train_progress_bar is None:  # closed at the previous epoch's end (leave=True)
            self._train_progress_bar = self.init_train_tqdm()
        self._reset_bar(self._train_progress_bar, total, f"Epoch {trainer.current_epoch}")

    @override
    def _end_epoch_bar(self) -> None:
        if self._leave:
            self._close(self._train_progress_bar)
            self._train_progress_bar = None

    @override
    def _eval_bar(self, trainer: Trainer, stage: str) -> Tqdm | None:
        bar: Tqdm | None = getattr(self, _EVAL_BARS[stage])
        return bar

    @override
    def _reset_eval_bar(self, trainer: Trainer, stage: str, dataloader_idx: int) -> None:
        bar = self._eval_bar(trainer, stage)
        if bar is not None and not bar.disable:
            self._reset_bar(bar, self._eval_total, self._eval_bar_description(trainer, stage, dataloader_idx))

    @staticmethod
    def _close(bar: Tqdm | None) -> None:
        if bar is not None:
            bar.close()

    # ----------------------------------------------------------------------------------------------
    # sanity check
    # ----------------------------------------------------------------------------------------------
    @override
    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.is_enabled:
            self._val_progress_bar = self.init_sanity_tqdm()

    @override
    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close(self._val_progress_bar)
        self._val_progress_bar = None
        self.reset_dataloader_idx_tracker()

    # ----------------------------------------------------------------------------------------------
    # training
    # ----------------------------------------------------------------------------------------------
    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fitting = True
        if self.is_enabled:
            self._train_progress_bar = self.init_train_tqdm()

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fitting = False
        self._close(self._train_progress_bar)
        self._train_progress_bar = None

    # ----------------------------------------------------------------------------------------------
    # validation
    # ----------------------------------------------------------------------------------------------
    def _show_nested_val_bar(self) -> bool:
        # a second bar under the main one needs cursor movement: only on a terminal
        return not self._fitting or self._stream_is_tty(sys.stdout) or self._process_position > 0

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.is_enabled and not trainer.sanity_checking and self._show_nested_val_bar():
            self._val_progress_bar = self.init_validation_tqdm()

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._val_progress_bar is not None and not trainer.sanity_checking:
            self._val_progress_bar.close()
            self._val_progress_bar = None
        if self._fitting and not trainer.sanity_checking:
            # validation metrics are new: show them on the main bar
            self._refresh_main(trainer, pl_module, with_metrics=True)
        self.reset_dataloader_idx_tracker()

    # ----------------------------------------------------------------------------------------------
    # test and predict
    # ----------------------------------------------------------------------------------------------
    @override
    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.is_enabled:
            self._test_progress_bar = self.init_test_tqdm()

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close(self._test_progress_bar)
        self._test_progress_bar = None
        self.reset_dataloader_idx_tracker()

    @override
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.is_enabled:
            self._predict_progress_bar = self.init_predict_tqdm()

    @override
    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close(self._predict_progress_bar)
        self._predict_progress_bar = None
        self.reset_dataloader_idx_tracker()

    # ----------------------------------------------------------------------------------------------
    # teardown and printing
    # ----------------------------------------------------------------------------------------------
    def _close_all(self) -> None:
        for name in (*_BARS[1:], _BARS[0]):  # the main bar last
            self._close(getattr(self, name))
            setattr(self, name, None)
        self._fitting = False
        self.reset_dataloader_idx_tracker()

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._close_all()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._close_all()

    @override
    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        """Print a line above the bars without breaking them (``tqdm.write``)."""
        bars = (getattr(self, name) for name in _BARS)
        active = next((bar for bar in bars if bar is not None and not bar.disable), None)
        if active is None:
            print(*args, sep=sep, **kwargs)
            return
        kwargs.setdefault("file", sys.stdout)
        kwargs.pop("flush", None)
        active.write(sep.join(map(str, args)), **kwargs)


def _require_bar(bar: Tqdm | None, name: str) -> Tqdm:
    if bar is None:
        raise TypeError(
            f"The TQDMProgressBar's {name} bar does not exist right now: it is created when its stage starts "
            f"and closed when it ends. Fix: read `{name}_progress_bar` from a hook of that stage."
        )
    return bar
