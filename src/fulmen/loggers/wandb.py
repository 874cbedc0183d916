"""Weights & Biases logger (mirrors ``lightning.pytorch.loggers.WandbLogger``).

Logs hyperparameters to the run config, metrics to the run history (against a
``trainer/global_step`` x-axis), and, with ``log_model``, checkpoints as ``model`` artifacts.

Offline use: pass ``offline=True`` (or set ``WANDB_MODE=offline``). The run is written to
``save_dir/wandb/offline-run-*`` with no network access, checkpoints logged as artifacts
included, and ``wandb sync <run dir>`` uploads it later. Lightning refuses ``log_model`` with
``offline=True``; W&B records artifacts in offline runs and uploads them on sync, so fulmen allows it.

Requires the ``wandb`` package (``pip install 'fulmen[wandb]'``); it is imported when the logger
is created, not when ``fulmen.loggers`` is.
"""

from __future__ import annotations

import inspect
import os
from argparse import Namespace
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from fulmen.loggers.logger import Logger, rank_zero_experiment
from fulmen.loggers.utilities import (
    _PATH,
    _add_prefix,
    _check_path_arg,
    _check_prefix,
    _checkpoint_aliases,
    _checkpoint_metadata,
    _convert_params,
    _LogsCheckpoints,
    _makedirs,
    _require,
    _sanitize_callable_params,
    _scalar_or_none,
    _to_plain,
)
from fulmen.utilities.exceptions import misconfig
from fulmen.utilities.rank_zero import rank_zero_only, rank_zero_warn

if TYPE_CHECKING:
    from wandb.sdk.wandb_run import Run

_STEP_METRIC = "trainer/global_step"


class WandbLogger(_LogsCheckpoints, Logger):
    r"""Log to Weights & Biases.

    Example:
        >>> from fulmen.loggers import WandbLogger
        >>> logger = WandbLogger(project="my_project", log_model="all")  # doctest: +SKIP
        >>> trainer = Trainer(logger=logger)  # doctest: +SKIP

    Args:
        name: The run's display name.
        save_dir: The folder W&B writes its local files to (``save_dir/wandb``).
        version: The run id, to resume a run (same as ``id``).
        offline: Write the run locally only; upload it later with ``wandb sync``.
        dir: Same as ``save_dir`` (W&B's name for it).
        id: Same as ``version``.
        anonymous: ``True`` lets W&B log without an account (``anonymous="allow"``).
        project: The project; default ``$WANDB_PROJECT`` or ``"lightning_logs"``.
        log_model: ``True`` logs the checkpoints of the ``ModelCheckpoint`` callback when training
            ends successfully (each one as it is saved if ``save_top_k == -1``); ``"all"`` logs
            each checkpoint as it is saved; ``False`` logs none.
        experiment: An existing ``wandb`` run to log into, instead of starting one.
        prefix: Prepended to every metric name, joined with ``"-"``.
        checkpoint_name: The artifact name for checkpoints (default ``model-<run id>``).
        add_file_policy: ``"mutable"`` (W&B copies each checkpoint into its staging area, safe if
            the file is overwritten later) or ``"immutable"`` (no copy; don't change the file).
        \**kwargs: Passed to ``wandb.init`` (``entity``, ``group``, ``tags``, ``job_type``,
            ``config``, ``settings``, ...).

    Raises:
        ModuleNotFoundError: If wandb is not installed.
        MisconfigurationException: If an argument has the wrong type or value, or two arguments conflict.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        name: str | None = None,
        save_dir: _PATH = ".",
        version: str | None = None,
        offline: bool = False,
        dir: _PATH | None = None,
        id: str | None = None,
        anonymous: bool | None = None,
        project: str | None = None,
        log_model: bool | str = False,
        experiment: Any = None,
        prefix: str = "",
        checkpoint_name: str | None = None,
        add_file_policy: str = "mutable",
        **kwargs: Any,
    ) -> None:
        _require("wandb", "WandbLogger", "wandb")
        owner = type(self).__name__
        for arg, value in (("name", name), ("project", project), ("checkpoint_name", checkpoint_name)):
            _check_optional_str(owner, arg, value)
        for arg, value in (("version", version), ("id", id)):
            _check_optional_str(owner, arg, value)
        if version is not None and id is not None and version != id:
            raise misconfig(
                f"{owner}(version=..., id=...)",
                (version, id),
                "at most one of them, or the same value (both are the run id)",
                "pass only id= (or only version=)",
            )
        if not isinstance(offline, bool):
            raise misconfig(
                f"{owner}(offline=...)", offline, "True or False", "pass offline=True or offline=False"
            )
        if anonymous is not None and not isinstance(anonymous, bool):
            raise misconfig(
                f"{owner}(anonymous=...)", anonymous, "True, False or None", "pass a bool or None"
            )
        if add_file_policy not in ("mutable", "immutable"):
            raise misconfig(
                f"{owner}(add_file_policy=...)",
                add_file_policy,
                "'mutable' or 'immutable'",
                "pass one of the two",
            )
        if offline and kwargs.get("mode") not in (None, "offline"):
            raise misconfig(
                f"{owner}(offline=True, mode=...)",
                kwargs["mode"],
                "no mode, or mode='offline', with offline=True",
                "drop one of the two arguments",
            )
        save_dir_str = _check_path_arg(owner, "save_dir", save_dir, allow_none=True)
        dir_str = _check_path_arg(owner, "dir", dir, allow_none=True)
        if dir_str is not None and save_dir_str not in (None, ".", dir_str):
            rank_zero_warn(
                f"{owner}: both save_dir={save_dir_str!r} and dir={dir_str!r} were given; using save_dir."
            )
        elif dir_str is not None:
            save_dir_str = dir_str
        self._offline = offline
        self._init_log_model(owner, log_model)
        self._prefix = _check_prefix(owner, prefix)
        self._experiment = experiment
        self._checkpoint_name = checkpoint_name
        self._add_file_policy = add_file_policy

        project = project or os.environ.get("WANDB_PROJECT", "lightning_logs")
        self._wandb_init: dict[str, Any] = {
            "name": name,
            "project": project,
            "dir": save_dir_str,
            "id": version or id,
            "resume": "allow",
        }
        if anonymous is not None:
            self._wandb_init["anonymous"] = "allow" if anonymous else "never"
        if offline:
            self._wandb_init["mode"] = "offline"
        self._wandb_init.update(kwargs)
        self._project: str | None = self._wandb_init.get("project")
        self._save_dir: str | None = self._wandb_init.get("dir")
        self._name: str | None = self._wandb_init.get("name")
        self._id: str | None = self._wandb_init.get("id")

    def __getstate__(self) -> dict[str, Any]:
        # A Run can't be pickled; the copy (e.g. in a spawned process) re-attaches to the same run.
        state = self.__dict__.copy()
        if self._experiment is not None:
            state["_id"] = getattr(self._experiment, "id", None)
            state["_attach_id"] = getattr(self._experiment, "_attach_id", None)
            state["_name"] = getattr(self._experiment, "name", None)
        state["_experiment"] = None
        return state

    @property
    @rank_zero_experiment
    def experiment(self) -> Run:
        """The W&B ``Run``; started on first access (or the run already active in this process).

        Use it for anything W&B supports: ``logger.experiment.log({"samples": wandb.Image(x)})``.

        Raises:
            MisconfigurationException: If ``save_dir`` can't be created.
        """
        if self._experiment is None:
            import wandb

            attach_id = getattr(self, "_attach_id", None)
            if wandb.run is not None:
                rank_zero_warn(
                    "WandbLogger: a wandb run is already in progress in this process; this logger logs into it."
                    " Call `wandb.finish()` before creating the logger to start a new run instead."
                )
                self._experiment = wandb.run
            elif attach_id is not None and hasattr(wandb, "_attach"):
                self._experiment = wandb._attach(attach_id)
            else:
                if self._save_dir is not None:
                    from fsspec.implementations.local import LocalFileSystem  # type: ignore[import-untyped]

                    _makedirs(LocalFileSystem(), self._save_dir, type(self).__name__)
                self._experiment = wandb.init(**self._wandb_init)
            # plot every metric against the Trainer's step rather than W&B's own call counter
            if callable(getattr(self._experiment, "define_metric", None)):
                self._experiment.define_metric(_STEP_METRIC)
                self._experiment.define_metric("*", step_metric=_STEP_METRIC, step_sync=True)
        run: Run = self._experiment
        return run

    def watch(
        self, model: nn.Module, log: str | None = "gradients", log_freq: int = 100, log_graph: bool = True
    ) -> None:
        """Log the model's gradients and/or parameters (``log="gradients"|"parameters"|"all"``) every ``log_freq`` steps."""
        self.experiment.watch(model, log=log, log_freq=log_freq, log_graph=log_graph)  # type: ignore[arg-type]

    @rank_zero_only
    def log_hyperparams(
        self, params: dict[str, Any] | Namespace | None = None, *args: Any, **kwargs: Any
    ) -> None:
        """Update the run config with ``params`` (nested dicts kept; classes and functions logged by name)."""
        params = _sanitize_callable_params(_convert_params(params))
        self.experiment.config.update(params, allow_val_change=True)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log values to the run history; with ``step``, also ``trainer/global_step = step``.

        Values may be numbers, one-element tensors (read as numbers) or W&B objects
        (``wandb.Image``, ``wandb.Table``, ...).
        """
        row: dict[str, Any] = {}
        for key, value in _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR).items():
            scalar = _scalar_or_none(value)
            row[key] = scalar if scalar is not None else value
        if step is not None:
            row[_STEP_METRIC] = step
        self.experiment.log(row)

    @rank_zero_only
    def log_table(
        self,
        key: str,
        columns: list[Any] | None = None,
        data: list[list[Any]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """Log a ``wandb.Table`` from ``columns`` and ``data`` (rows), or from a pandas ``dataframe``."""
        import wandb

        self.log_metrics({key: wandb.Table(columns=columns, data=data, dataframe=dataframe)}, step)

    @rank_zero_only
    def log_text(
        self,
        key: str,
        columns: list[str] | None = None,
        data: list[list[str]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """Log a table of text (same arguments as :meth:`log_table`)."""
        self.log_table(key, columns, data, dataframe, step)

    @rank_zero_only
    def log_image(
        self, key: str, images: Sequence[Any], step: int | None = None, **kwargs: Sequence[Any]
    ) -> None:
        """Log images (tensors, arrays, PIL images or paths) under ``key``.

        Args:
            key: The panel name.
            images: The images.
            step: The trainer step.
            **kwargs: Per-image lists passed to ``wandb.Image``, e.g. ``caption=["a", "b"]``.

        Raises:
            MisconfigurationException: If ``images`` is not a list, or a keyword list has another length.
        """
        import wandb

        if not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
            raise misconfig(
                "WandbLogger.log_image(images=...)",
                type(images).__name__,
                "a list of images",
                "wrap it: [image]",
            )
        for arg, values in kwargs.items():
            if not isinstance(values, Sequence) or len(values) != len(images):
                given = len(values) if isinstance(values, Sequence) else type(values).__name__
                raise misconfig(
                    f"WandbLogger.log_image({arg}=...)",
                    given,
                    f"a list with one entry per image ({len(images)})",
                    f"pass {arg} as a list as long as images",
                )
        per_image = [{arg: values[i] for arg, values in kwargs.items()} for i in range(len(images))]
        self.log_metrics({key: [wandb.Image(img, **kw) for img, kw in zip(images, per_image)]}, step)

    @property
    def save_dir(self) -> str | None:
        """The folder W&B writes its local files under."""
        return self._save_dir

    @property
    def name(self) -> str | None:
        """The project name (Lightning's convention; checkpoints go to ``save_dir/<project>/<run id>``)."""
        return self._project

    @property
    def version(self) -> str | None:
        """The run id (known once the run started, or when given as ``version``/``id``)."""
        return self._experiment.id if self._experiment is not None else self._id

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Log pending checkpoints (``log_model=True``) if the run succeeded.

        The run itself stays open, so the logger can be used by a following ``trainer.test``;
        W&B finishes it when the process exits, or call ``logger.experiment.finish()``.
        """
        if status != "success":
            return  # don't publish checkpoints of a failed run as the model
        if self._checkpoint_callback is not None and self._experiment is not None:
            self._scan_and_log_checkpoints(self._checkpoint_callback)

    @rank_zero_only
    def _scan_and_log_checkpoints(self, checkpoint_callback: Any) -> None:
        """Log each new checkpoint as a version of the ``model`` artifact, aliased ``latest`` (and ``best``)."""
        import wandb

        add_file_takes_policy = "policy" in inspect.signature(wandb.Artifact.add_file).parameters
        for record in self._new_checkpoints(checkpoint_callback):
            if not self._checkpoint_name:
                self._checkpoint_name = f"model-{self.experiment.id}"
            metadata = _to_plain(_checkpoint_metadata(checkpoint_callback, record))
            artifact = wandb.Artifact(name=self._checkpoint_name, type="model", metadata=metadata)
            if add_file_takes_policy:
                artifact.add_file(record.path, name="model.ckpt", policy=self._add_file_policy)  # type: ignore[arg-type]
            else:  # pragma: no cover - wandb < 0.17
                artifact.add_file(record.path, name="model.ckpt")
            self.experiment.log_artifact(
                artifact, aliases=_checkpoint_aliases(checkpoint_callback, record.path)
            )

    def use_artifact(self, artifact: str, artifact_type: str | None = None) -> Any:
        """Declare that this run uses ``artifact`` (e.g. ``"user/project/model-abc:best"``) and return it."""
        return self.experiment.use_artifact(artifact, type=artifact_type)

    @staticmethod
    def download_artifact(
        artifact: str,
        save_dir: _PATH | None = None,
        artifact_type: str | None = None,
        use_artifact: bool | None = True,
    ) -> str:
        """Download an artifact (e.g. a logged checkpoint) and return the local folder it is in.

        Inside an active run with ``use_artifact``, the download is recorded as used by that run;
        otherwise it goes through the public API (needs network access and credentials).
        """
        import wandb

        if wandb.run is not None and use_artifact:
            found = wandb.run.use_artifact(artifact)
        else:
            found = wandb.Api().artifact(artifact, type=artifact_type)
        root = None if save_dir is None else os.fspath(save_dir)
        return str(found.download(root=root))


def _check_optional_str(owner: str, arg: str, value: Any) -> None:
    if value is not None and not (isinstance(value, str) and value):
        raise misconfig(
            f"{owner}({arg}=...)",
            value,
            "a non-empty str or None",
            f"pass {arg} as a string, or leave it out",
        )
