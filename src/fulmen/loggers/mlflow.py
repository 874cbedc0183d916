"""MLflow logger (mirrors ``lightning.pytorch.loggers.MLFlowLogger``).

Logs hyperparameters as run params, metrics as run metrics and, with ``log_model``, checkpoint
files as run artifacts, through ``mlflow.tracking.MlflowClient``. Works with any tracking URI:
a local folder (``file:``), a database (``sqlite:///...``, needs SQLAlchemy and Alembic, which
``fulmen[mlflow]`` installs), or a tracking server (``http(s)://``, ``databricks``).

Where runs go when no ``tracking_uri`` is given (and ``MLFLOW_TRACKING_URI`` is unset): into
``save_dir``. Lightning uses MLflow's file store there (``file:<save_dir>``). Recent MLflow
versions refuse the file store unless ``MLFLOW_ALLOW_FILE_STORE=true``; with those, fulmen keeps
everything in ``save_dir`` by using MLflow's recommended backend instead, a SQLite database
``<save_dir>/mlflow.db`` with artifacts in ``<save_dir>/artifacts``. Browse either with
``mlflow ui --backend-store-uri <the logger's tracking_uri>``.

Requires the ``mlflow`` package (``pip install 'fulmen[mlflow]'``); it is imported when the
logger is created, not when ``fulmen.loggers`` is.
"""

from __future__ import annotations

import inspect
import os
import posixpath
import re
import tempfile
import time
from argparse import Namespace
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fulmen.loggers.logger import Logger, rank_zero_experiment
from fulmen.loggers.utilities import (
    _PATH,
    _add_prefix,
    _check_path_arg,
    _check_prefix,
    _checkpoint_aliases,
    _checkpoint_metadata,
    _convert_params,
    _flatten_dict,
    _LogsCheckpoints,
    _makedirs,
    _metric_to_float,
    _require,
    _to_plain,
)
from fulmen.utilities.exceptions import MisconfigurationException, misconfig
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

LOCAL_FILE_URI_PREFIX = "file:"

# Metric/param names MLflow accepts: word characters and / . - space (and : off Windows), no
# path tricks ("a//b", "/a", "..").
_BAD_NAME_CHARS = re.compile(r"[^/\w.\- :]" if os.name != "nt" else r"[^/\w.\- ]")

_STATUS = {
    "success": "FINISHED",
    "finished": "FINISHED",
    "failed": "FAILED",
    "interrupted": "KILLED",
    "killed": "KILLED",
}


def _mlflow_name(name: str) -> str:
    """Return ``name`` unchanged if MLflow accepts it, else with bad characters and path tricks removed."""
    clean = _BAD_NAME_CHARS.sub("", name)
    # MLflow also refuses names that are not their own normalized path ("a//b", "/a", "a/../b")
    if posixpath.normpath(clean) != clean or clean.startswith("/") or clean in (".", ".."):
        clean = "/".join(part for part in clean.split("/") if part not in ("", ".", ".."))
    return clean or "_"


def _file_store_allowed() -> bool:
    """Whether the installed MLflow accepts a ``file:`` tracking URI (newer ones need an opt-in)."""
    try:
        from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
    except ImportError:  # MLflow from before the file store was put in maintenance mode
        return True
    read: Callable[[], Any] = MLFLOW_ALLOW_FILE_STORE.get
    return bool(read())


def _local_path_of(uri: str) -> str | None:
    """The local directory of a ``file:`` URI (``file:/x``, ``file:///x``, ``file:./x``), else None."""
    if not uri.startswith(LOCAL_FILE_URI_PREFIX):
        return None
    return uri[len(LOCAL_FILE_URI_PREFIX) :].removeprefix("//")


class MLFlowLogger(_LogsCheckpoints, Logger):
    """Log to MLflow: params, metrics, tags and (with ``log_model``) checkpoints as artifacts.

    Example:
        >>> from fulmen.loggers import MLFlowLogger
        >>> logger = MLFlowLogger(experiment_name="my_exp", tracking_uri="sqlite:///mlflow.db")  # doctest: +SKIP
        >>> trainer = Trainer(logger=logger)  # doctest: +SKIP

    Args:
        experiment_name: The MLflow experiment; created if it doesn't exist.
        run_name: The run's display name (the ``mlflow.runName`` tag).
        tracking_uri: Where to log; default ``$MLFLOW_TRACKING_URI``, and if that is unset, a store
            in ``save_dir`` (see the module docstring).
        tags: Tags set on the new run.
        save_dir: The local folder used when no tracking URI is given. Default ``./mlruns``.
        log_model: ``True`` logs the checkpoints of the ``ModelCheckpoint`` callback when training
            ends (each one as it is saved if ``save_top_k == -1``); ``"all"`` logs each checkpoint as
            it is saved; ``False`` logs none.
        prefix: Prepended to every metric name, joined with ``"-"``.
        artifact_location: Where the experiment keeps artifacts, when this logger creates it.
        run_id: Log into this existing run (e.g. to resume) instead of creating one.
        synchronous: ``False`` logs in a background thread (``True`` waits for each call);
            ``None`` uses MLflow's default. Needs an MLflow that supports it (>= 2.8).

    Raises:
        ModuleNotFoundError: If mlflow is not installed.
        MisconfigurationException: If an argument has the wrong type or value.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        experiment_name: str = "lightning_logs",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: Mapping[str, Any] | None = None,
        save_dir: _PATH | None = "./mlruns",
        log_model: bool | str = False,
        prefix: str = "",
        artifact_location: str | None = None,
        run_id: str | None = None,
        synchronous: bool | None = None,
    ) -> None:
        _require("mlflow", "MLFlowLogger", "mlflow")
        from mlflow.tracking import MlflowClient

        owner = type(self).__name__
        _check_str(owner, "experiment_name", experiment_name)
        for arg, value in (
            ("run_name", run_name),
            ("artifact_location", artifact_location),
            ("run_id", run_id),
        ):
            if value is not None:
                _check_str(owner, arg, value)
        if tags is not None and not isinstance(tags, Mapping):
            raise misconfig(
                f"{owner}(tags=...)",
                tags,
                "a dict of tag name to value, or None",
                "pass e.g. tags={'team': 'vision'}",
            )
        if synchronous is not None:
            if not isinstance(synchronous, bool):
                raise misconfig(
                    f"{owner}(synchronous=...)", synchronous, "True, False or None", "pass a bool or None"
                )
            if "synchronous" not in inspect.signature(MlflowClient.log_batch).parameters:
                import mlflow

                raise misconfig(
                    f"{owner}(synchronous=...)",
                    synchronous,
                    f"None with the installed mlflow {mlflow.__version__}, which can't log asynchronously",
                    "upgrade mlflow (>= 2.8) or leave synchronous=None",
                )
        self._experiment_name = experiment_name
        self._run_name = run_name
        self.tags: dict[str, Any] | None = dict(tags) if tags is not None else None
        self._init_log_model(owner, log_model)
        self._prefix = _check_prefix(owner, prefix)
        self._artifact_location = artifact_location
        self._run_id = run_id
        self._experiment_id: str | None = None
        self._log_batch_kwargs: dict[str, Any] = {} if synchronous is None else {"synchronous": synchronous}
        self._logged_params: dict[str, str] = {}
        self._metric_names: dict[str, str] = {}
        self._client: MlflowClient | None = None
        self._initialized = False

        tracking_uri = tracking_uri or os.getenv("MLFLOW_TRACKING_URI") or None
        self._local_dir: str | None
        if tracking_uri is not None:
            _check_str(owner, "tracking_uri", tracking_uri)
            self._tracking_uri = tracking_uri
            self._local_dir = _local_path_of(tracking_uri)
        else:
            local = _check_path_arg(owner, "save_dir", save_dir)
            assert local is not None
            local = os.path.abspath(os.path.expanduser(local))
            self._local_dir = local
            if _file_store_allowed():
                self._tracking_uri = f"{LOCAL_FILE_URI_PREFIX}{local}"
            else:
                self._tracking_uri = f"sqlite:///{os.path.join(local, 'mlflow.db')}"
                if self._artifact_location is None:
                    self._artifact_location = Path(local, "artifacts").as_uri()

    # ------------------------------------------------------------------------------------------
    # the experiment (an MlflowClient bound to one run)
    # ------------------------------------------------------------------------------------------

    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        """The ``MlflowClient``; on first access, finds or creates the experiment and the run.

        Use it with :attr:`run_id` for anything MLflow supports:
        ``logger.experiment.log_text(logger.run_id, "notes", "notes.txt")``.

        Raises:
            ModuleNotFoundError: If the tracking store needs a package that isn't installed.
            MisconfigurationException: If the store can't be opened, ``run_id`` doesn't exist,
                or the experiment is deleted.
        """
        if self._initialized:
            assert self._client is not None
            return self._client
        from mlflow.exceptions import MlflowException

        client = self._open_client()
        if self._run_id is not None:
            try:
                run = client.get_run(self._run_id)
            except MlflowException as exc:
                raise misconfig(
                    "MLFlowLogger(run_id=...)",
                    self._run_id,
                    f"the id of a run in {self._tracking_uri!r}",
                    "pass the id of an existing run (see the MLflow UI), or run_id=None to start a new run",
                ) from exc
            self._experiment_id = run.info.experiment_id
        else:
            self._experiment_id = self._get_or_create_experiment(client)
            self._run_id = self._create_run(client, self._experiment_id)
        self._client = client
        self._initialized = True
        return client

    def _open_client(self) -> MlflowClient:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri = self._tracking_uri
        if self._local_dir is not None:
            _makedirs(_local_fs(), self._local_dir, "MLFlowLogger")
        try:
            return MlflowClient(tracking_uri=uri)
        except ImportError as exc:
            raise ModuleNotFoundError(
                f"MLFlowLogger: the tracking store {uri!r} needs {exc.name or exc}: pip install 'fulmen[mlflow]'"
                f" (which includes SQLAlchemy and Alembic for sqlite:// stores). Import failed with: {exc}",
                name=exc.name,
            ) from exc
        except MlflowException as exc:
            raise MisconfigurationException(
                f"MLFlowLogger can't open the tracking store {uri!r}: {exc.message}\nFix: pass a tracking_uri this"
                " MLflow supports (e.g. 'sqlite:///mlflow.db' or a server URL), or leave tracking_uri and"
                " MLFLOW_TRACKING_URI unset to store runs in save_dir."
            ) from exc

    def _get_or_create_experiment(self, client: MlflowClient) -> str:
        from mlflow.exceptions import MlflowException

        name = self._experiment_name
        existing = client.get_experiment_by_name(name)
        if existing is None:
            rank_zero_info(f"MLFlowLogger: creating experiment {name!r} in {self._tracking_uri}")
            try:
                return str(client.create_experiment(name=name, artifact_location=self._artifact_location))
            except MlflowException:
                existing = client.get_experiment_by_name(name)  # another process created it meanwhile
                if existing is None:
                    raise
        if existing.lifecycle_stage == "deleted":
            raise misconfig(
                "MLFlowLogger(experiment_name=...)",
                name,
                f"an active experiment, but {name!r} (id {existing.experiment_id}) is deleted in {self._tracking_uri!r}",
                f"restore it (MlflowClient(tracking_uri).restore_experiment('{existing.experiment_id}')), remove it for"
                " good (`mlflow gc`), or choose another experiment_name",
            )
        return str(existing.experiment_id)

    def _create_run(self, client: MlflowClient, experiment_id: str) -> str:
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

        tags = {str(k): str(v) for k, v in (self.tags or {}).items()}
        if self._run_name is not None:
            if MLFLOW_RUN_NAME in tags and tags[MLFLOW_RUN_NAME] != self._run_name:
                rank_zero_warn(
                    f"MLFlowLogger: tags[{MLFLOW_RUN_NAME!r}]={tags[MLFLOW_RUN_NAME]!r} is replaced by"
                    f" run_name={self._run_name!r}."
                )
            tags[MLFLOW_RUN_NAME] = self._run_name
        try:  # adds the source, user and git commit tags, as mlflow.start_run does
            from mlflow.tracking.context.registry import resolve_tags

            resolved: dict[str, Any] = resolve_tags(tags)
        except ImportError:  # pragma: no cover - very old mlflow
            resolved = dict(tags)
        run = client.create_run(experiment_id=experiment_id, tags=resolved)
        return str(run.info.run_id)

    # ------------------------------------------------------------------------------------------
    # logging
    # ------------------------------------------------------------------------------------------

    @rank_zero_only
    def log_hyperparams(
        self, params: dict[str, Any] | Namespace | None = None, *args: Any, **kwargs: Any
    ) -> None:
        """Log hyperparameters as run params (nested keys joined with ``"/"``, values as strings).

        Values longer than MLflow's limit are truncated with a warning. Params can't change
        within a run: logging a key again with the same value is a no-op.

        Raises:
            MisconfigurationException: If a param logged before is logged with a different value.
        """
        from mlflow.entities import Param

        limit = _mlflow_limit("MAX_PARAM_VAL_LENGTH", 250)
        batch = _mlflow_limit("MAX_PARAMS_TAGS_PER_BATCH", 100)
        new: dict[str, str] = {}
        for raw_key, value in _flatten_dict(_convert_params(params)).items():
            key = _mlflow_name(raw_key)
            text = str(value)
            if len(text) > limit:
                rank_zero_warn(
                    f"MLFlowLogger: the value of param {raw_key!r} is {len(text)} characters long; MLflow keeps"
                    f" {limit}, so it is truncated."
                )
                text = text[:limit]
            old = self._logged_params.get(key, new.get(key))
            if old is not None and old != text:
                raise misconfig(
                    f"MLFlowLogger.log_hyperparams: param {raw_key!r}",
                    text,
                    f"the value logged before in this run, {old!r} (MLflow params can't change)",
                    "log values that change as metrics, or start a new run (a new MLFlowLogger)",
                )
            if old is None:
                new[key] = text
        items = [Param(key=k, value=v) for k, v in new.items()]
        for start in range(0, len(items), batch):
            self.experiment.log_batch(
                run_id=self._active_run_id(), params=items[start : start + batch], **self._log_batch_kwargs
            )
        self._logged_params.update(new)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log metric values at ``step`` (0 if ``None``).

        String values are skipped with a warning; names MLflow rejects are cleaned (characters
        other than letters, digits, ``_ / . - :`` and space removed) with a warning, once per name.

        Raises:
            MisconfigurationException: If a value is not a number or a one-element tensor.
        """
        from mlflow.entities import Metric

        timestamp_ms = int(time.time() * 1000)
        items = []
        for raw_key, value in _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR).items():
            if isinstance(value, str):
                rank_zero_warn(
                    f"MLFlowLogger: skipping metric {raw_key!r}: its value is the string {value!r}."
                )
                continue
            number = float(_metric_to_float("MLFlowLogger", raw_key, value))
            items.append(
                Metric(key=self._metric_key(raw_key), value=number, timestamp=timestamp_ms, step=step or 0)
            )
        batch = _mlflow_limit("MAX_METRICS_PER_BATCH", 1000)
        for start in range(0, len(items), batch):
            self.experiment.log_batch(
                run_id=self._active_run_id(), metrics=items[start : start + batch], **self._log_batch_kwargs
            )

    def _metric_key(self, key: str) -> str:
        clean = self._metric_names.get(key)
        if clean is None:
            clean = _mlflow_name(key)
            if clean != key:
                rank_zero_warn(
                    f"MLFlowLogger: MLflow metric names may only contain letters, digits, '_', '/', '.', '-', ':' and"
                    f" spaces, and no empty or relative path parts; logging {key!r} as {clean!r}.",
                    category=RuntimeWarning,
                )
            self._metric_names[key] = clean
        return clean

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Log pending checkpoints (``log_model=True``) and mark the run as terminated.

        Args:
            status: ``"success"``/``"finished"`` (FINISHED), ``"failed"`` (FAILED),
                ``"interrupted"``/``"killed"`` (KILLED), or an MLflow run status name.

        Raises:
            MisconfigurationException: For another status.
        """
        mlflow_status = _STATUS.get(
            status, status if status in ("FINISHED", "FAILED", "KILLED", "RUNNING") else None
        )
        if mlflow_status is None:
            raise misconfig(
                "MLFlowLogger.finalize(status=...)",
                status,
                f"one of {sorted(_STATUS)} or an MLflow status (FINISHED, FAILED, KILLED)",
                "pass 'success' or 'failed'",
            )
        if not self._initialized:
            return  # nothing was logged: no run to close
        if self._checkpoint_callback is not None:
            self._scan_and_log_checkpoints(self._checkpoint_callback)
        self.experiment.set_terminated(self._active_run_id(), mlflow_status)

    @rank_zero_only
    def _scan_and_log_checkpoints(self, checkpoint_callback: Any) -> None:
        """Upload each new checkpoint under ``<file stem>/`` with ``metadata.yaml`` and ``aliases.txt``."""
        run_id = self._active_run_id()
        for record in self._new_checkpoints(checkpoint_callback):
            artifact_path = Path(record.path).stem
            self.experiment.log_artifact(run_id, record.path, artifact_path)
            with tempfile.TemporaryDirectory(prefix="fulmen-mlflow-") as tmp:
                metadata = _to_plain(_checkpoint_metadata(checkpoint_callback, record))
                Path(tmp, "metadata.yaml").write_text(
                    yaml.safe_dump(metadata, sort_keys=False), encoding="utf-8"
                )
                aliases = _checkpoint_aliases(checkpoint_callback, record.path)
                Path(tmp, "aliases.txt").write_text("\n".join(aliases) + "\n", encoding="utf-8")
                self.experiment.log_artifacts(run_id, tmp, artifact_path)

    # ------------------------------------------------------------------------------------------
    # properties
    # ------------------------------------------------------------------------------------------

    @property
    def tracking_uri(self) -> str:
        """The tracking URI in use (given, from ``MLFLOW_TRACKING_URI``, or the store in ``save_dir``)."""
        return self._tracking_uri

    @property
    def save_dir(self) -> str | None:
        """The local folder runs are stored in (for ``file:`` URIs and the default store), else ``None``."""
        return self._local_dir

    @property
    def experiment_id(self) -> str | None:
        """The experiment's id (creates the experiment and run on first access)."""
        _ = self.experiment
        return self._experiment_id

    @property
    def run_id(self) -> str | None:
        """The run's id (creates the experiment and run on first access)."""
        _ = self.experiment
        return self._run_id

    def _active_run_id(self) -> str:
        """The run id, creating the run if needed (only called on rank 0, where there is one)."""
        _ = self.experiment
        assert self._run_id is not None
        return self._run_id

    @property
    def name(self) -> str | None:
        """The experiment id (Lightning's convention; checkpoints go to ``save_dir/<id>/<run id>``)."""
        return self.experiment_id

    @property
    def version(self) -> str | None:
        """The run id."""
        return self.run_id

    def __getstate__(self) -> dict[str, Any]:
        # The client holds a database engine or HTTP session; the copy reconnects to the same run.
        state = self.__dict__.copy()
        state["_client"] = None
        state["_initialized"] = False
        return state


def _check_str(owner: str, arg: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise misconfig(f"{owner}({arg}=...)", value, "a non-empty str", f"pass {arg} as a string")


def _mlflow_limit(name: str, default: int) -> int:
    """A limit from ``mlflow.utils.validation`` (they changed across versions), or ``default``."""
    try:
        from mlflow.utils import validation
    except ImportError:  # pragma: no cover
        return default
    value = getattr(validation, name, default)
    return value if isinstance(value, int) and value > 0 else default


def _local_fs() -> Any:
    from fsspec.implementations.local import LocalFileSystem  # type: ignore[import-untyped]

    return LocalFileSystem()
