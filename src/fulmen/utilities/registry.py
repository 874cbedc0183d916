"""Name registries: plugins register their own names; lookups replace if/elif chains."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, tuple[Callable[..., T], dict[str, Any], str]] = {}

    def register(self, name: str, factory: Callable[..., T], description: str = "", **init_kwargs: Any) -> None:
        self._entries[name] = (factory, init_kwargs, description)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str, **kwargs: Any) -> T:
        from fulmen.utilities.exceptions import MisconfigurationException

        if name not in self._entries:
            raise MisconfigurationException(
                f"Unknown {self.kind} {name!r}. Expected one of {self.names()}. Fix: pick a registered name "
                f"or pass a {self.kind} instance."
            )
        factory, init_kwargs, _ = self._entries[name]
        return factory(**{**init_kwargs, **kwargs})
