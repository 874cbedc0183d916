"""The hot path's fast versions give exactly what the general code they stand in for gives.

- ``Tqdm.format_meter`` / ``set_postfix`` / ``status_printer`` (fulmen's default bar draws at every
  refresh point, so its drawing is done without tqdm's general-purpose detours) against tqdm's own.
- ``move_data_to_device``'s tuple/list fast path against ``apply_to_collection``.
"""

from __future__ import annotations

import io
import itertools
from collections import namedtuple

import pytest
import torch
from tqdm import tqdm

from fulmen.callbacks.progress.tqdm_progress import Tqdm, TQDMProgressBar
from fulmen.utilities.apply_func import _move, apply_to_collection, move_data_to_device

INF = float("inf")


@pytest.mark.parametrize("ascii_", [False, True, None])
def test_format_meter_matches_tqdm(ascii_: bool | None) -> None:
    grid = itertools.product(
        [0, 1, 5, 99, 100, 101, 12345],  # n
        [None, 0, 1, 10, 100, 1000, INF],  # total
        [0, 0.001, 0.5, 3.7, 59.9, 3700.2, 1e5],  # elapsed
        [None, 0, 1, 20, 80, 200],  # ncols
        ["", "Epoch 0", "Epoch 12: ", "Validation DataLoader 1", "Ünï 日本"],  # prefix
        [None, "", "v_num=0, loss=0.123", "日本=1.000", "a=\x1b[31mred\x1b[0m"],  # postfix
    )
    checked = 0
    for n, total, elapsed, ncols, prefix, postfix in grid:
        kwargs = dict(n=n, total=total, elapsed=elapsed, ncols=ncols, prefix=prefix, ascii=ascii_,
                      bar_format=TQDMProgressBar.BAR_FORMAT, postfix=postfix, unit="it", unit_scale=False,
                      rate=None, unit_divisor=1000, initial=0, colour=None, nrows=None)
        assert Tqdm.format_meter(**kwargs) == tqdm.format_meter(**kwargs), kwargs
        checked += 1
    assert checked > 10_000


@pytest.mark.parametrize(
    "overrides",
    [{"bar_format": "{l_bar}{bar}{r_bar}"}, {"bar_format": None}, {"unit_scale": True}, {"colour": "green"},
     {"postfix": {"a": 1}}, {"rate": 3.0}, {"initial": 5}],
)
def test_format_meter_other_options_match_tqdm(overrides: dict) -> None:
    kwargs = dict(n=7, total=20, elapsed=2.5, ncols=60, prefix="Epoch 1", ascii=False,
                  bar_format=TQDMProgressBar.BAR_FORMAT, postfix="loss=0.5", unit="it", unit_scale=False,
                  rate=None, unit_divisor=1000, initial=0, colour=None)
    kwargs.update(overrides)
    assert Tqdm.format_meter(**kwargs) == tqdm.format_meter(**kwargs)


@pytest.mark.parametrize(
    "metrics",
    [{}, {"v_num": 3}, {"v_num": 0, "loss": 0.12345}, {"loss": 2.0, "acc": 1, "flag": True, "name": " x "},
     {"big": 1.5e12, "small": 1e-7, "nan": float("nan"), "t": torch.tensor(1.5).item()},
     {"v_num": "ab12", "obj": (1, 2)}],
)
def test_set_postfix_matches_tqdm(metrics: dict) -> None:
    ours = Tqdm(total=10, file=io.StringIO(), disable=False)
    theirs = Tqdm(total=10, file=io.StringIO(), disable=False)
    ours.set_postfix(metrics, refresh=False)
    tqdm.set_postfix(theirs, metrics, refresh=False)
    assert ours.postfix == theirs.postfix
    ours.set_postfix({"z": 1.0}, refresh=False, a=2)  # kwargs take tqdm's own path
    tqdm.set_postfix(theirs, {"z": 1.0}, refresh=False, a=2)
    assert ours.postfix == theirs.postfix


def test_status_printer_pads_like_tqdm() -> None:
    lines = ["Epoch 0:  45%|████▌     | 9/20 [00:00<00:00, 1.2it/s, v_num=0, loss=0.123]", "abc", "日本 ▌",
             "\x1b[31mred\x1b[0m", "x", "", "Épsilon"]
    ours, theirs = io.StringIO(), io.StringIO()
    p_ours, p_theirs = Tqdm.status_printer(ours), tqdm.status_printer(theirs)
    for line in lines + lines[::-1]:
        p_ours(line)
        p_theirs(line)
    assert ours.getvalue() == theirs.getvalue()


Point = namedtuple("Point", "x y")


@pytest.mark.parametrize(
    "batch",
    [
        (torch.ones(2), torch.zeros(3)),
        [torch.ones(2), torch.zeros(3)],
        (torch.ones(2), "label", 3, None),
        [torch.ones(2), {"a": torch.ones(1), "b": [torch.zeros(1)]}, ("s", torch.ones(1))],
        (),
        [],
        Point(torch.ones(1), torch.zeros(1)),
        {"x": torch.ones(1)},
        torch.ones(3),
    ],
)
def test_move_data_to_device_fast_path_matches_apply_to_collection(batch: object) -> None:
    device = torch.device("cpu")
    fast = move_data_to_device(batch, device)
    general = apply_to_collection(batch, torch.Tensor, _move, device, False)
    assert type(fast) is type(general)
    flat_fast = _flatten(fast)
    flat_general = _flatten(general)
    assert len(flat_fast) == len(flat_general)
    for a, b in zip(flat_fast, flat_general):
        assert (a is b) if isinstance(a, torch.Tensor) else (a == b)
    if isinstance(batch, list):
        assert fast is not batch  # a list is rebuilt (the caller may mutate it)


def _flatten(x: object) -> list:
    if isinstance(x, dict):
        return [v for k in x for v in [k, *_flatten(x[k])]]
    if isinstance(x, (list, tuple)):
        return [type(x).__name__, *[v for item in x for v in _flatten(item)]]
    return [x]


@pytest.mark.parametrize("total", [None, 0, 10, 1000])
@pytest.mark.parametrize("n", [0, 3, 10])
@pytest.mark.parametrize("desc", ["", "Epoch 3", "Validation DataLoader 1"])
@pytest.mark.parametrize("postfix", [None, "v_num=1, loss=0.250"])
def test_bar_str_matches_tqdm(total: int | None, n: int, desc: str, postfix: str | None) -> None:
    bar = Tqdm(total=total, desc=desc, file=io.StringIO(), bar_format=TQDMProgressBar.BAR_FORMAT, smoothing=0,
               ncols=90 if n == 3 else None)
    start = bar.start_t
    bar._time = lambda: start + 7.25  # type: ignore[method-assign]  # one clock for both renderings
    bar.n = n
    bar.postfix = postfix
    assert str(bar) == tqdm.format_meter(**bar.format_dict)
    bar.unit_scale = True  # not this bar's own format: tqdm renders it
    assert str(bar) == tqdm.format_meter(**bar.format_dict)
    bar.close()
