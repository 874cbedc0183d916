"""Enums of Lightning's public API (``lightning.pytorch.utilities.enums``, ``lightning.fabric.utilities.enums``)."""

from __future__ import annotations

from enum import Enum


class LightningEnum(str, Enum):
    """A string enum that compares to strings without regard to case: ``GradClipAlgorithmType.NORM == "Norm"``."""

    @classmethod
    def from_str(cls, value: str) -> LightningEnum:
        """The member whose name or value matches ``value`` (any case).

        Raises:
            ValueError: no member matches.
        """
        for member in cls:
            if value.lower() in (member.name.lower(), str(member.value).lower()):
                return member
        raise ValueError(f"Invalid match: expected one of {[m.value for m in cls]}, but got {value!r}.")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Enum):
            other = other.value
        return isinstance(other, str) and str(self.value).lower() == other.lower()

    def __hash__(self) -> int:
        return hash(str(self.value).lower())


class GradClipAlgorithmType(LightningEnum):
    """``gradient_clip_algorithm``: clip the global norm, or each gradient value."""

    VALUE = "value"
    NORM = "norm"


__all__ = ["GradClipAlgorithmType", "LightningEnum"]
