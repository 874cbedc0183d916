"""Save checkpoints periodically and keep the best ``k`` by a monitored metric.

Concerns are split into plain functions (no Trainer needed, unit tested on their own) and the thin
:class:`ModelCheckpoint` callback that calls them:

- :func:`format_checkpoint_filename`: the filename template language (``"{epoch:02d}-{val_loss:.2f}"``);
- :func:`update_top_k`: the top-k bookkeeping (which file enters, which one is evicted, the best);
- :func:`should_save_on_train_epoch_end`: Lightning's rule for saving at train-epoch end vs after validation.

Reliability rules the callback keeps:

- every save goes through ``trainer.save_checkpoint`` (collective: every rank calls it);
- the top-k bookkeeping is committed only after the save returns; if the save raises, the previous
  bookkeeping is restored and no file is removed (the evicted checkpoint is only deleted afterwards);
- rank-dependent choices (is this score in the top k, does this path exist, has the time interval
  elapsed, which path) are made collective with ``reduce_boolean_decision`` / ``broadcast``;
- nothing is saved twice for the same ``global_step``, during the sanity check, under ``fast_dev_run``
  or outside ``fit``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from typing_extensions import override

from fulmen.callbacks.callback import Checkpoint
from fulmen.utilities.exceptions import MisconfigurationException, misconfig
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from fulmen.core.module import LightningModule
    from fulmen.trainer.trainer import Trainer

log = logging.getLogger(__name__)

CHECKPOINT_JOIN_CHAR = "-"
CHECKPOINT_EQUALS_CHAR = "="
CHECKPOINT_NAME_LAST = "last"
FILE_EXTENSION = ".ckpt"
STARTING_VERSION = 1
DEFAULT_FILENAME = "{epoch}" + CHECKPOINT_JOIN_CHAR + "{step}"

# ``{name`` up to the first ``:`` (format spec) or ``}``; names may contain "/", "." and "-".
_TEMPLATE_FIELD = re.compile(r"(\{.*?)[:\}]")


# --------------------------------------------------------------------------------------------------
# Plain functions
# --------------------------------------------------------------------------------------------------


def format_checkpoint_filename(
    filename: str | None,
    metrics: dict[str, Any],
    *,
    auto_insert_metric_name: bool = True,
    prefix: str = "",
    join_char: str = CHECKPOINT_JOIN_CHAR,
    equals_char: str = CHECKPOINT_EQUALS_CHAR,
) -> str:
    """Fill a checkpoint filename template with metric values (no extension, no directory).

    ``"{epoch}-{val_loss:.2f}"`` with ``auto_insert_metric_name=True`` becomes
    ``"epoch=1-val_loss=0.12"``; with ``False`` it becomes ``"1-0.12"``. Names may contain ``"/"``
    or ``"."`` (``"{val/loss:.2f}"``); a ``"/"`` that ends up in the name creates a sub-folder, so
    set ``auto_insert_metric_name=False`` and spell the name yourself to avoid that. A key missing
    from ``metrics`` is filled with 0, as in Lightning.

    Args:
        filename: the template; ``None`` or empty means ``"{epoch}-{step}"``.
        metrics: values by name (tensors, numbers or strings). Not modified.
        auto_insert_metric_name: write ``name=value`` instead of just ``value``.
        prefix: prepended with ``join_char`` when non-empty.
        join_char: the separator for ``prefix``.
        equals_char: the separator between a name and its value.

    Returns:
        The formatted name.
    """
    template = filename or DEFAULT_FILENAME
    values = dict(metrics)
    groups = _TEMPLATE_FIELD.findall(template)
    # Longest first so that "{epoch" does not clobber "{epoch_test".
    for group in sorted(groups, key=len, reverse=True):
        name = group[1:]
        if auto_insert_metric_name:
            template = template.replace(group, name + equals_char + "{" + name)
        # ``{0[name]}`` indexes the dict, so names with dots or slashes format correctly.
        template = template.replace(group, "{0[" + name + "]")
        if name not in values:
            values[name] = torch.tensor(0)
    out = template.format(values)
    if prefix:
        out = join_char.join([prefix, out])
    return out


@dataclass
class TopKState:
    """The top-k bookkeeping of :class:`ModelCheckpoint` (plain data, copied before each save)."""

    best_k_models: dict[str, torch.Tensor]
    kth_best_model_path: str
    kth_value: torch.Tensor
    best_model_path: str
    best_model_score: torch.Tensor | None
    current_score: torch.Tensor | None


def check_monitor_top_k(current: torch.Tensor | None, state: TopKState, save_top_k: int, mode: str) -> bool:
    """Whether ``current`` enters the top ``save_top_k`` (a local decision; reduce it across ranks).

    Args:
        current: the monitored value (``None`` when the metric is missing).
        state: the current bookkeeping.
        save_top_k: ``-1`` keeps everything, ``0`` nothing.
        mode: ``"min"`` or ``"max"``.

    Returns:
        ``True`` if a checkpoint should be saved for ``current``.
    """
    if current is None or save_top_k == 0:
        return False
    if save_top_k == -1 or len(state.best_k_models) < save_top_k:
        return True
    kth = state.best_k_models[state.kth_best_model_path].to(current.device)
    op = torch.lt if mode == "min" else torch.gt
    return bool(op(current, kth))


def update_top_k(
    state: TopKState, filepath: str, current: torch.Tensor, save_top_k: int, mode: str
) -> tuple[TopKState, str | None]:
    """Add ``filepath`` with score ``current`` to the top k; return the new state and the evicted path.

    A NaN score is stored as the worst possible value (``+inf`` for min, ``-inf`` for max). The input
    ``state`` is not modified.

    Args:
        state: the bookkeeping before the save.
        filepath: the checkpoint being added.
        current: its monitored value.
        save_top_k: ``-1`` for unlimited.
        mode: ``"min"`` or ``"max"``.

    Returns:
        ``(new_state, evicted_path_or_None)``.
    """
    best_k = dict(state.best_k_models)
    k = len(best_k) + 1 if save_top_k == -1 else save_top_k
    evicted: str | None = None
    if k > 0 and len(best_k) == k:
        evicted = state.kth_best_model_path
        best_k.pop(evicted)
    current = current.detach().to("cpu")
    if torch.isnan(current):
        current = torch.tensor(float("inf" if mode == "min" else "-inf"), dtype=current.dtype)
    best_k[filepath] = current
    kth_path, kth_value = state.kth_best_model_path, state.kth_value
    if len(best_k) == k:
        worst = max if mode == "min" else min
        kth_path = worst(best_k, key=lambda p: float(best_k[p]))
        kth_value = best_k[kth_path]
    best = min if mode == "min" else max
    best_path = best(best_k, key=lambda p: float(best_k[p]))
    new = TopKState(
        best_k_models=best_k,
        kth_best_model_path=kth_path,
        kth_value=kth_value,
        best_model_path=best_path,
        best_model_score=best_k[best_path],
        current_score=current,
    )
    return new, evicted


def should_save_on_train_epoch_end(
    save_on_train_epoch_end: bool | None,
    val_check_interval: Any,
    check_val_every_n_epoch: int | None,
    num_val_batches: int | float | list[int] | list[float],
) -> bool:
    """Lightning's rule: save at train-epoch end (``True``) or after validation (``False``).

    An explicit ``save_on_train_epoch_end`` wins. Otherwise: validation not every epoch -> after
    validation; no validation batches -> train-epoch end; validation once per epoch at its end
    (``val_check_interval == 1.0``) -> train-epoch end (the val metrics exist by then); validation
    several times per epoch or time-based -> after each validation.
    """
    if save_on_train_epoch_end is not None:
        return save_on_train_epoch_end
    if isinstance(val_check_interval, timedelta):  # time-based validation: save after each validation
        return False
    if check_val_every_n_epoch != 1:
        return False
    total = sum(num_val_batches) if isinstance(num_val_batches, (list, tuple)) else num_val_batches
    if total == 0:
        return True
    return bool(val_check_interval == 1.0)


# --------------------------------------------------------------------------------------------------
# Filesystem helpers (fsspec for remote paths, os for local ones)
# --------------------------------------------------------------------------------------------------


def _is_local(path: str | os.PathLike[str]) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


def _fs_and_path(path: str) -> tuple[Any, str]:
    import fsspec  # type: ignore[import-untyped]  # lazy: only remote paths need it

    return fsspec.core.url_to_fs(path)  # type: ignore[no-any-return]


def _exists(path: str) -> bool:
    if _is_local(path):
        return os.path.lexists(path.removeprefix("file://"))
    fs, p = _fs_and_path(path)
    return bool(fs.exists(p))


def _list_dir(path: str) -> list[str]:
    if _is_local(path):
        local = path.removeprefix("file://")
        if not os.path.isdir(local):
            return []
        return [os.path.join(local, name) for name in os.listdir(local)]
    fs, p = _fs_and_path(path)
    if not fs.isdir(p):
        return []
    return [str(x) for x in fs.ls(p, detail=False)]


class ModelCheckpoint(Checkpoint):
    r"""Save the model periodically, keeping the ``save_top_k`` best by ``monitor``.

    Args:
        dirpath: where to save. ``None`` means ``<save_dir>/<name>/<version>/checkpoints`` of the
            first logger (``trainer.log_dir/checkpoints`` for the CSV and TensorBoard loggers) or
            ``default_root_dir/checkpoints`` without a logger.
        filename: a template such as ``"{epoch:02d}-{val_loss:.2f}"``; ``None`` means ``"{epoch}-{step}"``.
        monitor: the metric to rank checkpoints by; ``None`` keeps only the latest checkpoint.
        verbose: log what is saved and why.
        save_last: also save ``last.ckpt``, as Lightning: at every step/time-triggered save, and at an epoch or
            validation end when a top-k checkpoint was saved there (so with a monitor it holds the last
            improvement), and once when training ends if nothing was saved. ``"link"`` makes it a symbolic
            link to the checkpoint saved last (a copy on filesystems without symlinks).
        save_top_k: how many checkpoints to keep (``-1``: all, ``0``: none).
        save_on_exception: save a checkpoint when ``fit`` raises.
        save_weights_only: save only the model weights.
        mode: ``"min"`` or ``"max"``: whether a lower or a higher ``monitor`` is better.
        auto_insert_metric_name: write ``name=value`` for each template field.
        every_n_train_steps: save every this many optimizer steps (``0``/``None``: never by steps).
        train_time_interval: save at most once per this time interval (checked after each batch).
        every_n_epochs: save every this many epochs (``0``: never by epochs).
        save_on_train_epoch_end: save at train-epoch end (``True``) or after validation (``False``);
            ``None`` decides from the validation schedule.
        enable_version_counter: append ``-v1``, ``-v2``... instead of overwriting an existing file.

    Raises:
        MisconfigurationException: if an argument is out of range or the triggers are combined.

    Example::

        ModelCheckpoint(monitor="val_loss", filename="{epoch:02d}-{val_loss:.2f}", save_top_k=3)
    """

    CHECKPOINT_JOIN_CHAR = CHECKPOINT_JOIN_CHAR
    CHECKPOINT_EQUALS_CHAR = CHECKPOINT_EQUALS_CHAR
    CHECKPOINT_NAME_LAST = CHECKPOINT_NAME_LAST
    FILE_EXTENSION = FILE_EXTENSION
    STARTING_VERSION = STARTING_VERSION

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | Literal["link"] | None = None,
        save_top_k: int = 1,
        save_on_exception: bool = False,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        enable_version_counter: bool = True,
    ) -> None:
        super().__init__()
        self.monitor = monitor
        self.verbose = verbose
        self.save_last = save_last
        self.save_top_k = save_top_k
        self.save_on_exception = save_on_exception
        self.save_weights_only = save_weights_only
        self.auto_insert_metric_name = auto_insert_metric_name
        self._save_on_train_epoch_end = save_on_train_epoch_end
        self._enable_version_counter = enable_version_counter
        self._last_global_step_saved = 0  # nothing to save before the first optimizer step
        self._last_time_checked: float | None = None
        self._last_checkpoint_saved = ""
        self._val_has_run = False
        # a step/time-triggered save whose monitor was missing (or stale, right before validation) waits for
        # the next on_validation_end, as in Lightning
        self._defer_save_until_validation = False
        self._warned: set[str] = set()
        self._pending_state: dict[str, Any] | None = None
        self.current_score: torch.Tensor | None = None
        self.best_k_models: dict[str, torch.Tensor] = {}
        self.kth_best_model_path = ""
        self.best_model_score: torch.Tensor | None = None
        self.best_model_path = ""
        self.last_model_path = ""

        self._validate_init(mode, every_n_train_steps, every_n_epochs, train_time_interval)
        self.mode = mode
        self.kth_value = torch.tensor(float("inf") if mode == "min" else float("-inf"))
        self._init_triggers(every_n_train_steps, every_n_epochs, train_time_interval)
        self.dirpath: str | None = None
        self.filename: str | None = None
        self.__init_ckpt_dir(dirpath, filename)

    # ---- construction --------------------------------------------------------------------------

    def _validate_init(
        self,
        mode: str,
        every_n_train_steps: int | None,
        every_n_epochs: int | None,
        train_time_interval: timedelta | None,
    ) -> None:
        if mode not in ("min", "max"):
            raise misconfig(
                "ModelCheckpoint(mode=...)",
                mode,
                "'min' or 'max'",
                "use 'min' for losses, 'max' for accuracies",
            )
        if self.save_last not in (None, True, False, "link"):
            raise misconfig(
                "ModelCheckpoint(save_last=...)",
                self.save_last,
                "None, True, False or 'link'",
                "pass save_last=True to also write last.ckpt, or 'link' to make it a symlink",
            )
        if isinstance(self.save_top_k, bool) or not isinstance(self.save_top_k, int) or self.save_top_k < -1:
            raise misconfig(
                "ModelCheckpoint(save_top_k=...)",
                self.save_top_k,
                "an int >= -1",
                "pass -1 to keep every checkpoint, 0 to keep none, k > 0 to keep the best k",
            )
        for name, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise misconfig(
                    f"ModelCheckpoint({name}=...)", value, "None or an int >= 0", f"pass e.g. {name}=1"
                )
        if train_time_interval is not None and not isinstance(train_time_interval, timedelta):
            raise misconfig(
                "ModelCheckpoint(train_time_interval=...)",
                train_time_interval,
                "None or a datetime.timedelta",
                "pass e.g. train_time_interval=timedelta(minutes=30)",
            )
        set_triggers = [
            name
            for name, value in (
                ("every_n_train_steps", every_n_train_steps),
                ("every_n_epochs", every_n_epochs),
                ("train_time_interval", train_time_interval),
            )
            if value
        ]
        if len(set_triggers) > 1:
            raise MisconfigurationException(
                f"ModelCheckpoint: {', '.join(set_triggers)} were all set, but every_n_train_steps, "
                "every_n_epochs and train_time_interval are mutually exclusive. Fix: keep only one of them."
            )
        if self.monitor is None and self.save_top_k not in (-1, 0, 1):
            raise MisconfigurationException(
                f"ModelCheckpoint(save_top_k={self.save_top_k}, monitor=None) is not a valid configuration: "
                "there is no quantity to rank the top k by. Fix: pass monitor='<logged metric>' or use "
                "save_top_k in (-1, 0, 1)."
            )

    def _init_triggers(
        self,
        every_n_train_steps: int | None,
        every_n_epochs: int | None,
        train_time_interval: timedelta | None,
    ) -> None:
        # Default: save once per epoch.
        if every_n_train_steps is None and every_n_epochs is None and train_time_interval is None:
            every_n_epochs, every_n_train_steps = 1, 0
        else:
            every_n_epochs = every_n_epochs or 0
            every_n_train_steps = every_n_train_steps or 0
        self._train_time_interval = train_time_interval
        self._every_n_epochs: int = every_n_epochs
        self._every_n_train_steps: int = every_n_train_steps

    def __init_ckpt_dir(self, dirpath: str | os.PathLike[str] | None, filename: str | None) -> None:
        if dirpath is not None:
            text = str(dirpath)
            self.dirpath = os.path.realpath(os.path.expanduser(text)) if _is_local(text) else text
        self.filename = filename

    @property
    def every_n_epochs(self) -> int:
        return self._every_n_epochs

    @property
    def every_n_train_steps(self) -> int:
        return self._every_n_train_steps

    @property
    def train_time_interval(self) -> timedelta | None:
        return self._train_time_interval

    @property
    def _inactive_hooks(self) -> frozenset[str]:
        # read by the dispatcher once per run: without step or time triggers there is nothing to do per batch
        if self._every_n_train_steps < 1 and self._train_time_interval is None:
            return frozenset({"on_train_batch_end"})
        return frozenset()

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            monitor=self.monitor,
            mode=self.mode,
            every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs,
            train_time_interval=self._train_time_interval,
        )

    # ---- hooks ---------------------------------------------------------------------------------

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        dirpath = trainer.strategy.broadcast(self.__resolve_ckpt_dir(trainer))
        self.dirpath = dirpath
        if self._pending_state is not None:
            pending, self._pending_state = self._pending_state, None
            self.load_state_dict(pending)
        if trainer.is_global_zero and stage == "fit":
            self.__warn_if_dir_not_empty(dirpath)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._val_has_run = False
        self._defer_save_until_validation = False

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_time_checked = time.monotonic()

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._every_n_train_steps < 1 and self._train_time_interval is None:
            return  # fast path: nothing to do per batch
        if self._should_skip_saving_checkpoint(trainer):
            return
        skip_batch = self._every_n_train_steps < 1 or trainer.global_step % self._every_n_train_steps != 0
        skip_time = True
        now = time.monotonic()
        if self._train_time_interval is not None:
            prev = self._last_time_checked
            skip_time = prev is None or (now - prev) < self._train_time_interval.total_seconds()
            # Clocks differ per rank: rank 0 decides for everyone.
            skip_time = bool(trainer.strategy.broadcast(skip_time))
        if skip_batch and skip_time:
            return
        if not skip_time:
            self._last_time_checked = now
        candidates = self._monitor_candidates(trainer)
        if self.monitor is not None and (
            self.monitor not in candidates
            # the key exists but is stale: this is the epoch's last batch and validation runs right after it
            or (not self._should_save_on_train_epoch_end(trainer) and trainer.is_last_batch
                and self._validation_follows(trainer))
        ):
            # Lightning defers both the top-k and the last save (silently) to the next on_validation_end; when no
            # validation comes, nothing is saved at this trigger
            self._defer_save_until_validation = True
            return
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    @staticmethod
    def _validation_follows(trainer: Trainer) -> bool:
        if not trainer.enable_validation or not _total_val_batches(trainer):
            return False
        every = trainer.check_val_every_n_epoch
        return every is None or (trainer.current_epoch + 1) % every == 0

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer) and self._should_save_on_train_epoch_end(trainer):
            candidates = self._monitor_candidates(trainer)
            if self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0:
                self._save_topk_checkpoint(trainer, candidates)
            self._save_last_if_saved(trainer, candidates)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._val_has_run = True
        if not self._should_skip_saving_checkpoint(trainer) and not self._should_save_on_train_epoch_end(
            trainer
        ):
            candidates = self._monitor_candidates(trainer)
            if self._defer_save_until_validation:
                self._defer_save_until_validation = False
                self._save_topk_checkpoint(trainer, candidates)
                self._save_last_checkpoint(trainer, candidates)
                return
            if self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0:
                self._save_topk_checkpoint(trainer, candidates)
            self._save_last_if_saved(trainer, candidates)

    def _save_last_if_saved(self, trainer: Trainer, candidates: dict[str, Any]) -> None:
        """As Lightning 2.6.1 at an epoch-end or validation-end save point: ``last.ckpt`` is written only when a
        top-k checkpoint was saved at this step (or re-linked with ``save_last="link"``), so with a monitored metric
        that stops improving it stays at the last improvement; ``on_train_end`` writes it once if nothing did."""
        if self._last_global_step_saved == trainer.global_step or (
            self.save_last == "link" and self._last_checkpoint_saved
        ):
            self._save_last_checkpoint(trainer, candidates)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # as Lightning: a fit that saved nothing at all (save_top_k=0, every save point skipped) still ends with a
        # last.ckpt when save_last is set
        if self.save_last and not self._last_checkpoint_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not self.save_on_exception or trainer.state.fn != "fit" or self.dirpath is None:
            return
        candidates = self._monitor_candidates(trainer)
        filepath = self._get_metric_interpolated_filepath_name(candidates, trainer)
        self._save_checkpoint(trainer, filepath)
        self._save_last_checkpoint(trainer, candidates)
        rank_zero_info(
            f"An {type(exception).__name__} was raised with message: {exception}; "
            f"saved checkpoint to {filepath}"
        )

    # ---- state ---------------------------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
            "current_score": self.current_score,
            "dirpath": self.dirpath,
            "best_k_models": self.best_k_models,
            "kth_best_model_path": self.kth_best_model_path,
            "kth_value": self.kth_value,
            "last_model_path": self.last_model_path,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.dirpath is None:
            # The default dirpath is resolved in ``setup``; compare against it there.
            self._pending_state = dict(state_dict)
            return
        dirpath_from_ckpt = state_dict.get("dirpath", self.dirpath)
        if self.dirpath == dirpath_from_ckpt:
            self.best_model_score = state_dict["best_model_score"]
            self.kth_best_model_path = state_dict.get("kth_best_model_path", self.kth_best_model_path)
            self.kth_value = state_dict.get("kth_value", self.kth_value)
            self.best_k_models = dict(state_dict.get("best_k_models", self.best_k_models))
            self.last_model_path = state_dict.get("last_model_path", self.last_model_path)
            self.current_score = state_dict.get("current_score", self.current_score)
        else:
            warnings.warn(
                f"The dirpath has changed from {dirpath_from_ckpt!r} to {self.dirpath!r}, therefore"
                " `best_model_score`, `kth_best_model_path`, `kth_value`, `last_model_path` and"
                " `best_k_models` won't be reloaded. Only `best_model_path` will be reloaded.",
                stacklevel=2,
            )
        self.best_model_path = state_dict["best_model_path"]

    def _top_k_state(self) -> TopKState:
        return TopKState(
            best_k_models=dict(self.best_k_models),
            kth_best_model_path=self.kth_best_model_path,
            kth_value=self.kth_value,
            best_model_path=self.best_model_path,
            best_model_score=self.best_model_score,
            current_score=self.current_score,
        )

    def _apply_top_k_state(self, state: TopKState) -> None:
        self.best_k_models = state.best_k_models
        self.kth_best_model_path = state.kth_best_model_path
        self.kth_value = state.kth_value
        self.best_model_path = state.best_model_path
        self.best_model_score = state.best_model_score
        self.current_score = state.current_score

    # ---- decisions -----------------------------------------------------------------------------

    def _should_skip_saving_checkpoint(self, trainer: Trainer) -> bool:
        return (
            bool(trainer.fast_dev_run)
            or trainer.state.fn != "fit"
            or trainer.sanity_checking
            or self._last_global_step_saved == trainer.global_step
        )

    def _should_save_on_train_epoch_end(self, trainer: Trainer) -> bool:
        return should_save_on_train_epoch_end(
            self._save_on_train_epoch_end,
            trainer.val_check_interval,
            trainer.check_val_every_n_epoch,
            trainer.num_val_batches,
        )

    def _monitor_candidates(self, trainer: Trainer) -> dict[str, Any]:
        candidates: dict[str, Any] = dict(trainer.callback_metrics)
        # ``self.log("epoch", ...)`` stores a float; a filename wants an int.
        epoch = candidates.get("epoch")
        candidates["epoch"] = (
            epoch.int() if isinstance(epoch, torch.Tensor) else torch.tensor(trainer.current_epoch)
        )
        step = candidates.get("step")
        candidates["step"] = (
            step.int() if isinstance(step, torch.Tensor) else torch.tensor(trainer.global_step)
        )
        return candidates

    def check_monitor_top_k(self, trainer: Trainer, current: torch.Tensor | None = None) -> bool:
        """Whether ``current`` enters the top k, agreed by every rank (all must say yes)."""
        if current is None:
            return False
        local = check_monitor_top_k(current, self._top_k_state(), self.save_top_k, self.mode)
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return local  # identical on every rank: no collective needed
        return bool(trainer.strategy.reduce_boolean_decision(local, all=True))

    # ---- saving --------------------------------------------------------------------------------

    def _save_topk_checkpoint(self, trainer: Trainer, candidates: dict[str, Any]) -> None:
        if self.save_top_k == 0:
            return
        if self.monitor is None:
            self._save_none_monitor_checkpoint(trainer, candidates)
            return
        if self.monitor not in candidates:
            available = sorted(k for k in trainer.callback_metrics)
            msg = (
                f"ModelCheckpoint(monitor={self.monitor!r}) could not find the monitored key in the logged "
                f"metrics; available keys in trainer.callback_metrics: {available}. Fix: log it with "
                f"`self.log({self.monitor!r}, value)` in the LightningModule, or change `monitor`."
            )
            # As in Lightning: once validation ran, the key should be there (a typo): raise. Before (an epoch-end
            # save in a run without validation), warn once per message and skip the top-k save.
            if self._val_has_run:
                raise MisconfigurationException(msg)
            if msg not in self._warned:
                self._warned.add(msg)
                rank_zero_warn(msg)
            return
        self._save_monitor_checkpoint(trainer, candidates)

    def _save_monitor_checkpoint(self, trainer: Trainer, candidates: dict[str, Any]) -> None:
        assert self.monitor is not None
        current = candidates.get(self.monitor)
        if current is not None and not isinstance(current, torch.Tensor):
            current = torch.tensor(float(current))
        if self.check_monitor_top_k(trainer, current):
            assert current is not None
            self._update_best_and_save(current, trainer, candidates)
        elif self.verbose:
            rank_zero_info(
                f"Epoch {int(candidates['epoch']):d}, global step {int(candidates['step']):d}: "
                f"{self.monitor!r} was not in top {self.save_top_k}"
            )

    def _update_best_and_save(
        self, current: torch.Tensor, trainer: Trainer, candidates: dict[str, Any]
    ) -> None:
        before = self._top_k_state()
        k = len(before.best_k_models) + 1 if self.save_top_k == -1 else self.save_top_k
        to_replace = before.kth_best_model_path if k > 0 and len(before.best_k_models) == k else None
        filepath = self._get_metric_interpolated_filepath_name(candidates, trainer, to_replace)
        after, evicted = update_top_k(before, filepath, current, self.save_top_k, self.mode)
        # The checkpoint's own callback state must already list it, so apply now and roll back on failure.
        self._apply_top_k_state(after)
        if self.verbose:
            rank_zero_info(
                f"Epoch {int(candidates['epoch']):d}, global step {int(candidates['step']):d}: "
                f"{self.monitor!r} "
                f"reached {float(after.current_score):0.5f} (best {float(after.best_model_score):0.5f}), "  # type: ignore[arg-type]
                f"saving model to {filepath!r} as top {k}"
            )
        try:
            self._save_checkpoint(trainer, filepath)
        except BaseException:
            self._apply_top_k_state(before)
            raise
        if evicted and self._should_remove_checkpoint(trainer, evicted, filepath):
            self._remove_checkpoint(trainer, evicted)

    def _save_none_monitor_checkpoint(self, trainer: Trainer, candidates: dict[str, Any]) -> None:
        # With save_top_k == 1 the previous file is replaced, so its name may be reused; otherwise it
        # is kept and a taken name must get a version suffix (Lightning would overwrite it).
        reusable = self.best_model_path if self.save_top_k == 1 else None
        filepath = self._get_metric_interpolated_filepath_name(candidates, trainer, reusable)
        previous = self.best_model_path
        self.best_model_path = filepath  # part of the saved state
        try:
            self._save_checkpoint(trainer, filepath)
        except BaseException:
            self.best_model_path = previous
            raise
        if self.save_top_k == 1 and previous and self._should_remove_checkpoint(trainer, previous, filepath):
            self._remove_checkpoint(trainer, previous)

    def _save_last_checkpoint(self, trainer: Trainer, candidates: dict[str, Any]) -> None:
        if not self.save_last:
            return
        filepath = self.format_checkpoint_name(candidates, self.CHECKPOINT_NAME_LAST)
        if self._enable_version_counter:
            version = self.STARTING_VERSION
            while self.file_exists(filepath, trainer) and filepath != self.last_model_path:
                filepath = self.format_checkpoint_name(candidates, self.CHECKPOINT_NAME_LAST, ver=version)
                version += 1
        filepath = trainer.strategy.broadcast(filepath)
        previous = self.last_model_path
        self.last_model_path = filepath  # part of the saved state
        # as Lightning: link to the checkpoint saved last, of this step or an earlier one (the last improvement)
        link_target = self._last_checkpoint_saved
        can_link = self.save_last == "link" and self.save_top_k != 0 and bool(link_target)
        try:
            if can_link:
                self._link_checkpoint(trainer, link_target, filepath)
            else:
                self._unlink_if_symlink(trainer, filepath)
                self._save_checkpoint(trainer, filepath)
        except BaseException:
            self.last_model_path = previous
            raise
        if previous and self._should_remove_checkpoint(trainer, previous, filepath):
            self._remove_checkpoint(trainer, previous)

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        trainer.save_checkpoint(filepath, self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)

    @staticmethod
    def _link_checkpoint(trainer: Trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero:
            if _is_local(linkpath):
                if os.path.islink(linkpath) or os.path.isfile(linkpath):
                    os.remove(linkpath)
                elif os.path.isdir(linkpath):
                    shutil.rmtree(linkpath)
                try:
                    os.symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), linkpath)
                except OSError:
                    # No symlinks (e.g. Windows without the privilege, some network filesystems): copy.
                    shutil.copy(filepath, linkpath)
            else:
                fs, target = _fs_and_path(filepath)
                _, link = _fs_and_path(linkpath)
                fs.copy(target, link)
        trainer.strategy.barrier("ModelCheckpoint._link_checkpoint")

    @staticmethod
    def _unlink_if_symlink(trainer: Trainer, path: str) -> None:
        # Writing through a symlink would overwrite the top-k checkpoint it points to.
        if _is_local(path) and os.path.islink(path):
            if trainer.is_global_zero:
                os.remove(path)
            trainer.strategy.barrier("ModelCheckpoint._unlink_if_symlink")

    def _should_remove_checkpoint(self, trainer: Trainer, previous: str, current: str) -> bool:
        """Remove ``previous`` only if it differs, is not the resumed-from file and lives under dirpath."""
        if previous == current:
            return False
        if not _is_local(previous):
            return True
        prev = Path(previous).absolute()
        resume = getattr(trainer, "ckpt_path", None)
        if resume is not None and _is_local(str(resume)) and prev == Path(str(resume)).absolute():
            return False  # never delete the checkpoint this run resumed from
        assert self.dirpath is not None
        return Path(self.dirpath).absolute() in prev.parents

    def _remove_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        trainer.strategy.remove_checkpoint(filepath)

    # ---- names ---------------------------------------------------------------------------------

    def format_checkpoint_name(
        self,
        metrics: dict[str, Any],
        filename: str | None = None,
        ver: int | None = None,
        prefix: str | None = None,
    ) -> str:
        """The full path of the checkpoint for these metrics.

        Args:
            metrics: values for the template fields (``epoch``, ``step``, logged metrics).
            filename: a template overriding ``self.filename``.
            ver: a version number appended as ``-v{ver}``.
            prefix: prepended with ``CHECKPOINT_JOIN_CHAR``.

        Returns:
            ``dirpath/<formatted name>[-v<ver>].ckpt`` (no directory when ``dirpath`` is unset).

        Example::

            >>> ckpt = ModelCheckpoint(filename="{epoch}")
            >>> ckpt.format_checkpoint_name({"epoch": 0})
            'epoch=0.ckpt'
            >>> ckpt = ModelCheckpoint(filename="{epoch:03d}")
            >>> ckpt.format_checkpoint_name({"epoch": 5})
            'epoch=005.ckpt'
        """
        name = format_checkpoint_filename(
            filename or self.filename,
            metrics,
            auto_insert_metric_name=self.auto_insert_metric_name,
            prefix=prefix or "",
            join_char=self.CHECKPOINT_JOIN_CHAR,
            equals_char=self.CHECKPOINT_EQUALS_CHAR,
        )
        if ver is not None:
            name = self.CHECKPOINT_JOIN_CHAR.join((name, f"v{ver}"))
        ckpt_name = f"{name}{self.FILE_EXTENSION}"
        return os.path.join(self.dirpath, ckpt_name) if self.dirpath else ckpt_name

    def _get_metric_interpolated_filepath_name(
        self, candidates: dict[str, Any], trainer: Trainer, del_filepath: str | None = None
    ) -> str:
        filepath = self.format_checkpoint_name(candidates)
        if self._enable_version_counter:
            version = self.STARTING_VERSION
            while self.file_exists(filepath, trainer) and filepath != del_filepath:
                filepath = self.format_checkpoint_name(candidates, ver=version)
                version += 1
        # Metrics may differ per rank when not synced: every rank writes rank 0's choice.
        return str(trainer.strategy.broadcast(filepath))

    def file_exists(self, filepath: str, trainer: Trainer) -> bool:
        """Whether ``filepath`` exists on global rank 0 (the answer is broadcast to every rank)."""
        return bool(trainer.strategy.broadcast(_exists(filepath)))

    def __resolve_ckpt_dir(self, trainer: Trainer) -> str:
        if self.dirpath is not None:
            return self.dirpath
        if len(trainer.loggers) > 0:
            logger = trainer.loggers[0]
            save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
            version = logger.version
            version = version if isinstance(version, str) else f"version_{version}"
            return os.path.join(str(save_dir), str(logger.name), version, "checkpoints")
        return os.path.join(str(trainer.default_root_dir), "checkpoints")

    def __warn_if_dir_not_empty(self, dirpath: str) -> None:
        if self.save_top_k != 0 and _list_dir(dirpath):
            rank_zero_warn(f"Checkpoint directory {dirpath} exists and is not empty.")

    def _find_last_checkpoints(self, trainer: Trainer) -> set[str]:
        """The ``last*.ckpt`` files in this callback's directory (used for ``ckpt_path="last"``)."""
        dirpath = self.__resolve_ckpt_dir(trainer)
        pattern = re.compile(rf"^{re.escape(self.CHECKPOINT_NAME_LAST)}(-(\d+))?")
        return {
            os.path.normpath(p)
            for p in _list_dir(dirpath)
            if Path(p).suffix == self.FILE_EXTENSION and pattern.match(Path(p).stem)
        }

    def to_yaml(self, filepath: str | os.PathLike[str] | None = None) -> None:
        """Write ``best_k_models`` (path -> score) to a YAML file (default ``dirpath/best_k_models.yaml``)."""
        import yaml

        best_k = {k: float(v) for k, v in self.best_k_models.items()}
        if filepath is None:
            assert self.dirpath is not None
            filepath = os.path.join(self.dirpath, "best_k_models.yaml")
        with open(filepath, "w") as fp:
            yaml.dump(best_k, fp)


def _total_val_batches(trainer: Trainer) -> float:
    num = trainer.num_val_batches
    return float(sum(num)) if isinstance(num, (list, tuple)) else float(num)


__all__ = [
    "CHECKPOINT_EQUALS_CHAR",
    "CHECKPOINT_JOIN_CHAR",
    "CHECKPOINT_NAME_LAST",
    "FILE_EXTENSION",
    "STARTING_VERSION",
    "ModelCheckpoint",
    "TopKState",
    "check_monitor_top_k",
    "format_checkpoint_filename",
    "should_save_on_train_epoch_end",
    "update_top_k",
]
