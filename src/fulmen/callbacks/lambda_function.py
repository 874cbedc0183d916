"""``LambdaCallback``: build a callback from plain functions, one keyword argument per hook.

Each instance gets a small subclass whose methods are exactly the hooks it was given, so the
trainer's dispatcher (which calls only overridden hooks) sees them as overridden and skips the rest.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from fulmen.callbacks.callback import Callback
from fulmen.utilities.exceptions import MisconfigurationException, MisconfigurationTypeError

# Methods of ``Callback`` that are not hooks and cannot be replaced by a function.
_NOT_HOOKS = frozenset({"state_key", "state_dict", "load_state_dict"})


def callback_hook_names() -> tuple[str, ...]:
    """Every hook name a :class:`~fulmen.callbacks.callback.Callback` can override, sorted."""
    return tuple(
        sorted(
            name
            for name, member in vars(Callback).items()
            if not name.startswith("_") and name not in _NOT_HOOKS and inspect.isfunction(member)
        )
    )


_HOOK_NAMES = frozenset(callback_hook_names())


def _forwarder(name: str) -> Callable[..., Any]:
    def hook(self: LambdaCallback, *args: Any, **kwargs: Any) -> Any:
        return self._hooks[name](*args, **kwargs)

    hook.__name__ = hook.__qualname__ = name
    hook.__doc__ = f"Calls the ``{name}`` function given to :class:`LambdaCallback`."
    return hook


_SUBCLASSES: dict[tuple[type, frozenset[str]], type[LambdaCallback]] = {}


def _subclass_with_hooks(base: type[LambdaCallback], names: frozenset[str]) -> type[LambdaCallback]:
    cached = _SUBCLASSES.get((base, names))
    if cached is not None:
        return cached
    namespace: dict[str, Any] = {name: _forwarder(name) for name in names}
    namespace["__qualname__"] = base.__qualname__  # same ``state_key`` as the base class
    namespace["__module__"] = base.__module__
    namespace["_generated_from"] = base
    cls = type(base.__name__, (base,), namespace)
    _SUBCLASSES[(base, names)] = cls
    return cls


class LambdaCallback(Callback):
    r"""Create a simple callback on the fly from functions.

    Each keyword is a hook name of :class:`~fulmen.callbacks.callback.Callback` and each value a
    function taking the hook's arguments (``trainer, pl_module, ...``).

    Args:
        **hooks: ``hook_name=function`` pairs, e.g. ``on_train_epoch_end=lambda trainer, pl_module: ...``.

    Raises:
        MisconfigurationException: if a name is not a Callback hook or a value is not callable.

    Example::

        >>> from fulmen.callbacks.lambda_function import LambdaCallback
        >>> cb = LambdaCallback(setup=lambda *args: print("setup"))
        >>> cb.setup(None, None, "fit")
        setup
    """

    _hooks: dict[str, Callable[..., Any]]

    def __init__(self, **hooks: Callable[..., Any] | None) -> None:
        super().__init__()
        given = {name: fn for name, fn in hooks.items() if fn is not None}
        for name, fn in given.items():
            if name not in _HOOK_NAMES:
                close = difflib.get_close_matches(name, sorted(_HOOK_NAMES), n=1)
                hint = f"Did you mean {close[0]!r}? " if close else ""
                raise MisconfigurationTypeError(
                    f"LambdaCallback({name}=...): {name!r} is not a Callback hook. {hint}"
                    f"Expected one of: {', '.join(sorted(_HOOK_NAMES))}."
                )
            if not callable(fn):
                raise MisconfigurationException(
                    f"LambdaCallback({name}=...): got {fn!r}, which is not callable. "
                    f"Fix: pass a function taking the hook's arguments, e.g. {name}=lambda trainer, "
                    "pl_module, *args: ..."
                )
        self._hooks = given
        if given:
            self.__class__ = _subclass_with_hooks(type(self), frozenset(given))

    def __reduce__(self) -> tuple[Any, ...]:
        # The per-instance subclass is not importable; rebuild from the base class and the functions.
        base = vars(type(self)).get("_generated_from", type(self))
        return (_rebuild, (base, dict(self._hooks)), None)

    def __repr__(self) -> str:
        return f"LambdaCallback({', '.join(sorted(self._hooks))})"


def _rebuild(base: type[LambdaCallback], hooks: dict[str, Callable[..., Any]]) -> LambdaCallback:
    return base(**hooks)


__all__ = ["LambdaCallback", "callback_hook_names"]
