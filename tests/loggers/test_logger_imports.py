"""``import fulmen.loggers`` stays light, and loggers Lightning has but fulmen doesn't fail clearly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fulmen.utilities.exceptions import NotSupportedYetError

HEAVY = ("tensorboard", "torch.utils.tensorboard", "mlflow", "wandb", "sqlalchemy")


def test_importing_the_package_imports_no_optional_dependency() -> None:
    code = (
        "import json, sys\n"
        "import fulmen.loggers\n"
        "from fulmen.loggers import *\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m in heavy or m.split('.')[0] in heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("CometLogger", "CometLogger is not supported by fulmen yet"),
        ("NeptuneLogger", "Lightning itself removed it"),
        ("LitLogger", "Lightning AI platform"),
    ],
)
def test_unsupported_loggers_raise_on_construction(name: str, match: str) -> None:
    import fulmen.loggers

    cls = getattr(fulmen.loggers, name)
    assert name in fulmen.loggers.__all__
    with pytest.raises(NotSupportedYetError, match=match) as info:
        cls(api_key="x", project="p")
    assert "CSVLogger, TensorBoardLogger, MLFlowLogger or WandbLogger" in str(info.value)
    assert isinstance(info.value, NotImplementedError)
