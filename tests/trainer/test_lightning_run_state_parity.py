"""Run-state details that unmodified Lightning programs read, compared with the real Lightning 2.6.1.

Each test runs the same small program on fulmen and on pytorch_lightning (skipped when it is not installed) and
compares what the program observes: the trainer state in every hook of fit/validate/test/predict, what a
Ctrl-C leaves behind, the ``fit_loop`` limits before and after a fit, and which step ``last.ckpt`` holds.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import types
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

HAS_LIGHTNING = importlib.util.find_spec("pytorch_lightning") is not None
pytestmark = pytest.mark.skipif(not HAS_LIGHTNING, reason="compares with pytorch_lightning")


def _fw(name: str) -> tuple[types.ModuleType, Any, Any]:
    """(top-level module, BoringModel, ModelCheckpoint) of fulmen or Lightning."""
    if name == "fulmen":
        import fulmen as L
        from fulmen.callbacks import ModelCheckpoint
        from fulmen.demos import BoringModel
    else:
        L = importlib.import_module("pytorch_lightning")
        BoringModel = importlib.import_module("pytorch_lightning.demos.boring_classes").BoringModel
        ModelCheckpoint = importlib.import_module("pytorch_lightning.callbacks").ModelCheckpoint
    return L, BoringModel, ModelCheckpoint


def _quiet(**kw: Any) -> dict[str, Any]:
    return dict(logger=False, enable_progress_bar=False, enable_model_summary=False, **kw)


_HOOKS = [
    "setup", "on_fit_start", "on_sanity_check_start", "on_sanity_check_end", "on_train_start",
    "on_train_epoch_start", "on_train_batch_start", "on_train_batch_end", "on_validation_start",
    "on_validation_epoch_start", "on_validation_batch_start", "on_validation_epoch_end", "on_validation_end",
    "on_train_epoch_end", "on_train_end", "on_fit_end", "teardown", "on_test_start", "on_test_epoch_start",
    "on_test_batch_start", "on_test_epoch_end", "on_test_end", "on_predict_start", "on_predict_epoch_start",
    "on_predict_batch_start", "on_predict_epoch_end", "on_predict_end",
]


def _state(t: Any) -> tuple[Any, ...]:
    s = t.state
    return (str(s.fn), str(s.stage), str(s.status), t.training, t.sanity_checking, t.validating, t.testing,
            t.predicting)


def _hook_states(name: str, tmp_path: Path) -> list[tuple[Any, ...]]:
    L, BoringModel, _ = _fw(name)
    rec: list[tuple[Any, ...]] = []

    def make(hook: str) -> Any:
        def f(self: Any, trainer: Any, *args: Any, **kwargs: Any) -> None:
            rec.append((hook, *_state(trainer)))
        return f

    Rec = type("Rec", (L.Callback,), {h: make(h) for h in _HOOKS})
    t = L.Trainer(**_quiet(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                           limit_test_batches=1, limit_predict_batches=1, num_sanity_val_steps=1,
                           callbacks=[Rec()], enable_checkpointing=False))
    m = BoringModel()
    t.fit(m)
    t.validate(m)
    t.test(m)
    t.predict(m)
    rec.append(("after", *_state(t)))
    return rec


def test_trainer_state_in_every_hook_equals_lightning(tmp_path: Path) -> None:
    # Lightning: the run's stage holds from setup through teardown (trainer.training is True in a fit's setup,
    # on_fit_start, on_fit_end and teardown), and the status is RUNNING in teardown, FINISHED after
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = _hook_states("fulmen", tmp_path / "f")
        theirs = _hook_states("pytorch_lightning", tmp_path / "l")
    assert ours == theirs
    assert ("on_fit_start", "TrainerFn.FITTING", "RunningStage.TRAINING", "TrainerStatus.RUNNING", True,
            False, False, False, False) in ours


def _ctrl_c(name: str, tmp_path: Path) -> list[Any]:
    L, BoringModel, _ = _fw(name)
    Logger = importlib.import_module("fulmen.loggers" if name == "fulmen" else "pytorch_lightning.loggers").Logger
    seen: list[Any] = []

    class Lg(Logger):  # type: ignore[misc, valid-type]
        name = "x"
        version = 0

        def log_metrics(self, *args: Any, **kwargs: Any) -> None:
            pass

        def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
            pass

        def finalize(self, status: str) -> None:
            seen.append(("finalize", status))

    class M(BoringModel):  # type: ignore[misc, valid-type]
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if batch_idx == 1:
                raise KeyboardInterrupt
            return super().training_step(batch, batch_idx)

    class Cb(L.Callback):
        def on_exception(self, trainer: Any, pl_module: Any, exc: BaseException) -> None:
            seen.append(("on_exception", *_state(trainer)))

        def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
            seen.append(("teardown", stage))

    t = L.Trainer(**{**_quiet(default_root_dir=tmp_path, max_epochs=1, callbacks=[Cb()],
                              enable_checkpointing=False), "logger": Lg()})
    with pytest.raises(SystemExit) as err:
        t.fit(M())
    seen.append(("exit", err.value.code, *_state(t), t.interrupted))
    return seen


def test_ctrl_c_state_and_logger_status_equal_lightning(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = _ctrl_c("fulmen", tmp_path / "f")
        theirs = _ctrl_c("pytorch_lightning", tmp_path / "l")
    assert ours == theirs
    assert ("finalize", "failed") in ours  # Lightning 2.6.1 finalizes the loggers with "failed" on Ctrl-C
    assert ours[-1][:5] == ("exit", 1, "TrainerFn.FITTING", "RunningStage.TRAINING", "TrainerStatus.INTERRUPTED")


def _limits(name: str, tmp_path: Path) -> list[Any]:
    L, BoringModel, _ = _fw(name)
    out: list[Any] = []
    t = L.Trainer(**_quiet(default_root_dir=tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=0,
                           enable_checkpointing=False))
    fl = t.fit_loop

    def show(tag: str) -> None:
        out.append((tag, fl.max_epochs, fl.min_epochs, fl.max_steps, fl.min_steps, fl.epoch_loop.max_steps,
                    fl.epoch_loop.min_steps, t.max_epochs, t.min_epochs, t.max_steps, t.min_steps, t.global_step))

    show("init")
    for obj, attr in ((fl, "max_steps"), (fl, "min_steps")):  # read-only on _FitLoop
        with pytest.raises(AttributeError):
            setattr(obj, attr, 3)
    t.fit(BoringModel())
    show("after fit")
    fl.max_epochs = 4
    fl.min_epochs = 1
    fl.epoch_loop.max_steps = 5
    fl.epoch_loop.min_steps = 1
    show("written")
    t.fit(BoringModel())
    show("after second fit")  # max_steps=5 written on the epoch loop stopped it
    fl.epoch_loop.min_steps = None
    show("min_steps cleared")
    t2 = L.Trainer(**_quiet(max_steps=7, min_steps=3, enable_checkpointing=False))
    fl2 = t2.fit_loop
    out.append(("min_steps given", fl2.max_epochs, fl2.min_epochs, fl2.max_steps, fl2.min_steps, t2.min_epochs))
    return out


def test_fit_loop_limits_read_and_written_equal_lightning(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = _limits("fulmen", tmp_path / "f")
        theirs = _limits("pytorch_lightning", tmp_path / "l")
    assert ours == theirs
    assert ours[0][2] is None and ours[1][2] == 0  # min_epochs: None before the first fit, 0 once it resolved it
    assert ours[3][-1] == 5


def test_epoch_loop_step_limit_bad_value_is_refused() -> None:
    import fulmen as L

    t = L.Trainer(**_quiet(enable_checkpointing=False))
    with pytest.raises(ValueError, match=r"epoch_loop.max_steps = -3: expected -1"):
        t.fit_loop.epoch_loop.max_steps = -3
    with pytest.raises(ValueError, match=r"epoch_loop.min_steps = 'x'"):
        t.fit_loop.epoch_loop.min_steps = "x"


_VALS = [3.0, 1.0, 2.0, 4.0, 0.5, 5.0]


def _last_steps(name: str, d: Path, **kw: Any) -> tuple[list[Any], list[str], bool]:
    """The global_step in last.ckpt at the start of each epoch and after fit, the files, whether it is a link."""
    L, BoringModel, ModelCheckpoint = _fw(name)
    out: list[Any] = []
    last = d / "last.ckpt"

    def read() -> Any:
        return torch.load(last, weights_only=False)["global_step"] if last.exists() else None

    class M(BoringModel):  # type: ignore[misc, valid-type]
        def on_validation_epoch_end(self) -> None:
            self.log("m", _VALS[self.current_epoch])

    class Peek(L.Callback):
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            if trainer.current_epoch > 0:
                out.append(read())

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            out.append(read())

    mc = ModelCheckpoint(dirpath=d, **kw)
    t = L.Trainer(**_quiet(default_root_dir=d, max_epochs=6, limit_train_batches=2, limit_val_batches=1,
                           num_sanity_val_steps=0, callbacks=[mc, Peek()]))
    t.fit(M())
    return out, sorted(os.listdir(d)), last.is_symlink()


@pytest.mark.parametrize("kw", [
    dict(monitor="m", save_top_k=1, mode="min", save_last=True),
    dict(monitor=None, save_top_k=1, save_last=True),
    dict(monitor="m", save_top_k=0, mode="min", save_last=True),
    dict(monitor="m", save_top_k=1, mode="min", every_n_epochs=2, save_last=True),
    dict(monitor="m", save_top_k=2, mode="min", save_last=True),
    dict(monitor="m", save_top_k=1, mode="min", save_last="link"),
    dict(monitor="m", save_top_k=2, mode="min", save_last="link", every_n_train_steps=3),
    dict(monitor="m", save_top_k=1, mode="min", save_last=True, every_n_train_steps=3),
], ids=["worsening", "no-monitor", "top0", "every2", "top2", "link", "link-steps", "steps"])
def test_last_ckpt_holds_the_step_lightning_writes(tmp_path: Path, kw: dict[str, Any]) -> None:
    # Lightning 2.6.1 writes last.ckpt at an epoch/validation-end save point only when a top-k checkpoint was
    # saved at that step: with a metric that stops improving it stays at the last improvement
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = _last_steps("fulmen", tmp_path / "f", **kw)
        theirs = _last_steps("pytorch_lightning", tmp_path / "l", **kw)
    assert ours == theirs
    if kw == dict(monitor="m", save_top_k=1, mode="min", save_last=True):
        assert ours[0] == [2, 4, 4, 4, 10, 10]  # the metric got worse after epochs 1 and 4


def _iter_step_run(name: str, n: int, limit: int | None) -> tuple[list[Any], list[float]]:
    L = _fw(name)[0]
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 3, generator=g), torch.randn(10, 1, generator=g)
    steps: list[Any] = []

    class M(L.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(1)
            self.layer = torch.nn.Linear(3, 1)

        def training_step(self, dataloader_iter: Any) -> Any:
            (xx, yy), _, _ = next(dataloader_iter)
            return torch.nn.functional.mse_loss(self.layer(xx), yy)

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            steps.append((batch_idx, self.trainer.global_step))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    m = M()
    t = L.Trainer(**_quiet(max_epochs=2, accumulate_grad_batches=2, enable_checkpointing=False, accelerator="cpu",
                           limit_train_batches=limit if limit is not None else 1.0))
    t.fit(m, DataLoader(TensorDataset(x[: 2 * n], y[: 2 * n]), batch_size=2))
    return steps, [*m.layer.weight.detach().flatten().tolist(), *m.layer.bias.detach().tolist()]


def _accumulated_reference(n: int, limit: int | None) -> list[float]:
    """Plain PyTorch: loss / 2 per batch, an optimizer step every 2 batches and at each epoch's last batch."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 3, generator=g), torch.randn(10, 1, generator=g)
    torch.manual_seed(1)
    layer = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    batches = limit or n
    for _ in range(2):
        for i in range(batches):
            loss = torch.nn.functional.mse_loss(layer(x[2 * i: 2 * i + 2]), y[2 * i: 2 * i + 2]) / 2
            loss.backward()
            if (i + 1) % 2 == 0 or i == batches - 1:
                opt.step()
                opt.zero_grad()
    return [*layer.weight.detach().flatten().tolist(), *layer.bias.detach().tolist()]


@pytest.mark.parametrize(("n", "limit"), [(5, None), (4, None), (5, 3)], ids=["odd", "even", "limited"])
def test_dataloader_iter_accumulation_steps_at_the_epoch_end(n: int, limit: int | None) -> None:
    # as Lightning: the step that reaches the epoch's last batch closes an open accumulation window with an
    # optimizer step (global_step after each batch equals Lightning's). The weights equal plain PyTorch's
    # accumulation: Lightning's own differ, as it zeroes the gradients at every dataloader_iter step (its
    # warning says this flavor "will not work well with gradient accumulation")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, weights = _iter_step_run("fulmen", n, limit)
        theirs, _ = _iter_step_run("pytorch_lightning", n, limit)
    assert ours == theirs
    assert ours[-1][1] == 2 * (((limit or n) + 1) // 2)  # ceil(batches / 2) steps per epoch, 2 epochs
    assert weights == _accumulated_reference(n, limit)
