"""Launchers start the processes of a multi-process run.

* :class:`SubprocessScriptLauncher` (``strategy="ddp"``): runs the user's script again once per extra
  local rank, with ``LOCAL_RANK``/``NODE_RANK``/``WORLD_SIZE``/``MASTER_*`` set, as ``torchrun`` does.
  The launching process is local rank 0 and keeps running.
* :class:`MultiProcessingLauncher` (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``): runs a function in
  worker processes and returns rank 0's result to the calling process, raising the first failure.

No launcher is used when the processes were started externally (torchrun, srun, mpirun, ...).
"""

from fulmen.strategies.launchers.multiprocessing import MultiProcessingLauncher
from fulmen.strategies.launchers.subprocess_script import SubprocessScriptLauncher

__all__ = ["MultiProcessingLauncher", "SubprocessScriptLauncher"]
