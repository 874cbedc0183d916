"""RunState conformance: every declared field survives a checkpoint round trip; the Lightning layout maps back."""

from __future__ import annotations

from dataclasses import fields

import torch

from fulmen.core.run_state import Progress, RunState


def _filled() -> RunState:
    rs = RunState()
    for i, f in enumerate(fields(rs)):
        value = getattr(rs, f.name)
        if isinstance(value, Progress):
            for j, pf in enumerate(fields(value)):
                setattr(value, pf.name, 10 * i + j + 1)
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
