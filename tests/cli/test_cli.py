"""LightningCLI: subcommands, YAML configs, overrides, --print_config, subclass mode, config saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from fulmen.callbacks import EarlyStopping
from fulmen.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from fulmen.utilities.exceptions import MisconfigurationException

from .cli_models import QUIET, BiggerModel, Data, Model


def fit_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["fit", f"--trainer.default_root_dir={tmp_path}", "--trainer.max_epochs=1", *QUIET, *extra]


def test_fit_with_dotted_overrides_saves_a_config_that_reruns(tmp_path: Path) -> None:
    cli = LightningCLI(
        Model,
        Data,
        args=fit_args(tmp_path, "--model.lr=0.05", "--trainer.max_epochs=2", "--data.batch_size=4"),
    )
    assert cli.subcommand == "fit"
    assert isinstance(cli.model, Model) and cli.model.lr == 0.05
    assert isinstance(cli.datamodule, Data) and cli.datamodule.batch_size == 4
    assert cli.trainer.max_epochs == 2 and cli.trainer.global_step == 2 * 32 // 4
    assert cli.trainer.state.finished
    config_file = Path(cli.trainer.log_dir) / "config.yaml"
    saved = yaml.safe_load(config_file.read_text())
    assert saved["model"] == {"hidden": 8, "lr": 0.05}
    assert saved["trainer"]["max_epochs"] == 2 and saved["data"]["batch_size"] == 4
    assert isinstance(saved["seed_everything"], int)  # the random seed is recorded
    # the saved file reproduces the run's configuration
    again = LightningCLI(Model, Data, args=["fit", "--config", str(config_file)])
    assert again.model.lr == 0.05 and again.trainer.max_epochs == 2
    assert again.config["fit"]["seed_everything"] == saved["seed_everything"]


def test_yaml_config_and_command_line_precedence(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model": {"lr": 0.2, "hidden": 4}, "trainer": {"max_epochs": 3}}))
    cli = LightningCLI(Model, Data, run=False, args=["--config", str(config), "--model.lr", "0.3"])
    assert cli.model.lr == 0.3  # given after the file: wins
    assert cli.model.net[0].out_features == 4 and cli.trainer.max_epochs == 3
    cli = LightningCLI(Model, Data, run=False, args=["--model.lr", "0.3", "--config", str(config)])
    assert cli.model.lr == 0.2  # the file given last wins


def test_print_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        LightningCLI(Model, Data, args=["fit", "--model.hidden=3", "--print_config"])
    assert info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"] == {"hidden": 3, "lr": 0.1}
    assert ("trainer" in printed and "optimizer" not in printed) or printed.get("optimizer") is None


def test_validate_test_predict_subcommands_with_a_checkpoint(tmp_path: Path) -> None:
    cli = LightningCLI(Model, Data, args=fit_args(tmp_path, "--trainer.callbacks+=ModelCheckpoint"))
    ckpt = cli.trainer.checkpoint_callback.best_model_path  # type: ignore[union-attr]
    assert Path(ckpt).is_file()
    common = [
        f"--trainer.default_root_dir={tmp_path}",
        *QUIET,
        "--trainer.logger=false",
        f"--ckpt_path={ckpt}",
    ]
    val = LightningCLI(Model, Data, save_config_callback=None, args=["validate", *common, "--verbose=false"])
    assert "val_loss" in val.trainer.callback_metrics
    test = LightningCLI(Model, Data, save_config_callback=None, args=["test", *common])
    assert "test_loss" in test.trainer.callback_metrics
    weights = torch.load(ckpt, weights_only=True)["state_dict"]
    torch.testing.assert_close(test.model.state_dict()["net.0.weight"], weights["net.0.weight"])

    outputs: list[Any] = []

    class Keep(LightningCLI):
        def predict(self, **kwargs: Any) -> None:
            outputs.extend(self.trainer.predict(**kwargs))

    Keep(Model, Data, save_config_callback=None, args=["predict", *common, "--return_predictions=true"])
    assert len(outputs) == 4 and outputs[0].shape == (8, 1)


def test_run_false_only_instantiates(tmp_path: Path) -> None:
    cli = LightningCLI(
        Model,
        Data,
        run=False,
        args=[f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=3", *QUIET],
    )
    assert cli.subcommand is None and cli.trainer.global_step == 0
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 3


def test_subclass_mode_by_name_class_path_and_yaml(tmp_path: Path) -> None:
    cli = LightningCLI(None, Data, run=False, args=["--model=BiggerModel", "--model.depth=5"])
    assert type(cli.model) is BiggerModel and cli.model.depth == 5
    path = f"{BiggerModel.__module__}.BiggerModel"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"class_path": path, "init_args": {"hidden": 3}}}))
    cli = LightningCLI(Model, Data, subclass_mode_model=True, run=False, args=["--config", str(config)])
    assert type(cli.model) is BiggerModel and cli.model.net[0].out_features == 3
    # without subclass mode, a subclass cannot be chosen
    with pytest.raises(SystemExit):
        LightningCLI(Model, Data, run=False, args=["--model=BiggerModel"])
    # the datamodule is optional when datamodule_class is None (the model could provide loaders)
    cli = LightningCLI(Model, None, run=False, args=[])
    assert cli.datamodule is None


def test_trainer_defaults_and_seed(tmp_path: Path) -> None:
    marker = EarlyStopping(monitor="val_loss")
    cli = LightningCLI(
        Model,
        Data,
        run=False,
        trainer_defaults={"max_epochs": 7, "callbacks": [marker]},
        seed_everything_default=123,
        args=["--trainer.max_epochs=2"],
    )
    assert cli.trainer.max_epochs == 2
    assert marker in cli.trainer.callbacks
    assert any(isinstance(cb, SaveConfigCallback) for cb in cli.trainer.callbacks)
    assert cli.config["seed_everything"] == 123 and torch.initial_seed() == 123
    cli = LightningCLI(Model, Data, run=False, seed_everything_default=False, args=[])
    assert cli.config["seed_everything"] is False
    cli = LightningCLI(Model, Data, run=False, args=["--seed_everything=7"])
    assert torch.initial_seed() == 7


def test_save_config_callback_refuses_to_overwrite_and_can_be_customized(tmp_path: Path) -> None:
    args = fit_args(tmp_path, "--trainer.logger=false", "--trainer.max_steps=1")
    LightningCLI(Model, Data, args=args)
    assert (tmp_path / "config.yaml").is_file()  # no logger: the log dir is default_root_dir
    with pytest.raises(RuntimeError, match="expected .*config.yaml to NOT exist"):
        LightningCLI(Model, Data, args=args)
    LightningCLI(
        Model, Data, args=args, save_config_kwargs={"overwrite": True, "config_filename": "run.yaml"}
    )
    assert (tmp_path / "run.yaml").is_file()
    (tmp_path / "config.yaml").unlink()
    LightningCLI(Model, Data, args=args, save_config_callback=None)
    assert not (tmp_path / "config.yaml").exists()

    seen: list[str] = []

    class ToLogger(SaveConfigCallback):
        def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
            seen.append(self.parser.dump(self.config, skip_unset=False))

    LightningCLI(
        Model, Data, args=args, save_config_callback=ToLogger, save_config_kwargs={"save_to_log_dir": False}
    )
    assert len(seen) == 1 and "lr: 0.1" in seen[0]
    with pytest.raises(ValueError, match="saves nothing"):
        SaveConfigCallback(LightningArgumentParser(), {}, save_to_log_dir=False)


def test_hooks_extra_arguments_links_and_callback_classes(tmp_path: Path) -> None:
    calls: list[str] = []

    class MyCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.add_argument("--notes", type=str, default="none")
            parser.link_arguments("data.batch_size", "model.hidden")
            parser.add_lightning_class_args(EarlyStopping, "early_stopping")
            parser.set_defaults({"early_stopping.monitor": "val_loss", "early_stopping.patience": 1})

        def before_instantiate_classes(self) -> None:
            calls.append("before_instantiate")

        def after_instantiate_classes(self) -> None:
            calls.append("after_instantiate")

        def before_fit(self) -> None:
            calls.append("before_fit")

        def after_fit(self) -> None:
            calls.append("after_fit")

    cli = MyCLI(
        Model,
        Data,
        args=fit_args(tmp_path, "--data.batch_size=6", "--notes=hello", "--early_stopping.patience=2"),
    )
    assert calls == ["before_instantiate", "after_instantiate", "before_fit", "after_fit"]
    assert cli.config["fit"]["notes"] == "hello"
    assert cli.model.net[0].out_features == 6  # linked from data.batch_size
    stoppers = [cb for cb in cli.trainer.callbacks if isinstance(cb, EarlyStopping)]
    assert len(stoppers) == 1 and stoppers[0].patience == 2
    with pytest.raises(MisconfigurationException, match="Cannot add arguments"):
        LightningArgumentParser().add_lightning_class_args(torch.nn.Linear, "linear")


def test_ckpt_path_hyperparameters_become_model_defaults(tmp_path: Path) -> None:
    cli = LightningCLI(
        Model, Data, args=fit_args(tmp_path, "--model.hidden=5", "--model.lr=0.05", "--trainer.logger=false")
    )
    ckpt = tmp_path / "m.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    common = [
        "test",
        f"--trainer.default_root_dir={tmp_path}",
        *QUIET,
        "--trainer.logger=false",
        f"--ckpt_path={ckpt}",
    ]
    tested = LightningCLI(Model, Data, save_config_callback=None, args=common)
    assert tested.model.net[0].out_features == 5 and tested.model.lr == 0.05
    tested = LightningCLI(Model, Data, save_config_callback=None, args=[*common, "--model.lr=0.7"])
    assert tested.model.net[0].out_features == 5 and tested.model.lr == 0.7  # the command line wins


def test_callbacks_and_logger_from_the_command_line(tmp_path: Path) -> None:
    cli = LightningCLI(
        Model,
        Data,
        run=False,
        args=[
            "--trainer.callbacks+=LearningRateMonitor",
            "--trainer.callbacks.logging_interval=step",
            "--trainer.callbacks+=TagCallback",
            "--trainer.callbacks.tag=y",
            "--trainer.logger=CSVLogger",
            f"--trainer.logger.save_dir={tmp_path}",
            "--trainer.profiler=simple",
        ],
    )
    names = [type(cb).__name__ for cb in cli.trainer.callbacks]
    assert "LearningRateMonitor" in names and "TagCallback" in names
    assert next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "TagCallback").tag == "y"
    assert type(cli.trainer.logger).__name__ == "CSVLogger" and cli.trainer.logger.save_dir == str(tmp_path)
    assert type(cli.trainer.profiler).__name__ == "SimpleProfiler"


def test_short_logger_names_stay_unambiguous_with_fabrics_loggers_imported(tmp_path: Path) -> None:
    """Fabric's CSVLogger/TensorBoardLogger subclass the Trainer's; once imported (a Fabric test or program in the
    same process), ``--trainer.logger=CSVLogger`` must still name the Trainer's logger, not fail as ambiguous."""
    import fulmen.fabric.loggers as fabric_loggers
    from fulmen.loggers import CSVLogger

    assert issubclass(fabric_loggers.CSVLogger, CSVLogger)
    cli = LightningCLI(
        Model, Data, run=False, args=["--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path}"]
    )
    assert type(cli.trainer.logger) is CSVLogger


def test_config_yaml_keeps_the_trainer_signature_order() -> None:
    """config.yaml lists the Trainer's arguments in its signature's order, as Lightning's does (users diff them);
    callbacks/logger/profiler, which fulmen retypes for class specs, keep their places."""
    import inspect

    import yaml

    cli = LightningCLI(Model, Data, run=False, args=[])
    dumped = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))
    assert list(dumped)[:2] == ["seed_everything", "trainer"]
    from fulmen import Trainer

    keys = list(dumped["trainer"])
    assert {"callbacks", "logger", "profiler", "max_epochs"} <= set(keys)
    assert keys == [k for k in inspect.signature(Trainer).parameters if k in keys]
    header = cli.parser.dump(cli.config).splitlines()[0]
    assert header.startswith("# fulmen==")
