"""Tests for fulmen.callbacks.early_stopping: the pure decision, the callback's state, and real fits."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.early_stopping import EarlyStopping, EarlyStoppingReason, evaluate_stopping_criteria
from fulmen.callbacks.model_checkpoint import ModelCheckpoint
from fulmen.utilities.exceptions import MisconfigurationException

T = torch.tensor


def _run(values: list[float], **kw: Any) -> list[Any]:
    """Feed ``values`` through the pure function; return the decisions."""
    mode = kw.get("mode", "min")
    best = T(math.inf if mode == "min" else -math.inf)
    wait = 0
    out = []
    for v in values:
        d = evaluate_stopping_criteria(T(v), best, wait, monitor="m", **kw)
        best, wait = d.best_score, d.wait_count
        out.append(d)
        if d.should_stop:
            break
    return out


# ---- the pure decision ---------------------------------------------------------------------------


def test_patience_counts_checks_without_improvement() -> None:
    decisions = _run([1.0, 0.9, 0.95, 0.96, 0.97, 0.5], patience=3)
    assert [d.wait_count for d in decisions] == [0, 0, 1, 2, 3]
    assert decisions[-1].should_stop and decisions[-1].reason is EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert float(decisions[-1].best_score) == pytest.approx(0.9)
    assert "did not improve in the last 3 records" in decisions[-1].message


def test_mode_max_and_min_delta() -> None:
    # improvements smaller than min_delta do not count
    decisions = _run([0.5, 0.55, 0.58, 0.7], mode="max", min_delta=0.1, patience=5)
    assert [d.improved for d in decisions] == [True, False, False, True]
    assert [d.wait_count for d in decisions] == [0, 1, 2, 0]
    # the sign of min_delta is ignored (Lightning stores it negated for "min")
    neg = _run([1.0, 0.95], min_delta=-0.1, patience=5)
    assert [d.improved for d in neg] == [True, False]


def test_non_finite_stops_immediately() -> None:
    d = _run([1.0, float("nan")], patience=10)[-1]
    assert d.should_stop and d.reason is EarlyStoppingReason.NON_FINITE_METRIC
    assert "is not finite" in d.message and "1.000" in d.message
    # check_finite=False: NaN is just "no improvement"
    d2 = _run([1.0, float("nan")], patience=10, check_finite=False)[-1]
    assert not d2.should_stop and d2.wait_count == 1


def test_thresholds() -> None:
    stop = _run([1.0, 0.2], stopping_threshold=0.25, patience=10)[-1]
    assert stop.should_stop and stop.reason is EarlyStoppingReason.STOPPING_THRESHOLD
    assert "Stopping threshold reached: m = 0.2" in stop.message and "< 0.25" in stop.message
    div = _run([1.0, 5.0], divergence_threshold=3.0, patience=10)[-1]
    assert div.should_stop and div.reason is EarlyStoppingReason.DIVERGENCE_THRESHOLD
    div_max = _run([0.9, 0.1], mode="max", divergence_threshold=0.2, patience=10)[-1]
    assert div_max.should_stop and div_max.reason is EarlyStoppingReason.DIVERGENCE_THRESHOLD


def test_pure_function_does_not_mutate_inputs_and_rejects_bad_mode() -> None:
    best = T(1.0)
    evaluate_stopping_criteria(T(0.5), best, 0, monitor="m")
    assert float(best) == 1.0
    with pytest.raises(MisconfigurationException, match="mode"):
        evaluate_stopping_criteria(T(0.5), best, 0, monitor="m", mode="avg")


# ---- the callback, without a Trainer -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"monitor": "x", "mode": "auto"}, r"EarlyStopping\(mode=...\): got 'auto'; expected 'min' or 'max'"),
        ({"monitor": "x", "patience": -1}, r"patience=...\): got -1"),
        ({"monitor": "x", "patience": 1.5}, r"patience"),
        ({"monitor": ""}, r"monitor"),
        ({"monitor": "x", "min_delta": "a"}, r"min_delta"),
        ({"monitor": "x", "stopping_threshold": "1"}, r"stopping_threshold"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        EarlyStopping(**kwargs)


def test_state_key_matches_lightning() -> None:
    assert EarlyStopping("val_loss").state_key == "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"
    assert EarlyStopping("acc", mode="max").state_key == "EarlyStopping{'monitor': 'acc', 'mode': 'max'}"


def test_state_dict_round_trip() -> None:
    es = EarlyStopping("m", patience=4)
    es.wait_count, es.stopped_epoch, es.best_score = 2, 7, T(0.25)
    es.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
    es.stopping_reason_message = "msg"
    state = es.state_dict()
    assert state["stopping_reason"] == "patience_exhausted"  # plain string: loads with weights_only=True
    other = EarlyStopping("m", patience=1)
    other.load_state_dict(state)
    assert (other.wait_count, other.stopped_epoch, other.patience) == (2, 7, 4)
    assert float(other.best_score) == 0.25 and other.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED
    # a Lightning checkpoint has only the four classic keys
    other.load_state_dict({"wait_count": 1, "stopped_epoch": 0, "best_score": T(1.0), "patience": 3})
    assert other.stopping_reason is EarlyStoppingReason.NOT_STOPPED


class _FakeStrategy:
    def __init__(self, others_stop: bool = False) -> None:
        self.others_stop = others_stop
        self.calls: list[tuple[bool, bool]] = []

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        self.calls.append((decision, all))
        return decision or self.others_stop


def _fake_trainer(metrics: dict[str, Any], **kw: Any) -> Any:
    base = dict(
        callback_metrics=metrics,
        fast_dev_run=False,
        should_stop=False,
        current_epoch=3,
        world_size=1,
        global_rank=0,
        strategy=_FakeStrategy(),
        sanity_checking=False,
        state=SimpleNamespace(fn="fit"),
        val_check_interval=1.0,
        check_val_every_n_epoch=1,
    )
    base.update(kw)
    return SimpleNamespace(**base)


def test_decision_is_collective_any_rank_stops() -> None:
    es = EarlyStopping("m", patience=5)
    trainer = _fake_trainer({"m": T(1.0)}, strategy=_FakeStrategy(others_stop=True))
    es.setup(trainer, None, "fit")  # type: ignore[arg-type]
    es.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    assert trainer.strategy.calls == [(False, False)]  # all=False: any rank's stop stops everyone
    assert trainer.should_stop and es.stopped_epoch == 3
    assert es.stopping_reason is EarlyStoppingReason.NOT_STOPPED  # this rank did not want to stop


def test_missing_metric_strict_and_lenient() -> None:
    trainer = _fake_trainer({"other": T(1.0)})
    es = EarlyStopping("m", check_on_train_epoch_end=True)
    with pytest.raises(
        RuntimeError, match="Early stopping conditioned on metric `m` which is not available.*`other`"
    ):
        es.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    lenient = EarlyStopping("m", strict=False, verbose=True, check_on_train_epoch_end=True)
    with pytest.warns(RuntimeWarning, match="not available"):
        lenient.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    assert not trainer.should_stop


def test_skips_sanity_check_fast_dev_run_and_non_fit() -> None:
    es = EarlyStopping("m", patience=0, check_on_train_epoch_end=False)
    for kw in ({"sanity_checking": True}, {"fast_dev_run": 1}, {"state": SimpleNamespace(fn="validate")}):
        trainer = _fake_trainer({"m": T(1.0)}, **kw)
        es.on_validation_end(trainer, None)  # type: ignore[arg-type]
        assert not trainer.should_stop and trainer.strategy.calls == []


@pytest.mark.parametrize(
    ("val_check_interval", "every_n", "expected"),
    [(1.0, 1, True), (0.5, 1, False), (1.0, 2, False), (10, 1, False)],
)
def test_check_on_train_epoch_end_follows_validation_schedule(
    val_check_interval: Any, every_n: int, expected: bool
) -> None:
    es = EarlyStopping("m")
    es.setup(
        _fake_trainer({}, val_check_interval=val_check_interval, check_val_every_n_epoch=every_n), None, "fit"
    )  # type: ignore[arg-type]
    assert es._check_on_train_epoch_end is expected


# ---- with a real Trainer -------------------------------------------------------------------------


class ScriptedLoss(L.LightningModule):
    """Logs ``val_loss = losses[current_epoch]`` so the test controls the monitored values."""

    def __init__(self, losses: list[float]) -> None:
        super().__init__()
        self.losses = losses
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.losses[self.current_epoch])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)


def _trainer(callbacks: list[Any], max_epochs: int, root: Any, **kw: Any) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        default_root_dir=str(root),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )


def test_fit_stops_after_patience(tmp_path: Any) -> None:
    es = EarlyStopping("val_loss", patience=2)
    trainer = _trainer([es], 20, tmp_path, enable_checkpointing=False)
    trainer.fit(ScriptedLoss([1.0, 0.5, 0.6, 0.7, 0.1, 0.1]), _loader(), _loader())
    assert trainer.current_epoch == 4  # epochs 0..3 ran; stopped after epoch 3
    assert es.stopped_epoch == 3 and es.wait_count == 2
    assert es.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert float(es.best_score) == pytest.approx(0.5)


def test_resume_continues_patience(tmp_path: Any) -> None:
    losses = [1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3]
    es = EarlyStopping("val_loss", patience=3)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, save_top_k=0)
    _trainer([es, ckpt], 3, tmp_path).fit(ScriptedLoss(losses), _loader(), _loader())
    assert es.wait_count == 1 and not es.stopped_epoch
    saved = torch.load(ckpt.last_model_path, weights_only=True)
    assert saved["callbacks"][es.state_key]["wait_count"] == 1

    resumed = EarlyStopping("val_loss", patience=3)
    trainer = _trainer([resumed, ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=0)], 10, tmp_path)
    trainer.fit(ScriptedLoss(losses), _loader(), _loader(), ckpt_path=ckpt.last_model_path)
    # 0.7 (wait 2), 0.8 (wait 3): stops after epoch 4; a fresh callback would only stop after epoch 6
    assert resumed.stopped_epoch == 4 and trainer.current_epoch == 5
    assert float(resumed.best_score) == pytest.approx(0.5)


def test_validation_several_times_per_epoch_checks_after_each_validation(tmp_path: Any) -> None:
    class PerCheck(ScriptedLoss):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", 1.0)  # never improves after the first check

    es = EarlyStopping("val_loss", patience=2)
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)  # 4 batches, validation every 2
    trainer = _trainer([es], 10, tmp_path, val_check_interval=0.5, enable_checkpointing=False)
    trainer.fit(PerCheck([]), data, _loader())
    assert es._check_on_train_epoch_end is False
    # checks: e0/b2 (best), e0/b4 (wait 1), e1/b2 (wait 2 -> stop)
    assert es.stopped_epoch == 1 and trainer.global_step == 6
