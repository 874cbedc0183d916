"""Helpers shared by the loggers (mirrors ``lightning.pytorch.loggers.utilities``).

What lives here and who uses it:

* hyperparameters: :func:`_convert_params` (Namespace, dataclass, mapping -> ``dict``),
  :func:`_flatten_dict` (nested -> ``"a/b"`` keys), :func:`_sanitize_params` (values a tool's
  hparams API accepts), :func:`_sanitize_callable_params` and :func:`_to_plain` (YAML-safe data);
  :func:`_save_hparams_to_yaml` writes ``hparams.yaml`` for the CSV and TensorBoard loggers;
* metrics: :func:`_add_prefix` and :func:`_metric_to_float`;
* checkpoints as artifacts: :func:`_scan_checkpoints` and :func:`_checkpoint_metadata`, used by the
  MLflow and W&B loggers when ``log_model`` is set;
* optional dependencies: :func:`_require` imports a package or raises an error naming the extra;
* directories: :func:`_makedirs` creates a log directory or explains why it can't.

Nothing here imports tensorboard, mlflow or wandb.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import importlib.util
import numbers
import os
import pathlib
from argparse import Namespace
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple, Union

import yaml

from fulmen.utilities.exceptions import MisconfigurationException, misconfig
from fulmen.utilities.rank_zero import rank_zero_warn

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem  # type: ignore[import-untyped]

_PATH = Union[str, "os.PathLike[str]"]

#: The scalar types every tool's hyperparameter API accepts as they are.
_PRIMITIVES = (bool, int, float, str)


def _require(module: str, owner: str, extra: str, pip_name: str | None = None) -> ModuleType:
    """Import an optional dependency, or fail with an error that names the extra to install.

    Args:
        module: The module to import, e.g. ``"mlflow"``.
        owner: The class that needs it, used in the message, e.g. ``"MLFlowLogger"``.
        extra: The fulmen extra that installs it, e.g. ``"mlflow"``.
        pip_name: The package name on PyPI when it differs from ``module``.

    Returns:
        The imported module.

    Raises:
        ModuleNotFoundError: If the module can't be imported. The original error is chained and
            quoted, so a broken install (rather than a missing one) is visible too.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"{owner} requires {pip_name or module}: pip install 'fulmen[{extra}]' "
            f"(or pip install {pip_name or module}). Importing {module!r} failed with: {exc}",
            name=module,
        ) from exc


def _require_installed(module: str, owner: str, extra: str, pip_name: str | None = None) -> None:
    """Like :func:`_require`, without importing: for constructors that import the package on first use.

    Raises:
        ModuleNotFoundError: If the module is not installed.
    """
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ModuleNotFoundError(
            f"{owner} requires {pip_name or module}: pip install 'fulmen[{extra}]' (or pip install {pip_name or module}).",
            name=module,
        )


# ----------------------------------------------------------------------------------------------
# hyperparameters
# ----------------------------------------------------------------------------------------------


def _convert_params(params: Any) -> dict[str, Any]:
    """Turn what users pass to ``log_hyperparams`` into a plain ``dict`` (one level, not recursive).

    Accepts ``None`` (an empty dict), any mapping (``dict``, ``AttributeDict``, OmegaConf's
    ``DictConfig``), an ``argparse.Namespace`` and a dataclass instance.

    Raises:
        MisconfigurationException: For anything else, naming the type that was given.
    """
    if params is None:
        return {}
    if isinstance(params, Namespace):
        return dict(vars(params))
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    if isinstance(params, Mapping):
        return dict(params)
    raise misconfig(
        "log_hyperparams(params)",
        type(params).__name__,
        "a dict, an argparse.Namespace, an AttributeDict or a dataclass instance",
        "pass the hyperparameters as a dict, e.g. logger.log_hyperparams({'lr': 1e-3})",
    )


def _as_mapping(value: Any) -> Mapping[Any, Any] | None:
    """Return ``value`` viewed as a mapping if it is a nested container of named values, else None."""
    if isinstance(value, Mapping):
        return value
    if isinstance(value, Namespace):
        return vars(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return None


def _flatten_dict(params: Mapping[Any, Any], delimiter: str = "/", parent_key: str = "") -> dict[str, Any]:
    """Flatten nested mappings, Namespaces and dataclasses into one level, joining keys with ``delimiter``.

    Example:
        >>> _flatten_dict({"a": {"b": 1, "c": {"d": 2}}, "e": 3})
        {'a/b': 1, 'a/c/d': 2, 'e': 3}
    """
    result: dict[str, Any] = {}
    for key, value in params.items():
        full_key = f"{parent_key}{delimiter}{key}" if parent_key else str(key)
        nested = _as_mapping(value)
        if nested is not None and len(nested) > 0:
            result.update(_flatten_dict(nested, delimiter, full_key))
        else:
            result[full_key] = value
    return result


def _numel(value: Any) -> int:
    """Number of elements of a torch tensor (``numel()``) or numpy array/scalar (``size``); -1 if unknown."""
    numel = getattr(value, "numel", None)
    if callable(numel):
        try:
            return int(numel())
        except Exception:  # noqa: BLE001  # pragma: no cover - exotic array types
            return -1
    size = getattr(value, "size", None)
    return size if isinstance(size, int) else -1


def _scalar_or_none(value: Any) -> bool | int | float | None:
    """Return ``value`` as a Python number if it is a numpy scalar or a one-element tensor/array, else None."""
    item = getattr(value, "item", None)
    if not callable(item) or isinstance(value, type) or _numel(value) != 1:
        return None
    try:
        result = item()
    except Exception:  # noqa: BLE001  # pragma: no cover - exotic array types
        return None
    return result if isinstance(result, (bool, int, float)) else None


def _sanitize_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Make flat hyperparameter values acceptable to a tool's hparams API (e.g. TensorBoard's).

    Booleans, ints, floats and strings are kept; numpy and one-element torch scalars become Python
    numbers; ``None`` and everything else become their ``str``.
    """
    sanitized: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, _PRIMITIVES):
            sanitized[key] = value
            continue
        scalar = _scalar_or_none(value)
        sanitized[key] = scalar if scalar is not None else str(value)
    return sanitized


def _callable_name(value: Any) -> str:
    module = getattr(value, "__module__", None)
    name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None) or repr(value)
    return f"{module}.{name}" if module and module != "builtins" else str(name)


def _sanitize_callable_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Replace classes and functions among (nested) hyperparameter values by their qualified names.

    Lightning calls such callables to log their return value; that runs arbitrary user code (with
    side effects) just to log it, so fulmen logs the name, which is what identifies the choice.
    """
    out: dict[str, Any] = {}
    for key, value in params.items():
        nested = _as_mapping(value)
        if nested is not None:
            out[key] = _sanitize_callable_params({str(k): v for k, v in nested.items()})
        elif callable(value) and not isinstance(value, _PRIMITIVES):
            out[key] = _callable_name(value)
        else:
            out[key] = value
    return out


class _Unrepresentable(Exception):
    """Raised inside :func:`_to_plain` when a value has no faithful YAML form."""


def _to_plain(value: Any) -> Any:
    """Convert ``value`` to data ``yaml.safe_dump`` can write and ``yaml.safe_load`` reads back the same.

    Mappings/Namespaces/dataclasses become dicts, tuples and sets lists, paths and torch dtypes or
    devices strings, enums their value, numpy/torch scalars numbers, small tensors and arrays lists.

    Raises:
        _Unrepresentable: For an object with no faithful plain form (a class, a function, a module).
    """
    if value is None or type(value) in _PRIMITIVES:
        return value
    if isinstance(value, enum.Enum):
        return _to_plain(value.value)
    for base in _PRIMITIVES:  # subclasses (numpy.float64, a str mixin): safe_dump wants the exact type
        if isinstance(value, base):
            return base(value)
    nested = _as_mapping(value)
    if nested is not None:
        return {
            str(k) if not isinstance(k, (int, float, bool)) else k: _to_plain(v) for k, v in nested.items()
        }
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_to_plain(v) for v in value), key=repr)
    if isinstance(value, pathlib.PurePath):
        return str(value)
    scalar = _scalar_or_none(value)
    if scalar is not None:
        return scalar
    if isinstance(value, numbers.Real):  # Decimal, Fraction, ...
        return float(value)
    type_name = f"{type(value).__module__}.{type(value).__qualname__}"
    if type_name in ("torch.dtype", "torch.device"):
        return str(value)
    if not isinstance(value, type) and callable(getattr(value, "tolist", None)) and _numel(value) <= 10_000:
        return _to_plain(value.tolist())  # a small tensor or array
    raise _Unrepresentable(type_name)


def _plain_hparams(params: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """Convert each top-level hyperparameter with :func:`_to_plain`, dropping (with a warning) those that can't be."""
    plain: dict[str, Any] = {}
    for key, value in params.items():
        try:
            plain[str(key)] = _to_plain(value)
        except _Unrepresentable as exc:
            rank_zero_warn(
                f"{owner}: skipping hyperparameter {key!r} in hparams.yaml: a value of type {exc} can't be"
                " written as plain YAML. Log its name or settings instead (e.g. a string or a dict)."
            )
    return plain


def _save_hparams_to_yaml(fs: AbstractFileSystem, path: str, hparams: Mapping[str, Any], owner: str) -> None:
    """Write ``hparams`` to ``path`` with ``yaml.safe_dump``, atomically (temporary file, then rename).

    Values that have no plain YAML form are skipped with a warning (see :func:`_plain_hparams`).
    """
    text = yaml.safe_dump(_plain_hparams(hparams, owner), sort_keys=False, allow_unicode=True)
    _atomic_write_text(fs, path, text)


def _atomic_write_text(fs: AbstractFileSystem, path: str, text: str) -> None:
    """Write ``text`` to ``path`` so a crash leaves either the old file or the new one, never half of one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with fs.open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        if hasattr(f, "flush") and hasattr(f, "fileno"):
            try:
                f.flush()
                os.fsync(f.fileno())
            except (OSError, ValueError, AttributeError, NotImplementedError):
                pass  # not a local file: the filesystem gives no fsync
    fs.mv(tmp, path)


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------


def _add_prefix(metrics: Mapping[str, Any], prefix: str, separator: str) -> dict[str, Any]:
    """Prepend ``prefix`` and ``separator`` to every key, e.g. ``{"loss": 1}`` -> ``{"train-loss": 1}``."""
    if not prefix:
        return dict(metrics)
    return {f"{prefix}{separator}{key}": value for key, value in metrics.items()}


def _metric_to_float(owner: str, key: str, value: Any) -> float | int | bool:
    """Return a metric value as a Python number: numbers pass through, one-element tensors/arrays are read.

    Raises:
        MisconfigurationException: For a string, a multi-element tensor or any other object.
    """
    if isinstance(value, (bool, int, float)):
        return value
    scalar = _scalar_or_none(value)
    if scalar is not None:
        return scalar
    if isinstance(value, numbers.Real):
        return float(value)
    shape = getattr(value, "shape", None)
    given = f"{type(value).__name__} of shape {tuple(shape)}" if shape is not None else type(value).__name__
    raise misconfig(
        f"{owner}.log_metrics: metric {key!r}",
        given,
        "a number or a one-element tensor",
        "log a scalar (e.g. tensor.mean()) or one metric per element",
    )


# ----------------------------------------------------------------------------------------------
# checkpoints logged as artifacts
# ----------------------------------------------------------------------------------------------


class _CheckpointRecord(NamedTuple):
    """A checkpoint file found on a ``ModelCheckpoint`` callback."""

    mtime: float
    path: str
    score: Any
    tag: str


def _scan_checkpoints(
    checkpoint_callback: Any, logged_model_time: Mapping[str, float]
) -> list[_CheckpointRecord]:
    """List the checkpoints of ``checkpoint_callback`` that exist and were not logged since their last write.

    Reads ``last_model_path`` (with ``current_score``), ``best_model_path`` (with
    ``best_model_score``) and ``best_k_models`` (path -> score), as ``ModelCheckpoint`` exposes
    them. A path counts as new when it was never logged or its file changed since it was.

    Returns:
        The new checkpoints, oldest first (so the last one logged is the newest, i.e. "latest").
    """
    found: dict[str, tuple[Any, str]] = {}
    last = getattr(checkpoint_callback, "last_model_path", None)
    if last:
        found[str(last)] = (getattr(checkpoint_callback, "current_score", None), "latest")
    best = getattr(checkpoint_callback, "best_model_path", None)
    if best:
        found[str(best)] = (getattr(checkpoint_callback, "best_model_score", None), "best")
    for path, score in (getattr(checkpoint_callback, "best_k_models", None) or {}).items():
        found[str(path)] = (score, "best_k")
    records = []
    for path, (score, tag) in found.items():
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            continue  # removed since (e.g. a top-k file that was replaced)
        if not os.path.isfile(path):
            continue
        if path in logged_model_time and logged_model_time[path] >= mtime:
            continue
        records.append(_CheckpointRecord(mtime, path, score, tag))
    return sorted(records)


_CHECKPOINT_ATTRS = (
    "monitor",
    "mode",
    "save_last",
    "save_top_k",
    "save_weights_only",
    "_every_n_train_steps",
    "_every_n_epochs",
    "_train_time_interval",
)


def _score_value(score: Any) -> Any:
    scalar = _scalar_or_none(score)
    return scalar if scalar is not None else score


def _checkpoint_metadata(checkpoint_callback: Any, record: _CheckpointRecord) -> dict[str, Any]:
    """Metadata stored with a logged checkpoint: its score, file name and the callback's settings."""
    settings = {}
    for attr in _CHECKPOINT_ATTRS:
        if hasattr(checkpoint_callback, attr):
            value = getattr(checkpoint_callback, attr)
            settings[attr.lstrip("_")] = (
                value if value is None or isinstance(value, _PRIMITIVES) else str(value)
            )
    return {
        "score": _score_value(record.score),
        "original_filename": os.path.basename(record.path),
        type(checkpoint_callback).__name__: settings,
    }


def _checkpoint_aliases(checkpoint_callback: Any, path: str) -> list[str]:
    """``["latest", "best"]`` for the callback's best checkpoint, ``["latest"]`` otherwise."""
    best = getattr(checkpoint_callback, "best_model_path", None)
    return ["latest", "best"] if best and str(best) == path else ["latest"]


class _LogsCheckpoints:
    """``log_model`` for a logger that uploads the checkpoints of a ``ModelCheckpoint`` (MLflow, W&B).

    The logger calls :meth:`_init_log_model` in its ``__init__`` and implements
    ``_scan_and_log_checkpoints(checkpoint_callback)``, looping over :meth:`_new_checkpoints`; at
    ``finalize`` it logs the checkpoints of ``_checkpoint_callback`` when one is set.
    """

    def _init_log_model(self, owner: str, log_model: Any) -> None:
        self._log_model = _validate_log_model(owner, log_model)
        self._logged_model_time: dict[str, float] = {}  # path -> the file's mtime when it was logged
        self._checkpoint_callback: Any = None  # `log_model=True`: log its checkpoints at `finalize`

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Log the new checkpoint files now (``log_model="all"``, or ``True`` with ``save_top_k == -1``),
        or remember the callback to log its checkpoints at :meth:`finalize` (``log_model=True``)."""
        if self._log_model == "all" or (
            self._log_model is True and getattr(checkpoint_callback, "save_top_k", None) == -1
        ):
            self._scan_and_log_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callback = checkpoint_callback

    def _scan_and_log_checkpoints(self, checkpoint_callback: Any) -> None:
        raise NotImplementedError

    def _new_checkpoints(self, checkpoint_callback: Any) -> Iterator[_CheckpointRecord]:
        """The checkpoints not logged since their last write, oldest first (see :func:`_scan_checkpoints`).

        A checkpoint counts as logged once the loop body that received it finishes: if its upload
        raises, it is tried again next time.
        """
        for record in _scan_checkpoints(checkpoint_callback, self._logged_model_time):
            yield record
            self._logged_model_time[record.path] = record.mtime


def _validate_log_model(owner: str, log_model: Any) -> bool | str:
    """Check ``log_model`` is ``True``, ``False`` or ``"all"``."""
    if isinstance(log_model, bool) or log_model == "all":
        return log_model  # type: ignore[no-any-return]
    raise misconfig(
        f"{owner}(log_model=...)",
        log_model,
        "True (log the checkpoints at the end of training), 'all' (log each one when it is saved) or False",
        "pass one of True, False or 'all'",
    )


# ----------------------------------------------------------------------------------------------
# directories
# ----------------------------------------------------------------------------------------------


def _makedirs(fs: AbstractFileSystem, path: str, owner: str, argument: str = "save_dir") -> None:
    """Create ``path`` (and parents) or raise an error that says which argument to change.

    Raises:
        MisconfigurationException: If the directory can't be created (permissions, a file in the
            way, a read-only filesystem). The ``OSError`` is chained.
    """
    try:
        fs.makedirs(path, exist_ok=True)
    except (OSError, ValueError) as exc:
        raise MisconfigurationException(
            f"{owner} can't create its log directory {path!r}: {exc}. Expected a writable directory. "
            f"Fix: pass a {argument} you can write to, or fix the permissions of {path!r}."
        ) from exc


def _check_not_a_file(fs: AbstractFileSystem, path: str, owner: str, argument: str = "save_dir") -> None:
    """Fail early when the directory a logger will write into is an existing file."""
    try:
        is_file = fs.isfile(path)
    except OSError:  # pragma: no cover - unreachable remote stores are reported when writing
        return
    if is_file:
        raise misconfig(
            f"{owner}({argument}=...)",
            path,
            "a directory (or a path that doesn't exist yet), but it is an existing file",
            f"pass a directory as {argument}",
        )


def _check_path_arg(owner: str, argument: str, value: Any, allow_none: bool = False) -> str | None:
    """Validate a path argument (``str`` or ``os.PathLike``) and return it as ``str``."""
    if value is None and allow_none:
        return None
    if isinstance(value, (str, os.PathLike)) and os.fspath(value) != "":
        return os.fspath(value)
    raise misconfig(
        f"{owner}({argument}=...)",
        value,
        "a non-empty path (str or os.PathLike)" + (" or None" if allow_none else ""),
        f"pass {argument} as a directory path, e.g. {argument}='logs'",
    )


def _check_prefix(owner: str, prefix: Any) -> str:
    if isinstance(prefix, str):
        return prefix
    raise misconfig(
        f"{owner}(prefix=...)", prefix, "a str ('' for no prefix)", "pass a string, e.g. prefix='train'"
    )
