"""Exception types raised by fulmen for user mistakes."""

from __future__ import annotations


class MisconfigurationException(Exception):
    """A setting, argument or user hook is wrong. The message names it, what was given and the fix."""


class NotSupportedYetError(MisconfigurationException, NotImplementedError):
    """A Lightning feature that fulmen does not implement yet. Raised instead of silently ignoring it."""


def misconfig(what: str, given: object, expected: str, fix: str) -> MisconfigurationException:
    """Build a uniform error message: what was wrong, what was given, what is expected and the fix."""
    return MisconfigurationException(f"{what}: got {given!r}; expected {expected}. Fix: {fix}")
