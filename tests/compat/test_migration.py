"""``lightning.pytorch.utilities.migration``: migrate_checkpoint and pl_legacy_patch."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch

from fulmen.__about__ import LIGHTNING_COMPAT_VERSION
from fulmen.compat._migration import migrate_checkpoint, pl_legacy_patch
from fulmen.utilities.parsing import AttributeDict
from fulmen.utilities.rank_zero import PossibleUserWarning


def test_migrates_an_old_checkpoint_in_version_order() -> None:
    key = "ModelCheckpoint{'monitor': 'val', 'mode': 'min', 'every_n_train_steps': 0, 'every_n_epochs': 1, " \
        "'train_time_interval': None, 'save_on_train_epoch_end': True}"
    checkpoint = {"pytorch-lightning_version": "1.8.6", "callbacks": {key: {"best_model_score": 1}},
                  "amp_scaling_state": {"x": 1}, "state_dict": {}}
    with pytest.warns(UserWarning, match="apex"):
        migrated, applied = migrate_checkpoint(checkpoint)
    assert migrated is checkpoint  # in place
    assert applied == {"1.9.0": ["_drop_save_on_train_epoch_end_from_state_keys"], "2.0.0": ["_drop_apex_amp_state"]}
    assert list(migrated["callbacks"]) == [key.replace(", 'save_on_train_epoch_end': True", "")]
    assert "amp_scaling_state" not in migrated
    assert migrated["pytorch-lightning_version"] == LIGHTNING_COMPAT_VERSION
    assert migrated["legacy_pytorch-lightning_version"] == "1.8.6"


def test_target_version_current_and_newer() -> None:
    _, applied = migrate_checkpoint({"pytorch-lightning_version": "1.0.0", "callbacks": {}}, target_version="1.9.0")
    assert list(applied) == ["1.9.0"]
    current = {"pytorch-lightning_version": LIGHTNING_COMPAT_VERSION}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert migrate_checkpoint(current) == (current, {})
    assert "legacy_pytorch-lightning_version" not in current
    with pytest.warns(PossibleUserWarning, match="newer"):
        assert migrate_checkpoint({"pytorch-lightning_version": "99.0"})[1] == {}
    with pytest.raises(KeyError, match="not written by Lightning or fulmen"):
        migrate_checkpoint({"state_dict": {}})
    with pytest.raises(TypeError, match="checkpoint dict"):
        migrate_checkpoint([])  # type: ignore[arg-type]


def test_pl_legacy_patch_unpickles_lightning_paths() -> None:
    real = pytest.importorskip("pytorch_lightning.utilities.parsing")
    blob = pickle.dumps(real.AttributeDict(lr=0.1))  # names pytorch_lightning.utilities.parsing.AttributeDict
    with pl_legacy_patch():
        loaded = pickle.loads(blob)
    assert type(loaded) is AttributeDict and loaded.lr == 0.1
    import pytorch_lightning

    assert pytorch_lightning.__file__  # the real package is back after the block


def test_migrated_checkpoint_loads_in_fulmen(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fulmen.demos import BoringModel

    model = BoringModel()
    path = tmp_path / "old.ckpt"
    torch.save({"pytorch-lightning_version": "1.9.5", "state_dict": model.state_dict(), "hyper_parameters": {}}, path)
    checkpoint, _ = migrate_checkpoint(torch.load(path, weights_only=True))
    torch.save(checkpoint, path)
    loaded = BoringModel.load_from_checkpoint(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
