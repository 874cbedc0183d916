"""``import fulmen`` and the integration modules import no optional dependency until it is used."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = (
    "jsonargparse",
    "tensorboard",
    "torch.utils.tensorboard",
    "mlflow",
    "wandb",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "rich",
    "matplotlib",
    "safetensors",
    "torchmetrics",
    "torch._dynamo",
)


def imported_after(code: str) -> list[str]:
    probe = (
        f"import json, sys\n{code}\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_fulmen_imports_no_optional_dependency() -> None:
    assert imported_after("import fulmen") == []


def test_integration_modules_import_no_optional_dependency() -> None:
    code = (
        "import fulmen, fulmen.cli, fulmen.loggers, fulmen.profilers, fulmen.tuner, fulmen.utilities.export\n"
        "import fulmen.callbacks, fulmen.__main__\n"
        "from fulmen.cli import LightningCLI, SaveConfigCallback, instantiate_class\n"
        "from fulmen.loggers import *\n"
        "from fulmen.callbacks import LearningRateFinder, BatchSizeFinder\n"
        "import fulmen as L\n"
        "L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, profiler='simple')\n"
    )
    assert imported_after(code) == []


def test_a_missing_jsonargparse_names_the_extra() -> None:
    code = (
        "import sys\nsys.modules['jsonargparse'] = None\n"
        "import fulmen.cli\n"
        "try:\n    fulmen.cli.LightningCLI(args=[])\nexcept ModuleNotFoundError as e:\n    print('ERR', e)\n"
        "try:\n    fulmen.cli.LightningArgumentParser\nexcept ModuleNotFoundError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.count("ERR") == 2 and out.count("pip install 'fulmen[cli]'") == 2
