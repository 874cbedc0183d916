"""``lightning.pytorch.core.saving``'s hyperparameter files: YAML and the legacy tags CSV, vs Lightning's."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import pytest

from fulmen.core.saving import (
    load_hparams_from_tags_csv,
    load_hparams_from_yaml,
    save_hparams_to_tags_csv,
    save_hparams_to_yaml,
)

HPARAMS = Namespace(batch_size=32, learning_rate=0.001, data_root="./any/path", flag=True, nested={"a": [1, 2]})


def test_yaml_round_trip_and_lightning_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "hparams.yaml"
    save_hparams_to_yaml(path, HPARAMS)
    assert load_hparams_from_yaml(path, use_omegaconf=False) == vars(HPARAMS)
    saving = pytest.importorskip("pytorch_lightning.core.saving")
    assert dict(saving.load_hparams_from_yaml(str(path), use_omegaconf=False)) == vars(HPARAMS)
    theirs = tmp_path / "theirs.yaml"
    saving.save_hparams_to_yaml(str(theirs), HPARAMS)
    assert load_hparams_from_yaml(theirs, use_omegaconf=False) == vars(HPARAMS)
    assert path.read_text() == theirs.read_text()


def test_yaml_omegaconf_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "hparams.yaml"
    save_hparams_to_yaml(path, {"lr": 0.1})
    loaded = load_hparams_from_yaml(path)
    omegaconf = pytest.importorskip("omegaconf")
    assert isinstance(loaded, omegaconf.DictConfig) and loaded.lr == 0.1
    with pytest.warns(RuntimeWarning, match="Missing Tags"):
        assert load_hparams_from_yaml(tmp_path / "nope.yaml") == {}
    with pytest.raises(RuntimeError, match="Missing folder"):
        save_hparams_to_yaml(tmp_path / "no" / "dir.yaml", {"lr": 0.1})
    with pytest.raises(TypeError, match="expected a dict"):
        save_hparams_to_yaml(path, [1, 2])


def test_tags_csv_matches_lightning(tmp_path: Path) -> None:
    hparams = Namespace(batch_size=32, learning_rate=0.001, data_root="./x", flag=False)
    ours, theirs = tmp_path / "ours.csv", tmp_path / "theirs.csv"
    save_hparams_to_tags_csv(ours, hparams)
    assert load_hparams_from_tags_csv(ours) == vars(hparams)
    saving = pytest.importorskip("pytorch_lightning.core.saving")
    saving.save_hparams_to_tags_csv(str(theirs), hparams)
    assert ours.read_text() == theirs.read_text()
    assert saving.load_hparams_from_tags_csv(str(ours)) == load_hparams_from_tags_csv(theirs)
    with pytest.warns(RuntimeWarning, match="Missing Tags"):
        assert load_hparams_from_tags_csv(tmp_path / "nope.csv") == {}
