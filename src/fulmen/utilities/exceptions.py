"""Exception types raised by fulmen for user mistakes."""

from __future__ import annotations


class MisconfigurationException(Exception):
    """A setting, argument or user hook is wrong. The message names it, what was given and the fix."""


class NotSupportedYetError(MisconfigurationException, NotImplementedError):
    """A Lightning feature that fulmen does not implement yet. Raised instead of silently ignoring it."""


def misconfig(what: str, given: object, expected: str, fix: str) -> MisconfigurationException:
    """Build a uniform error message: what was wrong, what was given, what is expected and the fix."""
    return MisconfigurationException(f"{what}: got {given!r}; expected {expected}. Fix: {fix}")


class RankFailedError(RuntimeError):
    """Another process of a distributed run raised; this rank stopped because of it.

    Attributes:
        rank: the global rank that raised first (the root cause).
        exc_type: the name of its exception type.
        remote_message: its message.
        remote_traceback: its formatted traceback (as text).
    """

    def __init__(
        self, rank: int, exc_type: str, message: str, remote_traceback: str = "", this_rank: int | None = None
    ) -> None:
        self.rank = rank
        self.exc_type = exc_type
        self.remote_message = message
        self.remote_traceback = remote_traceback
        where = f" (seen on rank {this_rank})" if this_rank is not None and this_rank != rank else ""
        text = f"Rank {rank} raised {exc_type}: {message}{where}"
        if remote_traceback:
            text += f"\n\n--- traceback on rank {rank} ---\n{remote_traceback.rstrip()}"
        super().__init__(text)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.rank, self.exc_type, self.remote_message, self.remote_traceback))


class RanksOutOfSyncError(MisconfigurationException):
    """The ranks of a distributed run took different paths (a collective was reached by some ranks only)."""


# Where Lightning raises a built-in type for a public misuse (``ValueError`` for a bad value, ``TypeError`` for a
# missing/wrong-typed argument, ...), fulmen raises one of these: code that catches Lightning's type keeps working,
# and ``except MisconfigurationException`` still catches every fulmen configuration error.
class MisconfigurationValueError(MisconfigurationException, ValueError):
    """A bad value where Lightning raises ``ValueError``."""


class MisconfigurationTypeError(MisconfigurationException, TypeError):
    """A wrong or missing argument where Lightning raises ``TypeError``."""


class MisconfigurationKeyError(MisconfigurationException, KeyError):
    """A missing key where Lightning raises ``KeyError``."""

    __str__ = Exception.__str__  # the message as written (KeyError would quote it)


class MisconfigurationAttributeError(MisconfigurationException, AttributeError):
    """A missing attribute or object where Lightning raises ``AttributeError``."""
