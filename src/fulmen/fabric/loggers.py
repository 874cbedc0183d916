"""Fabric's loggers (``lightning.fabric.loggers``): the Trainer's CSV and TensorBoard loggers with ``root_dir``.

The classes live in :mod:`fulmen.fabric._loggers`, a private module, on purpose: they subclass the Trainer's
loggers, and LightningCLI resolves a short name such as ``--trainer.logger=CSVLogger`` among the public
subclasses of the Trainer's ``Logger``. Defined in a public module, Fabric's ``CSVLogger`` would make that name
ambiguous as soon as this module was imported (jsonargparse skips classes whose import path is private).
"""

from fulmen.fabric._loggers import CSVLogger, Logger, TensorBoardLogger

__all__ = ["CSVLogger", "Logger", "TensorBoardLogger"]
