"""``LightningCLI``: a command line for a LightningModule and LightningDataModule (spec §1.13).

::

    # main.py
    from fulmen.cli import LightningCLI
    LightningCLI(MyModel, MyDataModule)

    python main.py fit --model.lr 0.01 --trainer.max_epochs 5 --optimizer Adam --lr_scheduler StepLR \\
        --lr_scheduler.step_size 10
    python main.py fit --config config.yaml --print_config
    python main.py test --config config.yaml --ckpt_path best.ckpt

The arguments come from the signatures of the Trainer, the model and the datamodule (and the
Trainer method of the subcommand: ``fit``, ``validate``, ``test``, ``predict``), parsed by jsonargparse
from the command line, YAML files (``--config``) and, optionally, the environment. ``SaveConfigCallback``
writes the full config to ``config.yaml`` in the log directory, so ``--config`` on it reruns the same
experiment. ``fulmen fit|validate|test|predict`` does the same without a script (subclass mode:
``--model mypkg.MyModel``).

Safety: a config can only name classes and functions it is allowed to import (see ``_cli_parser.py``):
optimizers, schedulers, fulmen's components, the classes the CLI was given and their imported
subclasses, and what the user allows with ``allowed_import_paths``. Anything else, such as
``class_path: os.system``, is refused with an error that says how to allow a trusted module.

jsonargparse is imported only when a CLI is built; ``import fulmen.cli`` does not import it.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable, Iterable
from types import MethodType
from typing import TYPE_CHECKING, Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from fulmen.callbacks.callback import Callback
from fulmen.core.datamodule import LightningDataModule
from fulmen.core.module import LightningModule
from fulmen.trainer.trainer import Trainer
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.rank_zero import rank_zero_warn
from fulmen.utilities.seed import seed_everything

if TYPE_CHECKING:
    from fulmen._cli_parser import LightningArgumentParser

__all__ = [
    "ArgsType",
    "LRSchedulerCallable",
    "LRSchedulerTypeTuple",
    "LightningArgumentParser",
    "LightningCLI",
    "OptimizerCallable",
    "ReduceLROnPlateau",
    "SaveConfigCallback",
    "instantiate_class",
    "instantiate_module",
]

_JSONARGPARSE_MIN = (4, 52)


def _require_jsonargparse() -> None:
    try:
        import jsonargparse
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "fulmen's LightningCLI needs jsonargparse, which is not installed. Fix: pip install 'fulmen[cli]'."
        ) from err
    version = tuple(int(p) for p in jsonargparse.__version__.split(".")[:2] if p.isdigit())
    if version < _JSONARGPARSE_MIN:
        raise ImportError(
            f"fulmen's LightningCLI needs jsonargparse>={'.'.join(map(str, _JSONARGPARSE_MIN))} (its import-path "
            f"policy keeps configs from running arbitrary code); found {jsonargparse.__version__}. Fix: "
            "pip install -U 'fulmen[cli]'."
        )


def __getattr__(name: str) -> Any:
    if name == "LightningArgumentParser":
        _require_jsonargparse()
        from fulmen._cli_parser import LightningArgumentParser

        globals()[name] = LightningArgumentParser
        return LightningArgumentParser
    raise AttributeError(f"module 'fulmen.cli' has no attribute {name!r}")


class ReduceLROnPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """``torch.optim.lr_scheduler.ReduceLROnPlateau`` with the ``monitor`` it needs (for ``--lr_scheduler``)."""

    def __init__(self, optimizer: Optimizer, monitor: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(optimizer, *args, **kwargs)
        self.monitor = monitor


LRSchedulerTypeTuple = (LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
LRSchedulerTypeUnion = LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
#: Type of a model argument that builds its optimizer from parameters: a config gives the class and its
#: arguments (``optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.1}}``), the model calls it.
OptimizerCallable = Callable[[Iterable[Any]], Optimizer]
#: Type of a model argument that builds its LR scheduler from the optimizer.
LRSchedulerCallable = Callable[[Optimizer], LRSchedulerTypeUnion]
#: What ``LightningCLI(args=...)`` accepts.
ArgsType = list[str] | dict[str, Any] | None

# what the current process's CLIs allow, for instantiate_class (a spec already passed the parser's policy)
_SESSION_ALLOWED: set[str] = set()


def _allowed_for_instantiate(class_path: str) -> bool:
    from fulmen._cli_parser import (
        DEFAULT_ALLOWED_IMPORT_PATHS,
        env_allowed_import_paths,
        fulmen_public_classes,
    )

    entries = {
        *DEFAULT_ALLOWED_IMPORT_PATHS,
        *fulmen_public_classes(),
        *_SESSION_ALLOWED,
        *env_allowed_import_paths(),
    }
    return any(class_path == e or class_path.startswith(e + ".") for e in entries)


def instantiate_class(args: Any | tuple[Any, ...], init: dict[str, Any]) -> Any:
    """Build ``init["class_path"](*args, **init["init_args"])``, e.g. an optimizer from a linked config.

    The class path must be allowed (the CLI's defaults, or paths a ``LightningCLI`` of this process allowed).

    Raises:
        MisconfigurationException: If the class path is not allowed.
    """
    from jsonargparse import Namespace

    if isinstance(init, Namespace):
        init = init.as_dict()
    class_path = init["class_path"]
    if not _allowed_for_instantiate(class_path):
        from fulmen._cli_parser import refused_import_help

        raise MisconfigurationException(
            refused_import_help(f"Importing {class_path!r} is not allowed, denied by '*'.")
        )
    kwargs = dict(init.get("init_args") or {})
    if not isinstance(args, tuple):
        args = (args,)
    module_name, class_name = class_path.rsplit(".", 1)
    module = __import__(module_name, fromlist=[class_name])
    return getattr(module, class_name)(*args, **kwargs)


class SaveConfigCallback(Callback):
    """Write the parsed config to ``{trainer.log_dir}/config.yaml`` when the run starts (rank 0).

    Args:
        parser: The parser that parsed ``config``.
        config: The config (of the subcommand).
        config_filename: File name in the log directory.
        overwrite: Replace an existing file (otherwise an existing file is an error, to protect an
            earlier run's record).
        multifile: Save nested configs as separate files.
        save_to_log_dir: Write to the log directory; override :meth:`save_config` to save elsewhere too.

    Raises:
        RuntimeError: In ``setup``, if the file exists and ``overwrite`` is False.
    """

    def __init__(
        self,
        parser: LightningArgumentParser,
        config: Any,
        config_filename: str = "config.yaml",
        overwrite: bool = False,
        multifile: bool = False,
        save_to_log_dir: bool = True,
    ) -> None:
        self.parser = parser
        self.config = config
        self.config_filename = config_filename
        self.overwrite = overwrite
        self.multifile = multifile
        self.save_to_log_dir = save_to_log_dir
        self.already_saved = False
        if not save_to_log_dir and type(self).save_config is SaveConfigCallback.save_config:
            raise ValueError(
                "SaveConfigCallback(save_to_log_dir=False) saves nothing unless save_config is overridden. Fix: "
                "subclass it and implement save_config, or keep save_to_log_dir=True."
            )

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        if self.save_to_log_dir:
            from fulmen.utilities.cloud_io import get_filesystem

            log_dir = trainer.log_dir
            config_path = os.path.join(log_dir, self.config_filename)
            fs = get_filesystem(log_dir)
            if not self.overwrite:
                exists = fs.isfile(config_path) if trainer.is_global_zero else False
                if trainer.strategy.broadcast(exists):
                    raise RuntimeError(
                        f"{type(self).__name__} expected {config_path} to NOT exist. Aborting to avoid overwriting "
                        "the results of a previous run. Fix: delete the file, set "
                        "LightningCLI(save_config_callback=None) to disable config saving, or "
                        'LightningCLI(save_config_kwargs={"overwrite": True}) to overwrite it.'
                    )
            if trainer.is_global_zero:
                fs.makedirs(log_dir, exist_ok=True)
                self.parser.save(
                    self.config,
                    config_path,
                    skip_unset=False,
                    overwrite=self.overwrite,
                    multifile=self.multifile,
                )
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = bool(trainer.strategy.broadcast(self.already_saved))

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Override to also save the config elsewhere (e.g. to a logger's experiment); rank 0 only."""


class LightningCLI:
    """Build a command line from the signatures of a model, a datamodule and the Trainer, parse it, and run.

    Args:
        model_class: The LightningModule class (or a function returning one). ``None`` accepts any subclass,
            chosen on the command line (``--model MyModel``).
        datamodule_class: The LightningDataModule class; ``None`` makes ``--data`` optional (any subclass).
        save_config_callback: Callback class that saves the config (``None`` disables it).
        save_config_kwargs: Arguments for it (``overwrite``, ``config_filename``, ``multifile``).
        trainer_class: The Trainer class (or a function returning one).
        trainer_defaults: Defaults for the Trainer's arguments; ``callbacks`` given here are always added.
        seed_everything_default: ``--seed_everything`` default: ``True`` (a random seed, saved in the
            config), ``False`` (no seeding) or an int.
        parser_kwargs: Arguments of the parsers; a key that is a subcommand name holds that subcommand's.
        parser_class: The parser class (default :class:`LightningArgumentParser`).
        subclass_mode_model: Accept subclasses of ``model_class``.
        subclass_mode_data: Accept subclasses of ``datamodule_class``.
        args: Arguments to parse instead of ``sys.argv[1:]`` (a list, or a dict/Namespace config).
        run: Add the subcommands and run one; with ``False`` only instantiate (``cli.trainer.fit(cli.model)``).
        auto_configure_optimizers: Add ``--optimizer`` / ``--lr_scheduler`` and build ``configure_optimizers``
            from them when given.
        load_from_checkpoint_support: ``save_hyperparameters()`` in the model/datamodule saves the parsed
            config (nested class specs included, ``_class_path`` in subclass mode) and the ``_instantiator``
            that rebuilds it, so ``load_from_checkpoint`` can rebuild objects given as class specs (e.g. a
            ``backbone: nn.Module`` argument). Rebuilding obeys the same import allowlist as the CLI.
        allowed_import_paths: Dot paths a config may name in addition to the defaults (see the module
            docstring), e.g. ``["mypkg.models", "torch.nn"]``.

    Raises:
        ModuleNotFoundError: If jsonargparse is missing (install ``fulmen[cli]``).
        MisconfigurationException: For invalid classes or optimizer setups.
    """

    def __init__(
        self,
        model_class: type[LightningModule] | Callable[..., LightningModule] | None = None,
        datamodule_class: type[LightningDataModule] | Callable[..., LightningDataModule] | None = None,
        save_config_callback: type[SaveConfigCallback] | None = SaveConfigCallback,
        save_config_kwargs: dict[str, Any] | None = None,
        trainer_class: type[Trainer] | Callable[..., Trainer] = Trainer,
        trainer_defaults: dict[str, Any] | None = None,
        seed_everything_default: bool | int = True,
        parser_kwargs: dict[str, Any] | dict[str, dict[str, Any]] | None = None,
        parser_class: type[LightningArgumentParser] | None = None,
        subclass_mode_model: bool = False,
        subclass_mode_data: bool = False,
        args: Any = None,
        run: bool = True,
        auto_configure_optimizers: bool = True,
        load_from_checkpoint_support: bool = True,
        *,
        allowed_import_paths: Iterable[str] = (),
    ) -> None:
        _require_jsonargparse()
        from fulmen._cli_parser import LightningArgumentParser

        self.save_config_callback = save_config_callback
        self.save_config_kwargs = save_config_kwargs or {}
        self.trainer_class = trainer_class
        self.trainer_defaults = trainer_defaults or {}
        self.seed_everything_default = seed_everything_default
        self.parser_kwargs = parser_kwargs or {}
        self.parser_class = parser_class or LightningArgumentParser
        self.auto_configure_optimizers = auto_configure_optimizers
        self.load_from_checkpoint_support = load_from_checkpoint_support
        self.allowed_import_paths = set(allowed_import_paths)
        _SESSION_ALLOWED.update(self.allowed_import_paths)

        self.model_class = model_class
        self._model_class = model_class or LightningModule
        self.subclass_mode_model = model_class is None or subclass_mode_model
        self.datamodule_class = datamodule_class
        self._datamodule_class = datamodule_class or LightningDataModule
        self.subclass_mode_data = datamodule_class is None or subclass_mode_data

        main_kwargs, subparser_kwargs = self._setup_parser_kwargs(self.parser_kwargs)
        self.setup_parser(run, main_kwargs, subparser_kwargs)
        self.parse_arguments(self.parser, args)

        self.subcommand: str | None = self.config["subcommand"] if run else None
        self._parse_ckpt_path(args)
        self._set_seed()
        self.before_instantiate_classes()
        self.instantiate_classes()
        self.after_instantiate_classes()
        if self.subcommand is not None:
            self._run_subcommand(self.subcommand)

    # ------------------------------------------------------------------ parsers
    def _setup_parser_kwargs(self, parser_kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        names = self.subcommands().keys()
        main = {k: v for k, v in parser_kwargs.items() if k not in names}
        sub = {k: v for k, v in parser_kwargs.items() if k in names}
        return main, sub

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """A parser with ``--config``."""
        from jsonargparse import ActionConfigFile  # type: ignore[attr-defined]

        kwargs.setdefault("dump_header", [f"fulmen=={_version()}"])  # Lightning's form: "pytorch_lightning==2.6.1"
        parser = self.parser_class(allowed_import_paths=self.allowed_import_paths, **kwargs)
        parser.add_argument(
            "-c",
            "--config",
            action=ActionConfigFile,
            help="Path to a configuration file in json or yaml format.",
        )
        return parser

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        """Build ``self.parser`` (with the subcommand parsers when ``add_subcommands``)."""
        self.parser = self.init_parser(**main_kwargs)
        if add_subcommands:
            self._subcommand_method_arguments: dict[str, list[str]] = {}
            self._add_subcommands(self.parser, **subparser_kwargs)
        else:
            self._add_arguments(self.parser)

    def add_default_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add ``--seed_everything``."""
        parser.add_argument(
            "--seed_everything",
            type=bool | int,
            default=self.seed_everything_default,
            help="Set to an int to run seed_everything with this value before classes instantiation. Set to True "
            "to use a random seed.",
        )

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the Trainer, model and datamodule arguments."""
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        trainer_defaults = {"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"}
        parser.set_defaults(trainer_defaults)
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        if self.datamodule_class is not None:
            parser.add_lightning_class_args(
                self._datamodule_class, "data", subclass_mode=self.subclass_mode_data
            )
        else:
            # not required: the model's own *_dataloader hooks may provide the data
            parser.add_lightning_class_args(
                self._datamodule_class, "data", subclass_mode=self.subclass_mode_data, required=False
            )

    def _add_arguments(self, parser: LightningArgumentParser) -> None:
        self.add_default_arguments_to_parser(parser)
        self.add_core_arguments_to_parser(parser)
        self.add_arguments_to_parser(parser)
        if self.auto_configure_optimizers:
            if not parser._optimizers:
                parser.add_optimizer_args((Optimizer,))
            if not parser._lr_schedulers:
                parser.add_lr_scheduler_args(LRSchedulerTypeTuple)
        self.link_optimizers_and_lr_schedulers(parser)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Override to add arguments (``parser.add_argument``, ``add_optimizer_args``, ``link_arguments``)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """The subcommands and the Trainer-method arguments they do not expose."""
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "validate": {"model", "dataloaders", "datamodule"},
            "test": {"model", "dataloaders", "datamodule"},
            "predict": {"model", "dataloaders", "datamodule"},
        }

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        from jsonargparse import class_from_function  # type: ignore[attr-defined]

        self._subcommand_parsers: dict[str, LightningArgumentParser] = {}
        parser_subcommands = parser.add_subcommands()
        trainer_class = (
            self.trainer_class
            if isinstance(self.trainer_class, type)
            else class_from_function(self.trainer_class)
        )
        for subcommand in self.subcommands():
            fn = getattr(trainer_class, subcommand)
            description = (inspect.getdoc(fn) or "").split("\n")[0]
            subparser_kwargs = dict(kwargs.get(subcommand, {}))
            subparser_kwargs.setdefault("description", description)
            subcommand_parser = self._prepare_subcommand_parser(trainer_class, subcommand, **subparser_kwargs)
            self._subcommand_parsers[subcommand] = subcommand_parser
            parser_subcommands.add_subcommand(subcommand, subcommand_parser, help=description)
        # the main parser's policy applies while the subcommand parsers parse: it must allow their classes
        for sub in self._subcommand_parsers.values():
            parser.allowed_base_classes |= sub.allowed_base_classes
            parser.allowed_import_paths |= sub.allowed_import_paths

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        parser = self.init_parser(**kwargs)
        self._add_arguments(parser)
        skip = self.subcommands()[subcommand]
        added = parser.add_method_arguments(klass, subcommand, skip=skip)
        self._subcommand_method_arguments[subcommand] = added
        return parser

    @staticmethod
    def link_optimizers_and_lr_schedulers(parser: LightningArgumentParser) -> None:
        """Link optimizers/schedulers registered with ``link_to`` to the model argument named there."""
        optimizers_and_schedulers = {**parser._optimizers, **parser._lr_schedulers}
        for key, (class_type, link_to) in optimizers_and_schedulers.items():
            if link_to == "AUTOMATIC":
                continue
            if isinstance(class_type, tuple):
                parser.link_arguments(key, link_to)
            else:
                parser.link_arguments(key, link_to, compute_fn=_add_class_path(class_type))

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse ``args`` (default ``sys.argv[1:]``) into ``self.config``."""
        from jsonargparse import Namespace

        if args is not None and len(sys.argv) > 1:
            rank_zero_warn(
                "LightningCLI's args parameter is meant to run from within Python as if from the command line; "
                f"both args and command line arguments were given (sys.argv={sys.argv[1:]})."
            )
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(args)
        parser.check_class_paths(self.config)

    def _parser(self, subcommand: str | None) -> LightningArgumentParser:
        if subcommand is None:
            return self.parser
        return self._subcommand_parsers[subcommand]

    def _get(self, config: Any, key: str, default: Any = None) -> Any:
        """``config[subcommand][key]`` (or ``config[key]`` without subcommands)."""
        return config.get(str(self.subcommand), config).get(key, default)

    # ------------------------------------------------------------------ checkpoint hyperparameters
    def _instantiators(self) -> list[tuple[Any, type, bool]]:
        """jsonargparse instantiators that build the model and datamodule with their parsed config given to
        ``save_hyperparameters`` (``load_from_checkpoint_support``)."""
        return [
            (_ConfigInstantiator(self, "model"), _module_type(self._model_class, LightningModule),
             self.subclass_mode_model),
            (_ConfigInstantiator(self, "data"), _module_type(self._datamodule_class, LightningDataModule),
             self.subclass_mode_data),
        ]

    def _config_dump(self) -> dict[str, Any]:
        """The parsed config of the subcommand as plain data (what ``config.yaml`` holds)."""
        import yaml

        if getattr(self, "_config_dump_cache", None) is None:
            text = self.parser.dump(self.config, skip_link_targets=False, skip_none=False, format="yaml")
            dump = yaml.safe_load(text) or {}
            if self.subcommand is not None:
                dump = dump.get(self.subcommand, {}) or {}
            self._config_dump_cache = dump
        return self._config_dump_cache

    def _parse_ckpt_path(self, args: Any) -> None:
        """With ``--ckpt_path``, the checkpoint's hyperparameters become the model's defaults (command-line and
        config values still win)."""
        if self.subcommand is None:
            return
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if not ckpt_path or not isinstance(ckpt_path, (str, os.PathLike)) or not os.path.isfile(ckpt_path):
            return
        from fulmen.utilities.cloud_io import load

        hparams = dict(load(ckpt_path, map_location="cpu").get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        hparams.pop("_class_path", None)
        if not hparams:
            return
        parser = self._parser(self.subcommand)
        model_cfg = self.config[self.subcommand].get("model")
        if self.subclass_mode_model:
            class_path = getattr(model_cfg, "class_path", None)
            if class_path is None:
                return
            current = dict(getattr(model_cfg, "init_args", None) or {})
            cls = _import_allowed_class(class_path)
            accepted = _init_parameters(cls)
            merged = {
                **{k: v for k, v in hparams.items() if k in accepted},
                **_explicit_init_args(current, cls),
            }
            parser.set_defaults({"model": {"class_path": class_path, "init_args": merged}})
        else:
            accepted = _init_parameters(self._model_class)
            parser.set_defaults({f"model.{k}": v for k, v in hparams.items() if k in accepted})
        self.parse_arguments(self.parser, args)

    # ------------------------------------------------------------------ instantiation
    def _set_seed(self) -> None:
        config_seed = self._get(self.config, "seed_everything")
        if config_seed is False or config_seed is None:
            return
        if config_seed is True:  # a random seed, recorded in the saved config so the run can be repeated
            import random

            config_seed = random.SystemRandom().randint(0, 2**31 - 1)
        config_seed = seed_everything(config_seed, workers=True, verbose=False)
        if self.subcommand:
            self.config[self.subcommand]["seed_everything"] = config_seed
        else:
            self.config["seed_everything"] = config_seed

    def before_instantiate_classes(self) -> None:
        """Hook before the classes are built (``self.config`` is parsed)."""

    def after_instantiate_classes(self) -> None:
        """Hook after ``self.model``, ``self.datamodule`` and ``self.trainer`` are built."""

    def instantiate_classes(self) -> None:
        """Build the model, the datamodule and the Trainer from ``self.config``."""
        kwargs: dict[str, Any] = {}
        if self.load_from_checkpoint_support:
            kwargs["instantiators"] = self._instantiators()
        self.config_init = self.parser.instantiate(self.config, **kwargs)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Build the Trainer with the config's arguments, ``kwargs``, the callbacks added with
        ``add_lightning_class_args`` and ``trainer_defaults``, and the config-saving callback."""
        extra_callbacks = [
            self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys
        ]
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        return self._instantiate_trainer(trainer_config, extra_callbacks)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        key = "callbacks"
        value = config.get(key)
        if value is None:
            value = []
        elif isinstance(value, (list, tuple)):
            value = list(value)
        else:
            value = [value]
        value = [*value, *callbacks]
        if key in self.trainer_defaults:
            default = self.trainer_defaults[key]
            value += default if isinstance(default, list) else [default]
        if self.save_config_callback and not config.get("fast_dev_run", False):
            value.append(
                self.save_config_callback(
                    self._parser(self.subcommand),
                    self.config.get(str(self.subcommand), self.config),
                    **self.save_config_kwargs,
                )
            )
        config[key] = value
        return self.trainer_class(**config)

    @staticmethod
    def configure_optimizers(
        lightning_module: LightningModule, optimizer: Optimizer, lr_scheduler: Any = None
    ) -> Any:
        """The ``configure_optimizers`` built from ``--optimizer`` / ``--lr_scheduler``; override to customize."""
        if lr_scheduler is None:
            return optimizer
        if isinstance(lr_scheduler, ReduceLROnPlateau):
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": lr_scheduler, "monitor": lr_scheduler.monitor},
            }
        return [optimizer], [lr_scheduler]

    def _add_configure_optimizers_method_to_model(self, subcommand: str | None) -> None:
        if not self.auto_configure_optimizers:
            return
        parser = self._parser(subcommand)

        def automatic(class_type: Any, register: dict[str, tuple[Any, str]]) -> list[str]:
            keys = []
            for key, (base, link_to) in register.items():
                bases = base if isinstance(base, tuple) else (base,)
                if link_to == "AUTOMATIC" and any(issubclass(c, class_type) for c in bases):
                    keys.append(key)
            return keys

        optimizers = automatic(Optimizer, parser._optimizers)
        lr_schedulers = automatic(LRSchedulerTypeTuple, parser._lr_schedulers)
        if not optimizers:
            return
        if len(optimizers) > 1 or len(lr_schedulers) > 1:
            raise MisconfigurationException(
                f"{type(self).__name__}: at most one optimizer and one lr_scheduler can be 'AUTOMATIC'; found "
                f"optimizers {optimizers} and lr_schedulers {lr_schedulers}. Fix: give the others a link_to."
            )
        optimizer_class = parser._optimizers[optimizers[0]][0]
        optimizer_init = _spec_dict(self._get(self.config_init, optimizers[0]))
        if not isinstance(optimizer_class, tuple):
            optimizer_init = _with_class_path(optimizer_class, optimizer_init)
        if not optimizer_init:
            return  # --optimizer was available but not given: the model's configure_optimizers is used
        lr_scheduler_init = None
        if lr_schedulers:
            lr_scheduler_class = parser._lr_schedulers[lr_schedulers[0]][0]
            lr_scheduler_init = _spec_dict(self._get(self.config_init, lr_schedulers[0]))
            if not isinstance(lr_scheduler_class, tuple):
                lr_scheduler_init = _with_class_path(lr_scheduler_class, lr_scheduler_init)
        model = self.model
        from fulmen.core.dispatch import _overrides

        if _overrides(model, LightningModule, "configure_optimizers"):
            rank_zero_warn(
                f"`{type(model).__name__}.configure_optimizers` will be overridden by "
                f"`{type(self).__name__}.configure_optimizers` (an optimizer was given on the command line)."
            )
        cli_configure = self.configure_optimizers

        def configure_optimizers(module: LightningModule) -> Any:
            # built at each call, so a tuner that calls it again gets fresh optimizers
            optimizer = instantiate_class(module.parameters(), optimizer_init)
            lr_scheduler = instantiate_class(optimizer, lr_scheduler_init) if lr_scheduler_init else None
            return cli_configure(module, optimizer, lr_scheduler)

        model.configure_optimizers = MethodType(configure_optimizers, model)

    # ------------------------------------------------------------------ running
    def _run_subcommand(self, subcommand: str) -> None:
        before = getattr(self, f"before_{subcommand}", None)
        if callable(before):
            before()
        default = getattr(self.trainer, subcommand)
        fn = getattr(self, subcommand, default)
        fn(**self._prepare_subcommand_kwargs(subcommand))
        after = getattr(self, f"after_{subcommand}", None)
        if callable(after):
            after()

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = {
            k: v
            for k, v in self.config_init[subcommand].items()
            if k in self._subcommand_method_arguments[subcommand]
        }
        kwargs["model"] = self.model
        if self.datamodule is not None:
            kwargs["datamodule"] = self.datamodule
        return kwargs


# ---------------------------------------------------------------------------------------------- helpers


def _version() -> str:
    from fulmen.__about__ import __version__

    return __version__


def _spec_dict(value: Any) -> Any:
    from jsonargparse import Namespace

    return value.as_dict() if isinstance(value, Namespace) else value


def _with_class_path(class_type: type, init_args: Any) -> dict[str, Any] | None:
    if not init_args:
        return None
    if isinstance(init_args, dict) and "class_path" in init_args:
        return init_args
    return {"class_path": f"{class_type.__module__}.{class_type.__name__}", "init_args": dict(init_args)}


def _add_class_path(class_type: type) -> Callable[[Any], Any]:
    def add(value: Any) -> Any:
        return _with_class_path(class_type, _spec_dict(value))

    return add


#: fulmen's own name for the instantiator; fulmen's loader maps Lightning's names to it (see core/saving.py).
INSTANTIATOR = "fulmen.cli.instantiate_module"


def _checkpoint_instantiator() -> str:
    """The ``_instantiator`` a LightningCLI checkpoint records: Lightning's name, so that real Lightning's
    ``load_from_checkpoint`` (which imports the name it finds) loads it, and fulmen's too (it maps Lightning's names
    to :func:`instantiate_module`). The package is the one the program imported (``fulmen run`` of a
    ``lightning.pytorch`` or a ``pytorch_lightning`` script), else the installed one, else ``lightning.pytorch``."""
    import importlib.util

    finder = sys.modules.get("fulmen.compat._finder")
    alias = getattr(finder, "LightningAlias", None)
    for root in ("lightning.pytorch", "pytorch_lightning"):
        module = sys.modules.get(root)
        if module is not None and (alias is None or isinstance(module, alias)):
            return f"{root}.cli.instantiate_module"
    for root, top in (("lightning.pytorch", "lightning"), ("pytorch_lightning", "pytorch_lightning")):
        try:
            if importlib.util.find_spec(top) is not None:
                return f"{root}.cli.instantiate_module"
        except (ImportError, ValueError):
            continue
    return "lightning.pytorch.cli.instantiate_module"


def _module_type(value: Any, default: type) -> type:
    """The class a model/datamodule argument builds (a function's return annotation for a factory)."""
    if isinstance(value, type):
        return value
    ret = inspect.signature(value).return_annotation if callable(value) else None
    return ret if isinstance(ret, type) else default


def _set_nested(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        target = target.setdefault(key, {})
    target[last] = value


class _ConfigInstantiator:
    """Builds the model (or datamodule) while ``save_hyperparameters`` is given its parsed config."""

    def __init__(self, cli: LightningCLI, key: str) -> None:
        self.cli, self.key = cli, key

    def __call__(self, class_type: type, *args: Any, applied_instantiation_links: dict[str, Any], **kwargs: Any) -> Any:
        from fulmen.core.hparams import given_hyperparameters, to_plain_data

        try:
            hparams = dict(self.cli._config_dump().get(self.key) or {})
        except Exception as err:  # noqa: BLE001 - a config jsonargparse cannot dump: save the __init__ arguments
            rank_zero_warn(
                f"LightningCLI(load_from_checkpoint_support=True): the config could not be dumped ({err}), so "
                f"save_hyperparameters in {class_type.__name__} saves its __init__ arguments instead."
            )
            return class_type(*args, **kwargs)
        if "class_path" in hparams:  # subclass mode: the arguments directly, the class under `_class_path`
            hparams = {
                "_class_path": hparams["class_path"],
                **(hparams.get("init_args") or {}),
                **(hparams.get("dict_kwargs") or {}),
            }
        for key, value in applied_instantiation_links.items():  # values linked in at instantiation
            if key.startswith(f"{self.key}."):
                key = key[len(self.key) + 1 :].removeprefix("init_args.")
                _set_nested(hparams, key, to_plain_data(value))
        with given_hyperparameters(class_type, hparams, _checkpoint_instantiator()):
            return class_type(*args, **kwargs)


def instantiate_module(class_type: type, config: dict[str, Any]) -> Any:
    """Rebuild a model/datamodule from the hyperparameters ``LightningCLI(load_from_checkpoint_support=True)``
    saved (``load_from_checkpoint`` calls this): the config is parsed and instantiated again, nested class specs
    included, under the CLI's import allowlist.

    Only the classes a config may name are imported (``class_type`` and its imported subclasses, fulmen's
    components, optimizers, paths allowed by a ``LightningCLI`` of this process or by ``FULMEN_CLI_ALLOWED_IMPORTS``):
    a checkpoint cannot make this import arbitrary code.

    Raises:
        MisconfigurationException: If the config names a class that is not allowed, or does not fit ``class_type``.
    """
    _require_jsonargparse()
    from jsonargparse import ArgumentError

    from fulmen._cli_parser import LightningArgumentParser

    parser = LightningArgumentParser(exit_on_error=False, allowed_import_paths=_SESSION_ALLOWED)
    parser.allowed_base_classes.add(class_type)
    config = dict(config)
    saved = {k: v for k, v in config.items() if k != "_instantiator"}

    def rebuild(cls: type, *args: Any, **kwargs: Any) -> Any:
        # the rebuilt object saves the same hyperparameters, so it can be saved and loaded again
        from fulmen.core.hparams import given_hyperparameters

        with given_hyperparameters(cls, saved, _checkpoint_instantiator()):
            return cls(*args, **kwargs)

    if "_class_path" in config:
        parser.add_subclass_arguments(class_type, "module", fail_untyped=False)
        config = {
            "class_path": config.pop("_class_path"),
            "dict_kwargs": config,
        }
    else:
        parser.add_class_arguments(class_type, "module", fail_untyped=False)
    try:
        cfg = parser.parse_object({"module": config})
        parser.check_class_paths(cfg)
        return parser.instantiate(cfg, instantiators=[(rebuild, class_type, True)]).module
    except (ArgumentError, SystemExit) as err:
        raise MisconfigurationException(
            f"{class_type.__name__}.load_from_checkpoint: the checkpoint's hyperparameters (saved by LightningCLI with "
            f"load_from_checkpoint_support) could not be rebuilt: {err}. Fix: if a class they name is trusted, allow "
            "its module (FULMEN_CLI_ALLOWED_IMPORTS=mypkg.models, or LightningCLI(allowed_import_paths=[...]) in this "
            "process); or pass the objects as keyword arguments to load_from_checkpoint."
        ) from err


def _init_parameters(cls: Any) -> set[str]:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return set()
    return {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _explicit_init_args(current: dict[str, Any], cls: Any) -> dict[str, Any]:
    """The init args in ``current`` that differ from the class defaults (given on the command line or a config)."""
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return current
    out = {}
    for k, v in current.items():
        p = params.get(k)
        if p is None or p.default is inspect.Parameter.empty or p.default != v:
            out[k] = v
    return out


def _import_allowed_class(class_path: str) -> Any:
    module_name, name = class_path.rsplit(".", 1)
    module = sys.modules.get(module_name)
    if module is None:  # it was imported while parsing (under the policy); never import here
        raise MisconfigurationException(f"{class_path!r} is not imported.")
    return getattr(module, name)


# ---------------------------------------------------------------------------------------------- `fulmen fit` etc.


def _console(subcommand: str, argv: list[str]) -> int:
    """``fulmen <subcommand> [--allow PREFIX ...] ...``: LightningCLI in subclass mode for any model/datamodule."""
    allowed: list[str] = []
    rest: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--allow":
            value = next(it, None)
            if value is None:
                print("fulmen: --allow needs a value, e.g. --allow mypkg.models", file=sys.stderr)
                return 2
            allowed += [v for v in value.split(",") if v]
        elif arg.startswith("--allow="):
            allowed += [v for v in arg.split("=", 1)[1].split(",") if v]
        else:
            rest.append(arg)
    # the script's directory is importable, as for `python -m`
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    LightningCLI(
        args=[subcommand, *rest],
        allowed_import_paths=allowed,
        parser_kwargs={"prog": "fulmen", subcommand: {"prog": f"fulmen {subcommand}"}},
    )
    return 0


def console_fit(argv: list[str]) -> int:
    """``fulmen fit``."""
    return _console("fit", argv)


def console_validate(argv: list[str]) -> int:
    """``fulmen validate``."""
    return _console("validate", argv)


def console_test(argv: list[str]) -> int:
    """``fulmen test``."""
    return _console("test", argv)


def console_predict(argv: list[str]) -> int:
    """``fulmen predict``."""
    return _console("predict", argv)
