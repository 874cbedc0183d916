"""``TrainerConfig``: the Trainer's flags, validated once and frozen. Loops read it, never write it."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fulmen.utilities.exceptions import MisconfigurationException

_F = TypeVar("_F", bound=Callable[..., Any])


def defaults_from_env_vars(init: _F) -> _F:
    """Lightning's ``PL_TRAINER_*`` environment variables as defaults of ``Trainer.__init__``'s arguments.

    ``PL_TRAINER_MAX_EPOCHS=3`` or ``PL_TRAINER_ACCELERATOR=cpu`` set the argument when the call does not give it
    (an argument given explicitly wins). As Lightning: the name is ``PL_{CLASS NAME}_{ARGUMENT}`` in capitals (a
    subclass ``MyTrainer`` reads ``PL_MYTRAINER_*``), the value is parsed with ``ast.literal_eval`` (``3``,
    ``False``, ``[0, 1]``, ``0.5``) and kept as the string when that fails (``cpu``), and an empty value is unset.
    """
    import functools
    import os

    @functools.wraps(init)
    def with_env_defaults(self: Any, *args: Any, **kwargs: Any) -> Any:
        cls = type(self)
        prefix = f"PL_{cls.__name__.upper()}_"
        if any(k.startswith(prefix) for k in os.environ):  # no inspection at all in the common case
            kwargs = {**_env_defaults(cls, prefix), **kwargs}
        return init(self, *args, **kwargs)

    return with_env_defaults  # type: ignore[return-value]


def _env_defaults(cls: type, prefix: str) -> dict[str, Any]:
    import ast
    import inspect
    import os

    out: dict[str, Any] = {}
    for name in inspect.signature(cls).parameters:
        raw = os.environ.get(prefix + name.upper())
        if raw is None or raw == "":
            continue
        try:
            out[name] = ast.literal_eval(raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            out[name] = raw
    return out


def _err(arg: str, given: Any, expected: str, fix: str) -> MisconfigurationException:
    return MisconfigurationException(f"Trainer({arg}={given!r}): expected {expected}. Fix: {fix}")


def parse_time(value: Any, arg: str) -> _dt.timedelta | None:
    """``"DD:HH:MM:SS"``, a timedelta or a dict of timedelta kwargs."""
    if value is None:
        return None
    if isinstance(value, _dt.timedelta):
        return value
    if isinstance(value, dict):
        try:
            return _dt.timedelta(**value)
        except TypeError as e:
            raise _err(arg, value, "a dict of timedelta arguments (days, hours, minutes, seconds)", str(e)) from e
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) == 4 and all(p.strip().isdigit() for p in parts):
            d, h, m, s = (int(p) for p in parts)
            return _dt.timedelta(days=d, hours=h, minutes=m, seconds=s)
    raise _err(arg, value, "'DD:HH:MM:SS', a datetime.timedelta or a dict", f"e.g. {arg}='00:12:00:00'")


def _limit(arg: str, value: Any) -> int | float:
    if value is None:
        return 1.0
    if isinstance(value, bool):
        raise _err(arg, value, "an int (number of batches) or a float in [0.0, 1.0] (fraction)", f"e.g. {arg}=0.25")
    if isinstance(value, int):
        if value < 0:
            raise _err(arg, value, "a non-negative int", f"e.g. {arg}=10")
        return value
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise _err(
                arg, value, "a float in [0.0, 1.0] (a fraction of the epoch) or an int (a number of batches)",
                f"use {arg}=1.0 for the whole epoch or an int like {arg}={int(value)} for a batch count",
            )
        return value
    raise _err(arg, value, "an int or a float", f"e.g. {arg}=1.0")


def _opt_int(arg: str, value: Any, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _err(arg, value, f"an int >= {minimum} or None", f"e.g. {arg}={max(minimum, 1)}")
    return value


@dataclass(frozen=True)
class TrainerConfig:
    # None when not given, until the first fit resolves it (1000, or -1 with max_steps or max_time)
    max_epochs: int | None
    min_epochs: int | None
    max_steps: int
    min_steps: int | None
    max_time: _dt.timedelta | None
    limit_train_batches: int | float
    limit_val_batches: int | float
    limit_test_batches: int | float
    limit_predict_batches: int | float
    overfit_batches: int | float
    # a float fraction of the epoch, an int number of batches, or a timedelta (time-based validation)
    val_check_interval: int | float | _dt.timedelta
    check_val_every_n_epoch: int | None
    num_sanity_val_steps: int
    log_every_n_steps: int
    accumulate_grad_batches: int
    gradient_clip_val: float | None
    gradient_clip_algorithm: str
    fast_dev_run: int
    deterministic: bool | str | None
    benchmark: bool | None
    inference_mode: bool
    use_distributed_sampler: bool
    detect_anomaly: bool
    barebones: bool
    reload_dataloaders_every_n_epochs: int
    default_root_dir: str
    enable_progress_bar: bool
    enable_model_summary: bool
    enable_checkpointing: bool
    sync_batchnorm: bool
    enable_autolog_hparams: bool

    @classmethod
    def build(cls, **kw: Any) -> TrainerConfig:
        import os

        fast_dev_run = kw["fast_dev_run"]
        if isinstance(fast_dev_run, bool):
            fast = 1 if fast_dev_run else 0
        elif isinstance(fast_dev_run, int) and fast_dev_run >= 0:
            fast = fast_dev_run
        else:
            raise _err("fast_dev_run", fast_dev_run, "a bool or a non-negative int", "e.g. fast_dev_run=True")

        max_steps = kw["max_steps"]
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < -1:
            raise _err("max_steps", max_steps, "-1 (no limit) or a non-negative int", "e.g. max_steps=1000")
        # None (not given) stays None until a fit resolves it, as in Lightning (lifecycle.resolve_max_epochs)
        max_epochs = kw["max_epochs"]
        if max_epochs is not None and (isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < -1):
            raise _err("max_epochs", max_epochs, "-1 (infinite), a non-negative int or None", "e.g. max_epochs=10")
        min_epochs = _opt_int("min_epochs", kw["min_epochs"], 0)
        min_steps = _opt_int("min_steps", kw["min_steps"], 0)
        if min_epochs is not None and max_epochs is not None and max_epochs >= 0 and min_epochs > max_epochs:
            raise _err("min_epochs", min_epochs, f"<= max_epochs ({max_epochs})", "lower min_epochs or raise max_epochs")

        vci = kw["val_check_interval"]
        if vci is None:
            vci = 1.0
        elif isinstance(vci, (str, dict, _dt.timedelta)):
            # time-based (Lightning 2.6): validate once this much wall-clock time has passed since the last one
            vci = parse_time(vci, "val_check_interval")
            assert vci is not None
            if vci.total_seconds() < 0:
                raise _err(
                    "val_check_interval", kw["val_check_interval"], "a non-negative duration",
                    "e.g. val_check_interval='00:01:00:00' (validate every hour)",
                )
        elif isinstance(vci, bool) or not isinstance(vci, (int, float)):
            raise _err("val_check_interval", vci, "a float in (0, 1] or a positive int", "e.g. val_check_interval=0.5")
        elif isinstance(vci, float) and not 0.0 < vci <= 1.0:
            raise _err(
                "val_check_interval", vci, "a float in (0.0, 1.0] (fraction of the epoch) or an int (batches)",
                "e.g. val_check_interval=0.25, or an int for a batch count",
            )
        elif isinstance(vci, int) and vci < 1:
            raise _err("val_check_interval", vci, "a positive int", "e.g. val_check_interval=100")

        cve = kw["check_val_every_n_epoch"]
        if cve is not None and (isinstance(cve, bool) or not isinstance(cve, int) or cve < 1):
            raise _err("check_val_every_n_epoch", cve, "a positive int or None", "e.g. check_val_every_n_epoch=1")

        nsv = kw["num_sanity_val_steps"]
        if nsv is None:
            nsv = 2
        if isinstance(nsv, bool) or not isinstance(nsv, int) or nsv < -1:
            raise _err("num_sanity_val_steps", nsv, "-1 (all), 0 or a positive int", "e.g. num_sanity_val_steps=2")

        log_n = kw["log_every_n_steps"]
        barebones = bool(kw["barebones"])
        if log_n is None:
            log_n = 0 if barebones else 50
        if isinstance(log_n, bool) or not isinstance(log_n, int) or log_n < 0:
            raise _err("log_every_n_steps", log_n, "a non-negative int", "e.g. log_every_n_steps=50")

        acc = kw["accumulate_grad_batches"]
        if isinstance(acc, bool) or not isinstance(acc, int) or acc < 1:
            raise _err(
                "accumulate_grad_batches", acc, "a positive int",
                "e.g. accumulate_grad_batches=4 (for per-epoch schedules use GradientAccumulationScheduler)",
            )

        gcv = kw["gradient_clip_val"]
        if gcv is not None and (isinstance(gcv, bool) or not isinstance(gcv, (int, float)) or gcv < 0):
            raise _err("gradient_clip_val", gcv, "a non-negative number or None", "e.g. gradient_clip_val=1.0")
        gca = kw["gradient_clip_algorithm"]
        if gca is None:
            gca = "norm"
        if gca not in ("norm", "value"):
            raise _err("gradient_clip_algorithm", gca, "'norm' or 'value'", "e.g. gradient_clip_algorithm='norm'")

        det = kw["deterministic"]
        if det not in (None, True, False, "warn"):
            raise _err("deterministic", det, "True, False, 'warn' or None", "e.g. deterministic=True")

        reload_n = kw["reload_dataloaders_every_n_epochs"]
        if isinstance(reload_n, bool) or not isinstance(reload_n, int) or reload_n < 0:
            raise _err("reload_dataloaders_every_n_epochs", reload_n, "a non-negative int", "e.g. 0 (never)")

        overfit = kw["overfit_batches"]
        overfit_v = _limit("overfit_batches", overfit) if overfit not in (0, 0.0) else 0

        root = kw["default_root_dir"]
        if root is None:  # FULMEN_DEFAULT_ROOT_DIR: where a run writes when the script names no folder (sweep trials)
            root = os.environ.get("FULMEN_DEFAULT_ROOT_DIR") or os.getcwd()
        root = os.fspath(root) if not isinstance(root, str) else root

        def flag(name: str, default: bool) -> bool:
            value = kw[name]
            if value is None:
                return default
            if not isinstance(value, bool):
                raise _err(name, value, "True, False or None", f"e.g. {name}=True")
            return value

        prog = flag("enable_progress_bar", not barebones)
        summary = flag("enable_model_summary", not barebones)
        ckpt = flag("enable_checkpointing", not barebones)
        if barebones:
            bad = [
                name
                for name, on in (
                    ("enable_progress_bar", prog),
                    ("enable_model_summary", summary),
                    ("enable_checkpointing", ckpt),
                    ("log_every_n_steps", log_n > 0),
                    ("num_sanity_val_steps", kw["num_sanity_val_steps"] not in (None, 0)),
                    ("fast_dev_run", fast > 0),
                    ("detect_anomaly", bool(kw["detect_anomaly"])),
                    ("logger", kw["logger"] not in (None, False)),
                    ("profiler", kw["profiler"] is not None),
                )
                if on
            ]
            if bad:
                raise MisconfigurationException(
                    f"Trainer(barebones=True) disables features, but {bad} were requested. Fix: drop those "
                    "arguments or set barebones=False."
                )
            nsv = 0

        limits: dict[str, int | float]
        if fast:
            max_steps, max_epochs, nsv, log_n = fast, 1, 0, 1
            limits = {k: fast for k in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches")}
            vci, cve = 1.0, 1
        else:
            limits = {k: _limit(k, kw[k]) for k in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches")}
        if overfit_v:
            limits["limit_train_batches"] = overfit_v
            limits["limit_val_batches"] = overfit_v

        return cls(
            max_epochs=max_epochs,
            min_epochs=min_epochs,
            max_steps=max_steps,
            min_steps=min_steps,
            max_time=parse_time(kw["max_time"], "max_time"),
            overfit_batches=overfit_v,
            val_check_interval=vci,
            check_val_every_n_epoch=cve,
            num_sanity_val_steps=nsv,
            log_every_n_steps=log_n,
            accumulate_grad_batches=acc,
            gradient_clip_val=gcv,
            gradient_clip_algorithm=gca,
            fast_dev_run=fast,
            deterministic=det,
            benchmark=kw["benchmark"],
            inference_mode=bool(kw["inference_mode"]),
            use_distributed_sampler=bool(kw["use_distributed_sampler"]),
            detect_anomaly=bool(kw["detect_anomaly"]),
            barebones=barebones,
            reload_dataloaders_every_n_epochs=reload_n,
            default_root_dir=root,
            enable_progress_bar=prog,
            enable_model_summary=summary,
            enable_checkpointing=ckpt,
            sync_batchnorm=bool(kw["sync_batchnorm"]),
            enable_autolog_hparams=bool(kw["enable_autolog_hparams"]),
            **limits,
        )


# what a limit/interval of exactly 1 (one batch) or 1.0 (all of them) means, as Lightning's Trainer reports it
_CONFIGURED_SO = {
    "limit_train_batches": ("1 batch per epoch will be used.", "100% of the batches per epoch will be used.."),
    "limit_val_batches": ("1 batch will be used.", "100% of the batches will be used.."),
    "limit_test_batches": ("1 batch will be used.", "100% of the batches will be used.."),
    "limit_predict_batches": ("1 batch will be used.", "100% of the batches will be used.."),
    "overfit_batches": ("1 batch will be used.", "100% of the batches will be used.."),
    "val_check_interval": (
        "validation will run after every batch.",
        "validation will run at the end of the training epoch..",
    ),
}


def log_configured_flags(fast_dev_run: Any, **flags: Any) -> None:
    """Log, as Lightning does, a ``limit_*_batches``/``overfit_batches``/``val_check_interval`` given as 1 or 1.0.

    ``1`` (one batch) and ``1.0`` (every batch) are easy to confuse, so an explicit one is spelled out at INFO
    (``"`Trainer(limit_val_batches=1)` was configured so 1 batch will be used."``). Nothing is logged for the
    defaults (``None``) or under ``fast_dev_run``, which sets these itself. The trailing ``..`` on the 1.0
    messages is Lightning's wording, kept for programs and tests that match on it.
    """
    if fast_dev_run:
        return
    from fulmen.utilities.rank_zero import rank_zero_info

    for name, (one, all_) in _CONFIGURED_SO.items():
        value = flags.get(name)
        if type(value) is int and value == 1:
            rank_zero_info(f"`Trainer({name}=1)` was configured so {one}")
        elif type(value) is float and value == 1.0:
            rank_zero_info(f"`Trainer({name}=1.0)` was configured so {all_}")
