"""``LightningArgumentParser`` and the import policy of the CLI. Imports jsonargparse: import it lazily.

``fulmen.cli`` loads this module the first time a parser is needed, so ``import fulmen.cli`` costs nothing
and a missing jsonargparse gives an error that names the ``fulmen[cli]`` extra.

The import policy. A config names classes (``class_path``) and callables (import paths) that jsonargparse
imports and instantiates, and importing or instantiating an arbitrary object is running arbitrary code
(``class_path: os.system``, ``subprocess.Popen``, a module that does harm when imported). So during
parsing, instantiation and saving, only these import paths are allowed (jsonargparse's import-path
policy, with everything else denied):

* :data:`DEFAULT_ALLOWED_IMPORT_PATHS` (optimizers and LR schedulers) and the public classes of fulmen's
  component packages (:data:`PUBLIC_CLASS_PACKAGES`: callbacks, loggers, profilers, strategies, ...);
* the classes the CLI was given (model, datamodule, callbacks added with ``add_lightning_class_args``) and
  their subclasses that are *already imported*, plus every already-imported ``Callback``, ``Logger`` and
  ``Profiler`` subclass (allowing them runs no new code: they exist because the program defined them);
* the program's own code: the types its classes name in their ``__init__`` signatures (recursively) and their
  imported subclasses, ``__main__`` and the script imported by name, the modules beside the script, and the
  user's own (not installed) packages of those classes -- what Lightning users write every day;
* what the user allows: ``LightningCLI(allowed_import_paths=[...])``, ``parser.allow_import_paths(...)``,
  the ``FULMEN_CLI_ALLOWED_IMPORTS`` environment variable (comma-separated) or ``fulmen fit --allow``.

An entry allows a dot path and everything under it (``"mypkg.models"`` allows ``mypkg.models.Net``).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Generator, Iterable
from contextlib import contextmanager
from typing import Any

import jsonargparse
from jsonargparse import ArgumentParser, Namespace
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from fulmen.callbacks.callback import Callback
from fulmen.core.datamodule import LightningDataModule
from fulmen.core.module import LightningModule
from fulmen.utilities.exceptions import MisconfigurationException

__all__ = ["DEFAULT_ALLOWED_IMPORT_PATHS", "LightningArgumentParser", "import_policy"]

#: Import paths (and everything under them) a config may always name.
DEFAULT_ALLOWED_IMPORT_PATHS: tuple[str, ...] = (
    "torch.optim",  # optimizers and torch.optim.lr_scheduler
    "fulmen.cli.ReduceLROnPlateau",
)
#: Packages whose public classes (``__all__``) a config may name: callbacks, loggers, profilers, strategies...
PUBLIC_CLASS_PACKAGES: tuple[str, ...] = (
    "fulmen.callbacks",
    "fulmen.loggers",
    "fulmen.profilers",
    "fulmen.strategies",
    "fulmen.accelerators",
    "fulmen.plugins.precision",
    "fulmen.plugins.environments",
    "fulmen.plugins.layer_sync",
    "fulmen.checkpoint",
)

ENV_ALLOWED = "FULMEN_CLI_ALLOWED_IMPORTS"
_DENIED_MARK = "is not allowed, denied by"
_JSONARGPARSE_HINT = "Add the import path to import_path_allowlist in set_parsing_settings to allow it."


def _import_path_of(cls: type) -> list[str]:
    """The dot paths jsonargparse may use for ``cls``: where it is defined and its shortest public path."""
    paths = []
    qualname = getattr(cls, "__qualname__", "")
    module = getattr(cls, "__module__", None)
    if module and "<" not in qualname:
        paths.append(f"{module}.{qualname}")
    from jsonargparse._util import get_import_path

    with contextlib.suppress(Exception):  # an unresolvable class keeps its defining path only
        short = get_import_path(cls)
        if short:
            paths.append(short)
    return [p for p in paths if all(part.isidentifier() for part in p.split("."))]


def _subclasses(base: type) -> Iterable[type]:
    seen: set[type] = set()
    stack = [base]
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        yield cls
        try:
            stack.extend(cls.__subclasses__())
        except TypeError:  # type.__subclasses__ needs an argument
            continue


def _import_builtin_components() -> None:
    """Import fulmen's callbacks (lazy in ``fulmen.callbacks``), loggers and profilers, so configs can name them
    by class name (``--trainer.callbacks+=EarlyStopping``): jsonargparse resolves names among imported classes."""
    import importlib

    import fulmen.loggers
    import fulmen.profilers  # noqa: F401
    from fulmen import callbacks

    for module in sorted(set(callbacks._LAZY.values())):
        importlib.import_module(f"fulmen.callbacks.{module}")


_import_builtin_components()


@functools.lru_cache(maxsize=1)
def fulmen_public_classes() -> frozenset[str]:
    """The dot paths of the public classes of :data:`PUBLIC_CLASS_PACKAGES` (not their functions or modules)."""
    import importlib

    out: set[str] = set()
    for package in PUBLIC_CLASS_PACKAGES:
        try:
            module = importlib.import_module(package)
        except ImportError:
            continue
        names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
        for name in names:
            try:  # lazy package attributes import their module here
                obj = getattr(module, name, None)
            except ImportError:
                continue
            if isinstance(obj, type):
                out.add(f"{package}.{name}")
                out.update(_import_path_of(obj))
    return frozenset(out)


# Packages never trusted as "the user's code" by location (a class of theirs is still trusted by type).
_NOT_USER_PACKAGES = frozenset(
    {"fulmen", "lightning", "pytorch_lightning", "lightning_fabric", "torch", "jsonargparse"}
)
# Types whose subclasses are not trusted just because a signature names them: everything derives from them.
_TOO_GENERAL_MODULES = frozenset({"builtins", "typing", "typing_extensions", "abc", "collections.abc", "types"})


def _denied_by_jsonargparse(name: str) -> bool:
    """Whether jsonargparse's default denylist names ``name`` or a package above it (``os``, ``subprocess``...)."""
    from jsonargparse._common import default_import_path_denylist

    parts = name.split(".")
    return any(".".join(parts[:n]) in default_import_path_denylist for n in range(1, len(parts) + 1))


@functools.cache
def _library_roots() -> tuple[str, ...]:
    import sysconfig

    roots = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return tuple(os.path.realpath(r) for r in roots if r)


def _is_library_file(path: str) -> bool:
    """Whether ``path`` is installed library code (the standard library or site-packages), not the user's."""
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return True
    return any(real == root or real.startswith(root + os.sep) for root in _library_roots())


def _user_package(cls: type) -> str | None:
    """The top-level package of ``cls`` when it is the user's own code (not installed, not fulmen or torch)."""
    import sys

    module = getattr(cls, "__module__", None) or ""
    top = module.split(".")[0]
    if not top or top == "__main__" or top in _NOT_USER_PACKAGES or top in sys.stdlib_module_names:
        return None
    if not top.isidentifier() or _denied_by_jsonargparse(top):
        return None
    mod = sys.modules.get(top)
    path = getattr(mod, "__file__", None) or next(iter(getattr(mod, "__path__", None) or []), None)
    if not path or _is_library_file(path):
        return None
    return top


def _program_paths() -> set[str]:
    """The running program's own code: ``__main__``, the script's module name and its folder's modules.

    ``python train.py`` (or ``fulmen run train.py``) defines its model in ``__main__``; a config names it
    ``__main__.Model`` or ``train.Model`` (the same file imported by name), and the packages beside the
    script (``mypkg.nets.Net``) are the user's project. ``python -m mypkg.train`` trusts ``mypkg``.
    """
    import importlib.util
    import sys

    out = {"__main__"}
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    file = getattr(main, "__file__", None)
    if spec is not None and getattr(spec, "name", None):  # python -m pkg.module
        top = spec.name.split(".")[0]
        if file and not _is_library_file(file) and top not in _NOT_USER_PACKAGES and not _denied_by_jsonargparse(top):
            out.add(top)
        return out
    if not file or not file.endswith(".py") or _is_library_file(file):
        return out
    stem = os.path.splitext(os.path.basename(file))[0]
    folder = os.path.dirname(os.path.realpath(file))
    if folder not in {os.path.realpath(p or os.getcwd()) for p in sys.path}:
        return out  # names beside the script would not import from its folder
    names = {stem}
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder):
            if entry.endswith(".py"):
                names.add(entry[:-3])
            elif os.path.isfile(os.path.join(folder, entry, "__init__.py")):
                names.add(entry)
    for name in names:
        if (
            name.isidentifier()
            and name not in sys.stdlib_module_names
            and name not in _NOT_USER_PACKAGES
            and not _denied_by_jsonargparse(name)
        ):
            if name == stem:
                with contextlib.suppress(Exception):
                    found = importlib.util.find_spec(name)
                    if not (found and found.origin and os.path.realpath(found.origin) == os.path.realpath(file)):
                        continue
            out.add(name)
    return out


def _annotation_classes(annotation: Any) -> Iterable[type]:
    """The classes an annotation names (``Optional[Enc]``, ``list[Enc]``, ``Enc | None`` -> ``Enc``)."""
    import typing

    if isinstance(annotation, type) and not typing.get_args(annotation):
        if annotation.__module__ not in _TOO_GENERAL_MODULES:
            yield annotation
        return
    origin = typing.get_origin(annotation)
    if isinstance(origin, type) and origin.__module__ not in _TOO_GENERAL_MODULES:
        yield origin
    for arg in typing.get_args(annotation):
        if isinstance(arg, (list, tuple)):  # Callable[[A, B], R]
            for a in arg:
                yield from _annotation_classes(a)
        else:
            yield from _annotation_classes(arg)


@functools.lru_cache(maxsize=4096)
def _signature_classes(cls: type) -> tuple[type, ...]:
    """The classes named in the annotations of ``cls.__init__`` (resolved string annotations included)."""
    import inspect
    import typing

    init = getattr(cls, "__init__", cls)
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # noqa: BLE001 - an unresolvable forward reference: use what is already an object
        try:
            params = inspect.signature(init).parameters.values()
            hints = {p.name: p.annotation for p in params if p.annotation is not p.empty}
        except (TypeError, ValueError):
            return ()
    hints.pop("return", None)
    found: dict[type, None] = {}
    for annotation in hints.values():
        for c in _annotation_classes(annotation):
            found[c] = None
    return tuple(found)


def program_trusted_classes(bases: Iterable[type]) -> set[type]:
    """The classes the program itself names: ``bases`` (what it gave the CLI), the types in their ``__init__``
    signatures, recursively, and the imported subclasses of all of these."""
    trusted: set[type] = set()
    todo = [b for b in bases if isinstance(b, type)]
    while todo:
        cls = todo.pop()
        if cls in trusted:
            continue
        for sub in _subclasses(cls):
            if sub in trusted:
                continue
            trusted.add(sub)
            with contextlib.suppress(TypeError):
                todo.extend(c for c in _signature_classes(sub) if c not in trusted)
    return trusted


def env_allowed_import_paths() -> list[str]:
    """Entries of ``FULMEN_CLI_ALLOWED_IMPORTS`` (comma-separated)."""
    return [p.strip() for p in os.environ.get(ENV_ALLOWED, "").split(",") if p.strip()]


def allowed_import_paths(extra: Iterable[str] = (), bases: Iterable[type] = ()) -> list[str]:
    """The allowlist for one parse: defaults, ``extra``, the environment, and imported subclasses of ``bases``."""
    from fulmen.loggers.logger import Logger
    from fulmen.profilers import Profiler

    allowed = (
        set(DEFAULT_ALLOWED_IMPORT_PATHS)
        | fulmen_public_classes()
        | set(extra)
        | set(env_allowed_import_paths())
    )
    for base in {Callback, Logger, Profiler}:
        for cls in _subclasses(base):
            allowed.update(_import_path_of(cls))
    # the program's own code is trusted: classes it gave the CLI and the types their signatures name (with
    # their imported subclasses), the script itself, and the user's own packages (see the module docstring)
    allowed |= _program_paths()
    for cls in program_trusted_classes(bases):
        allowed.update(_import_path_of(cls))
        package = _user_package(cls)
        if package is not None:
            allowed.add(package)
    for entry in list(allowed):
        if (
            entry == "jsonargparse"
            or entry.startswith("jsonargparse.")
            or not all(p.isidentifier() for p in entry.split("."))
        ):
            raise MisconfigurationException(
                f"Allowed import path {entry!r} is not valid: expected a dot path such as 'mypkg.models' "
                "(and nothing under 'jsonargparse')."
            )
    return sorted(allowed)


@contextmanager
def import_policy(allowlist: Iterable[str]) -> Generator[None, None, None]:
    """Deny every import path a parsed value names except ``allowlist`` (and restore the settings after)."""
    from jsonargparse import _common

    settings = _common.parsing_settings
    keys = ("import_path_verdicts", "import_paths_enforced", "instantiate_subclass_spec_in_any")
    saved = {k: settings[k] for k in keys}
    jsonargparse.set_parsing_settings(
        import_path_denylist=["*"],
        import_path_allowlist=list(allowlist),
        # a class spec in an `Any` argument is built when its class is allowed (the policy bounds what); one that
        # is not allowed stays a dict, which LightningArgumentParser.check_class_paths reports
        instantiate_subclass_spec_in_any=True,
    )
    try:
        yield
    finally:
        settings.update(saved)


def refused_import_help(message: str) -> str:
    """A jsonargparse import denial, with how to allow the path in fulmen."""
    return (
        f"{message}\nfulmen's CLI instantiates only classes it is allowed to import, because naming an arbitrary "
        "class or function in a config runs arbitrary code. To allow a trusted module, pass "
        "LightningCLI(..., allowed_import_paths=['mypkg.models']), call parser.allow_import_paths('mypkg.models') in "
        f"add_arguments_to_parser, set {ENV_ALLOWED}=mypkg.models, or run `fulmen fit --allow mypkg.models ...`."
    )


class LightningArgumentParser(ArgumentParser):
    """jsonargparse's ``ArgumentParser`` with fulmen's helpers and import policy (spec §1.13).

    Args:
        description: Shown by ``--help``.
        env_prefix: Prefix of environment variables (used when ``default_env=True``).
        default_env: Also read values from environment variables.
        allowed_import_paths: Extra dot paths a config may name (see the module docstring).
        **kwargs: Passed to ``jsonargparse.ArgumentParser``.
    """

    def __init__(
        self,
        *args: Any,
        description: str = "fulmen Trainer command line tool",
        env_prefix: str = "PL",
        default_env: bool = False,
        allowed_import_paths: Iterable[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(
            *args, description=description, env_prefix=env_prefix, default_env=default_env, **kwargs
        )
        self.callback_keys: list[str] = []
        self._optimizers: dict[str, tuple[Any, str]] = {}
        self._lr_schedulers: dict[str, tuple[Any, str]] = {}
        self.allowed_import_paths: set[str] = set(allowed_import_paths)
        self.allowed_base_classes: set[type] = set()

    # ------------------------------------------------------------------ import policy
    def allow_import_paths(self, *paths: str) -> None:
        """Let configs name these dot paths (and everything under them)."""
        self.allowed_import_paths.update(paths)

    def _policy(self) -> Any:
        return import_policy(allowed_import_paths(self.allowed_import_paths, self.allowed_base_classes))

    def check_class_paths(self, cfg: Any) -> None:
        """Refuse a config that still holds a class spec naming a path outside the allowlist.

        jsonargparse keeps an invalid spec in an ``Any`` argument (e.g. ``trainer.plugins``) as a plain dict
        instead of failing; it was not imported, but the run must not go on with it.
        """
        allowed = allowed_import_paths(self.allowed_import_paths, self.allowed_base_classes)

        def ok(path: str) -> bool:
            return any(path == a or path.startswith(a + ".") for a in allowed)

        def walk(value: Any, where: str) -> None:
            if isinstance(value, Namespace):
                value = value.as_dict()
            if isinstance(value, dict):
                path = value.get("class_path")
                if isinstance(path, str) and not ok(path):
                    self.error(
                        f"Parser key {where!r}: importing {path!r} is not allowed, denied by '*' "
                        "(not in fulmen's allowlist)."
                    )
                for k, v in value.items():
                    walk(v, f"{where}.{k}" if where else str(k))
            elif isinstance(value, (list, tuple)):
                for i, v in enumerate(value):
                    walk(v, f"{where}[{i}]")

        walk(cfg, "")

    def parse_args(self, *args: Any, **kwargs: Any) -> Namespace:  # type: ignore[override]
        with self._policy():
            result: Namespace = super().parse_args(*args, **kwargs)
        return result

    def parse_object(self, *args: Any, **kwargs: Any) -> Namespace:
        with self._policy():
            result: Namespace = super().parse_object(*args, **kwargs)
        return result

    def parse_string(self, *args: Any, **kwargs: Any) -> Namespace:
        with self._policy():
            result: Namespace = super().parse_string(*args, **kwargs)
        return result

    def instantiate(self, *args: Any, **kwargs: Any) -> Namespace:
        with self._policy():
            result: Namespace = super().instantiate(*args, **kwargs)
        return result

    def instantiate_classes(self, cfg: Namespace, instantiate_groups: bool = True) -> Namespace:
        """Lightning's name for :meth:`instantiate`."""
        return self.instantiate(cfg, instantiate_groups)

    def dump(self, *args: Any, **kwargs: Any) -> str:
        with self._policy():
            result: str = super().dump(*args, **kwargs)
        return result

    def save(self, *args: Any, **kwargs: Any) -> None:
        with self._policy():
            super().save(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if _DENIED_MARK in message:
            message = refused_import_help(message.replace(_JSONARGPARSE_HINT, "(not in fulmen's allowlist)."))
        return super().error(message, ex)

    # ------------------------------------------------------------------ Lightning's helpers
    def add_lightning_class_args(
        self, lightning_class: Any, nested_key: str, subclass_mode: bool = False, required: bool = True
    ) -> list[str]:
        """Add the arguments of a Trainer, LightningModule, LightningDataModule or Callback class.

        Args:
            lightning_class: The class (or a function returning an instance).
            nested_key: The group name (``model``, ``data``, ``trainer`` or any name for a callback).
            subclass_mode: Accept any subclass, chosen with ``--{nested_key} ClassName`` / ``class_path``.
            required: Whether a subclass must be given (subclass mode only).

        Returns:
            The names of the arguments added.

        Raises:
            MisconfigurationException: For any other kind of class.
        """
        from fulmen.trainer.trainer import Trainer

        if callable(lightning_class) and not isinstance(lightning_class, type):
            lightning_class = jsonargparse.class_from_function(lightning_class)  # type: ignore[attr-defined]
        if isinstance(lightning_class, type) and issubclass(
            lightning_class, (Trainer, LightningModule, LightningDataModule, Callback)
        ):
            if issubclass(lightning_class, Callback):
                self.callback_keys.append(nested_key)
            self.allowed_base_classes.add(lightning_class)
            if subclass_mode:
                added = self.add_subclass_arguments(lightning_class, nested_key, required=required)
                return list(added) if isinstance(added, list) else [nested_key]
            if issubclass(lightning_class, Trainer):
                return self._add_trainer_args(lightning_class, nested_key)
            added_args: list[str] = self.add_class_arguments(
                lightning_class,
                nested_key,
                fail_untyped=False,
                instantiate=not issubclass(lightning_class, Trainer),
                sub_configs=True,
            )
            return added_args
        raise MisconfigurationException(
            f"Cannot add arguments from {lightning_class!r}: expected a function returning an instance or a subclass "
            "of Trainer, LightningModule, LightningDataModule or Callback."
        )

    def _add_trainer_args(self, trainer_class: type, nested_key: str) -> list[str]:
        """The Trainer's arguments; ``callbacks``, ``logger`` and ``profiler`` get types that accept class specs
        (``--trainer.callbacks+=EarlyStopping``, ``--trainer.logger.class_path ...``) when annotated ``Any``."""
        import inspect

        from fulmen.loggers.logger import Logger
        from fulmen.profilers import Profiler

        types: dict[str, Any] = {
            "callbacks": list[Callback] | Callback | None,
            "logger": Logger | list[Logger] | bool | None,
            "profiler": Profiler | str | None,
        }
        params = inspect.signature(trainer_class).parameters
        retyped = {n: t for n, t in types.items() if n in params and params[n].annotation in (Any, "Any")}
        added: list[str] = self.add_class_arguments(
            trainer_class,
            nested_key,
            fail_untyped=False,
            instantiate=False,
            sub_configs=True,
            skip=set(retyped),
        )
        for name, annotation in retyped.items():
            self.add_argument(f"--{nested_key}.{name}", type=annotation, default=params[name].default)
            added.append(f"{nested_key}.{name}")
        if retyped:
            # back in the signature's order, which config.yaml and --print_config follow (as Lightning's)
            order = {f"{nested_key}.{n}": i for i, n in enumerate(params)}
            for actions in [self._actions, *(g._group_actions for g in self._action_groups)]:
                ours = sorted((a for a in actions if a.dest in order), key=lambda a: order[a.dest])
                it = iter(ours)
                actions[:] = [next(it) if a.dest in order else a for a in actions]
        return added

    def add_optimizer_args(
        self,
        optimizer_class: type[Optimizer] | tuple[type[Optimizer], ...] = (Optimizer,),
        nested_key: str = "optimizer",
        link_to: str = "AUTOMATIC",
    ) -> None:
        """Add ``--{nested_key}``: an optimizer class (a tuple allows any subclass) and its arguments.

        With ``link_to="AUTOMATIC"`` the CLI builds ``configure_optimizers`` from it; otherwise the spec is
        passed to the model argument ``link_to`` (build it with :func:`fulmen.cli.instantiate_class`).

        Raises:
            MisconfigurationException: If ``optimizer_class`` is not an optimizer class.
        """
        classes = optimizer_class if isinstance(optimizer_class, tuple) else (optimizer_class,)
        if not all(isinstance(c, type) and issubclass(c, Optimizer) for c in classes):
            raise MisconfigurationException(
                f"add_optimizer_args({optimizer_class!r}): expected torch.optim.Optimizer subclasses."
            )
        self._add_class_or_subclass(optimizer_class, nested_key, skip={"params"})
        self._optimizers[nested_key] = (optimizer_class, link_to)

    def add_lr_scheduler_args(
        self,
        lr_scheduler_class: Any = None,
        nested_key: str = "lr_scheduler",
        link_to: str = "AUTOMATIC",
    ) -> None:
        """Add ``--{nested_key}``: an LR scheduler class (a tuple allows any subclass) and its arguments.

        Raises:
            MisconfigurationException: If ``lr_scheduler_class`` is not an LR scheduler class.
        """
        from fulmen.utilities.types import LRSchedulerTypeTuple

        if lr_scheduler_class is None:
            lr_scheduler_class = LRSchedulerTypeTuple
        classes = lr_scheduler_class if isinstance(lr_scheduler_class, tuple) else (lr_scheduler_class,)
        if not all(isinstance(c, type) and issubclass(c, LRSchedulerTypeTuple) for c in classes):
            raise MisconfigurationException(
                f"add_lr_scheduler_args({lr_scheduler_class!r}): expected torch.optim.lr_scheduler classes."
            )
        self._add_class_or_subclass(lr_scheduler_class, nested_key, skip={"optimizer"})
        self._lr_schedulers[nested_key] = (lr_scheduler_class, link_to)

    def _add_class_or_subclass(self, cls: Any, nested_key: str, skip: set[str]) -> None:
        if isinstance(cls, tuple):
            self.add_subclass_arguments(cls, nested_key, instantiate=False, skip=skip)
        else:
            self.add_class_arguments(
                cls,
                nested_key,
                instantiate=False,
                fail_untyped=False,
                skip=skip,
                sub_configs=True,
            )


LightningArgumentParser.__module__ = "fulmen.cli"
_ = LRScheduler
