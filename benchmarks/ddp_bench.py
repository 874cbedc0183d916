"""2-process DDP on the CPU (gloo): fulmen's ``ddp_fork`` strategy against a hand-written DDP loop.

Both start two processes with ``fork``, train the same MLP with ``DistributedDataParallel`` on the same
shards (``DistributedSampler``, no shuffling) and record, on rank 0, when each training step starts.
The number is the steady-state time per step: from the step after the warm-up to the last one,
divided by the steps in between (process start-up and the process-group setup are not in it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import statistics
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

WORLD = 2
BATCH = 64  # per rank
WARMUP = 20


def unavailable() -> str | None:
    """Why the DDP comparison cannot run, or None."""
    if importlib.util.find_spec("fulmen.strategies.ddp") is None:
        return "fulmen has no DDP strategy yet (`fulmen.strategies.ddp` does not exist)."
    if not torch.distributed.is_available():
        return "torch.distributed is not available in this torch build."
    return None


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def _dataset(steps: int) -> torch.utils.data.TensorDataset:
    gen = torch.Generator().manual_seed(0)
    n = steps * BATCH * WORLD
    return torch.utils.data.TensorDataset(torch.randn(n, 256, generator=gen), torch.randint(0, 10, (n,), generator=gen))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _steady(stamps: list[float]) -> float:
    return (stamps[-1] - stamps[WARMUP]) / (len(stamps) - 1 - WARMUP)


# --------------------------------------------------------------------------------------------------
def _hand_worker(rank: int, steps: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = DistributedDataParallel(_net())
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        data = _dataset(steps)
        loader = DataLoader(data, batch_size=BATCH, sampler=DistributedSampler(data, WORLD, rank, shuffle=False))
        stamps = []
        for x, y in loader:
            stamps.append(time.perf_counter())
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        if rank == 0:
            with open(out, "w") as f:
                json.dump(stamps, f)
        # DDP's reducer holds the process group: drop it first, or the group's destructor can wait forever on a
        # gloo thread when it runs after destroy_process_group (seen as a hang at exit of the hand-written loop)
        del model, opt
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _run_hand(steps: int) -> float:
    import torch.multiprocessing as mp

    out = tempfile.mktemp(prefix="fulmen-ddp-hand-", suffix=".json")
    ctx = mp.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_hand_worker, args=(r, steps, port, out)) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
        if p.is_alive():  # stuck in teardown after its work: its numbers are already written
            p.kill()
            p.join()
            if os.path.exists(out):
                continue
        if p.exitcode != 0:
            raise RuntimeError(f"hand-written DDP rank failed with exit code {p.exitcode}")
    with open(out) as f:
        stamps = json.load(f)
    os.remove(out)
    return _steady(stamps)


# --------------------------------------------------------------------------------------------------
def _module_class() -> type:
    import fulmen as L

    class DDPBench(L.LightningModule):
        def __init__(self, out: str) -> None:
            super().__init__()
            self.net = _net()
            self.out = out
            self.stamps: list[float] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.stamps.append(time.perf_counter())
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

        def on_train_end(self) -> None:
            if self.trainer.global_rank == 0:
                with open(self.out, "w") as f:
                    json.dump(self.stamps, f)

    return DDPBench


def _run_fulmen(steps: int) -> float:
    from torch.utils.data import DataLoader

    import fulmen as L

    out = tempfile.mktemp(prefix="fulmen-ddp-", suffix=".json")
    root = tempfile.mkdtemp(prefix="fulmen-ddp-root-")
    trainer = L.Trainer(
        accelerator="cpu", devices=WORLD, strategy="ddp_fork", max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=root,
    )
    trainer.fit(_module_class()(out), DataLoader(_dataset(steps), batch_size=BATCH, shuffle=False))
    with open(out) as f:
        stamps = json.load(f)
    os.remove(out)
    return _steady(stamps)


def run(quick: bool) -> dict[str, Any]:
    import warnings

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    steps = 60 if quick else 200
    rounds = 2 if quick else 4
    hand, fulmen = [], []
    for r in range(rounds):
        order = (("hand", _run_hand), ("fulmen", _run_fulmen))
        for name, fn in order if r % 2 == 0 else order[::-1]:
            (hand if name == "hand" else fulmen).append(fn(steps))
    return {
        "description": (
            f"MLP 256->512->512->10, Adam, batch {BATCH} per rank, {steps} steps, 2 processes forked with gloo, "
            f"1 thread each; steady-state step time on rank 0 after {WARMUP} warm-up steps, median of {rounds} "
            "interleaved runs each."
        ),
        "strategy": "ddp_fork",
        "hand_step": statistics.median(hand),
        "fulmen_step": statistics.median(fulmen),
        "hand_all": hand,
        "fulmen_all": fulmen,
    }
