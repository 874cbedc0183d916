"""pytest plugin for ``run_lightning_suite.py``: resolves the Lightning imports before collection.

Loaded with ``-p suite_plugin`` (this folder on ``PYTHONPATH``). ``FULMEN_SUITE_MODE`` picks the engine:

* ``fulmen``: :func:`fulmen.compat.enable_lightning_imports` -- ``lightning``, ``lightning.pytorch``,
  ``lightning.fabric``, ``pytorch_lightning`` and ``lightning_fabric`` all resolve to fulmen.
* ``lightning``: the installed ``pytorch-lightning==2.6.1`` wheel ships ``pytorch_lightning`` and
  ``lightning_fabric`` only, so ``lightning.pytorch[.x]`` / ``lightning.fabric[.x]`` are aliased to them (the same
  module objects, so ``mock.patch("lightning.pytorch...")`` patches the real module).

Not a test file (no ``test_`` prefix): the repository's own pytest run never collects it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import types

_ALIASES = {"lightning.pytorch": "pytorch_lightning", "lightning.fabric": "lightning_fabric"}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class _UmbrellaLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = types.ModuleType("lightning")
        module.__path__ = []  # a package, so ``lightning.pytorch`` can be found under it
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        import pytorch_lightning

        for name in ("Trainer", "LightningModule", "LightningDataModule", "Callback", "seed_everything"):
            setattr(module, name, getattr(pytorch_lightning, name))
        module.__version__ = pytorch_lightning.__version__


class _RealLightningAliasFinder(importlib.abc.MetaPathFinder):
    """``lightning`` -> an umbrella package; ``lightning.pytorch.x`` -> ``pytorch_lightning.x`` (same object)."""

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        if fullname == "lightning":
            return importlib.machinery.ModuleSpec(fullname, _UmbrellaLoader(), is_package=True)
        for alias, real in _ALIASES.items():
            if fullname == alias or fullname.startswith(alias + "."):
                target_name = real + fullname[len(alias) :]
                try:
                    real_spec = importlib.util.find_spec(target_name)
                except (ImportError, ValueError):
                    return None
                if real_spec is None:
                    return None
                spec = importlib.machinery.ModuleSpec(
                    fullname, _AliasLoader(target_name), is_package=real_spec.submodule_search_locations is not None
                )
                return spec
        return None

    def exec_module(self, module):  # pragma: no cover - loaders above do the work
        pass


_MODE = os.environ.get("FULMEN_SUITE_MODE", "fulmen")
if _MODE == "fulmen":
    from fulmen.compat import enable_lightning_imports

    enable_lightning_imports()
elif _MODE == "lightning":
    import importlib.util

    sys.meta_path.insert(0, _RealLightningAliasFinder())
    # an alias module object is shared with its target; register parents so attribute access works
    import pytorch_lightning  # noqa: F401
else:
    raise RuntimeError(f"FULMEN_SUITE_MODE={_MODE!r}: expected 'fulmen' or 'lightning'")
