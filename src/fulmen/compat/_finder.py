"""The import hook behind ``fulmen run``: ``lightning``/``pytorch_lightning``/``lightning_fabric`` -> fulmen.

A meta-path finder claims the Lightning package names and answers each public Lightning module with an
alias module: a thin module object whose attributes are looked up, on first use, in the fulmen modules
that module stands for (``_table.py``). The classes are fulmen's own, so ``isinstance`` checks, pickling
and checkpoints all see one set of types. Nothing here runs unless :func:`enable_lightning_imports` is
called (``fulmen run`` does it); ``import fulmen`` never touches ``sys.meta_path``.
"""

from __future__ import annotations

import dis
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from typing import Any

from fulmen.__about__ import LIGHTNING_COMPAT_VERSION
from fulmen.compat import _imports, _table
from fulmen.utilities.exceptions import NotSupportedYetError
from fulmen.utilities.rank_zero import sync_lightning_utilities

_IMPORT_FROM = dis.opmap["IMPORT_FROM"]
_MISSING = object()


class NotSupportedYetImportError(NotSupportedYetError, ImportError):
    """``from lightning.x import Name`` where fulmen has no ``Name`` (or no module for ``lightning.x``)."""


class NotSupportedYetAttributeError(NotSupportedYetError, AttributeError):
    """``lightning.x.Name`` where fulmen has no ``Name``; an ``AttributeError``, so ``hasattr`` stays False."""


def _split(fullname: str) -> tuple[str, dict[str, tuple[str, ...] | None], str] | None:
    """``(root, table, relative path)`` for a Lightning module name, or None if it is not under a root."""
    for root, table in _table.ROOTS.items():
        if fullname == root:
            return root, table, ""
        if fullname.startswith(root + "."):
            return root, table, fullname[len(root) + 1 :]
    return None


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def resolve_targets(fullname: str) -> tuple[str, ...] | None:
    """The fulmen modules a Lightning module stands for, or None if it is not a public Lightning module."""
    if fullname == "lightning":
        return _table.UMBRELLA
    split = _split(fullname)
    if split is None:
        return None
    _, table, rel = split
    if rel not in table:
        return None
    while True:
        targets = table[rel]
        if targets is not None:
            return targets
        same_path = f"fulmen.{rel}"
        if _module_exists(same_path):
            return (same_path,)
        rel = rel.rpartition(".")[0]


def is_claimed(fullname: str) -> bool:
    """Whether the finder answers for this module name (a Lightning package, public or not)."""
    top = fullname.partition(".")[0]
    return top in _table.TOP_LEVEL


def _is_public(fullname: str) -> bool:
    if fullname == "lightning":
        return True
    split = _split(fullname)
    return split is not None and split[2] in split[1]


def _import_target(name: str) -> types.ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        # Only "this fulmen has no such module" means missing; a missing dependency inside it is a real error.
        if err.name is not None and (name == err.name or name.startswith(err.name + ".")):
            return None
        raise


def _called_from_import_from() -> bool:
    """Whether the caller of ``__getattr__`` is executing ``from module import name``.

    ``from m import X`` replaces the AttributeError of a missing name with a generic "cannot import name"
    ImportError, losing the explanation; raising an ImportError directly keeps it. Everywhere else
    (``hasattr``, ``getattr(m, X, default)``) an AttributeError is what callers expect.
    """
    try:
        frame = sys._getframe(2)
        return frame.f_lasti >= 0 and frame.f_code.co_code[frame.f_lasti] == _IMPORT_FROM
    except (ValueError, IndexError, AttributeError):  # pragma: no cover - other interpreters
        return False


class LightningAlias(types.ModuleType):
    """A Lightning module under ``fulmen run``: names come from the fulmen modules it stands for."""

    def __init__(self, name: str, targets: Sequence[str]) -> None:
        super().__init__(name)
        self.__dict__["_fulmen_targets"] = tuple(targets)
        self.__path__: list[str] = []  # a package, so submodules can be imported under it
        if name in ("lightning", *_table.ROOTS):
            self.__version__ = LIGHTNING_COMPAT_VERSION

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):
            if attr == "__all__":
                return self._public_names()
            raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")
        submodule = f"{self.__name__}.{attr}"
        if _is_public(submodule):
            return importlib.import_module(submodule)
        missing: list[str] = []
        for target in self.__dict__["_fulmen_targets"]:
            module = _import_target(target)
            if module is None:
                missing.append(target)
                continue
            value = getattr(module, attr, _MISSING)
            if value is not _MISSING:
                self.__dict__[attr] = value
                return value
        flag = _imports.flag_value(attr) if attr.startswith("_") else None
        if flag is not None:  # ``_TENSORBOARD_AVAILABLE``, ``_TORCH_GREATER_EQUAL_2_4``...: from any Lightning module
            self.__dict__[attr] = flag
            return flag
        message = self._not_supported_message(attr, missing)
        error: NotSupportedYetError
        if _called_from_import_from():
            error = NotSupportedYetImportError(message)
            error.name = self.__name__
        else:
            error = NotSupportedYetAttributeError(message)
            error.name, error.obj = attr, self
        raise error

    def __setattr__(self, attr: str, value: Any) -> None:
        # ``mock.patch("lightning.pytorch.callbacks.timer.time", ...)`` must reach the code that reads the name:
        # a non-dunder attribute that a fulmen target module defines is set there too (its original kept, so
        # ``del``/``mock``'s restore puts it back). Submodules bound by the import system stay on the alias.
        if not (attr.startswith("__") and attr.endswith("__")) and not isinstance(value, LightningAlias):
            for target in self.__dict__["_fulmen_targets"]:
                module = sys.modules.get(target) or _import_target(target)
                if module is not None and attr in vars(module):
                    forwarded = self.__dict__.setdefault("_fulmen_forwarded", {})
                    forwarded.setdefault(attr, (module, vars(module)[attr]))
                    setattr(module, attr, value)
                    break
        super().__setattr__(attr, value)

    def __delattr__(self, attr: str) -> None:
        forwarded = self.__dict__.get("_fulmen_forwarded", {})
        if attr in forwarded:
            module, original = forwarded.pop(attr)
            setattr(module, attr, original)  # the fulmen module gets its own value back
            self.__dict__.pop(attr, None)
            return
        super().__delattr__(attr)

    def _not_supported_message(self, attr: str, missing: list[str]) -> str:
        targets = self.__dict__["_fulmen_targets"]
        present = [t for t in targets if t not in missing]
        if present:
            where = f"fulmen has no {attr!r} in {', '.join(present)}"
        else:
            where = f"this fulmen has no {', '.join(missing)} module yet"
        return (
            f"{self.__name__}.{attr} is not supported yet by fulmen ({where}). `fulmen run` maps Lightning's imports "
            "to fulmen's equivalents; see docs/migration.md for the known differences."
        )

    def _public_names(self) -> list[str]:
        names: set[str] = set()
        for target in self.__dict__["_fulmen_targets"]:
            module = _import_target(target)
            if module is not None:
                exported = getattr(module, "__all__", None)
                names.update(
                    exported if exported is not None else (n for n in vars(module) if not n.startswith("_"))
                )
        return sorted(names)

    def __dir__(self) -> list[str]:
        prefix = self.__name__ + "."
        subs = {
            name[len(prefix) :].partition(".")[0]
            for root, table in _table.ROOTS.items()
            for rel in table
            if rel
            for name in (f"{root}.{rel}",)
            if name.startswith(prefix)
        }
        if self.__name__ == "lightning":
            subs |= {"pytorch", "fabric"}
        return sorted(set(super().__dir__()) | set(self._public_names()) | subs)


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, targets: tuple[str, ...]) -> None:
        self._targets = targets

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return LightningAlias(spec.name, self._targets)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class LightningFinder(importlib.abc.MetaPathFinder):
    """Answers imports of ``lightning``, ``pytorch_lightning`` and ``lightning_fabric`` with fulmen aliases."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not is_claimed(fullname):
            return None
        targets = resolve_targets(fullname)
        if targets is None:
            raise ModuleNotFoundError(
                f"No module named {fullname!r} under `fulmen run`: it is not a public Lightning 2.x module, or it is "
                "not supported yet by fulmen.",
                name=fullname,
            )
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(targets), is_package=True)


_lock = threading.Lock()
_finder: LightningFinder | None = None
_stashed: dict[str, types.ModuleType] = {}


def enable_lightning_imports() -> None:
    """Make this process's imports of Lightning resolve to fulmen (what ``fulmen run`` does).

    Real Lightning modules already imported are set aside (and put back by
    :func:`disable_lightning_imports`), so the aliases never mix with them. Idempotent.
    """
    global _finder
    with _lock:
        if _finder is not None:
            return
        for name in [n for n in sys.modules if is_claimed(n)]:
            module = sys.modules.pop(name)
            if not isinstance(module, LightningAlias):
                _stashed[name] = module
        _finder = LightningFinder()
        sys.meta_path.insert(0, _finder)
    # ``import lightning`` sets lightning_utilities' rank_zero_only.rank; so does the first Lightning import here
    sync_lightning_utilities()


def disable_lightning_imports() -> None:
    """Undo :func:`enable_lightning_imports`: drop the finder and the alias modules, restore what was there."""
    global _finder
    with _lock:
        if _finder is None:
            return
        if _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
        _finder = None
        for name in [n for n, m in sys.modules.items() if isinstance(m, LightningAlias)]:
            del sys.modules[name]
        sys.modules.update(_stashed)
        _stashed.clear()


def lightning_imports_enabled() -> bool:
    return _finder is not None


@contextmanager
def lightning_imports() -> Generator[None, None, None]:
    """Context manager form of :func:`enable_lightning_imports` (for tests and notebooks)."""
    was_enabled = lightning_imports_enabled()
    enable_lightning_imports()
    try:
        yield
    finally:
        if not was_enabled:
            disable_lightning_imports()
