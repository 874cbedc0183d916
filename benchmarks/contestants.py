"""The contestants: a hand-written PyTorch loop, fulmen and (when installed) Lightning, each run on a workload.

A run is timed from just before the optimizer (hand-written loop) or the ``Trainer`` is built to the
end of training, so a framework's per-run costs (Trainer construction, setup, the model summary,
the logger's files, the checkpoint at the epoch end, teardown) are part of its time; the model and
the data are built before the clock starts, identically for everyone.

Settings:

* ``minimal``: no logger, checkpointing, progress bar or model summary, and a training step that
  does not log.
* ``defaults``: the Trainer's defaults (progress bar, model summary, logger, a checkpoint at each
  epoch end) and one ``self.log("loss", loss, prog_bar=True)`` per step. Both frameworks pick the same
  defaults: TensorBoardLogger when tensorboard is installed (else CSVLogger), the rich bar and summary
  when rich is installed (else tqdm and the plain summary).

A workload with validation data (``tinyval``) is validated after every epoch: the hand-written loop runs
the validation batches under ``torch.no_grad()`` in eval mode and keeps the mean loss; the frameworks get
a ``validation_step`` that computes the same loss (and, in ``defaults``, logs it as ``val_loss``), with
their default sanity check (2 validation batches before training).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workloads import Workload


@dataclass
class RunResult:
    wall: float  # seconds, whole run
    cpu: float  # process CPU seconds, whole run
    first_step: float  # seconds from the start of the run to the first training step
    first_step_at: float  # time.perf_counter() when the first training step started
    steps: int
    weights: torch.Tensor  # final parameters, flattened (for the same-work check)


class _StepClock:
    """Records when the first training step starts (shared by every contestant, so its cost is equal)."""

    __slots__ = ("first", "steps", "val_means")

    def __init__(self) -> None:
        self.first: float | None = None
        self.steps = 0
        self.val_means: list[float] = []

    def tick(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        self.steps += 1


def _flat(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).clone()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Send stdout/stderr (progress bars, summaries, info logs) to /dev/null: every bar still formats and
    writes each refresh, only nothing reaches the terminal."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield


def _timed(body: Callable[[_StepClock], nn.Module], steps: int) -> RunResult:
    clock = _StepClock()
    with _quiet():
        w0, c0 = time.perf_counter(), time.process_time()
        net = body(clock)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    first = (clock.first - w0) if clock.first is not None else float("nan")
    if clock.steps != steps:
        raise RuntimeError(f"expected {steps} training steps, ran {clock.steps}")
    return RunResult(wall, cpu, first, clock.first or float("nan"), clock.steps, _flat(net))


# --------------------------------------------------------------------------------------------------
# hand-written PyTorch
# --------------------------------------------------------------------------------------------------
def run_hand(workload: Workload, root: str) -> RunResult:
    net = workload.make_net()
    data = workload.make_data()
    loss_fn = workload.loss

    val = workload.make_val_data() if workload.make_val_data is not None else None

    def body(clock: _StepClock) -> nn.Module:
        opt = workload.make_optimizer(net.parameters())
        net.train()
        for _ in range(workload.epochs):
            for x, y in data:
                clock.tick()
                opt.zero_grad()
                loss = loss_fn(net(x), y)
                loss.backward()
                opt.step()
            if val is not None:
                net.eval()
                total, n = torch.zeros(()), 0
                with torch.no_grad():
                    for x, y in val:
                        total += loss_fn(net(x), y)  # the epoch mean a logger reports, read once per epoch
                        n += 1
                clock.val_means.append((total / n).item())
                net.train()
        return net

    return _timed(body, workload.steps)


# --------------------------------------------------------------------------------------------------
# LightningModule subclasses (one per framework, built once)
# --------------------------------------------------------------------------------------------------
_CLASSES: dict[str, type] = {}


def _module_class(framework: str) -> type:
    cls = _CLASSES.get(framework)
    if cls is not None:
        return cls
    if framework == "fulmen":
        import fulmen as L

        base = L.LightningModule
    else:
        import pytorch_lightning as pl

        base = pl.LightningModule

    class BenchModule(base):  # type: ignore[misc,valid-type]
        def __init__(self, net: nn.Module, workload: Workload, log: bool, clock: _StepClock) -> None:
            super().__init__()
            self.net = net
            self._workload = workload
            self._log_loss = log
            self._clock = clock

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self._clock.tick()
            x, y = batch
            loss = self._workload.loss(self.net(x), y)
            if self._log_loss:
                self.log("loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self) -> Any:
            return self._workload.make_optimizer(self.parameters())

    class BenchModuleWithVal(BenchModule):
        def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = self._workload.loss(self.net(x), y)
            if self._log_loss:
                self.log("val_loss", loss)
            return loss

    _CLASSES[framework] = BenchModule
    _CLASSES[framework + "+val"] = BenchModuleWithVal
    return BenchModule


def _trainer_kwargs(workload: Workload, root: str, minimal: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(accelerator="cpu", devices=1, max_epochs=workload.epochs, default_root_dir=root)
    if minimal:
        kwargs.update(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return kwargs


def _framework_runner(framework: str, minimal: bool) -> Callable[[Workload, str], RunResult]:
    def run(workload: Workload, root: str) -> RunResult:
        _module_class(framework)
        cls = _CLASSES[framework + ("+val" if workload.make_val_data is not None else "")]
        net = workload.make_net()
        data = workload.make_data()
        val = workload.make_val_data() if workload.make_val_data is not None else None
        if framework == "fulmen":
            import fulmen as L

            trainer_cls = L.Trainer
        else:
            import pytorch_lightning as pl

            trainer_cls = pl.Trainer
            for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
                logging.getLogger(name).setLevel(logging.ERROR)

        def body(clock: _StepClock) -> nn.Module:
            kwargs = _trainer_kwargs(workload, root, minimal)
            trainer = trainer_cls(**kwargs)
            module = cls(net, workload, not minimal, clock)
            trainer.fit(module, data, val)
            return net

        return _timed(body, workload.steps)

    return run


@dataclass
class Contestant:
    key: str
    label: str
    run: Callable[[Workload, str], RunResult]


def lightning_available() -> bool:
    return importlib.util.find_spec("pytorch_lightning") is not None


def lightning_version() -> str | None:
    if not lightning_available():
        return None
    from importlib.metadata import version

    return version("pytorch_lightning")


def contestants(with_lightning: bool = True) -> list[Contestant]:
    out = [
        Contestant("hand", "hand-written PyTorch loop", run_hand),
        Contestant("fulmen_min", "fulmen, minimal", _framework_runner("fulmen", minimal=True)),
        Contestant("fulmen_def", "fulmen, defaults", _framework_runner("fulmen", minimal=False)),
    ]
    if with_lightning and lightning_available():
        out += [
            Contestant("lightning_min", "Lightning, minimal", _framework_runner("lightning", minimal=True)),
            Contestant("lightning_def", "Lightning, defaults", _framework_runner("lightning", minimal=False)),
        ]
    return out


def run_in_tempdir(contestant: Contestant, workload: Workload) -> RunResult:
    root = tempfile.mkdtemp(prefix=f"fulmen-bench-{contestant.key}-")
    try:
        return contestant.run(workload, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
