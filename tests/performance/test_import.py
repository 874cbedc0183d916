"""``import fulmen`` stays light: no optional package and no ``torch._dynamo`` (checked in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

OPTIONAL = (
    "tensorboard", "tensorboardX", "mlflow", "wandb", "rich", "jsonargparse", "onnx", "onnxruntime", "onnxscript",
    "optuna", "fastapi", "uvicorn", "torchmetrics", "safetensors", "matplotlib", "pandas", "sklearn",
    "lightning", "pytorch_lightning", "lightning_fabric", "torch._dynamo", "torch.distributed.fsdp", "deepspeed",
)


def _new_modules(code: str) -> list[str]:
    script = (
        "import json, sys\n"
        "import torch\n"
        "before = set(sys.modules)\n"
        f"{code}\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _optional(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if any(m == o or m.startswith(o + ".") for o in OPTIONAL))


@pytest.mark.parametrize(
    "code",
    [
        "import fulmen",
        # what a script then uses: resolving the lazy names imports the Trainer, the module classes, Fabric
        "import fulmen as L\nL.Trainer, L.LightningModule, L.LightningDataModule, L.Callback, L.Fabric, "
        "L.seed_everything",
    ],
)
def test_import_fulmen_imports_no_optional_package(code: str) -> None:
    assert _optional(_new_modules(code)) == []
