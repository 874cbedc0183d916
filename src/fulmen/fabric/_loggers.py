"""Fabric's loggers (re-exported by ``fulmen.fabric.loggers``, which mirrors ``lightning.fabric.loggers``): the
Trainer's CSV and TensorBoard loggers with Fabric's constructor and directory names.

The difference is naming only: Fabric's loggers take ``root_dir`` (the Trainer's take ``save_dir``) and their
:attr:`root_dir` is that directory, while a Trainer logger's ``root_dir`` is ``save_dir/name``. Files go to
``root_dir/name/version_N`` in both; writing, versioning and buffering are the Trainer loggers' code.
Use them with ``Fabric(loggers=...)`` and ``fabric.log``/``fabric.log_dict``::

    fabric = Fabric(loggers=CSVLogger("logs"))  # logs/lightning_logs/version_0/metrics.csv
    fabric.log("loss", loss, step=i)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fulmen.loggers import csv_logs, tensorboard
from fulmen.loggers.logger import Logger
from fulmen.loggers.utilities import _PATH


class CSVLogger(csv_logs.CSVLogger):
    """Log metrics to ``root_dir/name/version_N/metrics.csv`` (no dependencies).

    Args:
        root_dir: The directory that holds the experiment folders (local path or fsspec URL).
        name: The experiment folder under ``root_dir``; ``None`` or ``""`` puts the versions directly in it.
        version: ``None`` for the next free ``version_N``, an int for ``version_<int>``, or a folder name.
        prefix: Prepended to every metric name, joined with ``"-"``.
        flush_logs_every_n_steps: Write buffered rows every this many steps (and on ``save``/``finalize``).

    Raises:
        MisconfigurationException: If an argument has the wrong type or value, or ``root_dir`` is a file.
    """

    _DIR_ARG = "root_dir"

    def __init__(
        self,
        root_dir: _PATH,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        super().__init__(root_dir, name, version, prefix, flush_logs_every_n_steps)

    @property
    def root_dir(self) -> str:
        """The directory given as ``root_dir``; the versions are under ``root_dir/name``."""
        return self._save_dir


class TensorBoardLogger(tensorboard.TensorBoardLogger):
    r"""Log to TensorBoard event files in ``root_dir/name/version_N[/sub_dir]`` (extra ``tensorboard``).

    Args:
        root_dir: The directory that holds the experiment folders; ``tensorboard --logdir <root_dir>``.
        name: The experiment folder under ``root_dir``; ``None`` or ``""`` puts the versions directly in it.
        version: ``None`` for the next free ``version_N``, an int for ``version_<int>``, or a folder name.
        default_hp_metric: When hyperparameters are logged without metrics, also log ``hp_metric = -1``.
        prefix: Prepended to every metric name, joined with ``"-"``.
        sub_dir: A folder under the version folder for the event files.
        \**kwargs: Passed to ``SummaryWriter``.

    Raises:
        ModuleNotFoundError: If tensorboard is not installed.
        MisconfigurationException: If an argument has the wrong type or value, or ``root_dir`` is a file.
    """

    _DIR_ARG = "root_dir"

    def __init__(
        self,
        root_dir: _PATH,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: _PATH | None = None,
        **kwargs: Any,
    ) -> None:
        # Fabric's logger always records the graph when asked (it has no log_graph flag)
        super().__init__(
            root_dir, name, version, True, default_hp_metric=default_hp_metric, prefix=prefix, sub_dir=sub_dir,
            **kwargs,
        )

    @property
    def root_dir(self) -> str:
        """The directory given as ``root_dir``; the versions are under ``root_dir/name``."""
        return self._save_dir

    def log_graph(self, model: nn.Module, input_array: Any = None) -> None:
        """Trace ``model`` (what ``fabric.setup`` returned, or the original) and write its graph."""
        super().log_graph(getattr(model, "module", model) if _is_fabric_module(model) else model, input_array)


def _is_fabric_module(model: Any) -> bool:
    from fulmen.fabric.fabric import _FabricModule

    return isinstance(model, _FabricModule)


__all__ = ["CSVLogger", "Logger", "TensorBoardLogger"]
