"""The Trainer's environment extension points the trial context uses: FULMEN_CALLBACKS, FULMEN_DEFAULT_ROOT_DIR;
and the trial factory (reporting callback + trial checkpoints, nothing outside a trial)."""

from __future__ import annotations

import json

import pytest

import fulmen as L
from fulmen.callbacks import Callback, ModelCheckpoint
from fulmen.sweep import PruningCallback
from fulmen.sweep.callback import trial_callbacks
from fulmen.sweep.context import ENV, TrialContext
from fulmen.utilities.exceptions import MisconfigurationException


class Marker(Callback):
    pass


def make_marker(trainer, callbacks):
    assert isinstance(trainer, L.Trainer) and all(isinstance(c, Callback) for c in callbacks)
    return [Marker()]


def test_fulmen_callbacks_adds_the_factorys_callbacks(monkeypatch):
    monkeypatch.setenv("FULMEN_CALLBACKS", f"{__name__}:make_marker")
    trainer = L.Trainer(logger=False, enable_progress_bar=False)
    assert sum(isinstance(c, Marker) for c in trainer.callbacks) == 1
    monkeypatch.setenv("FULMEN_CALLBACKS", "no.such.module:factory")
    with pytest.raises(MisconfigurationException, match="cannot load 'no.such.module:factory'"):
        L.Trainer(logger=False)


def test_default_root_dir_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FULMEN_DEFAULT_ROOT_DIR", str(tmp_path))
    assert L.Trainer(logger=False).default_root_dir == str(tmp_path)
    assert L.Trainer(logger=False, default_root_dir="elsewhere").default_root_dir == "elsewhere"  # the script wins


def test_trial_factory(monkeypatch, tmp_path):
    assert trial_callbacks(L.Trainer(logger=False), []) == []  # outside a trial: nothing
    ctx = TrialContext(storage="sqlite://", study="s", trial_id=1, number=0, metric="val_acc", mode="max",
                       dir=str(tmp_path))
    env = ctx.to_env(resume=False)
    assert env["FULMEN_AUTO_RESUME"] == "0" and ctx.to_env(resume=True)["FULMEN_AUTO_RESUME"] == "1"
    assert TrialContext(**json.loads(env[ENV])) == ctx
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    trainer = L.Trainer(logger=False, enable_progress_bar=False)
    (pruning,) = [c for c in trainer.callbacks if isinstance(c, PruningCallback)]
    assert (pruning.monitor, pruning.mode, pruning.context) == ("val_acc", "max", ctx)
    (ckpt,) = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]  # replaces the default one
    assert ckpt.dirpath == str(tmp_path / "checkpoints") and ckpt.monitor == "val_acc" and ckpt.save_last
    assert trainer.default_root_dir == str(tmp_path)
    no_ckpt = L.Trainer(logger=False, enable_checkpointing=False)
    assert not any(isinstance(c, ModelCheckpoint) for c in no_ckpt.callbacks)
    own = PruningCallback(None, monitor="val_acc")
    assert [c for c in L.Trainer(logger=False, callbacks=[own]).callbacks if isinstance(c, PruningCallback)] == [own]
