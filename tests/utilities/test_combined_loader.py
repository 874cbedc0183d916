"""CombinedLoader and nested dataloader structures, compared with pytorch_lightning 2.6.1: every mode on a nested
dict/list input, the (batch, batch_idx, dataloader_idx) triples, and what the Trainer does with nested train and
val loaders (batch structure, dataloader_idx order, num_training_batches / num_val_batches)."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from fulmen.utilities.combined_loader import CombinedLoader, flatten_iterables

MODES = ["min_size", "max_size_cycle", "max_size", "sequential"]


def _simple(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return int(x)
    if isinstance(x, dict):
        return {k: _simple(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_simple(v) for v in x)
    return x


def _combined(lib_name: str, iterables: Any, mode: str | None) -> list[Any]:
    cls = importlib.import_module(f"{lib_name}.utilities.combined_loader").CombinedLoader
    cl = cls(iterables) if mode is None else cls(iterables, mode)
    return [_simple(x) for x in cl]


def test_modes_on_a_nested_structure() -> None:
    its = {"a": range(3), "b": [range(2), range(5)]}
    assert len(CombinedLoader(its).flattened) == 3
    got = {mode: list(CombinedLoader(its, mode)) for mode in MODES}
    assert got["min_size"] == [({"a": 0, "b": [0, 0]}, 0, 0), ({"a": 1, "b": [1, 1]}, 1, 0)]
    assert got["max_size_cycle"][2:] == [
        ({"a": 2, "b": [0, 2]}, 2, 0), ({"a": 0, "b": [1, 3]}, 3, 0), ({"a": 1, "b": [0, 4]}, 4, 0)]
    assert got["max_size"][3] == ({"a": None, "b": [None, 3]}, 3, 0)
    assert [dl_idx for _, _, dl_idx in got["sequential"]] == [0] * 3 + [1] * 2 + [2] * 5
    assert [len(CombinedLoader(its, m)) for m in MODES] == [2, 5, 5, 10]
    # a container of plain values is one iterable (Lightning's rule), the default mode is min_size
    assert flatten_iterables([[1, 2, 3], (4, 5)])[0] == [[1, 2, 3], (4, 5)]
    assert list(CombinedLoader([[1, 2, 3], (4, 5)])) == [([1, 4], 0, 0), ([2, 5], 1, 0)]
    # flattened can be replaced, keeping the structure
    cl = CombinedLoader({"a": [1], "b": ([2], [3])})
    cl.flattened = [[10], [20], [30]]
    assert cl.iterables == {"a": [10], "b": ([20], [30])}


@pytest.mark.parametrize("mode", [*MODES, None])
def test_modes_match_lightning(mode: str | None) -> None:
    pytest.importorskip("pytorch_lightning")
    its = {"a": [0, 1, 2], "b": ([10, 11], [20, 21, 22, 23])}
    assert _combined("fulmen", its, mode) == _combined("pytorch_lightning", its, mode)


def _fit_record(lib_name: str, case: str) -> tuple[Any, ...]:
    lib = importlib.import_module(lib_name)
    cls = importlib.import_module(f"{lib_name}.utilities.combined_loader").CombinedLoader

    def dl(n: int, off: int) -> DataLoader:
        return DataLoader(list(range(off, off + n)), batch_size=1)

    train, val = {
        "nested": ({"a": dl(3, 0), "b": [dl(2, 10), dl(4, 20)]}, {"x": dl(2, 100), "y": [dl(1, 200), dl(3, 300)]}),
        "combined": (cls({"a": dl(3, 0), "b": (dl(2, 10), dl(4, 20))}, "max_size"),
                     cls([dl(2, 100), (dl(1, 200),)], "sequential")),
        "tuple": ((dl(2, 0), dl(3, 10)), (dl(2, 100), dl(1, 200))),
    }[case]

    class M(lib.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.rec: list[Any] = []

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            self.rec.append(("train", batch_idx, _simple(batch)))
            return self.layer(torch.ones(1)).sum()

        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            self.rec.append(("val", batch_idx, dataloader_idx, _simple(batch)))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    warnings.filterwarnings("ignore")
    model = M()
    trainer = lib.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                          enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(model, train, val)
    return trainer.num_training_batches, trainer.num_val_batches, model.rec


@pytest.mark.parametrize("case", ["nested", "combined", "tuple"])
def test_trainer_with_nested_loaders(case: str) -> None:
    ours = _fit_record("fulmen", case)
    if case == "nested":
        n_train, n_val, rec = ours
        assert (n_train, n_val) == (4, [2, 1, 3])
        assert rec[2] == ("train", 2, {"a": 2, "b": [10, 22]})
        assert [r[2] for r in rec if r[0] == "val"] == [0, 0, 1, 2, 2, 2]
    pytest.importorskip("pytorch_lightning")
    assert ours == _fit_record("pytorch_lightning", case)


def test_sequential_mode_is_refused_for_training() -> None:
    import fulmen as L

    class M(L.LightningModule):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return None

        def configure_optimizers(self) -> Any:
            return None

    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match="does not support the `CombinedLoader"):
        trainer.fit(M(), CombinedLoader([[1], [2]], "sequential"))


def _loader_props(lib_name: str) -> list[Any]:
    lib = importlib.import_module(lib_name)
    cls = importlib.import_module(f"{lib_name}.utilities.combined_loader").CombinedLoader

    def dl(n: int) -> DataLoader:
        return DataLoader(list(range(n)), batch_size=1)

    def shape(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: shape(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return (type(x).__name__, [shape(v) for v in x])
        return type(x).__name__

    class M(lib.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return self.layer(torch.ones(1)).sum()

        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            pass

        def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            pass

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    warnings.filterwarnings("ignore")
    out = []
    for train, val in (({"a": dl(2), "b": [dl(1), dl(3)]}, {"x": dl(2), "y": [dl(1)]}),
                       (cls([dl(2), dl(3)], "min_size"), [dl(2)]),
                       (dl(2), dl(2))):
        trainer = lib.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                              enable_checkpointing=False, num_sanity_val_steps=0)
        trainer.fit(M(), train, val)
        out.append((shape(trainer.train_dataloader), shape(trainer.val_dataloaders)))
        trainer.test(M(), {"t": dl(1)}, verbose=False)
        out.append(shape(trainer.test_dataloaders))
    return out


def test_trainer_loader_properties_keep_the_given_structure() -> None:
    ours = _loader_props("fulmen")
    assert ours[0] == ({"a": "DataLoader", "b": ("list", ["DataLoader", "DataLoader"])},
                       {"x": "DataLoader", "y": ("list", ["DataLoader"])})
    pytest.importorskip("pytorch_lightning")
    assert ours == _loader_props("pytorch_lightning")


def _limits_and_errors(lib_name: str) -> list[Any]:
    cls = importlib.import_module(f"{lib_name}.utilities.combined_loader").CombinedLoader
    warnings.filterwarnings("ignore")
    out: list[Any] = []
    for mode in MODES:
        cl = cls({"a": [0, 1, 2, 3], "b": ([10, 11, 12], [20, 21, 22, 23, 24])}, mode)
        cl.limits = [2, 3, 4]
        batches = list(cl)  # Lightning's len() needs an iterator first
        out.append((mode, len(cl), batches))
    cl = cls([[1, 2], [3, 4]], "sequential")
    cl.limits = 1
    out.append((cl.limits, list(cl), cl.sampler, cls({"a": DataLoader([1])}).batch_sampler["a"].batch_size))
    for bad in (lambda: setattr(cl, "limits", [1, 2, 3]), lambda: setattr(cl, "flattened", [[1]]),
                lambda: cls([[1]], "foo")):
        with pytest.raises(ValueError):
            bad()
    return out


def test_limits_sampler_and_errors_match_lightning() -> None:
    ours = _limits_and_errors("fulmen")
    assert ours[-1][:2] == ([1, 1], [(1, 0, 0), (3, 0, 1)])
    pytest.importorskip("pytorch_lightning")
    assert ours == _limits_and_errors("pytorch_lightning")
