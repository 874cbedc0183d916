"""Hyperparameter helpers: ``AttributeDict`` and reading a constructor's arguments from its frame."""

from __future__ import annotations

import inspect
import types
from typing import Any


def is_picklable(obj: object) -> bool:
    """Whether ``pickle.dumps(obj)`` works (what can go into a checkpoint's hyperparameters or a spawn)."""
    import pickle

    try:
        pickle.dumps(obj)
    except (pickle.PickleError, AttributeError, RuntimeError, TypeError, ValueError):
        return False
    return True


class AttributeDict(dict):  # type: ignore[type-arg]
    """A dict whose keys are also attributes: ``hparams.lr == hparams["lr"]``."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as exp:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{key}'") from exp

    def __setattr__(self, key: str, val: Any) -> None:
        self[key] = val

    def __delattr__(self, item: str) -> None:
        if item not in self:
            raise AttributeError(item)
        del self[item]

    def __repr__(self) -> str:
        if not len(self):
            return ""
        max_key_length = max(len(str(k)) for k in self)
        tmp_name = "{:" + str(max_key_length + 3) + "s} {}"
        rows = [tmp_name.format(f'"{n}":', self[n]) for n in sorted(self.keys(), key=str)]
        return "\n".join(rows)


def _init_args_from_frame(frame: types.FrameType) -> tuple[Any, dict[str, Any]]:
    """Return ``(self, {arg: value})`` for the ``__init__`` running in ``frame`` (``**kwargs`` flattened)."""
    code = frame.f_code
    local_vars = frame.f_locals
    n_args = code.co_argcount + code.co_kwonlyargcount
    names = list(code.co_varnames[:n_args])
    if not names:
        return None, {}
    self_name = names[0]
    obj = local_vars.get(self_name)
    init_args: dict[str, Any] = {}
    for name in names[1:]:
        if name in local_vars:
            init_args[name] = local_vars[name]
    if code.co_flags & inspect.CO_VARKEYWORDS:
        kw_name = code.co_varnames[n_args + (1 if code.co_flags & inspect.CO_VARARGS else 0)]
        init_args.update(local_vars.get(kw_name, {}) or {})
    return obj, init_args


def collect_init_args(frame: types.FrameType) -> dict[str, Any]:
    """Walk up from ``frame`` through the ``__init__`` chain of one object, merging the arguments.

    The outermost (most derived) class's values win, as Lightning does.
    """
    collected: list[dict[str, Any]] = []
    obj = None
    current: types.FrameType | None = frame
    while current is not None and current.f_code.co_name == "__init__":
        this_obj, args = _init_args_from_frame(current)
        if obj is None:
            obj = this_obj
        elif this_obj is not obj:
            break
        collected.append(args)
        current = current.f_back
    merged: dict[str, Any] = {}
    for args in collected:  # innermost first, so outer (subclass) values override
        merged.update(args)
    merged.pop("__class__", None)
    return merged
