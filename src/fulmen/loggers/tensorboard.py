"""TensorBoard logger (mirrors ``lightning.pytorch.loggers.TensorBoardLogger``).

Writes TensorBoard event files with ``torch.utils.tensorboard.SummaryWriter`` into
``save_dir/name/version_N[/sub_dir]``: scalars for metrics, the hparams plugin's records for
hyperparameters (with an ``hp_metric`` scalar by default, so the HPARAMS tab lists the run), the
model graph when ``log_graph=True``, and an ``hparams.yaml`` next to them.

Requires the ``tensorboard`` package (``pip install 'fulmen[tensorboard]'``), imported only when
the logger is created.
"""

from __future__ import annotations

import inspect
import os
import warnings
from argparse import Namespace
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from fulmen.loggers._dir_logger import _DirectoryLogger
from fulmen.loggers.logger import rank_zero_experiment
from fulmen.loggers.utilities import (
    _PATH,
    _add_prefix,
    _check_path_arg,
    _check_prefix,
    _convert_params,
    _flatten_dict,
    _metric_to_float,
    _require,
    _require_installed,
    _sanitize_params,
    _save_hparams_to_yaml,
)
from fulmen.utilities.apply_func import move_data_to_device
from fulmen.utilities.exceptions import misconfig
from fulmen.utilities.rank_zero import rank_zero_only, rank_zero_warn

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


class TensorBoardLogger(_DirectoryLogger):
    r"""Log to TensorBoard event files in ``save_dir/name/version_N``.

    View them with ``tensorboard --logdir <save_dir>``.

    Example:
        >>> from fulmen.loggers import TensorBoardLogger
        >>> logger = TensorBoardLogger("tb_logs", name="my_model")  # doctest: +SKIP
        >>> trainer = Trainer(logger=logger)  # doctest: +SKIP

    Args:
        save_dir: The root directory.
        name: The experiment folder under ``save_dir``; ``None`` or ``""`` writes directly into ``save_dir``.
        version: ``None`` for the next free ``version_N``, an int for ``version_<int>``, or a str
            used as the folder name.
        log_graph: Record the model graph in :meth:`log_graph` (traces the model with
            ``example_input_array`` or the given input).
        default_hp_metric: When hyperparameters are logged without metrics, also log
            ``hp_metric = -1`` so TensorBoard's HPARAMS tab shows the run. Log your own
            ``hp_metric`` later to replace it.
        prefix: Prepended to every metric name, joined with ``"-"``.
        sub_dir: A folder under the version folder to write the event files into.
        \**kwargs: Passed to ``SummaryWriter`` (``max_queue``, ``flush_secs``, ``filename_suffix``,
            ``purge_step``, ``comment``).

    Raises:
        ModuleNotFoundError: If tensorboard is not installed.
        MisconfigurationException: If an argument has the wrong type or value, ``save_dir`` is a
            file, or a ``SummaryWriter`` argument is unknown.
    """

    NAME_HPARAMS_FILE = "hparams.yaml"
    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        save_dir: _PATH,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        log_graph: bool = False,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: _PATH | None = None,
        **kwargs: Any,
    ) -> None:
        # only checked here: the (heavy) import happens when the writer is first needed, so a default
        # Trainer() stays cheap
        _require_installed("tensorboard", "TensorBoardLogger", "tensorboard")
        super().__init__(save_dir, name, version)
        owner = type(self).__name__
        for arg, value in (("log_graph", log_graph), ("default_hp_metric", default_hp_metric)):
            if not isinstance(value, bool):
                raise misconfig(
                    f"{owner}({arg}=...)", value, "True or False", f"pass {arg}=True or {arg}=False"
                )
        self._log_graph = log_graph
        self._default_hp_metric = default_hp_metric
        self._prefix = _check_prefix(owner, prefix)
        self._sub_dir = _check_path_arg(owner, "sub_dir", sub_dir, allow_none=True)
        if kwargs:
            _check_writer_kwargs(owner, kwargs)
        self._kwargs = kwargs
        self.hparams: dict[str, Any] = {}
        self._hparams_written: dict[str, Any] | None = None
        self._experiment: SummaryWriter | None = None

    @property
    def log_dir(self) -> str:
        """``root_dir/version_N[/sub_dir]``, where the event files go."""
        log_dir = super().log_dir
        if self._sub_dir is not None:
            log_dir = os.path.join(log_dir, self._sub_dir)
        return os.path.expanduser(os.path.expandvars(log_dir))

    @property
    def sub_dir(self) -> str | None:
        """The folder under the version folder, if one was given."""
        return self._sub_dir

    @property
    @rank_zero_experiment
    def experiment(self) -> SummaryWriter:
        """The ``SummaryWriter``; created, with its directory, on first access.

        Use it for anything TensorBoard supports: ``logger.experiment.add_image(...)``.

        Raises:
            MisconfigurationException: If the log directory can't be created.
        """
        if self._experiment is None:
            _require("tensorboard", "TensorBoardLogger", "tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            self._makedirs(self._experiment_dir)
            self._makedirs(self.log_dir)
            self._experiment = SummaryWriter(log_dir=self.log_dir, **self._kwargs)
        return self._experiment

    @rank_zero_only
    def log_hyperparams(
        self,
        params: dict[str, Any] | Namespace | None = None,
        metrics: Mapping[str, Any] | float | None = None,
        step: int | None = None,
    ) -> None:
        """Record hyperparameters for TensorBoard's HPARAMS tab, and keep them for ``hparams.yaml``.

        Nested values are flattened with ``"/"``; values TensorBoard can't show (``None``, lists,
        objects) are shown as strings.

        Args:
            params: The hyperparameters.
            metrics: Metric values to associate with them (a dict, or a number logged as
                ``hp_metric``). ``None`` logs ``hp_metric = -1`` if ``default_hp_metric``.
            step: The step the metrics are logged at (default 0).
        """
        from torch.utils.tensorboard import summary

        hparams: Callable[..., tuple[Any, Any, Any]] = summary.hparams

        params = _convert_params(params)
        self.hparams.update(params)
        flat = _sanitize_params(_flatten_dict(params))
        metric_dict: dict[str, Any]
        if metrics is None:
            metric_dict = {"hp_metric": -1} if self._default_hp_metric else {}
        elif isinstance(metrics, Mapping):
            metric_dict = dict(metrics)
        else:
            metric_dict = {"hp_metric": metrics}
        if metric_dict:
            self.log_metrics(metric_dict, step if step is not None else 0)
        metric_dict = _add_prefix(metric_dict, self._prefix, self.LOGGER_JOIN_CHAR)
        experiment, session_start, session_end = hparams(flat, metric_dict)
        # SummaryWriter.add_hparams would write into a new sub-run folder; the file writer puts
        # the hparams records in this run, next to its scalars.
        writer = self.experiment._get_file_writer()
        for record in (experiment, session_start, session_end):
            writer.add_summary(record)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Write each metric as a scalar; a dict value is written with ``add_scalars`` (one chart).

        Raises:
            MisconfigurationException: If a value is neither a scalar nor a dict of scalars.
        """
        owner = type(self).__name__
        for key, value in _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR).items():
            if isinstance(value, Mapping):
                scalars = {str(k): _metric_to_float(owner, f"{key}/{k}", v) for k, v in value.items()}
                self.experiment.add_scalars(key, scalars, step)
            else:
                self.experiment.add_scalar(key, _metric_to_float(owner, key, value), step)

    @rank_zero_only
    def log_graph(self, model: nn.Module, input_array: Any = None) -> None:
        """Trace ``model`` on an example input and write its graph (only if ``log_graph=True``).

        Args:
            model: The model (a ``LightningModule`` or any ``nn.Module``).
            input_array: An example input; defaults to ``model.example_input_array``. It is moved
                to the model's device (through the module's batch-transfer hooks when it has them).

        Raises:
            RuntimeError: If tracing fails; the message says how to avoid it.
        """
        if not self._log_graph:
            return
        if input_array is None:
            input_array = getattr(model, "example_input_array", None)
        if input_array is None:
            rank_zero_warn(
                "TensorBoardLogger: can't log the computational graph: `model.example_input_array` is not set"
                " and no `input_array` was given. Set one, or pass log_graph=False."
            )
            return
        input_array = _transfer_to_model_device(model, input_array)
        try:
            with warnings.catch_warnings():
                # add_graph traces with torch.jit, which warns that it is deprecated; the user
                # can do nothing about that, so it is noise here
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=DeprecationWarning)
                self.experiment.add_graph(model, input_array)
        except Exception as exc:
            raise RuntimeError(
                f"TensorBoardLogger.log_graph: tracing {type(model).__name__} with an input of type"
                f" {type(input_array).__name__} failed: {exc}. Fix: make example_input_array something the"
                " model's forward accepts (a tensor or a tuple of positional arguments), or pass log_graph=False."
            ) from exc

    @rank_zero_only
    def save(self) -> None:
        """Flush the event files and write ``hparams.yaml`` if the hyperparameters changed."""
        if self._experiment is not None:
            self._experiment.flush()
        log_dir = self.log_dir
        hparams_file = os.path.join(log_dir, self.NAME_HPARAMS_FILE)
        if not self._fs.isdir(log_dir):
            return  # nothing was logged yet; don't create folders just for an empty file
        if self._hparams_written != self.hparams or not self._fs.isfile(hparams_file):
            _save_hparams_to_yaml(self._fs, hparams_file, self.hparams, type(self).__name__)
            self._hparams_written = dict(self.hparams)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Flush and close the event files and write ``hparams.yaml``.

        The writer reopens by itself if the logger is used again (e.g. ``trainer.test`` after ``fit``).
        """
        if self._experiment is not None:
            self._experiment.flush()
            self._experiment.close()
        self.save()

    def __getstate__(self) -> dict[str, Any]:
        # The SummaryWriter holds threads and open files; the copy opens its own when it logs.
        state = self.__dict__.copy()
        state["_experiment"] = None
        return state


def _check_writer_kwargs(owner: str, kwargs: Mapping[str, Any]) -> None:
    """Reject keyword arguments ``SummaryWriter`` doesn't take, before any file is written."""
    from torch.utils.tensorboard import SummaryWriter

    accepted = set(inspect.signature(SummaryWriter.__init__).parameters) - {"self", "log_dir"}
    if "log_dir" in kwargs:
        raise misconfig(
            f"{owner}(log_dir=...)",
            kwargs["log_dir"],
            "no log_dir: the directory is save_dir/name/version[/sub_dir]",
            "use save_dir=, name=, version= and sub_dir= instead",
        )
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise misconfig(
            f"{owner}(**kwargs)",
            unknown,
            f"keyword arguments of SummaryWriter: {sorted(accepted)}",
            "remove or rename the unknown arguments",
        )


def _transfer_to_model_device(model: nn.Module, batch: Any) -> Any:
    """Move an example input to the model's device, through a LightningModule's transfer hooks if it has them."""
    device = next((p.device for p in model.parameters()), None)
    if device is None:
        return batch
    hooks = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
    if all(callable(getattr(model, hook, None)) for hook in hooks):
        batch = model.on_before_batch_transfer(batch, 0)  # type: ignore[operator]
        batch = model.transfer_batch_to_device(batch, device, 0)  # type: ignore[operator]
        return model.on_after_batch_transfer(batch, 0)  # type: ignore[operator]
    return move_data_to_device(batch, device)
