"""Tests for the progress bars (fulmen.callbacks.progress).

The hooks are driven directly with a stand-in trainer that has the attributes of
docs/dev/contracts.md, and counts every read of ``progress_bar_metrics`` (a device->host sync in
the real Trainer) so the tests can pin when the bars read it.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
from types import SimpleNamespace
from typing import Any

import pytest

from fulmen.callbacks.progress import (
    ProgressBar,
    RichProgressBar,
    RichProgressBarTheme,
    TQDMProgressBar,
    tqdm_progress,
)
from fulmen.callbacks.progress.progress_bar import get_standard_metrics
from fulmen.utilities.exceptions import MisconfigurationException

INF = float("inf")


class FakeTrainer:
    """The Trainer attributes a progress bar may rely on (docs/dev/contracts.md)."""

    def __init__(self, **overrides: Any) -> None:
        self.num_training_batches: int | float = 10
        self.num_val_batches: list[int | float] = [4]
        self.num_sanity_val_batches: list[int] = [2]
        self.num_test_batches: list[int] = [3]
        self.num_predict_batches: list[int] = [3]
        self.current_epoch = 0
        self.max_epochs = 2
        self.enable_validation = True
        self.check_val_every_n_epoch: int | None = 1
        self.val_check_interval: int | float = 1.0
        self.sanity_checking = False
        self.is_global_zero = True
        self.is_last_batch = False
        self.loggers: list[Any] = [SimpleNamespace(version=3)]
        self.state = SimpleNamespace(fn="fit", stage=None)
        self.metrics: dict[str, Any] = {"loss": 0.5}
        self.metric_reads = 0
        for key, value in overrides.items():
            setattr(self, key, value)

    @property
    def progress_bar_metrics(self) -> dict[str, Any]:
        self.metric_reads += 1
        return dict(self.metrics)


def _eval_loop(
    bar: ProgressBar, trainer: FakeTrainer, stage: str, sizes: list[Any], reads: list[int] | None = None
) -> None:
    getattr(bar, f"on_{stage}_start")(trainer, None)
    getattr(bar, f"on_{stage}_epoch_start")(trainer, None)
    for dl_idx, size in enumerate(sizes):
        for i in range(5 if size == INF else int(size)):  # an unknown-length loader yields 5 batches
            getattr(bar, f"on_{stage}_batch_start")(trainer, None, None, i, dl_idx)
            getattr(bar, f"on_{stage}_batch_end")(trainer, None, None, None, i, dl_idx)
            if reads is not None:
                reads.append(trainer.metric_reads)
    getattr(bar, f"on_{stage}_epoch_end")(trainer, None)
    getattr(bar, f"on_{stage}_end")(trainer, None)


def run_fit(
    bar: ProgressBar,
    trainer: FakeTrainer,
    epochs: int = 2,
    sanity: bool = True,
    train_batches: int | None = None,
    per_batch_reads: list[int] | None = None,
) -> None:
    """Call the bar's hooks in the order `Trainer.fit` does (spec §1.1)."""
    bar.setup(trainer, None, "fit")  # type: ignore[arg-type]
    bar.on_fit_start(trainer, None)  # type: ignore[arg-type]
    if sanity:
        bar.on_sanity_check_start(trainer, None)  # type: ignore[arg-type]
        trainer.sanity_checking = True
        _eval_loop(bar, trainer, "validation", trainer.num_sanity_val_batches)
        trainer.sanity_checking = False
        bar.on_sanity_check_end(trainer, None)  # type: ignore[arg-type]
    bar.on_train_start(trainer, None)  # type: ignore[arg-type]
    n = train_batches if train_batches is not None else int(trainer.num_training_batches)
    for epoch in range(epochs):
        trainer.current_epoch = epoch
        bar.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
        for i in range(n):
            trainer.is_last_batch = i == n - 1
            bar.on_train_batch_start(trainer, None, None, i)  # type: ignore[arg-type]
            bar.on_train_batch_end(trainer, None, None, None, i)  # type: ignore[arg-type]
            if per_batch_reads is not None:
                per_batch_reads.append(trainer.metric_reads)
        if bar.total_val_batches:
            _eval_loop(bar, trainer, "validation", trainer.num_val_batches)
        bar.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    bar.on_train_end(trainer, None)  # type: ignore[arg-type]
    bar.on_fit_end(trainer, None)  # type: ignore[arg-type]
    bar.teardown(trainer, None, "fit")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------------
def test_base_enable_disable_and_trainer_access() -> None:
    bar = ProgressBar()
    assert bar.is_enabled and not bar.is_disabled
    bar.disable()
    assert bar.is_disabled and not bar.is_enabled
    bar.enable()
    assert bar.is_enabled
    with pytest.raises(RuntimeError, match="not attached to a Trainer"):
        bar.trainer  # noqa: B018
    trainer = FakeTrainer()
    bar.setup(trainer, None, "fit")  # type: ignore[arg-type]
    assert bar.trainer is trainer
    assert bar.total_train_batches == 10
    assert bar.total_val_batches == 4
    assert bar.total_batches_current_epoch == 14
    assert (bar.train_batch_idx, bar.val_batch_idx, bar.test_batch_idx, bar.predict_batch_idx) == (0, 0, 0, 0)


def test_base_disables_itself_off_rank_zero() -> None:
    bar = TQDMProgressBar()
    bar.setup(FakeTrainer(is_global_zero=False), None, "fit")  # type: ignore[arg-type]
    assert bar.is_disabled


def test_get_metrics_includes_v_num_and_logged_values() -> None:
    trainer = FakeTrainer()
    bar = ProgressBar()
    assert bar.get_metrics(trainer, None) == {"v_num": 3, "loss": 0.5}  # type: ignore[arg-type]
    assert trainer.metric_reads == 1
    assert get_standard_metrics(FakeTrainer(loggers=[SimpleNamespace(version="run-abcdef")])) == {
        "v_num": "cdef"
    }
    assert get_standard_metrics(FakeTrainer(loggers=[])) == {}
    assert get_standard_metrics(FakeTrainer(loggers=[SimpleNamespace(version=None)])) == {}


def test_get_metrics_warns_once_on_clash() -> None:
    trainer = FakeTrainer(metrics={"v_num": 7, "loss": 1.0})
    bar = ProgressBar()
    with pytest.warns(UserWarning, match="already shows"):
        assert bar.get_metrics(trainer, None)["v_num"] == 7  # type: ignore[arg-type]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bar.get_metrics(trainer, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "epoch", "expected"),
    [
        ({}, 0, 4),
        ({"enable_validation": False}, 0, 0),
        ({"check_val_every_n_epoch": 2}, 0, 0),
        ({"check_val_every_n_epoch": 2}, 1, 4),
        ({"val_check_interval": 0.25}, 0, 5 * 4),  # every 2 batches of 10
        ({"val_check_interval": 5}, 0, 2 * 4),
        ({"val_check_interval": 4, "check_val_every_n_epoch": None}, 0, 2 * 4),  # global batches 4, 8
        ({"val_check_interval": 4, "check_val_every_n_epoch": None}, 1, 3 * 4),  # global batches 12, 16, 20
        ({"num_val_batches": [4, 6]}, 0, 10),
        ({"num_val_batches": []}, 0, 0),
        ({"val_check_interval": "00:00:01:00"}, 0, 4),
    ],
)
def test_total_val_batches_follows_schedule(overrides: dict[str, Any], epoch: int, expected: int) -> None:
    trainer = FakeTrainer(current_epoch=epoch, **overrides)
    bar = ProgressBar()
    bar.setup(trainer, None, "fit")  # type: ignore[arg-type]
    assert bar.total_val_batches == expected


# --------------------------------------------------------------------------------------------------
# TQDMProgressBar
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"refresh_rate": -1}, r"refresh_rate=.*got -1.*expected an int >= 0.*Fix"),
        ({"refresh_rate": 1.5}, r"refresh_rate=.*got 1\.5"),
        ({"refresh_rate": True}, r"refresh_rate=.*got True"),
        ({"process_position": -2}, r"process_position=.*got -2"),
    ],
)
def test_tqdm_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        TQDMProgressBar(**kwargs)


def test_tqdm_defaults() -> None:
    bar = TQDMProgressBar()
    assert (bar.refresh_rate, bar.process_position, bar._leave) == (1, 0, False)
    assert TQDMProgressBar(refresh_rate=0).is_disabled
    with pytest.raises(TypeError, match="train bar does not exist"):
        bar.train_progress_bar  # noqa: B018


@pytest.mark.parametrize(("refresh_rate", "train_points"), [(1, 10), (3, 4), (4, 3), (10, 1), (25, 1)])
def test_tqdm_reads_metrics_only_at_refresh_points(refresh_rate: int, train_points: int) -> None:
    trainer = FakeTrainer()
    reads: list[int] = []
    run_fit(TQDMProgressBar(refresh_rate=refresh_rate), trainer, epochs=2, per_batch_reads=reads)
    # per epoch: the train refresh points, once after validation, once at epoch end; none in the sanity check
    assert trainer.metric_reads == 2 * (train_points + 2)
    first_epoch = reads[:10]
    increments = [b - a for a, b in zip([0, *first_epoch], first_epoch)]
    expected = [1 if ((i + 1) % refresh_rate == 0 or i + 1 == 10) else 0 for i in range(10)]
    assert increments == expected


def test_tqdm_no_reads_when_disabled(capsys: pytest.CaptureFixture[str]) -> None:
    for bar in (TQDMProgressBar(refresh_rate=0), TQDMProgressBar()):
        trainer = FakeTrainer()
        if bar.refresh_rate:
            bar.disable()
            bar.setup = lambda *a: None  # type: ignore[method-assign]  # keep it disabled
            bar._trainer = trainer  # type: ignore[assignment]
        run_fit(bar, trainer, epochs=1)
        assert trainer.metric_reads == 0
    assert capsys.readouterr().out == ""


def test_tqdm_output_non_tty(capsys: pytest.CaptureFixture[str]) -> None:
    run_fit(TQDMProgressBar(refresh_rate=5), FakeTrainer(), epochs=2)
    out = capsys.readouterr().out
    assert "Sanity Checking" in out
    assert "Epoch 0" in out and "Epoch 1" in out
    assert "14/14" in out  # 10 training + 4 validation batches on the main bar
    assert "loss=0.500" in out and "v_num=3" in out
    # not a terminal: no nested validation bar and no cursor movement escapes
    assert "Validation" not in out
    assert "\x1b[A" not in out
    # one bar kept for the whole run (leave=False)
    assert out.count("\n") <= 3


def test_tqdm_nested_validation_bar_on_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ProgressBar, "_stream_is_tty", staticmethod(lambda stream: True))
    trainer = FakeTrainer(num_val_batches=[4, 2])
    run_fit(TQDMProgressBar(), trainer, epochs=1)
    out = capsys.readouterr().out
    assert "Validation DataLoader 0" in out and "Validation DataLoader 1" in out
    assert "16/16" in out


def test_tqdm_leave_keeps_one_bar_per_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    run_fit(TQDMProgressBar(leave=True), FakeTrainer(), epochs=3, sanity=False)
    lines = [line.rsplit("\r", 1)[-1] for line in capsys.readouterr().out.split("\n")]
    finished = [line for line in lines if line.startswith("Epoch")]
    assert [line.split(":")[0] for line in finished] == ["Epoch 0", "Epoch 1", "Epoch 2"]
    assert all("14/14" in line for line in finished)


def test_tqdm_unknown_length(capsys: pytest.CaptureFixture[str]) -> None:
    trainer = FakeTrainer(num_training_batches=INF, num_val_batches=[INF])
    reads: list[int] = []
    bar = TQDMProgressBar(refresh_rate=4)
    run_fit(bar, trainer, epochs=1, sanity=False, train_batches=9, per_batch_reads=reads)
    out = capsys.readouterr().out
    assert "8/?" in out and "loss=0.500" in out
    assert reads == [0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert bar.train_batch_idx == 9


def test_tqdm_main_bar_grows_when_validation_runs_unplanned(capsys: pytest.CaptureFixture[str]) -> None:
    trainer = FakeTrainer(num_val_batches=[])  # unknown at epoch start (no sanity check ran)
    bar = TQDMProgressBar()
    bar.setup(trainer, None, "fit")  # type: ignore[arg-type]
    bar.on_train_start(trainer, None)  # type: ignore[arg-type]
    bar.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
    assert bar.train_progress_bar.total == 10
    for i in range(10):
        bar.on_train_batch_end(trainer, None, None, None, i)  # type: ignore[arg-type]
    trainer.num_val_batches = [3]
    _eval_loop(bar, trainer, "validation", [3])
    assert bar.train_progress_bar.n == 13 and bar.train_progress_bar.total == 13
    bar.teardown(trainer, None, "fit")  # type: ignore[arg-type]


def test_tqdm_validate_test_predict(capsys: pytest.CaptureFixture[str]) -> None:
    trainer = FakeTrainer(num_test_batches=[3, 2])
    bar = TQDMProgressBar()
    for stage, fn, sizes in (
        ("validation", "validate", [4]),
        ("test", "test", [3, 2]),
        ("predict", "predict", [3]),
    ):
        trainer.state.fn = fn
        bar.setup(trainer, None, fn)  # type: ignore[arg-type]
        _eval_loop(bar, trainer, stage, sizes)
        bar.teardown(trainer, None, fn)  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "Validation: 100%" in out and "4/4" in out
    assert "Testing DataLoader 0" in out and "Testing DataLoader 1" in out
    assert "Predicting: 100%" in out
    assert trainer.metric_reads == 0  # evaluation bars show no metrics
    assert bar.test_batch_idx == 2 and bar.predict_batch_idx == 3


def test_tqdm_print_goes_through_active_bar(capsys: pytest.CaptureFixture[str]) -> None:
    trainer = FakeTrainer()
    bar = TQDMProgressBar()
    bar.print("before", "bars")
    bar.setup(trainer, None, "fit")  # type: ignore[arg-type]
    bar.on_train_start(trainer, None)  # type: ignore[arg-type]
    bar.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
    bar.print("hello", 1, sep="-")
    bar.teardown(trainer, None, "fit")  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "before bars\n" in out and "hello-1\n" in out


def test_tqdm_closes_bars_on_exception_and_pickles(capsys: pytest.CaptureFixture[str]) -> None:
    trainer = FakeTrainer()
    bar = TQDMProgressBar()
    bar.setup(trainer, None, "fit")  # type: ignore[arg-type]
    bar.on_train_start(trainer, None)  # type: ignore[arg-type]
    bar.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
    clone = pickle.loads(pickle.dumps(bar))
    assert clone._train_progress_bar is None and clone.refresh_rate == 1
    bar.on_exception(trainer, None, RuntimeError("x"))  # type: ignore[arg-type]
    assert bar._train_progress_bar is None


def test_tqdm_format_num() -> None:
    fmt = tqdm_progress.Tqdm.format_num
    assert (fmt(0.5), fmt(3), fmt(1.0), fmt("x"), fmt(float("nan"))) == ("0.500", "3", "1.000", "x", "nan")


# --------------------------------------------------------------------------------------------------
# RichProgressBar
# --------------------------------------------------------------------------------------------------
def _rich_bar(terminal: bool, **kwargs: Any) -> tuple[RichProgressBar, io.StringIO]:
    buffer = io.StringIO()
    console_kwargs = {"file": buffer, "width": 140, "force_terminal": terminal, "color_system": None}
    return RichProgressBar(console_kwargs=console_kwargs, **kwargs), buffer


def test_rich_defaults_and_errors() -> None:
    bar = RichProgressBar()
    assert bar.refresh_rate == 1 and bar.is_enabled and isinstance(bar.theme, RichProgressBarTheme)
    assert RichProgressBar(refresh_rate=0).is_disabled
    with pytest.raises(MisconfigurationException, match=r"refresh_rate=.*got -3.*Fix"):
        RichProgressBar(refresh_rate=-3)


def test_rich_missing_names_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "rich" else real(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match=r"fulmen\[rich\]"):
        RichProgressBar()


@pytest.mark.parametrize("terminal", [False, True])
@pytest.mark.parametrize(("refresh_rate", "train_points"), [(1, 10), (4, 3)])
def test_rich_reads_metrics_only_at_refresh_points(
    terminal: bool, refresh_rate: int, train_points: int
) -> None:
    trainer = FakeTrainer()
    reads: list[int] = []
    bar, _ = _rich_bar(terminal, refresh_rate=refresh_rate)
    run_fit(bar, trainer, epochs=2, per_batch_reads=reads)
    assert trainer.metric_reads == 2 * (train_points + 2)
    increments = [b - a for a, b in zip([0, *reads[:10]], reads[:10])]
    assert increments == [1 if ((i + 1) % refresh_rate == 0 or i == 9) else 0 for i in range(10)]


def test_rich_output_not_a_terminal() -> None:
    bar, buffer = _rich_bar(terminal=False)
    run_fit(bar, FakeTrainer(), epochs=2)
    out = buffer.getvalue()
    lines = [line for line in out.splitlines() if line.startswith("Epoch")]
    assert len(lines) == 2, out  # one line per finished epoch
    assert lines[0].startswith("Epoch 0/1") and lines[1].startswith("Epoch 1/1")
    assert all("14/14" in line and "loss: 0.500" in line and "v_num: 3" in line for line in lines)
    assert "\x1b[" not in out


def test_rich_output_terminal_leave() -> None:
    bar, buffer = _rich_bar(terminal=True, leave=True)
    run_fit(bar, FakeTrainer(), epochs=2)
    out = buffer.getvalue()
    assert "Epoch 0/1" in out and "Epoch 1/1" in out and "Sanity Checking" in out and "Validation" in out
    assert "loss: 0.500" in out
    assert bar.progress is None  # stopped at teardown


def test_rich_unknown_length_and_eval_stages() -> None:
    trainer = FakeTrainer(num_training_batches=INF, num_val_batches=[INF])
    bar, buffer = _rich_bar(terminal=False, refresh_rate=3)
    run_fit(bar, trainer, epochs=1, sanity=False, train_batches=7)
    assert "12/?" in buffer.getvalue()  # 7 training + 5 validation batches
    assert not buffer.getvalue().endswith("\n\n")  # no empty final render
    for stage, fn, sizes in (
        ("validation", "validate", [4]),
        ("test", "test", [3]),
        ("predict", "predict", [3]),
    ):
        trainer.state.fn = fn
        bar.setup(trainer, None, fn)  # type: ignore[arg-type]
        _eval_loop(bar, trainer, stage, sizes)
        bar.teardown(trainer, None, fn)  # type: ignore[arg-type]
    out = buffer.getvalue()
    assert "Testing" in out and "3/3" in out and "Predicting" in out


def test_rich_disabled_draws_nothing_and_pickles() -> None:
    trainer = FakeTrainer()
    bar, buffer = _rich_bar(terminal=True, refresh_rate=0)
    run_fit(bar, trainer, epochs=1)
    assert buffer.getvalue() == "" and trainer.metric_reads == 0
    bar2, _ = _rich_bar(terminal=True)
    bar2.setup(trainer, None, "fit")  # type: ignore[arg-type]
    bar2.on_train_start(trainer, None)  # type: ignore[arg-type]
    clone = pickle.loads(pickle.dumps(bar2))
    assert clone.progress is None and clone.console is None
    bar2.on_exception(trainer, None, RuntimeError("x"))  # type: ignore[arg-type]
    assert bar2.progress is None


def test_rich_train_progress_bar_id_is_the_main_task() -> None:
    trainer = FakeTrainer()
    bar, _ = _rich_bar(terminal=True, refresh_rate=1)
    assert bar.train_progress_bar_id is None
    bar.setup(trainer, None, "fit")  # type: ignore[arg-type]
    bar.on_train_start(trainer, None)  # type: ignore[arg-type]
    bar.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
    task = bar.train_progress_bar_id
    assert bar.progress is not None and task is not None
    assert [t.description.strip() for t in bar.progress.tasks if t.id == task] == ["Epoch 0/1"]
    bar.on_train_batch_end(trainer, None, None, None, 0)  # type: ignore[arg-type]
    assert trainer.metric_reads == 1 and bar.progress.tasks[-1].completed == 1
    bar.train_progress_bar_id = None  # no main bar: the batch hooks draw and read nothing
    bar.on_train_batch_end(trainer, None, None, None, 1)  # type: ignore[arg-type]
    bar.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    assert trainer.metric_reads == 1
    bar.teardown(trainer, None, "fit")  # type: ignore[arg-type]


def test_rich_print_through_console() -> None:
    trainer = FakeTrainer()
    bar, buffer = _rich_bar(terminal=False)
    bar.setup(trainer, None, "fit")  # type: ignore[arg-type]
    bar.on_train_start(trainer, None)  # type: ignore[arg-type]
    bar.print("hello from the module")
    bar.teardown(trainer, None, "fit")  # type: ignore[arg-type]
    assert "hello from the module" in buffer.getvalue()


def test_import_does_not_import_rich() -> None:
    import subprocess
    import sys

    code = (
        "import sys, fulmen.callbacks.progress, fulmen.callbacks.model_summary; print('rich' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------------
# end to end with the real Trainer
# --------------------------------------------------------------------------------------------------
def _model_and_data() -> tuple[Any, Any, Any]:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import fulmen as L

    class Model(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = self(batch[0]).pow(2).mean()
            self.log("loss", loss, prog_bar=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", self(batch[0]).pow(2).mean(), prog_bar=True)

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self.log("test_loss", self(batch[0]).pow(2).mean())

        def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self(batch[0])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = TensorDataset(torch.randn(40, 4))
    return Model(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=8)  # 10 train, 5 val batches


def _count_metric_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    # both routes a bar reads by (trainer.progress_bar_metrics, exact; the deferred mid-epoch read) go through
    # MetricsStore.progress_bar_values once
    from fulmen.trainer.metrics import MetricsStore

    reads = [0]
    original = MetricsStore.progress_bar_values

    def counting(self: Any) -> Any:
        reads[0] += 1
        return original(self)

    monkeypatch.setattr(MetricsStore, "progress_bar_values", counting)
    return reads


def test_e2e_tqdm_fit(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fulmen import Trainer

    reads = _count_metric_reads(monkeypatch)
    model, train, val = _model_and_data()
    bar = TQDMProgressBar(refresh_rate=3)
    trainer = Trainer(
        max_epochs=2,
        callbacks=[bar],
        enable_progress_bar=True,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    assert trainer.progress_bar_callback is bar
    trainer.fit(model, train, val)
    out = capsys.readouterr().out
    assert "Sanity Checking" in out
    assert "Epoch 0" in out and "Epoch 1" in out and "15/15" in out  # 10 training + 5 validation batches
    assert "loss=" in out and "val_loss=" in out
    # per epoch: refresh points 3, 6, 9, 10 + after validation + epoch end; never per batch
    assert reads[0] == 2 * (4 + 2)


def test_e2e_rich_fit_and_eval(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from fulmen import Trainer

    reads = _count_metric_reads(monkeypatch)
    model, train, val = _model_and_data()
    buffer = io.StringIO()
    bar = RichProgressBar(
        refresh_rate=5, console_kwargs={"file": buffer, "width": 140, "force_terminal": False}
    )
    trainer = Trainer(
        max_epochs=2,
        callbacks=[bar],
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, train, val)
    assert reads[0] == 2 * (2 + 2)  # refresh points 5, 10 + after validation + epoch end
    trainer.test(model, val, verbose=False)
    trainer.predict(model, val)
    lines = buffer.getvalue().splitlines()
    epochs = [line for line in lines if line.startswith("Epoch")]
    assert len(epochs) == 2 and all("15/15" in line and "val_loss:" in line for line in epochs)
    assert any(line.startswith("Testing") and "5/5" in line for line in lines)
    assert any(line.startswith("Predicting") and "5/5" in line for line in lines)


def test_e2e_unknown_length_and_disabled(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    from fulmen import Trainer

    class Stream(IterableDataset):  # type: ignore[type-arg]
        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter([(torch.randn(4),) for _ in range(7)])

    model, _, _ = _model_and_data()
    trainer = Trainer(
        max_epochs=1,
        callbacks=[TQDMProgressBar(refresh_rate=2)],
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        limit_val_batches=0,
    )
    trainer.fit(model, DataLoader(Stream(), batch_size=None))
    out = capsys.readouterr().out
    assert "7/?" in out and "loss=" in out

    model, train, val = _model_and_data()
    trainer = Trainer(
        max_epochs=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, train, val)
    assert "Epoch" not in capsys.readouterr().out


class _AlwaysRedraw(RichProgressBar):
    """A rich bar that renders at every refresh, as rich does on a terminal."""

    def _start(self, trainer: Any) -> Any:
        progress = super()._start(trainer)
        self._live_redraws = True
        return progress


def test_rich_not_a_terminal_renders_only_what_it_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.progress import Progress

    renders: list[int] = []
    real = Progress.make_tasks_table
    monkeypatch.setattr(Progress, "make_tasks_table", lambda self, tasks: renders.append(1) or real(self, tasks))
    outputs, counts = [], []
    for cls in (RichProgressBar, _AlwaysRedraw):
        renders.clear()
        buffer = io.StringIO()
        # a frozen clock (rich's Progress reads the console's): the speed and time columns, whose text widths
        # change the table's layout, are the same in both runs whatever the machine's speed
        bar = cls(console_kwargs={"file": buffer, "width": 140, "force_terminal": False, "color_system": None,
                                  "get_time": lambda: 0.0})
        run_fit(bar, FakeTrainer(), epochs=2)
        outputs.append(buffer.getvalue())
        counts.append(len(renders))
    # a file shows only the finished lines and the final render: building every per-batch one changes nothing
    assert outputs[0] == outputs[1]
    assert "Epoch 1/1" in outputs[0]
    assert counts[1] > 30  # one render per refresh (2 epochs x 14 batches + validation)
    # not a terminal: renders per stage (the bars' openings, finished lines, the stop), none per batch
    per_length = []
    for batches in (7, 28):
        renders.clear()
        bar = RichProgressBar(console_kwargs={"file": io.StringIO(), "force_terminal": False})
        run_fit(bar, FakeTrainer(num_training_batches=batches), epochs=2, train_batches=batches)
        per_length.append(len(renders))
    assert per_length[0] == per_length[1] == counts[0] < counts[1] / 2
