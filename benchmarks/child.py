"""Measurements that need a fresh process; ``run.py`` starts one per measurement and reads one JSON line.

    child.py import TARGET            time and memory of importing TARGET after ``import torch``
    child.py run CONTESTANT WORKLOAD [--quick]
                                      a cold run: time to the first training step (framework import
                                      included) and the process's peak memory (VmHWM)
    child.py checkpoint [--quick] [--no-lightning]
    child.py ddp [--quick]
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

OPTIONAL = (
    "tensorboard", "tensorboardX", "mlflow", "wandb", "rich", "jsonargparse", "onnx", "onnxruntime", "optuna",
    "fastapi", "torchmetrics", "matplotlib", "pandas", "safetensors", "sklearn", "torch._dynamo",
)

IMPORTS = {
    # what a script does first: the package (its names resolve lazily)...
    "fulmen": "import fulmen",
    # ...and what it then uses: resolving the names imports the Trainer and the module class
    "fulmen+api": "import fulmen as L; L.Trainer; L.LightningModule; L.LightningDataModule; L.Callback",
    "pytorch_lightning": "import pytorch_lightning",
    "pytorch_lightning+api": "import pytorch_lightning as pl; pl.Trainer; pl.LightningModule",
}


def _import(target: str) -> dict[str, object]:
    t0 = time.perf_counter()
    import torch  # noqa: F401

    from machine import proc_status_mb

    t1 = time.perf_counter()
    rss0, hwm0 = proc_status_mb("VmRSS"), proc_status_mb("VmHWM")
    before = set(sys.modules)
    t2 = time.perf_counter()
    exec(IMPORTS[target], {})
    t3 = time.perf_counter()
    rss1, hwm1 = proc_status_mb("VmRSS"), proc_status_mb("VmHWM")
    new = set(sys.modules) - before
    return {
        "torch_s": t1 - t0,
        "import_s": t3 - t2,
        "rss_mb": rss1 - rss0,
        "hwm_mb": hwm1 - hwm0,
        "optional_loaded": sorted(m for m in OPTIONAL if m in new),
        "modules": len(new),
    }


def _run(contestant: str, workload_key: str, quick: bool) -> dict[str, object]:
    import torch

    from machine import proc_status_mb
    from workloads import WORKLOADS

    torch.set_num_threads(1)
    workload = WORKLOADS[workload_key](quick)  # the data is built here, before the clock starts
    hwm_base = proc_status_mb("VmHWM")
    t0 = time.perf_counter()
    from contestants import contestants, run_in_tempdir  # imports no framework yet

    chosen = {c.key: c for c in contestants()}[contestant]
    result = run_in_tempdir(chosen, workload)
    return {
        "first_step_s": result.first_step_at - t0,
        "wall_s": result.wall,
        "hwm_mb": proc_status_mb("VmHWM"),
        "hwm_base_mb": hwm_base,
    }


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    quick = "--quick" in args
    if mode == "import":
        out = _import(args[0])
    elif mode == "run":
        out = _run(args[0], args[1], quick)
    elif mode == "checkpoint":
        import checkpoint_bench

        out = checkpoint_bench.run(quick, with_lightning="--no-lightning" not in args)
    elif mode == "checkpoint_async":
        import checkpoint_bench

        out = checkpoint_bench.run_async(quick, args[0])
    elif mode == "ddp":
        import ddp_bench

        out = ddp_bench.run(quick)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
