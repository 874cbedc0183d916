"""Save a checkpoint when ``fit`` raises, so a crashed run can be resumed."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from typing_extensions import override

from fulmen.callbacks.callback import Checkpoint
from fulmen.utilities.exceptions import misconfig

if TYPE_CHECKING:
    from fulmen.core.module import LightningModule
    from fulmen.trainer.trainer import Trainer


class OnExceptionCheckpoint(Checkpoint):
    r"""Save a checkpoint to ``dirpath/filename.ckpt`` when an exception interrupts training.

    The file is overwritten by each exception and removed when a later run ends normally (at
    ``teardown``), so a stale crash checkpoint is never mistaken for a fresh one.

    Args:
        dirpath: the directory of the checkpoint file.
        filename: the checkpoint's file name, without the ``.ckpt`` extension.

    Raises:
        MisconfigurationException: if ``filename`` is empty or not a string, or ``dirpath`` is empty.

    Example::

        trainer = Trainer(callbacks=[OnExceptionCheckpoint(dirpath="checkpoints")])
        trainer.fit(model, ckpt_path="checkpoints/on_exception.ckpt")  # resume after a crash
    """

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | os.PathLike[str], filename: str = "on_exception") -> None:
        super().__init__()
        if dirpath is None or not str(dirpath):
            raise misconfig(
                "OnExceptionCheckpoint(dirpath=...)",
                dirpath,
                "a directory path",
                "pass e.g. dirpath='checkpoints'",
            )
        if not isinstance(filename, str) or not filename:
            raise misconfig(
                "OnExceptionCheckpoint(filename=...)",
                filename,
                "a non-empty file name without extension",
                "pass e.g. filename='on_exception'",
            )
        self.dirpath = dirpath
        self.filename = filename
        self._saved_on_exception = False

    @property
    def ckpt_path(self) -> str:
        """The checkpoint's full path: ``dirpath/filename.ckpt``."""
        return os.path.join(self.dirpath, self.filename + self.FILE_EXTENSION)

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        trainer.save_checkpoint(self.ckpt_path)
        self._saved_on_exception = True

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._saved_on_exception:
            # This run crashed (the trainer may still tear down): keep the file it just wrote.
            self._saved_on_exception = False
            return
        if stage == "fit":
            # A fit that ended normally makes an older crash checkpoint stale.
            trainer.strategy.remove_checkpoint(self.ckpt_path)


__all__ = ["OnExceptionCheckpoint"]
