"""Tests for fulmen.callbacks.model_checkpoint: names, top-k bookkeeping, triggers, and real fits."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks.model_checkpoint import (
    ModelCheckpoint,
    TopKState,
    check_monitor_top_k,
    format_checkpoint_filename,
    should_save_on_train_epoch_end,
    update_top_k,
)
from fulmen.loggers.logger import Logger
from fulmen.utilities.exceptions import MisconfigurationException

T = torch.tensor
INF = float("inf")


# ---- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "auto", "metrics", "expected"),
    [
        (None, True, {"epoch": 3, "step": T(7)}, "epoch=3-step=7"),
        ("", True, {"epoch": 3, "step": 7}, "epoch=3-step=7"),
        (
            "{epoch:02d}-{val_loss:.2f}",
            True,
            {"epoch": T(1), "val_loss": T(0.1234)},
            "epoch=01-val_loss=0.12",
        ),
        ("{epoch:02d}-{val_loss:.2f}", False, {"epoch": T(1), "val_loss": T(0.1234)}, "01-0.12"),
        ("{val/loss:.3f}", False, {"val/loss": T(0.5)}, "0.500"),
        ("{val/loss:.3f}", True, {"val/loss": T(0.5)}, "val/loss=0.500"),
        ("{val.acc:.1f}", True, {"val.acc": 0.25}, "val.acc=0.2"),
        ("{epoch}-{epoch_test}", True, {"epoch": 1, "epoch_test": 9}, "epoch=1-epoch_test=9"),
        ("{missing}", True, {}, "missing=0"),
        ("name-{epoch}", True, {"epoch": 2}, "name-epoch=2"),
        ("static", True, {"epoch": 2}, "static"),
    ],
)
def test_format_checkpoint_filename(
    template: str | None, auto: bool, metrics: dict[str, Any], expected: str
) -> None:
    before = dict(metrics)
    assert format_checkpoint_filename(template, metrics, auto_insert_metric_name=auto) == expected
    assert metrics == before  # not modified (Lightning fills missing keys into the caller's dict)


def test_format_checkpoint_name_dirpath_version_prefix(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}")
    assert ckpt.format_checkpoint_name({"epoch": 2}) == str(tmp_path / "epoch=2.ckpt")
    assert ckpt.format_checkpoint_name({"epoch": 2}, ver=3) == str(tmp_path / "epoch=2-v3.ckpt")
    assert ckpt.format_checkpoint_name({"epoch": 2}, filename="last") == str(tmp_path / "last.ckpt")
    assert ckpt.format_checkpoint_name({"epoch": 2}, prefix="pre") == str(tmp_path / "pre-epoch=2.ckpt")
    assert ModelCheckpoint(filename="{epoch:03d}").format_checkpoint_name({"epoch": 5}) == "epoch=005.ckpt"


def test_constants_and_state_key() -> None:
    mc = ModelCheckpoint
    assert (mc.CHECKPOINT_JOIN_CHAR, mc.CHECKPOINT_EQUALS_CHAR, mc.CHECKPOINT_NAME_LAST) == ("-", "=", "last")
    assert (mc.FILE_EXTENSION, mc.STARTING_VERSION) == (".ckpt", 1)
    assert ModelCheckpoint(monitor="val_loss").state_key == (
        "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, "
        "'every_n_epochs': 1, "
        "'train_time_interval': None}"
    )
    assert ModelCheckpoint(every_n_train_steps=5).state_key == (
        "ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 5, 'every_n_epochs': 0, "
        "'train_time_interval': None}"
    )


# ---- top-k bookkeeping ---------------------------------------------------------------------------


def _empty(mode: str = "min") -> TopKState:
    return TopKState({}, "", T(INF if mode == "min" else -INF), "", None, None)


def test_update_top_k_evicts_worst_min_mode() -> None:
    state, evicted = _empty(), None
    for path, score in (("a", 0.5), ("b", 0.3), ("c", 0.4)):
        assert check_monitor_top_k(T(score), state, 2, "min")
        state, evicted = update_top_k(state, path, T(score), 2, "min")
    assert evicted == "a"
    assert set(state.best_k_models) == {"b", "c"}
    assert state.best_model_path == "b" and float(state.best_model_score) == pytest.approx(0.3)
    assert state.kth_best_model_path == "c" and float(state.kth_value) == pytest.approx(0.4)
    assert not check_monitor_top_k(T(0.45), state, 2, "min")
    assert check_monitor_top_k(T(0.35), state, 2, "min")


def test_update_top_k_max_mode_nan_and_unlimited() -> None:
    state = _empty("max")
    state, _ = update_top_k(state, "a", T(0.5), 2, "max")
    state, _ = update_top_k(state, "b", T(float("nan")), 2, "max")
    assert float(state.best_k_models["b"]) == -INF  # NaN stored as the worst value
    assert state.kth_best_model_path == "b" and state.best_model_path == "a"
    before = dict(state.best_k_models)
    new, evicted = update_top_k(state, "c", T(0.9), 2, "max")
    assert evicted == "b" and new.best_model_path == "c"
    assert state.best_k_models == before  # input untouched
    unlimited = _empty()
    for i in range(5):
        assert check_monitor_top_k(T(float(i)), unlimited, -1, "min")
        unlimited, evicted = update_top_k(unlimited, str(i), T(float(i)), -1, "min")
        assert evicted is None
    assert len(unlimited.best_k_models) == 5
    assert not check_monitor_top_k(None, unlimited, -1, "min")
    assert not check_monitor_top_k(T(0.0), unlimited, 0, "min")


@pytest.mark.parametrize(
    ("explicit", "vci", "every_n", "num_val", "expected"),
    [
        (True, 0.5, 3, [5], True),
        (False, 1.0, 1, [0], False),
        (None, 1.0, 2, [5], False),  # validation not every epoch: save after validation
        (None, 1.0, 1, [0], True),  # no validation
        (None, 0.5, 1, [0, 0], True),
        (None, 1.0, 1, [5], True),  # validation once at epoch end: its metrics exist at train-epoch end
        (None, 0.5, 1, [5], False),  # several validations per epoch
        (None, 3, 1, [5], False),
    ],
)
def test_should_save_on_train_epoch_end(
    explicit: Any, vci: Any, every_n: int, num_val: Any, expected: bool
) -> None:
    assert should_save_on_train_epoch_end(explicit, vci, every_n, num_val) is expected


# ---- constructor validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "avg"}, r"ModelCheckpoint\(mode=...\): got 'avg'; expected 'min' or 'max'"),
        ({"save_top_k": -2}, r"save_top_k=...\): got -2; expected an int >= -1"),
        ({"save_last": "yes"}, r"save_last"),
        ({"every_n_epochs": -1}, r"every_n_epochs"),
        ({"every_n_train_steps": 1.5}, r"every_n_train_steps"),
        ({"train_time_interval": 5}, r"train_time_interval.*timedelta"),
        ({"every_n_epochs": 1, "every_n_train_steps": 2}, r"mutually exclusive"),
        ({"every_n_train_steps": 2, "train_time_interval": timedelta(seconds=1)}, r"mutually exclusive"),
        ({"save_top_k": 3}, r"save_top_k=3, monitor=None.*no quantity"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        ModelCheckpoint(**kwargs)


def test_trigger_defaults() -> None:
    default = ModelCheckpoint()
    assert (default.every_n_epochs, default.every_n_train_steps, default.train_time_interval) == (1, 0, None)
    steps = ModelCheckpoint(every_n_train_steps=3)
    assert (steps.every_n_epochs, steps.every_n_train_steps) == (0, 3)
    # a zero trigger is "unset" for the exclusivity check
    assert ModelCheckpoint(every_n_epochs=0, every_n_train_steps=4).every_n_train_steps == 4


# ---- real fits -----------------------------------------------------------------------------------


class Scripted(L.LightningModule):
    """Logs ``val_loss = losses[current_epoch]`` (and a slash-named copy) so tests control the scores."""

    def __init__(self, losses: list[float] | None = None, fail_at_step: int | None = None) -> None:
        super().__init__()
        self.losses = losses or [1.0] * 50
        self.fail_at_step = fail_at_step
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.fail_at_step is not None and self.global_step == self.fail_at_step:
            raise RuntimeError("boom")
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.losses[self.current_epoch])
        self.log("val/acc", 1.0 - self.losses[self.current_epoch])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _data(n: int = 4) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(n, 2)), batch_size=2)


def _fit(
    tmp_path: Path,
    callbacks: list[Any],
    max_epochs: int,
    model: L.LightningModule | None = None,
    ckpt_path: Any = None,
    val: bool = True,
    **kw: Any,
) -> L.Trainer:
    kw.setdefault("logger", False)
    kw.setdefault("num_sanity_val_steps", 0)
    trainer = L.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )
    trainer.fit(model or Scripted(), _data(), _data() if val else None, ckpt_path=ckpt_path)
    return trainer


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*.ckpt")}


def test_top_k_files_on_disk_match_best_k_models(tmp_path: Path) -> None:
    losses = [0.9, 0.5, 0.7, 0.3, 0.8, 0.6]
    mc = ModelCheckpoint(
        dirpath=tmp_path / "ck", monitor="val_loss", save_top_k=2, filename="{epoch}-{val_loss:.1f}"
    )
    _fit(tmp_path, [mc], 6, Scripted(losses))
    assert _files(tmp_path / "ck") == {"epoch=1-val_loss=0.5.ckpt", "epoch=3-val_loss=0.3.ckpt"}
    assert set(mc.best_k_models) == {str(tmp_path / "ck" / f) for f in _files(tmp_path / "ck")}
    assert mc.best_model_path.endswith("epoch=3-val_loss=0.3.ckpt")
    assert float(mc.best_model_score) == pytest.approx(0.3)
    assert mc.kth_best_model_path.endswith("epoch=1-val_loss=0.5.ckpt") and float(
        mc.kth_value
    ) == pytest.approx(0.5)
    assert float(mc.current_score) == pytest.approx(0.3)  # last score that entered the top k
    # the saved file lists itself in its own callback state
    state = torch.load(mc.best_model_path, weights_only=True)["callbacks"][mc.state_key]
    assert state["best_model_path"] == mc.best_model_path
    assert set(state["best_k_models"]) == set(mc.best_k_models)


def test_mode_max_slash_metric_and_save_last(tmp_path: Path) -> None:
    mc = ModelCheckpoint(
        dirpath=tmp_path,
        monitor="val/acc",
        mode="max",
        save_top_k=1,
        save_last=True,
        filename="e{epoch}-acc{val/acc:.2f}",
        auto_insert_metric_name=False,
    )
    _fit(tmp_path, [mc], 3, Scripted([0.9, 0.2, 0.5]))
    assert _files(tmp_path) == {"e1-acc0.80.ckpt", "last.ckpt"}
    assert mc.last_model_path == str(tmp_path / "last.ckpt")
    last = torch.load(mc.last_model_path, weights_only=True)
    # as Lightning 2.6.1: last.ckpt is written only with a top-k save, so it stays at the best epoch (1)
    assert last["global_step"] == 4 and last["epoch"] == 1


def test_save_last_link(tmp_path: Path) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=1, save_last="link")
    _fit(tmp_path, [mc], 3, Scripted([0.5, 0.2, 0.9]))
    last = tmp_path / "last.ckpt"
    # as Lightning 2.6.1: the last save point (epoch 2) was not a top-k save, and last.ckpt stays a link to
    # the checkpoint saved last (epoch 1's, the last improvement)
    assert last.is_symlink() and os.readlink(last) == "epoch=1-step=4.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1
    assert torch.load(tmp_path / "epoch=1-step=4.ckpt", weights_only=True)["epoch"] == 1
    mc2 = ModelCheckpoint(dirpath=tmp_path / "b", monitor="val_loss", save_top_k=1, save_last="link")
    _fit(tmp_path, [mc2], 2, Scripted([0.5, 0.2]))
    link = tmp_path / "b" / "last.ckpt"
    assert link.is_symlink() and os.readlink(link) == "epoch=1-step=4.ckpt"
    assert torch.load(link, weights_only=True)["epoch"] == 1


def test_save_last_link_falls_back_to_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_symlinks(*args: Any, **kwargs: Any) -> None:
        raise OSError("symlinks not supported")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    mc = ModelCheckpoint(dirpath=tmp_path, save_last="link")
    _fit(tmp_path, [mc], 1)
    last = tmp_path / "last.ckpt"
    assert last.is_file() and not last.is_symlink()
    assert last.read_bytes() == (tmp_path / "epoch=0-step=2.ckpt").read_bytes()


def test_no_monitor_keeps_latest_only(tmp_path: Path) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path)
    _fit(tmp_path, [mc], 3)
    assert _files(tmp_path) == {"epoch=2-step=6.ckpt"}
    assert mc.best_model_path == str(tmp_path / "epoch=2-step=6.ckpt")
    keep_all = ModelCheckpoint(dirpath=tmp_path / "all", save_top_k=-1)
    _fit(tmp_path, [keep_all], 3)
    assert _files(tmp_path / "all") == {"epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt"}


def test_every_n_train_steps_and_every_n_epochs(tmp_path: Path) -> None:
    steps = ModelCheckpoint(dirpath=tmp_path / "s", every_n_train_steps=3, save_top_k=-1)
    epochs = ModelCheckpoint(dirpath=tmp_path / "e", every_n_epochs=2, save_top_k=-1)
    _fit(tmp_path, [steps, epochs], 4)
    assert _files(tmp_path / "s") == {"epoch=1-step=3.ckpt", "epoch=2-step=6.ckpt"}
    assert _files(tmp_path / "e") == {"epoch=1-step=4.ckpt", "epoch=3-step=8.ckpt"}


@pytest.mark.filterwarnings("ignore:.*no val dataloader was found")
def test_train_time_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr("fulmen.callbacks.model_checkpoint.time.monotonic", lambda: clock[0])

    class Ticking(Scripted):
        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            clock[0] += 10.0  # every batch "takes" 10 s; the checkpoint callback runs before this hook

    mc = ModelCheckpoint(dirpath=tmp_path, train_time_interval=timedelta(seconds=25), save_top_k=-1)
    _fit(tmp_path, [mc], 4, Ticking(), val=False)
    # checks at t=0,10,20,30 (save, step 4),40,50,60 (save, step 7),70; no epoch-end saves
    assert _files(tmp_path) == {"epoch=1-step=4.ckpt", "epoch=3-step=7.ckpt"}


def test_never_saves_twice_for_the_same_step(tmp_path: Path) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1, save_on_train_epoch_end=True)
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[mc],
        default_root_dir=str(tmp_path),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    saved: list[tuple[str, int]] = []
    original = trainer.save_checkpoint

    def spy(filepath: Any, weights_only: bool = False, storage_options: Any = None) -> None:
        saved.append((os.path.basename(filepath), trainer.global_step))
        original(filepath, weights_only, storage_options)

    trainer.save_checkpoint = spy  # type: ignore[method-assign]
    trainer.fit(Scripted(), _data(), _data())
    # step-trigger saves at steps 2 and 4; the epoch-end saves at the same steps are skipped
    assert saved == [("epoch=0-step=2.ckpt", 2), ("epoch=1-step=4.ckpt", 4)]


def test_skips_sanity_check_and_fast_dev_run(tmp_path: Path) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path / "a", every_n_train_steps=1)
    trainer = L.Trainer(
        fast_dev_run=True, callbacks=[mc], default_root_dir=str(tmp_path), enable_progress_bar=False
    )
    trainer.fit(Scripted(), _data(), _data())
    assert not (tmp_path / "a").exists() or not _files(tmp_path / "a")

    class CountingCheckpoint(ModelCheckpoint):
        calls = 0

        def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
            assert not trainer.sanity_checking
            CountingCheckpoint.calls += 1
            super()._save_checkpoint(trainer, filepath)

    counting = CountingCheckpoint(dirpath=tmp_path / "b", monitor="val_loss", save_on_train_epoch_end=False)
    _fit(tmp_path, [counting], 1, num_sanity_val_steps=2)
    assert CountingCheckpoint.calls == 1


@pytest.mark.filterwarnings("ignore:.*no val dataloader was found")
def test_missing_monitor_raises_with_available_keys(tmp_path: Path) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_los")
    with pytest.raises(
        MisconfigurationException, match=r"monitor='val_los'.*'train_loss'.*'val_loss'.*self.log"
    ):
        _fit(tmp_path, [mc], 1)
    # no validation at all: as in Lightning, the epoch-end save warns (once) and saves nothing
    mc2 = ModelCheckpoint(dirpath=tmp_path / "b", monitor="val_loss")
    with pytest.warns(UserWarning, match="available keys") as record:
        _fit(tmp_path, [mc2], 2, val=False)
    assert sum("could not find" in str(w.message) for w in record) == 1
    assert not (tmp_path / "b").exists() or not _files(tmp_path / "b")


def test_missing_val_metric_defers_step_saves_silently(tmp_path: Path) -> None:
    """A step trigger before the first validation (or with a monitor that never appears) skips the save without
    a warning, top-k and last alike; Lightning defers it to the next validation end when it saves after
    validation (here it saves at the train epoch end, so the deferred save is dropped)."""
    import warnings

    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", every_n_train_steps=1, save_last=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*could not find")
        _fit(tmp_path, [mc], 2)
    # from epoch 1 on the metric exists: step 3 enters the top 1, step 4 (same score) does not
    assert _files(tmp_path) == {"epoch=1-step=3.ckpt", "last.ckpt"}
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 4
    typo = ModelCheckpoint(dirpath=tmp_path / "t", monitor="val_los", every_n_train_steps=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*could not find")
        _fit(tmp_path, [typo], 2)
    assert not (tmp_path / "t").exists() or not _files(tmp_path / "t")


def test_deferred_step_save_happens_at_validation_end(tmp_path: Path) -> None:
    """Validating twice per epoch (saves after validation): a step save with the monitor missing, or on the
    epoch's last batch right before validation, is done at the next on_validation_end with fresh values."""

    class PerStep(Scripted):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", float(self.global_step))

    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", every_n_train_steps=1, save_top_k=-1,
                         save_last=True)
    _fit(tmp_path, [mc], 1, model=PerStep(), val_check_interval=0.5, limit_val_batches=1)
    scores = {}
    for name in sorted(_files(tmp_path)):
        ckpt = torch.load(tmp_path / name, weights_only=False)
        (state,) = ckpt["callbacks"].values()
        scores[name] = (ckpt["global_step"], float(state["current_score"]))
    # step 1: no val_loss yet (deferred to the validation at step 1); step 2: last batch, deferred to the
    # validation right after it, so it is saved with val_loss=2.0 rather than the stale 1.0
    assert scores == {"epoch=0-step=1.ckpt": (1, 1.0), "epoch=0-step=2.ckpt": (2, 2.0), "last.ckpt": (2, 2.0)}


def test_version_counter(tmp_path: Path) -> None:
    (tmp_path / "static.ckpt").write_bytes(b"old")
    mc = ModelCheckpoint(dirpath=tmp_path, filename="static", save_top_k=-1)
    with pytest.warns(UserWarning, match="exists and is not empty"):
        _fit(tmp_path, [mc], 2)
    assert _files(tmp_path) == {"static.ckpt", "static-v1.ckpt", "static-v2.ckpt"}
    assert (tmp_path / "static.ckpt").read_bytes() == b"old"
    no_counter = ModelCheckpoint(
        dirpath=tmp_path / "n", filename="static", save_top_k=-1, enable_version_counter=False
    )
    _fit(tmp_path, [no_counter], 2)
    assert _files(tmp_path / "n") == {"static.ckpt"}


def test_failed_save_keeps_bookkeeping_and_files(tmp_path: Path) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=1)
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[mc],
        default_root_dir=str(tmp_path),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    original = trainer.save_checkpoint

    def flaky(filepath: Any, weights_only: bool = False, storage_options: Any = None) -> None:
        if trainer.current_epoch == 1:
            raise OSError("disk full")
        original(filepath, weights_only, storage_options)

    trainer.save_checkpoint = flaky  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk full"):
        trainer.fit(Scripted([0.5, 0.2, 0.1]), _data(), _data())
    first = str(tmp_path / "epoch=0-step=2.ckpt")
    assert _files(tmp_path) == {"epoch=0-step=2.ckpt"}  # the evicted file was not removed
    assert (
        mc.best_k_models.keys() == {first} and mc.best_model_path == first and mc.kth_best_model_path == first
    )
    assert float(mc.best_model_score) == pytest.approx(0.5) and float(mc.current_score) == pytest.approx(0.5)


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_resume_continues_top_k(tmp_path: Path) -> None:
    losses = [0.5, 0.4, 0.9, 0.1, 0.8, 0.05]
    ck = tmp_path / "ck"
    first = ModelCheckpoint(dirpath=ck, monitor="val_loss", save_top_k=2, save_last=True)
    _fit(tmp_path, [first], 3, Scripted(losses))
    assert _files(ck) == {"epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "last.ckpt"}

    resumed = ModelCheckpoint(dirpath=ck, monitor="val_loss", save_top_k=2, save_last=True)
    _fit(tmp_path, [resumed], 6, Scripted(losses), ckpt_path=str(ck / "last.ckpt"))
    # epoch 3 (0.1) evicts epoch 0 (0.5, from the first run), epoch 5 (0.05) evicts epoch 1 (0.4)
    assert _files(ck) == {"epoch=3-step=8.ckpt", "epoch=5-step=12.ckpt", "last.ckpt"}
    assert set(resumed.best_k_models) == {str(ck / "epoch=3-step=8.ckpt"), str(ck / "epoch=5-step=12.ckpt")}
    assert resumed.best_model_path == str(ck / "epoch=5-step=12.ckpt")


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_resume_never_deletes_the_resumed_from_checkpoint(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    first = ModelCheckpoint(dirpath=ck)  # keeps only its latest checkpoint
    _fit(tmp_path, [first], 1)
    resume_from = first.best_model_path
    resumed = ModelCheckpoint(dirpath=ck)
    _fit(tmp_path, [resumed], 3, ckpt_path=resume_from)
    assert _files(ck) == {"epoch=0-step=2.ckpt", "epoch=2-step=6.ckpt"}


def test_load_state_dict_with_changed_dirpath_warns(tmp_path: Path) -> None:
    old = ModelCheckpoint(dirpath=tmp_path / "old", monitor="m")
    old.best_model_path, old.best_k_models = "x.ckpt", {"x.ckpt": T(1.0)}
    new = ModelCheckpoint(dirpath=tmp_path / "new", monitor="m")
    with pytest.warns(UserWarning, match="dirpath has changed"):
        new.load_state_dict(old.state_dict())
    assert new.best_model_path == "x.ckpt" and new.best_k_models == {}


class RecordingLogger(Logger):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.saved_callbacks: list[Any] = []

    @property
    def name(self) -> str:
        return "exp"

    @property
    def version(self) -> int:
        return 7

    @property
    def save_dir(self) -> str:
        return str(self.root)

    def log_metrics(self, metrics: Any, step: Any = None) -> None:
        pass

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.saved_callbacks.append(checkpoint_callback)


def test_default_dirpath_and_logger_notification(tmp_path: Path) -> None:
    logger = RecordingLogger(tmp_path / "logs")
    mc = ModelCheckpoint()
    _fit(tmp_path, [mc], 2, logger=logger)
    assert mc.dirpath == os.path.join(str(tmp_path / "logs"), "exp", "version_7", "checkpoints")
    assert _files(Path(mc.dirpath)) == {"epoch=1-step=4.ckpt"}
    assert logger.saved_callbacks == [mc, mc]
    no_logger = ModelCheckpoint()
    _fit(tmp_path / "root", [no_logger], 1)
    assert no_logger.dirpath == os.path.join(str(tmp_path / "root"), "checkpoints")


def test_save_on_exception(tmp_path: Path) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, save_on_exception=True, save_top_k=-1)
    with pytest.raises(RuntimeError, match="boom"):
        _fit(tmp_path, [mc], 3, Scripted(fail_at_step=3))
    assert _files(tmp_path) == {"epoch=0-step=2.ckpt", "epoch=1-step=3.ckpt"}
    assert torch.load(tmp_path / "epoch=1-step=3.ckpt", weights_only=True)["global_step"] == 3
    off = ModelCheckpoint(dirpath=tmp_path / "off", save_top_k=-1)
    with pytest.raises(RuntimeError, match="boom"):
        _fit(tmp_path, [off], 3, Scripted(fail_at_step=3))
    assert _files(tmp_path / "off") == {"epoch=0-step=2.ckpt"}


def test_to_yaml(tmp_path: Path) -> None:
    import yaml

    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2)
    _fit(tmp_path, [mc], 2, Scripted([0.5, 0.25]))
    mc.to_yaml()
    loaded = yaml.safe_load((tmp_path / "best_k_models.yaml").read_text())
    assert loaded == {str(tmp_path / "epoch=0-step=2.ckpt"): 0.5, str(tmp_path / "epoch=1-step=4.ckpt"): 0.25}


# ---- collective decisions (a stand-in trainer plays one rank of a multi-process run) ---------------


class _Rank1Strategy:
    """Rank 1: ``broadcast`` returns rank 0's choice, ``reduce_boolean_decision`` combines with rank 0's."""

    def __init__(self, rank0_path: str, rank0_says_top_k: bool) -> None:
        self.rank0_path = rank0_path
        self.rank0_says_top_k = rank0_says_top_k
        self.reductions: list[tuple[bool, bool]] = []

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if isinstance(obj, str) and obj.endswith(".ckpt"):
            return self.rank0_path
        return obj

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        self.reductions.append((decision, all))
        return (decision and self.rank0_says_top_k) if all else (decision or self.rank0_says_top_k)

    def barrier(self, name: str | None = None) -> None:
        pass

    def remove_checkpoint(self, filepath: Any) -> None:
        raise AssertionError("rank 1 test: nothing should be evicted")


class _FakeTrainer:
    def __init__(self, strategy: _Rank1Strategy, metrics: dict[str, Any], step: int) -> None:
        self.strategy = strategy
        self.callback_metrics = metrics
        self.global_step = step
        self.current_epoch = 0
        self.is_global_zero = False
        self.loggers: list[Any] = []
        self.saved: list[str] = []
        self.ckpt_path = None

    def save_checkpoint(self, filepath: str, weights_only: bool = False) -> None:
        self.saved.append(filepath)


def test_rank_dependent_choices_are_collective(tmp_path: Path) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=1, filename="{val_loss:.2f}")
    # rank 1's metric differs (not synced), so its own name would differ: it must write rank 0's path
    strategy = _Rank1Strategy(str(tmp_path / "val_loss=0.50.ckpt"), rank0_says_top_k=False)
    trainer = _FakeTrainer(strategy, {"val_loss": T(0.7)}, step=1)
    mc._save_topk_checkpoint(trainer, mc._monitor_candidates(trainer))  # type: ignore[arg-type]
    assert trainer.saved == [str(tmp_path / "val_loss=0.50.ckpt")]
    assert strategy.reductions == []  # fewer than k saved: every rank agrees without a collective
    # rank 1 thinks 0.6 beats its 0.7, but rank 0 disagrees: nobody saves
    trainer.global_step, trainer.callback_metrics = 2, {"val_loss": T(0.6)}
    mc._save_topk_checkpoint(trainer, mc._monitor_candidates(trainer))  # type: ignore[arg-type]
    assert strategy.reductions == [(True, True)] and len(trainer.saved) == 1
