"""RunState conformance: every declared field survives a checkpoint round trip; the Lightning layout maps back."""

from __future__ import annotations

from dataclasses import fields

import torch

from fulmen.core.run_state import PROGRESS_FIELDS, Progress, RunState


def _filled() -> RunState:
    rs = RunState()
    for i, f in enumerate(fields(rs)):
        value = getattr(rs, f.name)
        if isinstance(value, Progress):
            for j, name in enumerate(PROGRESS_FIELDS):
                setattr(value, name, 10 * i + j + 1)
        elif isinstance(value, bool):
            setattr(rs, f.name, True)
        elif isinstance(value, int):
            setattr(rs, f.name, 100 + i)
        elif isinstance(value, str):
            setattr(rs, f.name, "batch_end")
        else:  # optional structured fields
            setattr(rs, f.name, {"field": f.name, "t": torch.arange(3)})
    return rs


def test_every_declared_field_round_trips_through_a_weights_only_file(tmp_path) -> None:
    rs = _filled()
    assert set(RunState.SAVED) == {f.name for f in fields(RunState)} - {"should_stop"}
    torch.save(rs.state_dict(), tmp_path / "rs.pt")
    back = RunState()
    back.load_state_dict(torch.load(tmp_path / "rs.pt", weights_only=True))
    for name in RunState.SAVED:
        a, b = getattr(rs, name), getattr(back, name)
        if isinstance(a, dict):
            assert a["field"] == b["field"] and torch.equal(a["t"], b["t"]), name
        else:
            assert a == b, name


def test_lightning_loops_layout_round_trip() -> None:
    rs = _filled()
    loops = rs.to_lightning_loops(manual=False)
    assert set(loops) == {"fit_loop", "validate_loop", "test_loop", "predict_loop"}
    fit = loops["fit_loop"]
    assert fit["epoch_loop.state_dict"] == {"_batches_that_stepped": rs.batches_that_stepped}
    assert set(fit["epoch_loop.batch_progress"]) == {"total", "current", "is_last_batch"}
    back = RunState()
    back.load_lightning_loops(loops, manual=False)
    assert back.batches_that_stepped == rs.batches_that_stepped
    assert back.global_step == rs.optimizer_steps.total_completed
    assert back.epoch == rs.epoch_progress.current_completed
    assert back.batch_progress == rs.batch_progress and back.epoch_progress == rs.epoch_progress


def test_progress_counters_move_as_lightning_counts_them() -> None:
    """increment/start/complete/reset_current on the compact representation give the eight counters Lightning's
    progress objects would hold, and every counter can be set on its own without moving the others."""
    p = Progress()
    p.increment()
    p.increment(2)
    p.start()
    assert p.as_dict() == {
        "total_ready": 4, "total_started": 4, "total_processed": 3, "total_completed": 3,
        "current_ready": 4, "current_started": 4, "current_processed": 3, "current_completed": 3,
    }
    p.complete()
    p.reset_current()
    p.start()
    assert (p.total_ready, p.total_started, p.total_processed, p.total_completed) == (5, 5, 4, 4)
    assert (p.current_ready, p.current_started, p.current_processed, p.current_completed) == (1, 1, 0, 0)
    for k, name in enumerate(PROGRESS_FIELDS):
        before = p.as_dict()
        setattr(p, name, 100 + k)
        assert p.as_dict() == {**before, name: 100 + k}
    assert Progress(**p.as_dict()) == p and Progress() != p
    assert repr(Progress()).startswith("Progress(total_ready=0, ")
