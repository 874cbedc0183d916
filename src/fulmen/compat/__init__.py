"""Running existing Lightning 2.x code on fulmen, unchanged.

``fulmen run script.py [args]`` (or ``python -m fulmen run ...``) runs a program written against
``lightning``, ``lightning.pytorch``, ``pytorch_lightning``, ``lightning.fabric`` or ``lightning_fabric``
on fulmen: for that process, those imports resolve to fulmen's equivalents. It is an explicit opt-in;
``import fulmen`` never installs the import hook.

Which module owns what:

* ``_table.py``: Lightning's public module tree and the fulmen modules each one stands for;
* ``_finder.py``: the meta-path finder, the alias modules and the "not supported yet" errors;
* ``run.py``: the ``run`` subcommand (argv, ``sys.path``, ``runpy``, worker processes);
* ``_spawn_main.py``: the main module of ``spawn``-ed workers under ``fulmen run``;
* ``_imports.py``: the version/availability flags (``_TORCH_GREATER_EQUAL_2_4``, ``_TENSORBOARD_AVAILABLE``...),
  computed for this environment and answered by every Lightning alias module;
* ``_migration.py``: ``lightning.pytorch.utilities.migration`` (``migrate_checkpoint``, ``pl_legacy_patch``).

In-process use (tests, notebooks)::

    from fulmen.compat import lightning_imports

    with lightning_imports():
        import lightning.pytorch as pl  # fulmen
"""

from fulmen.compat._finder import (
    LightningAlias,
    NotSupportedYetAttributeError,
    NotSupportedYetImportError,
    disable_lightning_imports,
    enable_lightning_imports,
    lightning_imports,
    lightning_imports_enabled,
    resolve_targets,
)
from fulmen.compat.run import relaunch_command, run_module, run_script

__all__ = [
    "LightningAlias",
    "NotSupportedYetAttributeError",
    "NotSupportedYetImportError",
    "disable_lightning_imports",
    "enable_lightning_imports",
    "lightning_imports",
    "lightning_imports_enabled",
    "relaunch_command",
    "resolve_targets",
    "run_module",
    "run_script",
]
