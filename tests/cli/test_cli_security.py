"""A config can only name classes and functions fulmen's CLI is allowed to import."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from fulmen.cli import LightningCLI

from .cli_models import ActivationModel, Data, Model


def refused(capsys: pytest.CaptureFixture[str], *args: str, **kwargs: object) -> str:
    with pytest.raises(SystemExit) as info:
        LightningCLI(
            Model if "model" not in kwargs else kwargs.pop("model"),
            Data,
            run=False,  # type: ignore[arg-type]
            args=list(args),
            **kwargs,
        )  # type: ignore[arg-type]
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "not allowed" in err and "allowed_import_paths" in err and "FULMEN_CLI_ALLOWED_IMPORTS" in err
    return err


def test_subprocess_popen_in_an_any_argument_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "plugins": {
                        "class_path": "subprocess.Popen",
                        "init_args": {"args": ["touch", str(marker)]},
                    }
                }
            }
        )
    )
    err = refused(capsys, "--config", str(config))
    assert "subprocess.Popen" in err
    assert not marker.exists()


def test_os_system_as_a_callback_or_callable_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    refused(capsys, "--trainer.callbacks+=os.system")
    refused(capsys, "--trainer.logger.class_path=os.system")
    err = refused(capsys, "--model.activation=os.system", model=ActivationModel)
    assert "os.system" in err
    refused(capsys, "--model.activation=builtins.eval", model=ActivationModel)


def test_a_module_is_not_even_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "evil_module.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\nimport fulmen\nclass Cb(fulmen.Callback):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    refused(capsys, "--trainer.callbacks+=evil_module.Cb")
    assert not marker.exists() and "evil_module" not in sys.modules


def test_allowing_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    refused(capsys, "--model.activation=torch.nn.functional.relu", model=ActivationModel)
    cli = LightningCLI(
        ActivationModel,
        Data,
        run=False,
        allowed_import_paths=["torch.nn.functional"],
        args=["--model.activation=torch.nn.functional.relu"],
    )
    assert cli.model.activation is torch.nn.functional.relu
    monkeypatch.setenv("FULMEN_CLI_ALLOWED_IMPORTS", "torch.nn.functional.leaky_relu, other.pkg")
    cli = LightningCLI(
        ActivationModel, Data, run=False, args=["--model.activation=torch.nn.functional.leaky_relu"]
    )
    assert cli.model.activation is torch.nn.functional.leaky_relu
    # the allowlist is exact-or-below: a sibling stays refused
    refused(capsys, "--model.activation=torch.nn.functional.silu", model=ActivationModel)


def test_the_policy_is_restored_after_parsing() -> None:
    from jsonargparse import _common

    before = dict(_common.parsing_settings)
    LightningCLI(Model, Data, run=False, args=[])
    assert _common.parsing_settings == before


def test_allowed_paths_under_jsonargparse_are_rejected() -> None:
    from fulmen.utilities.exceptions import MisconfigurationException

    with pytest.raises(MisconfigurationException, match="jsonargparse"):
        LightningCLI(Model, Data, run=False, args=[], allowed_import_paths=["jsonargparse"])


def test_fulmen_packages_allow_classes_not_functions(capsys: pytest.CaptureFixture[str]) -> None:
    spec = '{"class_path": "fulmen.checkpoint.AsyncCheckpointIO"}'
    cli = LightningCLI(Model, Data, run=False, args=[f"--trainer.plugins={spec}"])
    assert type(cli.trainer.strategy.checkpoint_io).__name__ == "AsyncCheckpointIO"
    refused(capsys, "--model.activation=fulmen.checkpoint.atomic_save", model=ActivationModel)
