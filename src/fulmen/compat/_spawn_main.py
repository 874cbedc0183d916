"""Entry point for worker processes started with ``spawn`` under ``fulmen run``.

A spawned worker re-imports the parent's main script as ``__mp_main__`` before it unpickles its task.
Under ``fulmen run`` that script imports Lightning, so the worker must turn the Lightning aliases on
first: ``fulmen run`` points multiprocessing at this module, which does that and then runs the script
(named by ``FULMEN_COMPAT_SCRIPT``) in its own namespace, as the worker's main module.
"""

import os

from fulmen.compat._finder import enable_lightning_imports

enable_lightning_imports()
_script = os.environ["FULMEN_COMPAT_SCRIPT"]
with open(_script, "rb") as _file:
    _code = compile(_file.read(), _script, "exec")
__file__ = _script
exec(_code, globals())  # noqa: S102 - the user's own script, as `python script.py` would run it
