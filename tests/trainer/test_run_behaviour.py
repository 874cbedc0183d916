"""Trainer run behaviour that unmodified Lightning programs rely on, pinned against pytorch-lightning 2.6.1.

Each expectation below was observed by running the same small program under the real Lightning 2.6.1:
repeated ``fit`` calls keep the run's progress, ``max_epochs`` reads None until a fit resolves it, Ctrl-C
exits the process with status 1, a DataModule may be passed in the dataloaders slot, ``*_step = None``
disables a loop, the evaluation hooks run without grad, and a Trainer can be pickled mid-fit.
"""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import Callback
from fulmen.utilities.exceptions import MisconfigurationException

QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def data(n: int = 40, bs: int = 10) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)), batch_size=bs)


class Model(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("v", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

    def test_step(self, batch, batch_idx):
        self.log("t", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

    def predict_step(self, batch, batch_idx):
        return self.layer(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Events(Callback):
    HOOKS = ("on_fit_start", "on_sanity_check_start", "on_train_start", "on_train_epoch_start", "on_train_end",
             "on_fit_end")

    def __init__(self) -> None:
        self.seen: list[str] = []
        for name in self.HOOKS:
            setattr(self, name, lambda *args, _n=name: self.seen.append(_n))


# ---------------------------------------------------------------------------------------------- repeated fit


def test_second_fit_after_max_epochs_trains_nothing_and_a_raised_limit_continues() -> None:
    events = Events()
    trainer = L.Trainer(max_epochs=2, callbacks=[events], limit_val_batches=1, **QUIET)
    model = Model()
    trainer.fit(model, data(), data())
    assert (trainer.current_epoch, trainer.global_step) == (2, 8)
    weights = model.layer.weight.detach().clone()
    events.seen.clear()
    trainer.fit(model, data(), data())  # Lightning: nothing is trained, no on_train_start/on_train_end
    assert torch.equal(weights, model.layer.weight)
    assert (trainer.current_epoch, trainer.global_step) == (2, 8)
    assert events.seen == ["on_fit_start", "on_sanity_check_start", "on_fit_end"]
    trainer.validate(model, data(), verbose=False)  # evaluation between fits keeps the training progress
    assert (trainer.current_epoch, trainer.global_step) == (2, 8)
    trainer.fit_loop.max_epochs = 4
    assert trainer.max_epochs == 4
    events.seen.clear()
    trainer.fit(model, data(), data())
    assert (trainer.current_epoch, trainer.global_step) == (4, 16)
    assert events.seen.count("on_train_epoch_start") == 2 and "on_train_start" in events.seen


def test_second_fit_after_max_steps_trains_nothing() -> None:
    trainer = L.Trainer(max_steps=6, limit_val_batches=0, **QUIET)
    model = Model()
    trainer.fit(model, data())
    assert trainer.global_step == 6
    weights = model.layer.weight.detach().clone()
    trainer.fit(model, data())
    assert trainer.global_step == 6 and torch.equal(weights, model.layer.weight)


def test_should_stop_is_reset_by_the_next_fit() -> None:
    class StopAtFirstEpochEnd(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                trainer.should_stop = True

    trainer = L.Trainer(max_epochs=3, callbacks=[StopAtFirstEpochEnd()], limit_val_batches=0, **QUIET)
    trainer.fit(Model(), data())
    assert trainer.current_epoch == 1
    trainer.fit(Model(), data())  # as Lightning: fit starts with should_stop=False and goes on to max_epochs
    assert trainer.current_epoch == 3


# ---------------------------------------------------------------------------------------------- max_epochs


class StopAfter(Callback):
    """Stops the fit after ``n`` epochs (the runs below would otherwise train their resolved 1000 epochs)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.n:
            trainer.should_stop = True


def test_max_epochs_reads_none_until_fit_resolves_it_with_lightnings_warning() -> None:
    trainer = L.Trainer(limit_train_batches=1, limit_val_batches=0, callbacks=[StopAfter(3)], **QUIET)
    assert trainer.max_epochs is None
    with pytest.warns(UserWarning, match=r"^`max_epochs` was not set\. Setting it to 1000 epochs\. To train without "
                                         r"an epoch limit, set `max_epochs=-1`\.$"):
        trainer.estimated_stepping_batches  # noqa: B018 - reading it warns nothing and changes nothing
        assert trainer.max_epochs is None
        trainer.fit(Model(), data())
    assert trainer.max_epochs == 1000 and trainer.current_epoch == 3


@pytest.mark.parametrize("kwargs", [{"max_steps": 3}, {"max_time": {"seconds": 30}}])
def test_max_epochs_with_max_steps_or_max_time_resolves_to_minus_one_without_warning(kwargs) -> None:
    trainer = L.Trainer(limit_train_batches=2, limit_val_batches=0, **kwargs, **QUIET)
    assert trainer.max_epochs is None
    if "max_time" in kwargs:
        trainer = L.Trainer(limit_train_batches=2, limit_val_batches=0, max_steps=3, **kwargs, **QUIET)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*max_epochs.*")
        trainer.fit(Model(), data())
    assert trainer.max_epochs == -1


# ---------------------------------------------------------------------------------------------- Ctrl-C

_INTERRUPTED_SCRIPT = """
import torch
from torch.utils.data import DataLoader, TensorDataset
import fulmen as L

class M(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
    def training_step(self, batch, batch_idx):
        if batch_idx == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread
        return self.layer(batch[0]).sum()
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
    def teardown(self, stage):
        print("TEARDOWN-HOOK", flush=True)

class OnException(L.Callback):
    def on_exception(self, trainer, pl_module, exception):
        print("ON-EXCEPTION", type(exception).__name__, trainer.interrupted, flush=True)

data = DataLoader(TensorDataset(torch.randn(40, 4)), batch_size=4)
trainer = L.Trainer(max_epochs=1, callbacks=[OnException()], logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(M(), data)
print("AFTER-FIT", flush=True)
"""


def test_keyboard_interrupt_shuts_down_then_exits_the_process_with_status_1(tmp_path) -> None:
    script = tmp_path / "interrupted.py"
    script.write_text(textwrap.dedent(_INTERRUPTED_SCRIPT))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "ON-EXCEPTION KeyboardInterrupt True" in proc.stdout
    assert "AFTER-FIT" not in proc.stdout  # as Lightning: sys.exit(1), the script does not go on
    assert "TEARDOWN-HOOK" not in proc.stdout  # Lightning tears the strategy down, not the teardown hooks
    assert "Traceback" not in proc.stderr
    assert "Detected KeyboardInterrupt, attempting graceful shutdown ..." in proc.stderr


# ---------------------------------------------------------------------------------------------- DataModule slot


class DM(L.LightningDataModule):
    def train_dataloader(self):
        return data()

    def val_dataloader(self):
        return data()

    def test_dataloader(self):
        return data(20)

    def predict_dataloader(self):
        return data(30)


def test_datamodule_passed_in_the_dataloaders_slot() -> None:
    trainer = L.Trainer(**QUIET)
    model = Model()
    assert set(trainer.validate(model, DM(), verbose=False)[0]) == {"v"}
    assert trainer.datamodule is not None
    assert set(trainer.test(model, DM(), verbose=False)[0]) == {"t"}
    assert len(trainer.predict(model, DM())) == 3
    with pytest.raises(MisconfigurationException, match="both dataloaders and a datamodule"):
        trainer.test(model, dataloaders=data(), datamodule=DM())


# ---------------------------------------------------------------------------------------------- step = None


def test_validation_step_none_skips_validation_with_lightnings_warning() -> None:
    model = Model()
    model.validation_step = None
    calls = []

    class CountVal(Callback):
        def on_validation_start(self, trainer, pl_module):
            calls.append(1)

    trainer = L.Trainer(max_epochs=1, callbacks=[CountVal()], **QUIET)
    with pytest.warns(UserWarning, match="You passed in a `val_dataloader` but Model has no `validation_step`"):
        trainer.fit(model, data(), data())
    assert trainer.global_step == 4 and calls == [] and trainer.num_val_batches == []
    with pytest.raises(MisconfigurationException, match="no validation_step"):
        trainer.validate(model, data())
    model.test_step = None
    with pytest.raises(MisconfigurationException, match="no test_step"):
        trainer.test(model, data())
    model.predict_step = None
    with pytest.raises(MisconfigurationException, match=r"`predict_step` cannot be None to run `Trainer.predict`"):
        trainer.predict(model, data())
    model.training_step = None
    with pytest.raises(MisconfigurationException, match="no training_step"):
        L.Trainer(max_epochs=1, **QUIET).fit(model, data())


# ---------------------------------------------------------------------------------------------- grad modes

_EVAL_HOOKS = [
    "on_validation_model_zero_grad", "on_validation_model_eval", "on_validation_start", "on_validation_epoch_start",
    "on_validation_epoch_end", "on_validation_end", "on_validation_model_train", "on_test_model_eval",
    "on_test_start", "on_test_epoch_start", "on_test_epoch_end", "on_test_end", "on_test_model_train",
    "on_predict_model_eval", "on_predict_start", "on_predict_epoch_start", "on_predict_epoch_end", "on_predict_end",
    "on_train_epoch_start",
]


@pytest.mark.parametrize("inference_mode", [True, False])
def test_evaluation_hooks_run_inside_the_no_grad_context(inference_mode: bool) -> None:
    """As Lightning 2.6.1: every evaluation hook from on_*_model_eval to on_*_model_train runs without grad;
    validation inside fit (and its sanity check) uses no_grad, validate/test/predict inference mode if asked."""
    seen: dict[tuple[str, str], tuple[bool, bool]] = {}
    stage = {"now": "fit"}

    class Recorder(Model):
        pass

    def make(name):
        def hook(self, *args, **kwargs):
            seen.setdefault((stage["now"], name), (torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
            return getattr(L.LightningModule, name)(self, *args, **kwargs)

        return hook

    for name in _EVAL_HOOKS:
        setattr(Recorder, name, make(name))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=1,
                        inference_mode=inference_mode, **QUIET)
    model = Recorder()
    trainer.fit(model, data(), data())
    for fn in ("validate", "test", "predict"):
        stage["now"] = fn
        getattr(trainer, fn)(model, data(), **({} if fn == "predict" else {"verbose": False}))
    no_grad, inference = (False, False), (False, True)
    evaluating = inference if inference_mode else no_grad
    assert seen[("fit", "on_validation_model_zero_grad")] == (True, False)
    assert seen[("fit", "on_train_epoch_start")] == (True, False)
    for name in _EVAL_HOOKS[1:7]:
        assert seen[("fit", name)] == no_grad, name
        assert seen[("validate", name)] == evaluating, name
    for name in _EVAL_HOOKS[7:13]:
        assert seen[("test", name)] == evaluating, name
    for name in _EVAL_HOOKS[13:18]:
        assert seen[("predict", name)] == evaluating, name


def test_a_tensor_cached_in_fit_validation_can_be_used_by_training() -> None:
    """Lightning validates inside fit under no_grad, not inference mode: a tensor made there is a normal tensor."""

    class Cache(Model):
        cached = None

        def on_validation_epoch_end(self):
            self.cached = torch.ones(1)

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * self.cached if self.cached is not None else loss

    trainer = L.Trainer(max_epochs=2, limit_val_batches=1, **QUIET)
    trainer.fit(Cache(), data(), data())
    assert trainer.global_step == 8


# ---------------------------------------------------------------------------------------------- pickling


class CopyMidFit(Callback):
    """At the second batch: pickle and deep-copy the progress bar and the whole Trainer, and torch.save it."""

    def __init__(self, path) -> None:
        self.path = path
        self.results: dict = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 1:
            bar = trainer.progress_bar_callback
            self.results["bar"] = pickle.loads(pickle.dumps(bar))
            self.results["bar_copy"] = copy.deepcopy(bar)
            self.results["trainer"] = copy.deepcopy(trainer)
            torch.save(trainer, self.path)


@pytest.mark.parametrize("bar", ["tqdm", "rich"])
def test_trainer_and_progress_bar_pickle_and_deepcopy_mid_fit(bar: str, tmp_path) -> None:
    """Lightning 2.6.1 pickles and deep-copies a Trainer mid-fit (live bars included)."""
    if bar == "rich":
        pytest.importorskip("rich")
        from fulmen.callbacks import RichProgressBar as Bar
    else:
        from fulmen.callbacks import TQDMProgressBar as Bar
    copier = CopyMidFit(tmp_path / "trainer.pt")
    kw = {k: v for k, v in QUIET.items() if k != "enable_progress_bar"}
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, callbacks=[Bar(), copier], **kw)
    trainer.fit(Model(), data())
    assert type(copier.results["bar"]) is Bar and type(copier.results["bar_copy"]) is Bar
    assert copier.results["trainer"].global_step == 2
    loaded = torch.load(tmp_path / "trainer.pt", weights_only=False)
    assert loaded.global_step == 2
    assert isinstance(loaded.optimizers[0], torch.optim.SGD)


# ---------------------------------------------------------------------------------------------- resume


class SaveAtStep(Callback):
    def __init__(self, path, hook: str, step: int) -> None:
        self.path, self.step, self.done = path, step, False
        setattr(self, hook, self._save)

    def _save(self, trainer, *args) -> None:
        if trainer.global_step == self.step and not self.done and not trainer.sanity_checking:
            trainer.save_checkpoint(self.path)
            self.done = True


@pytest.mark.parametrize(("hook", "step", "sanity"), [
    ("on_train_batch_end", 2, False),  # inside an epoch
    ("on_validation_end", 4, False),  # inside a validation
    ("on_train_epoch_end", 4, True),  # at an epoch's end
])
def test_sanity_check_on_resume_as_lightning(tmp_path, hook, step, sanity) -> None:
    """Lightning 2.6.1 skips the sanity check when resuming inside an epoch or a validation, not at an epoch end."""
    path = tmp_path / "a.ckpt"
    saver = SaveAtStep(path, hook, step)
    L.Trainer(max_epochs=2, callbacks=[saver], limit_val_batches=1, **QUIET).fit(Model(), data(), data())
    assert saver.done
    events = Events()
    trainer = L.Trainer(max_epochs=3, callbacks=[events], limit_val_batches=1, **QUIET)
    trainer.fit(Model(), data(), data(), ckpt_path=path)
    assert ("on_sanity_check_start" in events.seen) is sanity
    assert trainer.global_step == 12


def test_fit_loop_max_epochs_set_to_none_is_resolved_by_the_next_fit() -> None:
    """Lightning 2.6.1: ``trainer.fit_loop.max_epochs = None`` reads None, and the next fit makes it 1000 (warning)."""
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, callbacks=[StopAfter(3)], **QUIET)
    trainer.fit_loop.max_epochs = None
    assert trainer.max_epochs is None and trainer.fit_loop.max_epochs is None
    with pytest.warns(UserWarning, match="`max_epochs` was not set. Setting it to 1000 epochs."):
        trainer.fit(Model(), data())
    assert trainer.fit_loop.max_epochs == 1000 and trainer.current_epoch == 3


@pytest.mark.parametrize(("kwargs", "expected"), [  # read in configure_optimizers under Lightning 2.6.1
    ({"max_epochs": 2, "max_steps": 1000}, 8),  # max_steps caps the estimate, it does not replace it
    ({"max_epochs": 2, "max_steps": 5}, 5),
    ({"max_epochs": -1, "max_steps": 7}, 7),
    ({"max_epochs": 0}, 4),  # at least one epoch
    ({"max_epochs": 3, "accumulate_grad_batches": 3}, 6),
])
def test_estimated_stepping_batches_as_lightning(kwargs, expected) -> None:
    seen = []

    class Estimate(Model):
        def configure_optimizers(self):
            seen.append(self.trainer.estimated_stepping_batches)
            return super().configure_optimizers()

    L.Trainer(limit_val_batches=0, **kwargs, **QUIET).fit(Estimate(), data())
    assert seen == [expected]
