"""Optimizers and LR schedulers from the command line (auto_configure_optimizers, add_optimizer_args)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fulmen.cli import LightningArgumentParser, LightningCLI, ReduceLROnPlateau, instantiate_class
from fulmen.utilities.exceptions import MisconfigurationException

from .cli_models import QUIET, Data, InjectedOptimizerModel, LinkedOptimizerModel, Model, NoOptimizerModel


def run_fit(tmp_path: Path, model: type = Model, **cli_kwargs: object) -> LightningCLI:
    args = [
        "fit",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_steps=2",
        "--trainer.logger=false",
        *QUIET,
        *cli_kwargs.pop("extra", []),
    ]  # type: ignore[misc]
    return LightningCLI(model, Data, save_config_callback=None, args=args, **cli_kwargs)  # type: ignore[arg-type]


def test_optimizer_and_scheduler_by_name_replace_configure_optimizers(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="configure_optimizers` will be overridden"):
        cli = run_fit(
            tmp_path,
            extra=[
                "--optimizer=Adam",
                "--optimizer.lr=0.01",
                "--lr_scheduler=StepLR",
                "--lr_scheduler.step_size=2",
                "--lr_scheduler.gamma=0.5",
            ],
        )
    (opt,) = cli.trainer.optimizers
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["lr"] == 0.01
    (config,) = cli.trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.StepLR)
    assert config.scheduler.step_size == 2 and config.scheduler.gamma == 0.5


def test_model_without_its_own_optimizer_and_class_path_form(tmp_path: Path) -> None:
    cli = run_fit(
        tmp_path,
        NoOptimizerModel,
        extra=[
            "--optimizer.class_path=torch.optim.SGD",
            "--optimizer.init_args.lr=0.3",
            "--optimizer.momentum=0.9",
        ],
    )
    (opt,) = cli.trainer.optimizers
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.3 and opt.defaults["momentum"] == 0.9


def test_reduce_on_plateau_gets_its_monitor(tmp_path: Path) -> None:
    cli = run_fit(
        tmp_path,
        extra=[
            "--optimizer=SGD",
            "--optimizer.lr=0.1",
            "--lr_scheduler=fulmen.cli.ReduceLROnPlateau",
            "--lr_scheduler.monitor=train_loss",
            "--trainer.max_steps=-1",
            "--trainer.max_epochs=1",
        ],
    )
    (config,) = cli.trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, ReduceLROnPlateau) and config.monitor == "train_loss"


def test_without_an_optimizer_argument_the_model_configures_its_own(tmp_path: Path) -> None:
    cli = run_fit(tmp_path)
    assert isinstance(cli.trainer.optimizers[0], torch.optim.SGD)


def test_specific_optimizer_class_and_linked_optimizer(tmp_path: Path) -> None:
    class AdamCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.add_optimizer_args(torch.optim.Adam)

    args = [
        "fit",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_steps=1",
        "--trainer.logger=false",
        *QUIET,
    ]
    cli = AdamCLI(Model, Data, save_config_callback=None, args=[*args, "--optimizer.lr=0.02"])
    assert (
        isinstance(cli.trainer.optimizers[0], torch.optim.Adam)
        and cli.trainer.optimizers[0].defaults["lr"] == 0.02
    )

    class LinkCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.add_optimizer_args((torch.optim.Optimizer,), link_to="model.optimizer_init")

    cli = LinkCLI(
        LinkedOptimizerModel,
        Data,
        save_config_callback=None,
        args=[
            "fit",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_steps=1",
            "--trainer.logger=false",
            *QUIET,
            "--optimizer=RMSprop",
            "--optimizer.lr=0.005",
        ],
    )
    opt = cli.trainer.optimizers[0]
    assert isinstance(opt, torch.optim.RMSprop) and opt.defaults["lr"] == 0.005


def test_auto_configure_optimizers_false_and_too_many_automatic(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        run_fit(tmp_path, auto_configure_optimizers=False, extra=["--optimizer=Adam"])

    class TwoCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.add_optimizer_args((torch.optim.Optimizer,), nested_key="opt1")
            parser.add_optimizer_args((torch.optim.Optimizer,), nested_key="opt2")

    with pytest.raises(MisconfigurationException, match="at most one optimizer"):
        TwoCLI(Model, Data, run=False, args=["--opt1=Adam", "--opt2=SGD", "--opt2.lr=0.1"])
    with pytest.raises(MisconfigurationException, match="Optimizer subclasses"):
        LightningArgumentParser().add_optimizer_args(torch.nn.Linear)  # type: ignore[arg-type]


def test_tuner_reconfigure_gets_fresh_optimizers(tmp_path: Path) -> None:
    cli = LightningCLI(Model, Data, run=False, args=["--optimizer=SGD", "--optimizer.lr=0.1"])
    first = cli.model.configure_optimizers()
    second = cli.model.configure_optimizers()
    assert first is not second and isinstance(first, torch.optim.SGD)


def test_instantiate_class() -> None:
    layer = torch.nn.Linear(2, 2)
    opt = instantiate_class(layer.parameters(), {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}})
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.5
    with pytest.raises(MisconfigurationException, match="not allowed"):
        instantiate_class(("echo pwned",), {"class_path": "os.system"})


def test_optimizer_and_scheduler_callables_injected_into_the_model(tmp_path: Path) -> None:
    cli = run_fit(
        tmp_path,
        InjectedOptimizerModel,
        extra=[
            "--model.optimizer=SGD",
            "--model.optimizer.lr=0.25",
            "--model.scheduler=StepLR",
            "--model.scheduler.step_size=7",
        ],
    )
    (opt,) = cli.trainer.optimizers
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.25
    (config,) = cli.trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.StepLR) and config.scheduler.step_size == 7
    cli = run_fit(tmp_path / "default", InjectedOptimizerModel)
    assert isinstance(cli.trainer.optimizers[0], torch.optim.Adam) and not cli.trainer.lr_scheduler_configs
