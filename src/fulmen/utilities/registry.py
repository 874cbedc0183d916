"""Name registries: plugins register their own names; lookups replace if/elif chains.

A :class:`Registry` maps a name (``"ddp"``, ``"cuda"``, ``"bf16-mixed"``) to a factory and the keyword arguments
it is called with. It also answers Lightning's registry API (``lightning.fabric.strategies.STRATEGY_REGISTRY``,
``lightning.pytorch.accelerators.AcceleratorRegistry``): ``register`` (also as a decorator, with ``override``),
``get(name, default)``, ``remove``, ``name in registry``, ``registry[name]`` (``{"description", "init_params",
<kind>, "<kind>_name"}``) and iteration over the names.

``providers`` are modules that register more names when imported (each strategy module registers its own
names); they are imported one by one, only when a name is not found yet or the full list is asked for, so
``import fulmen`` does not import them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from fulmen.utilities.exceptions import MisconfigurationException

T = TypeVar("T")


class UnknownNameError(MisconfigurationException, KeyError, ValueError):
    """A registry lookup of a name nobody registered (a ``KeyError`` too, as Lightning's registries raise, and a
    ``ValueError``, as Lightning's ``Trainer(accelerator=/strategy=<unknown name>)`` raises)."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    def __init__(self, kind: str, providers: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._entries: dict[str, tuple[Callable[..., T], dict[str, Any], str]] = {}
        self._providers = list(providers)

    # ------------------------------------------------------------------ registering
    def register(
        self,
        name: str,
        factory: Callable[..., T] | None = None,
        description: str | None = "",
        override: bool = False,
        **init_params: Any,
    ) -> Any:
        """Register ``factory`` (a class or function) under ``name``; ``init_params`` are passed when it is built.

        Without ``factory``, returns a decorator: ``@REGISTRY.register("mine")`` above a class.

        Raises:
            ValueError: ``name`` is already registered and ``override`` is False.
            TypeError: ``name`` is not a string or ``factory`` is not callable.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} registry: the name must be a non-empty string, got {name!r}.")
        if factory is None:

            def decorator(fn: Callable[..., T]) -> Callable[..., T]:
                self.register(name, fn, description, override, **init_params)
                return fn

            return decorator
        if not callable(factory):
            raise TypeError(f"{self.kind} registry: {name!r} must map to a class or function, got {factory!r}.")
        if name in self._entries and not override:
            raise ValueError(f"{name!r} is already present in the {self.kind} registry. HINT: Use `override=True`.")
        self._entries[name] = (factory, dict(init_params), description or "")
        return factory

    def remove(self, name: str) -> None:
        """Forget ``name`` (no error if it is not registered)."""
        self._load_all()
        self._entries.pop(name, None)

    # ------------------------------------------------------------------ lookups
    def _find(self, name: object) -> bool:
        """Whether ``name`` is registered, importing providers one at a time until it is."""
        while name not in self._entries and self._providers:
            importlib.import_module(self._providers.pop(0))
        return name in self._entries

    def _load_all(self) -> None:
        while self._providers:
            importlib.import_module(self._providers.pop(0))

    def __contains__(self, name: object) -> bool:
        return self._find(name)

    def names(self) -> list[str]:
        self._load_all()
        return sorted(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def keys(self) -> list[str]:
        return self.names()

    def __getitem__(self, name: str) -> dict[str, Any]:
        if not self._find(name):
            raise self._unknown(name)
        factory, init_params, description = self._entries[name]
        return {
            "description": description,
            "init_params": dict(init_params),
            self.kind: factory,
            f"{self.kind}_name": name,
        }

    def get(self, name: str, default: Any = None, **kwargs: Any) -> T:
        """Build the object registered as ``name`` (its ``init_params``, updated with ``kwargs``).

        Returns ``default`` when ``name`` is unknown and a default is given.

        Raises:
            UnknownNameError: ``name`` is unknown and no default is given (a MisconfigurationException and a
                KeyError).
        """
        if not self._find(name):
            if default is not None:
                return default  # type: ignore[no-any-return]
            raise self._unknown(name)
        factory, init_params, _ = self._entries[name]
        return factory(**{**init_params, **kwargs})

    def _unknown(self, name: object) -> UnknownNameError:
        return UnknownNameError(
            f"Unknown {self.kind} {name!r}. Expected one of {self.names()}. Fix: pick a registered name "
            f"or pass a {self.kind} instance."
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.names()})"
