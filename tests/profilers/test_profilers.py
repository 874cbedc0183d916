"""Profilers: the default costs nothing, and each real profiler reports every hook and step it should."""

from __future__ import annotations

import json
import os
import pstats
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import Callback
from fulmen.profilers import (
    AdvancedProfiler,
    PassThroughProfiler,
    Profiler,
    PyTorchProfiler,
    SimpleProfiler,
    XLAProfiler,
    resolve_profiler,
)
from fulmen.utilities.exceptions import MisconfigurationException, NotSupportedYetError


class Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_train_epoch_start(self) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class EpochEnd(Callback):
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        pass


def loader(n: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)), batch_size=4
    )


def trainer(tmp_path: Path, **kw: Any) -> L.Trainer:
    defaults: dict[str, Any] = {
        "default_root_dir": tmp_path,
        "max_epochs": 2,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 1,
    }
    defaults.update(kw)
    return L.Trainer(**defaults)


# ----------------------------------------------------------------------------------------------- the default


def test_default_profiler_is_pass_through_and_nothing_is_instrumented(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class Inspect(Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            seen["module"] = set(pl_module.__dict__) & {"training_step", "validation_step"}
            seen["optimization"] = set(vars(trainer._optimization)) & {"step_auto", "_backward", "_zero_grad"}
            seen["dispatcher"] = set(vars(trainer._dispatcher)) & {"module_hook", "_callback_fns"}
            seen["loop"] = "_run_epoch" in vars(trainer.fit_loop)

    t = trainer(tmp_path, max_epochs=1, callbacks=[Inspect()])
    assert type(t.profiler) is PassThroughProfiler
    assert t.profiler.active is False
    t.fit(Model(), loader(), loader())
    assert seen == {"module": set(), "optimization": set(), "dispatcher": set(), "loop": False}


def test_a_profiled_run_removes_its_instrumentation(tmp_path: Path) -> None:
    model = Model()
    t = trainer(tmp_path, max_epochs=1, profiler="simple")
    during: dict[str, bool] = {}

    class Inspect(Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            during["module"] = "training_step" in pl_module.__dict__
            during["optimization"] = "step_auto" in vars(trainer._optimization)

    t.callbacks.append(Inspect())
    t.fit(model, loader(), loader())
    assert during == {"module": True, "optimization": True}
    assert "training_step" not in model.__dict__
    assert not {"step_auto", "_backward", "_zero_grad", "setup"} & set(vars(t._optimization))
    assert "_run_epoch" not in vars(t.fit_loop)
    # the trainer is reusable and keeps profiling
    t.validate(model, loader(), verbose=False)


# ----------------------------------------------------------------------------------------------- resolution


def test_resolve_profiler_names_and_errors() -> None:
    assert isinstance(resolve_profiler("simple"), SimpleProfiler)
    assert isinstance(resolve_profiler("SIMPLE"), SimpleProfiler)
    assert isinstance(resolve_profiler("advanced"), AdvancedProfiler)
    assert isinstance(resolve_profiler("pytorch"), PyTorchProfiler)
    assert isinstance(resolve_profiler(None), PassThroughProfiler)
    p = SimpleProfiler()
    assert resolve_profiler(p) is p
    with pytest.raises(MisconfigurationException, match=r"profiler='nope'.*'simple'"):
        L.Trainer(profiler="nope")
    with pytest.raises(MisconfigurationException, match="got int"):
        L.Trainer(profiler=3)
    with pytest.raises(NotSupportedYetError, match="XLA"):
        L.Trainer(profiler="xla")
    with pytest.raises(NotSupportedYetError):
        XLAProfiler()


def test_barebones_refuses_a_profiler() -> None:
    with pytest.raises(MisconfigurationException, match="profiler"):
        L.Trainer(barebones=True, profiler="simple")


# ----------------------------------------------------------------------------------------------- simple


def test_simple_profiler_times_hooks_and_steps(tmp_path: Path) -> None:
    profiler = SimpleProfiler(dirpath=tmp_path, filename="perf")
    t = trainer(tmp_path, profiler=profiler, callbacks=[EpochEnd()])
    t.fit(Model(), loader(), loader())
    report = (tmp_path / "fit-perf.txt").read_text()
    for action in (
        "run_training_epoch",
        "run_training_batch",
        "[LightningModule]Model.training_step",
        "backward",
        "optimizer_step",
        "optimizer_zero_grad",
        "[LightningModule]Model.validation_step",
        "run_validation",
        "run_sanity_check",
        "[LightningModule]Model.on_train_epoch_start",
        "[Callback]EpochEnd.on_train_epoch_end",
        "batch_to_device",
    ):
        assert action in report, action
    assert "Mean duration (s)" in report and "Percentage %" in report
    # 2 epochs x 4 batches; the counts are in the table
    rows = {
        line.split("|")[1].strip(): line.split("|") for line in report.splitlines() if line.startswith("|")
    }
    assert rows["[LightningModule]Model.training_step"][3].strip() == "8"
    assert rows["run_training_epoch"][3].strip() == "2"
    assert rows["[Callback]EpochEnd.on_train_epoch_end"][3].strip() == "2"
    # 1 sanity batch + 2 x 4 validation batches
    assert rows["[LightningModule]Model.validation_step"][3].strip() == "9"
    # describe() cleared the recorded actions; a later stage reports into its own file
    assert profiler.recorded_durations == {}
    t.test(Model(), loader(), verbose=False)
    test_report = (tmp_path / "test-perf.txt").read_text()
    assert "TEST Profiler Report" in test_report and "run_test" in test_report
    assert "run_training_epoch" not in test_report


def test_simple_profiler_start_stop_errors_and_context_manager() -> None:
    p = SimpleProfiler()
    with p.profile("a"), p.profile("b"):
        pass
    assert len(p.recorded_durations["a"]) == 1 and len(p.recorded_durations["b"]) == 1
    p.start("x")
    with pytest.raises(ValueError, match="already started"):
        p.start("x")
    p.stop("x")
    with pytest.raises(ValueError, match="never started"):
        p.stop("x")
    assert "| a " in p.summary()


def test_simple_profiler_logs_the_report_without_a_filename(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t = trainer(tmp_path, max_epochs=1, profiler="simple")
    t.fit(Model(), loader(), loader())
    assert "FIT Profiler Report" in capsys.readouterr().out


def test_report_goes_to_the_log_dir_by_default(tmp_path: Path) -> None:
    from fulmen.loggers import CSVLogger

    t = trainer(tmp_path, max_epochs=1, profiler=SimpleProfiler(filename="perf"), logger=CSVLogger(tmp_path))
    t.fit(Model(), loader(), loader())
    assert os.path.isfile(os.path.join(t.log_dir, "fit-perf.txt"))


def test_profiler_stops_cleanly_when_fit_fails(tmp_path: Path) -> None:
    class Boom(Model):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if batch_idx == 1:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    profiler = SimpleProfiler(dirpath=tmp_path, filename="perf")
    model = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        trainer(tmp_path, profiler=profiler).fit(model, loader(), loader())
    assert "training_step" not in model.__dict__
    assert profiler.current_actions == {}
    assert "run_training_batch" in (tmp_path / "fit-perf.txt").read_text()


# ----------------------------------------------------------------------------------------------- advanced


def test_advanced_profiler_reports_cprofile_stats_per_action(tmp_path: Path) -> None:
    profiler = AdvancedProfiler(dirpath=tmp_path, filename="adv", dump_stats=True, line_count_restriction=5)
    trainer(tmp_path, max_epochs=1, profiler=profiler).fit(Model(), loader(), loader())
    report = (tmp_path / "fit-adv.txt").read_text()
    assert "Profile stats for: [LightningModule]Model.training_step" in report
    assert "Profile stats for: run_training_epoch" in report
    assert "function calls" in report and "cumulative" in report
    dumps = sorted(p.name for p in tmp_path.glob("fit-adv-*.prof"))
    assert any("training_step" in name for name in dumps)
    stats = pstats.Stats(str(next(tmp_path.glob("fit-adv-*training_step.prof"))))
    assert stats.total_calls > 0  # type: ignore[attr-defined]


def test_advanced_profiler_nested_actions_resume_the_outer_one() -> None:
    p = AdvancedProfiler()

    def work() -> int:
        return sum(range(1000))

    p.start("outer")
    work()
    p.start("inner")
    work()
    p.stop("inner")
    work()
    p.stop("outer")
    report = p.summary()
    assert "Profile stats for: outer" in report and "Profile stats for: inner" in report
    outer = pstats.Stats(p.profiled_actions["outer"])
    calls = {fn[2]: v[0] for fn, v in outer.stats.items()}  # type: ignore[attr-defined]
    assert calls["work"] == 2  # the inner call is counted in "inner", not twice
    with pytest.raises(ValueError, match="never started"):
        p.stop("outer")


# ----------------------------------------------------------------------------------------------- pytorch


def test_pytorch_profiler_writes_a_chrome_trace_with_named_actions(tmp_path: Path) -> None:
    profiler = PyTorchProfiler(dirpath=tmp_path, filename="torch", row_limit=10)
    trainer(tmp_path, max_epochs=1, profiler=profiler).fit(Model(), loader(), loader())
    trace = tmp_path / "fit-torch.pt.trace.json"
    assert profiler.trace_path == str(trace)
    data = json.loads(trace.read_text())
    names = {e.get("name") for e in data["traceEvents"]}
    assert "[LightningModule]Model.training_step" in names
    assert "run_training_batch" in names
    assert any(str(n).startswith("aten::") for n in names)  # the operators under the actions
    report = (tmp_path / "fit-torch.txt").read_text()
    assert "run_training_epoch" in report and "Self CPU" in report


def test_pytorch_profiler_with_a_schedule_and_trace_handler(tmp_path: Path) -> None:
    written: list[int] = []

    def on_trace_ready(prof: Any) -> None:
        written.append(prof.step_num)

    profiler = PyTorchProfiler(
        dirpath=tmp_path,
        filename="sched",
        schedule=torch.profiler.schedule(wait=1, warmup=1, active=2),
        on_trace_ready=on_trace_ready,
    )
    trainer(tmp_path, max_epochs=1, profiler=profiler).fit(Model(), loader(), loader())
    assert written == [4]


def test_pytorch_profiler_rejects_an_unknown_sort_key() -> None:
    with pytest.raises(MisconfigurationException, match="sort_by_key"):
        PyTorchProfiler(sort_by_key="bogus")


# ----------------------------------------------------------------------------------------------- custom


def test_custom_profiler_gets_balanced_start_stop_pairs(tmp_path: Path) -> None:
    events: list[tuple[str, str]] = []

    class Recorder(Profiler):
        def start(self, action_name: str) -> None:
            events.append(("start", action_name))

        def stop(self, action_name: str) -> None:
            events.append(("stop", action_name))

    trainer(tmp_path, max_epochs=1, profiler=Recorder()).fit(Model(), loader(), loader())
    stack: list[str] = []
    for kind, name in events:
        if kind == "start":
            stack.append(name)
        else:
            assert stack.pop() == name
    assert stack == []
    starts = [n for k, n in events if k == "start"]
    assert starts.count("[LightningModule]Model.training_step") == 4
    # training_step runs inside the batch, which runs inside the epoch
    i = starts.index("[LightningModule]Model.training_step")
    assert "run_training_batch" in starts[:i] and "run_training_epoch" in starts[:i]
