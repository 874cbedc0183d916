"""``save_hyperparameters``: read the constructor's arguments and keep them as plain data."""

from __future__ import annotations

import copy
import inspect
import types
from argparse import Namespace
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar

from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.parsing import AttributeDict, collect_init_args

_PRIMITIVES = (bool, int, float, str, type(None))

# LightningCLI(load_from_checkpoint_support=True) builds the model/datamodule inside this context: the class
# being built and the hyperparameters ``save_hyperparameters`` records instead of the ``__init__`` arguments
# (the parsed config, nested class specs included, and the ``_instantiator`` that rebuilds it)
_given_hyperparameters: ContextVar[tuple[type, dict[str, Any]] | None] = ContextVar(
    "_given_hyperparameters", default=None
)


@contextmanager
def given_hyperparameters(class_type: type, hparams: dict[str, Any], instantiator: str) -> Iterator[None]:
    """While building ``class_type``, its ``save_hyperparameters()`` saves ``hparams`` (plus ``_instantiator``)."""
    token = _given_hyperparameters.set((class_type, {**hparams, "_instantiator": instantiator}))
    try:
        yield
    finally:
        _given_hyperparameters.reset(token)


class HyperparametersMixin:
    __jit_unused_properties__: ClassVar[list[str]] = ["hparams", "hparams_initial"]

    def __init__(self) -> None:
        super().__init__()
        self._log_hyperparams = False  # as Lightning: True once save_hyperparameters(logger=True) ran

    def save_hyperparameters(
        self,
        *args: Any,
        ignore: Sequence[str] | str | None = None,
        frame: types.FrameType | None = None,
        logger: bool = True,
    ) -> None:
        """Save the ``__init__`` arguments (or the named ones / a given dict) to ``self.hparams``.

        Args:
            *args: names of ``__init__`` arguments to keep, or a single dict / Namespace to save as is.
            ignore: argument names to leave out (e.g. modules passed in).
            frame: the frame to read the arguments from (defaults to the caller's ``__init__``).
            logger: whether loggers receive these hyperparameters.

        Raises:
            MisconfigurationException: a name in ``args`` is not an ``__init__`` argument.
        """
        self._log_hyperparams = logger
        if len(args) == 1 and not isinstance(args[0], str):
            hp = args[0]
            if isinstance(hp, Namespace):
                hp = vars(hp)
            if not isinstance(hp, Mapping):
                raise MisconfigurationException(
                    f"save_hyperparameters({type(hp).__name__}): a single positional argument must be a dict, an "
                    "argparse.Namespace or an argument name. Fix: pass the init argument names as strings."
                )
            self._set_hparams(dict(hp))
            return
        given = _given_hyperparameters.get()
        if given is not None and type(self) is given[0]:
            # built by LightningCLI(load_from_checkpoint_support=True): the parsed config, which
            # load_from_checkpoint can parse again (nested class specs stay specs, not objects)
            init_args = dict(given[1])
        else:
            if frame is None:
                current = inspect.currentframe()
                frame = current.f_back if current is not None else None
            if frame is None:
                return
            init_args = collect_init_args(frame)
        if ignore is not None:
            ignore_set = {ignore} if isinstance(ignore, str) else set(ignore)
            init_args = {k: v for k, v in init_args.items() if k not in ignore_set}
        if args:
            missing = [a for a in args if a not in init_args]
            if missing:
                raise MisconfigurationException(
                    f"save_hyperparameters({', '.join(map(repr, args))}): {missing} are not arguments of "
                    f"{type(self).__name__}.__init__ (it has {sorted(init_args)}). Fix: name existing arguments."
                )
            init_args = {k: init_args[k] for k in args}
        self._set_hparams(init_args)

    def _set_hparams(self, hp: dict[str, Any]) -> None:
        self._hparams = AttributeDict(hp)
        try:
            self._hparams_initial = copy.deepcopy(self._hparams)
        except Exception:  # un-deep-copyable objects (e.g. modules with hooks): keep a shallow copy
            self._hparams_initial = AttributeDict(dict(self._hparams))

    @property
    def hparams(self) -> AttributeDict:
        if not hasattr(self, "_hparams"):
            self._hparams = AttributeDict()
        return self._hparams

    @property
    def hparams_initial(self) -> AttributeDict:
        if not hasattr(self, "_hparams_initial"):
            return AttributeDict()
        return copy.deepcopy(self._hparams_initial)


def to_plain_data(value: Any) -> Any:
    """Convert hyperparameters to plain data (dict/list/str/numbers) that loads with ``weights_only=True``.

    Objects that are not plain data (modules, losses, custom classes) are kept when they are types torch's
    safe loader accepts (tensors); everything else becomes its ``repr`` string, so a checkpoint never needs
    pickled classes to be loaded. Pass such objects to ``load_from_checkpoint`` as keyword overrides.
    """
    import torch

    if isinstance(value, (*_PRIMITIVES, torch.Tensor)):
        return value
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {str(k): to_plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        out = [to_plain_data(v) for v in value]
        return out if isinstance(value, list) else (tuple(out) if isinstance(value, tuple) else out)
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return repr(value)
    return repr(value)
