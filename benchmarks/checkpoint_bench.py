"""Checkpoint save/load time: fulmen (and Lightning) against a plain ``torch.save``/``torch.load`` of the same content.

The model is a stack of ``Linear(2048, 2048)`` layers (16 MiB each) trained one step with Adam, so a
full checkpoint holds the weights plus two Adam moments. The plain baseline is what a hand-written
loop saves: ``torch.save({"epoch", "global_step", "state_dict": model.state_dict(),
"optimizer_states": [opt.state_dict()]}, path)``, the ``state_dict()`` calls included in its time;
the frameworks' time is ``trainer.save_checkpoint(path)``. Every save writes a new file in the same
directory, after an ``os.sync()`` so no earlier write is still being flushed while the clock runs;
one warm-up round is not counted. fulmen's saves are atomic and durable (temporary file, fsync,
rename, directory fsync); ``torch.save`` and Lightning's are neither, so a second baseline,
``torch.save`` followed by an fsync of the file, shows the price of durability alone.

Async: ``Trainer(plugins=[AsyncCheckpointIO()])`` (``snapshot="auto"``: a forked copy-on-write writer
on this CPU machine) and ``AsyncCheckpointIO(snapshot="copy")`` (tensors copied, written on a thread).
Two numbers each, against the synchronous save:

* *blocking*: how long ``trainer.save_checkpoint`` takes to return;
* *loop loss*: what the training loop really loses. Right after the call the loop runs ``K`` optimizer
  steps (forward, backward, Adam) of the same model, long enough to outlast the background write; the
  loss is the call plus those ``K`` steps minus ``K`` steps without a save in flight (alternating order).
  It includes what the blocking time does not show: copy-on-write page faults (every parameter and Adam
  moment the steps update is copied once while the child still shares it) and the CPU the writer takes
  from the loop (2 cores here). The steps are hand-written on the trainer's module and optimizer.

Each asynchronous mode is measured by :func:`run_async` in a fresh process that holds one trainer, as a
training script does: the fork's own cost (copying page tables) grows with the whole process's memory, so
a process holding every contestant's model would overstate it. Its synchronous reference is the same
trainer saving through the plugin that ``AsyncCheckpointIO`` wraps, in the same process.
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

import torch
from torch import nn

from workloads import Batches

LAYER_MIB = 16  # Linear(2048, 2048) in float32


def _net(size_mib: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(max(1, round(size_mib / LAYER_MIB)))])


def _module_class(base: type) -> type:
    class CkptModule(base):  # type: ignore[misc,valid-type]
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.net(batch[0]).pow(2).mean()

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=1e-4)

    return CkptModule


_MINIMAL = dict(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False)


def _fitted(framework: str, size_mib: int, async_io: bool | str, root: str) -> Any:
    data = Batches([(torch.randn(8, 2048), torch.zeros(8))])
    if framework == "fulmen":
        import fulmen as L
        from fulmen.checkpoint import AsyncCheckpointIO

        plugin = AsyncCheckpointIO(snapshot=async_io if isinstance(async_io, str) else "auto")
        trainer = L.Trainer(default_root_dir=root, plugins=[plugin] if async_io else None, **_MINIMAL)
        module = _module_class(L.LightningModule)(_net(size_mib))
    else:
        import logging

        import pytorch_lightning as pl
        from pytorch_lightning.plugins import AsyncCheckpointIO as PLAsync

        logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
        trainer = pl.Trainer(default_root_dir=root, plugins=[PLAsync()] if async_io else None, **_MINIMAL)
        module = _module_class(pl.LightningModule)(_net(size_mib))
    trainer.fit(module, data)
    return trainer


def _wait_async(trainer: Any) -> None:
    trainer.strategy.checkpoint_io.teardown()  # waits for the write in flight


def _write_done(trainer: Any) -> bool:
    pending = trainer.strategy.checkpoint_io._pending
    return pending is None or pending[1].done()


def _stepper(trainer: Any) -> Any:
    module, opt = trainer.lightning_module, trainer.optimizers[0]
    batch = torch.randn(8, 2048, generator=torch.Generator().manual_seed(1))

    def steps(k: int) -> None:
        for _ in range(k):
            module.net(batch).pow(2).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=False)

    return steps


def run(quick: bool, with_lightning: bool) -> dict[str, Any]:
    import warnings

    warnings.simplefilter("ignore")
    size_mib = 48 if quick else 160
    reps = 2 if quick else 7
    warmup = 1  # the first save of each kind in a process is slower (lazy initialisation): not counted
    root = tempfile.mkdtemp(prefix="fulmen-bench-ckpt-", dir=os.environ.get("FULMEN_BENCH_DIR"))
    try:
        trainers: dict[str, Any] = {"fulmen": _fitted("fulmen", size_mib, False, root)}
        if with_lightning:
            trainers["lightning"] = _fitted("lightning", size_mib, False, root)
            trainers["lightning_async"] = _fitted("lightning", size_mib, True, root)
        base = trainers["fulmen"]
        module, opt = base.lightning_module, base.optimizers[0]
        n_params = sum(p.numel() for p in module.parameters())

        def plain_save(path: str) -> None:
            torch.save({"epoch": 0, "global_step": 1, "state_dict": module.state_dict(),
                        "optimizer_states": [opt.state_dict()]}, path)

        def plain_save_fsync(path: str) -> None:
            # the same durability as fulmen's atomic save: the data is on disk when the call returns
            plain_save(path)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        savers = {"torch": plain_save, "torch_fsync": plain_save_fsync}
        for key, trainer in trainers.items():
            savers[key] = trainer.save_checkpoint
        loaders = {
            "torch": lambda p: torch.load(p, map_location="cpu", weights_only=True),
            "fulmen": lambda p: trainers["fulmen"].strategy.load_checkpoint(p),
        }
        if with_lightning:
            loaders["lightning"] = lambda p: trainers["lightning"].strategy.load_checkpoint(p)

        save: dict[str, list[float]] = {k: [] for k in savers}
        async_total: dict[str, list[float]] = {k: [] for k in savers if "_async" in k}
        load: dict[str, list[float]] = {k: [] for k in loaders}
        sizes: dict[str, int] = {}
        order = list(savers)
        for rep in range(-warmup, reps):
            keys = order if rep % 2 == 0 else order[::-1]
            paths: dict[str, str] = {}
            for key in keys:
                path = os.path.join(root, f"{key}-{rep}.ckpt")
                gc.collect()
                os.sync()
                t0 = time.perf_counter()
                savers[key](path)
                elapsed = time.perf_counter() - t0
                if key in async_total:
                    _wait_async(trainers[key])
                    if rep >= 0:
                        async_total[key].append(time.perf_counter() - t0)
                if rep >= 0:
                    save[key].append(elapsed)
                paths[key] = path
                sizes[key] = os.path.getsize(path)
            for key in (keys if rep % 2 == 0 else keys[::-1]):
                if key not in loaders:
                    continue
                gc.collect()
                t0 = time.perf_counter()
                ckpt = loaders[key](paths[key])
                if rep >= 0:
                    load[key].append(time.perf_counter() - t0)
                del ckpt
            for path in paths.values():
                os.remove(path)

        return {
            "size_mib": size_mib,
            "params": n_params,
            "reps": reps,
            "threads": torch.get_num_threads(),
            "file_mb": {k: v / 1e6 for k, v in sizes.items()},
            "save": save,
            "async_total": async_total,
            "load": load,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_async(quick: bool, snapshot: str) -> dict[str, Any]:
    """One trainer with ``AsyncCheckpointIO(snapshot=snapshot)`` in this (fresh) process: its synchronous save
    (through the wrapped plugin), the asynchronous call's blocking time, and the loop loss (see the module doc)."""
    import warnings

    warnings.simplefilter("ignore")
    size_mib = 48 if quick else 160
    reps = 2 if quick else 7
    warmup = 1
    root = tempfile.mkdtemp(prefix="fulmen-bench-ckpt-async-", dir=os.environ.get("FULMEN_BENCH_DIR"))
    try:
        trainer = _fitted("fulmen", size_mib, snapshot, root)
        plugin = trainer.strategy.checkpoint_io
        sync_io = plugin._wrapped()

        def sync_save(path: str) -> None:
            trainer.strategy.checkpoint_io = sync_io  # the same trainer, saving synchronously
            try:
                trainer.save_checkpoint(path)
            finally:
                trainer.strategy.checkpoint_io = plugin

        save: dict[str, list[float]] = {"sync": [], "async": []}
        done_after: list[float] = []
        for rep in range(-warmup, reps):
            for key in ("sync", "async") if rep % 2 == 0 else ("async", "sync"):
                path = os.path.join(root, f"{key}-{rep}.ckpt")
                gc.collect()
                os.sync()
                t0 = time.perf_counter()
                (sync_save if key == "sync" else trainer.save_checkpoint)(path)
                elapsed = time.perf_counter() - t0
                if key == "async":
                    _wait_async(trainer)
                    if rep >= 0:
                        done_after.append(time.perf_counter() - t0)
                if rep >= 0:
                    save[key].append(elapsed)
                os.remove(path)

        steps = _stepper(trainer)
        steps(2)  # warm-up
        t0 = time.perf_counter()
        steps(3)
        step_s = (time.perf_counter() - t0) / 3
        k_steps = max(3, math.ceil(2.0 * statistics.median(save["sync"]) / step_s))
        loop_loss: list[float] = []
        writer_cpu: list[float] = []
        unfinished = 0
        for rep in range(-warmup, reps):
            path = os.path.join(root, f"loop-{rep}.ckpt")
            timings: dict[str, float] = {}
            for phase in ("plain", "save") if rep % 2 == 0 else ("save", "plain"):
                gc.collect()
                os.sync()
                t0 = time.perf_counter()
                if phase == "save":
                    trainer.save_checkpoint(path)
                steps(k_steps)
                timings[phase] = time.perf_counter() - t0
                if phase == "save":
                    if not _write_done(trainer) and rep >= 0:
                        unfinished += 1  # the write outlasted the steps: the loss is undercounted
                    _wait_async(trainer)
                    cpu = getattr(trainer.strategy.checkpoint_io, "_last_writer_cpu_s", None)
                    if cpu is not None and rep >= 0:
                        writer_cpu.append(cpu)
            if rep >= 0:
                loop_loss.append(timings["save"] - timings["plain"])
            os.remove(path)
        return {
            "snapshot": snapshot,
            "size_mib": size_mib,
            "reps": reps,
            "save": save,
            "done_after": done_after,
            "loop_loss": loop_loss,
            "loop_steps": k_steps,
            "step_s": step_s,
            "loop_unfinished": unfinished,
            "writer_cpu": writer_cpu,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
