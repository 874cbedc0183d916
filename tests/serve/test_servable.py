"""ServableModule + ServableModuleValidator (Lightning's names) during a real fit, over real HTTP."""

from __future__ import annotations

import pytest
import torch
from tests.serve._support import free_port

import fulmen as L
from fulmen.demos.boring_classes import BoringModel
from fulmen.serve.servable import ServableModule, ServableModuleValidator
from fulmen.utilities.exceptions import MisconfigurationException


class ServableBoringModel(BoringModel, ServableModule):
    answer = (0, 1)

    def configure_payload(self):
        return {"body": {"x": list(range(32))}}

    def configure_serialization(self):
        return {"x": lambda x: torch.tensor(x, dtype=torch.float)}, {"output": lambda x: x.tolist()}

    def serve_step(self, x):
        assert x.shape == (32,) and not self.training
        return {"output": torch.tensor([0, 1])}

    def configure_response(self):
        return {"output": list(self.answer)}


def _fit(model, validator):
    trainer = L.Trainer(
        max_steps=1,
        limit_val_batches=0,
        callbacks=[validator],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model)
    return trainer


def test_validator_serves_the_module_and_checks_the_response():
    validator = ServableModuleValidator(port=free_port())
    _fit(ServableBoringModel(), validator)
    assert validator.successful is True
    assert validator.resp.json() == {"output": [0, 1]}
    assert validator.state_dict() == {"successful": True, "optimization": None, "server": "fastapi"}


def test_validator_fails_on_a_wrong_response_and_on_a_non_servable_module():
    model = ServableBoringModel()
    model.answer = (1, 1)
    with pytest.raises(Exception, match=r"The expected response \{'output': \[1, 1\]\} doesn't match"):
        _fit(model, ServableModuleValidator(port=free_port()))
    with pytest.raises(TypeError, match="subclass of ServableModule"):
        _fit(BoringModel(), ServableModuleValidator(port=free_port()))
    with pytest.raises(NotImplementedError, match="optimization onnx"):
        ServableModuleValidator(optimization="onnx")
    _ = MisconfigurationException


def test_lightning_import_paths_resolve_to_fulmen_under_fulmen_run(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "servable.py"
    script.write_text(
        "from lightning.pytorch.serve import ServableModule, ServableModuleValidator\n"
        "from pytorch_lightning.serve.servable_module_validator import ServableModuleValidator as V\n"
        "import fulmen.serve.servable as s\n"
        "assert ServableModule is s.ServableModule and ServableModuleValidator is V is s.ServableModuleValidator\n"
        "print('resolved')\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "fulmen", "run", str(script)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "resolved" in out.stdout, out.stderr
