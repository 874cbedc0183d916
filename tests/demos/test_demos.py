"""fulmen.demos: the classes Lightning's demos ship, with the same behaviour (and the same random draws)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fulmen as L
from fulmen import demos
from fulmen.utilities.exceptions import NotSupportedYetError

LIGHTNING_DEMO_NAMES = {
    "BoringDataModule",
    "BoringModel",
    "DemoModel",
    "LightningLSTM",
    "LightningTransformer",
    "SequenceSampler",
    "SimpleLSTM",
    "Transformer",
    "WikiText2",
}
BORING_CLASSES = {
    "BoringDataModule",
    "BoringDataModuleNoLen",
    "BoringModel",
    "DemoModel",
    "IterableBoringDataModule",
    "ManualOptimBoringModel",
    "Net",
    "RandomDataset",
    "RandomDictDataset",
    "RandomIterableDataset",
    "RandomIterableDatasetWithLen",
}


def test_public_names() -> None:
    assert LIGHTNING_DEMO_NAMES | BORING_CLASSES <= set(demos.__all__)
    for name in demos.__all__:
        assert getattr(demos, name) is not None


def _trainer(**kw: object) -> L.Trainer:
    defaults = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**defaults, **kw})


def test_boring_model_and_datamodule_run_every_stage() -> None:
    model, dm = demos.BoringModel(), demos.BoringDataModule()
    trainer = _trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=2)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 4
    trainer.validate(model, datamodule=dm)
    trainer.test(model, datamodule=dm)
    predictions = trainer.predict(model, datamodule=dm)
    assert len(predictions) == 64 and predictions[0].shape == (1, 2)
    assert len(dm.random_train) == len(dm.random_val) == len(dm.random_test) == 64


def test_manual_optim_and_demo_model_train() -> None:
    model = demos.ManualOptimBoringModel()
    before = model.layer.weight.detach().clone()
    _trainer(max_steps=3, limit_val_batches=0).fit(model)
    assert not torch.equal(before, model.layer.weight)
    demo = demos.DemoModel(out_dim=4)
    _trainer(max_steps=2).fit(
        demo, train_dataloaders=torch.utils.data.DataLoader(demos.RandomDataset(32, 8), 4)
    )
    assert demo.l1.out_features == 4


def test_datasets() -> None:
    assert len(demos.RandomDataset(3, 5)) == 5 and demos.RandomDataset(3, 5)[0].shape == (3,)
    item = demos.RandomDictDataset(3, 5)[1]
    torch.testing.assert_close(item["b"], item["a"] + 2)
    assert len(list(demos.RandomIterableDataset(3, 7))) == 7
    assert len(demos.RandomIterableDatasetWithLen(3, 7)) == 7
    assert not hasattr(demos.RandomIterableDataset(3, 7), "__len__")
    sampler = demos.SequenceSampler(list(range(10)), batch_size=3)
    assert list(sampler) == [[0, 3, 6], [1, 4, 7], [2, 5, 8]] and len(sampler) == 3


def test_wikitext2_reads_a_local_file_and_never_downloads(tmp_path: Path) -> None:
    with pytest.raises(NotSupportedYetError, match="do not download"):
        demos.WikiText2(data_dir=tmp_path)
    (tmp_path / "wikitext-2.txt").write_text("the cat sat\non the mat\n" * 20)
    data = demos.WikiText2(data_dir=tmp_path, block_size=4)
    inputs, target = data[0]
    torch.testing.assert_close(inputs[1:], target[:-1])
    assert data.vocab_size == 6  # the cat sat <eos> on mat


def test_transformer_and_lstm_shapes() -> None:
    model = demos.Transformer(vocab_size=11, ninp=8, nhead=2, nhid=16, nlayers=1, dropout=0.0)
    tokens = torch.randint(0, 11, (2, 5))
    out = model(tokens, tokens)
    assert out.shape == (10, 11)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(10))
    lstm = demos.SimpleLSTM(vocab_size=11, ninp=8, nhid=8, nlayers=2, dropout=0.0)
    log_probs, hidden = lstm(tokens, lstm.init_hidden(2))
    assert log_probs.shape == (10, 11) and hidden[0].shape == (2, 2, 8)


# --- same numbers as Lightning's demos (when pytorch-lightning is installed) -------------------------------


def test_same_random_draws_and_outputs_as_lightning() -> None:
    pl_demos = pytest.importorskip("pytorch_lightning.demos")
    from pytorch_lightning.demos import boring_classes as pl_boring

    for name in ("BoringModel", "ManualOptimBoringModel", "DemoModel"):
        torch.manual_seed(3)
        ours = getattr(demos, name)()
        torch.manual_seed(3)
        theirs = getattr(pl_boring, name)()
        for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.manual_seed(4)
    ours_dm = demos.BoringDataModule()
    torch.manual_seed(4)
    theirs_dm = pl_boring.BoringDataModule()
    torch.testing.assert_close(ours_dm.random_full.data, theirs_dm.random_full.data, rtol=0, atol=0)

    torch.manual_seed(5)
    ours_t = demos.Transformer(vocab_size=13, ninp=8, nhead=2, nhid=16, nlayers=1).eval()
    torch.manual_seed(5)
    theirs_t = pl_demos.Transformer(vocab_size=13, ninp=8, nhead=2, nhid=16, nlayers=1).eval()
    tokens = torch.randint(0, 13, (2, 6))
    torch.testing.assert_close(ours_t(tokens, tokens), theirs_t(tokens, tokens), rtol=0, atol=0)

    torch.manual_seed(6)
    ours_l = demos.SimpleLSTM(vocab_size=13, ninp=8, nhid=8, nlayers=2).eval()
    torch.manual_seed(6)
    theirs_l = pl_demos.SimpleLSTM(vocab_size=13, ninp=8, nhid=8, nlayers=2).eval()
    torch.testing.assert_close(
        ours_l(tokens, ours_l.init_hidden(2))[0], theirs_l(tokens, theirs_l.init_hidden(2))[0]
    )
    assert list(demos.SequenceSampler(range(23), 4)) == list(pl_demos.SequenceSampler(range(23), 4))
