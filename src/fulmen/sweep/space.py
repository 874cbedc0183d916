"""The search space: search expressions on the command line or in a YAML file, and how they map onto Optuna.

An expression is one of::

    uniform(a, b)            a float in [a, b]
    loguniform(a, b)         a float in [a, b], log scale (0 < a < b)
    int(a, b)                an int in [a, b]; int(a, b, step) on a step
    choice(x, y, ...)        one of the values (numbers, true/false/null, quoted or bare words)
    [x, y, ...]              a list: the values a grid crosses (a categorical for the other samplers)

``uniform`` and ``loguniform`` take Grid's optional count suffix: ``uniform(1e-6, 1e-1, 20)`` is 20
values drawn once (from the sweep's seed) and then treated as a list, so a grid crosses them with the
other parameters as Grid did. A value that is not an expression is passed to the script unchanged.

This module imports nothing heavy: the CLI parses and checks the whole space before Optuna is imported.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Param", "SearchExpressionError", "SearchSpace", "is_expression", "parse_expression"]

_FUNCTIONS = ("uniform", "loguniform", "int", "choice")
_EXPR_START = re.compile(r"\s*(?:(uniform|loguniform|int|choice)\s*\(|\[)")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_./:-]*")


class SearchExpressionError(ValueError):
    """A search expression that cannot be parsed or checked; the message marks the position."""

    def __init__(self, text: str, pos: int, problem: str, name: str | None = None) -> None:
        where = f" for {name}" if name else ""
        fix = (
            "Expected one of: uniform(a, b), loguniform(a, b), int(a, b) or int(a, b, step), choice(x, y, ...), "
            "[x, y, ...]; uniform/loguniform take a count: uniform(a, b, 20)."
        )
        super().__init__(f"bad search expression{where}: {problem}\n  {text}\n  {' ' * pos}^\n{fix}")
        self.text = text
        self.pos = pos
        self.problem = problem


@dataclass(frozen=True)
class Param:
    """One swept parameter. ``values`` is set for the finite kinds (list, choice, counted draws)."""

    name: str
    kind: str  # "uniform" | "loguniform" | "int" | "choice" | "list"
    low: float | int | None = None
    high: float | int | None = None
    step: int | None = None
    count: int | None = None
    values: tuple[Any, ...] | None = None
    text: str = ""

    @property
    def finite(self) -> bool:
        """True when the parameter has a fixed list of values (a grid can cross it)."""
        return self.values is not None or self.count is not None

    def grid_values(self, seed: int | None) -> list[Any]:
        """The values a grid crosses: the list, the choices, the ``count`` draws, or every int on the step."""
        if self.values is not None:
            return list(self.values)
        if self.count is not None:
            # drawn once from the sweep's seed (and the name, so two parameters differ): reruns draw the same
            rng = random.Random(f"{seed}:{self.name}")
            lo, hi = float(self.low), float(self.high)  # type: ignore[arg-type]
            if self.kind == "loguniform":
                return sorted(math.exp(rng.uniform(math.log(lo), math.log(hi))) for _ in range(self.count))
            return sorted(rng.uniform(lo, hi) for _ in range(self.count))
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, self.step or 1))  # type: ignore[arg-type]
        raise ValueError(
            f"{self.name}={self.text} is continuous: a grid cannot cross it. Fix: give it a count "
            f"({self.kind}(a, b, 10)) or a list, or use --sampler tpe|random|cmaes."
        )

    def suggest(self, trial: Any, seed: int | None = None) -> Any:
        """Ask an Optuna trial for this parameter's value (``trial.suggest_*``)."""
        if self.finite:
            return trial.suggest_categorical(self.name, self.grid_values(seed))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=self.step or 1)  # type: ignore[arg-type]
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.kind == "loguniform")  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "expression": self.text}


def is_expression(value: Any) -> bool:
    """Whether a script argument's value is a search expression (a function call or a ``[...]`` list)."""
    return isinstance(value, str) and _EXPR_START.match(value) is not None


class _Parser:
    def __init__(self, text: str, name: str | None) -> None:
        self.text = text
        self.name = name
        self.pos = 0

    def error(self, problem: str, pos: int | None = None) -> SearchExpressionError:
        return SearchExpressionError(self.text, self.pos if pos is None else pos, problem, self.name)

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            found = repr(self.text[self.pos]) if self.pos < len(self.text) else "the end"
            raise self.error(f"expected {char!r}, found {found}")
        self.pos += 1

    def value(self) -> tuple[Any, int]:
        """A literal: a number, a quoted string, true/false/null, or a bare word. Returns (value, start)."""
        self.skip()
        start = self.pos
        ch = self.peek()
        if not ch:
            raise self.error("expected a value, found the end")
        if ch in "'\"":
            end = self.text.find(ch, self.pos + 1)
            if end < 0:
                raise self.error(f"unterminated string (no closing {ch})")
            self.pos = end + 1
            return self.text[start + 1 : end], start
        m = _NUMBER.match(self.text, self.pos)
        if m and (m.end() == len(self.text) or not (self.text[m.end()].isalnum() or self.text[m.end()] == "_")):
            self.pos = m.end()
            raw = m.group()
            return (float(raw) if any(c in raw for c in ".eE") else int(raw)), start
        m = _WORD.match(self.text, self.pos)
        if m:
            self.pos = m.end()
            word = m.group()
            lowered = word.lower()
            if lowered in ("true", "false"):
                return lowered == "true", start
            if lowered in ("null", "none"):
                return None, start
            return word, start
        raise self.error(f"expected a value, found {ch!r}")

    def items(self, close: str) -> list[tuple[Any, int]]:
        out: list[tuple[Any, int]] = []
        if self.peek() == close:
            self.pos += 1
            return out
        while True:
            out.append(self.value())
            ch = self.peek()
            if ch == ",":
                self.pos += 1
                continue
            if ch == close:
                self.pos += 1
                return out
            found = repr(ch) if ch else "the end"
            raise self.error(f"expected ',' or {close!r}, found {found}")

    def number(self, item: tuple[Any, int], what: str) -> float | int:
        value, pos = item
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(f"{what} must be a number, got {value!r}", pos)
        return value

    def parse(self) -> Param:
        name = self.name or ""
        self.skip()
        start = self.pos
        if self.peek() == "[":
            self.pos += 1
            items = self.items("]")
            if not items:
                raise self.error("an empty list sweeps nothing", start)
            param = Param(name, "list", values=tuple(v for v, _ in items), text=self.text.strip())
        else:
            m = re.compile(r"[A-Za-z_]+").match(self.text, self.pos)
            func = m.group() if m else ""
            if func not in _FUNCTIONS:
                raise self.error(f"unknown function {func!r}" if func else "expected a function or a list")
            self.pos = m.end()  # type: ignore[union-attr]
            open_pos = self.pos
            self.expect("(")
            items = self.items(")")
            param = self._function(func, items, start, open_pos)
        if self.peek():
            raise self.error(f"unexpected {self.text[self.pos]!r} after the expression")
        return param

    def _function(self, func: str, items: list[tuple[Any, int]], start: int, open_pos: int) -> Param:
        name = self.name or ""
        text = self.text.strip()
        if func == "choice":
            if not items:
                raise self.error("choice() needs at least one value", open_pos)
            return Param(name, "choice", values=tuple(v for v, _ in items), text=text)
        if len(items) < 2:
            raise self.error(f"{func}() needs two bounds: {func}(low, high)", self.pos - 1)
        if func == "int":
            if len(items) > 3:
                raise self.error("int() takes (low, high) or (low, high, step)", items[3][1])
            lo, hi = (self.number(i, "a bound") for i in items[:2])
            for (v, pos), what in zip(items, ("low", "high", "step")):
                if not isinstance(v, int) or isinstance(v, bool):
                    raise self.error(f"int() {what} must be an integer, got {v!r}", pos)
            step = int(items[2][0]) if len(items) == 3 else None
            if step is not None and step <= 0:
                raise self.error(f"the step must be positive, got {step}", items[2][1])
            if lo > hi:
                raise self.error(f"low ({lo}) is above high ({hi})", items[0][1])
            return Param(name, "int", low=int(lo), high=int(hi), step=step, text=text)
        if len(items) > 3:
            raise self.error(f"{func}() takes (low, high) or (low, high, count)", items[3][1])
        lo, hi = (float(self.number(i, "a bound")) for i in items[:2])
        if not lo < hi:
            raise self.error(f"low ({lo:g}) must be below high ({hi:g})", items[0][1])
        if func == "loguniform" and lo <= 0:
            raise self.error(f"loguniform needs 0 < low, got {lo:g}", items[0][1])
        count = None
        if len(items) == 3:
            c, pos = items[2]
            if not isinstance(c, int) or isinstance(c, bool) or c < 1:
                raise self.error(f"the count must be a positive integer, got {c!r}", pos)
            count = c
        return Param(name, func, low=lo, high=hi, count=count, text=text)


def parse_expression(text: str, name: str | None = None) -> Param:
    """Parse one search expression (``name`` is the parameter it is for, used in errors).

    Raises:
        SearchExpressionError: the expression is malformed; the message marks where.
    """
    if not isinstance(text, str):
        raise TypeError(f"a search expression is a string, got {text!r} ({type(text).__name__})")
    return _Parser(text, name).parse()


@dataclass
class SearchSpace:
    """The swept parameters in order, each keyed by the script argument (or config key) it fills."""

    params: list[Param] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def add(self, param: Param) -> None:
        if param.name in self.names:
            raise ValueError(f"the parameter {param.name!r} is swept twice. Fix: give it one expression.")
        self.params.append(param)

    def all_finite(self) -> bool:
        return bool(self.params) and all(p.finite or p.kind == "int" for p in self.params)

    def grid(self, seed: int | None) -> dict[str, list[Any]]:
        """The search space of Optuna's GridSampler: every parameter's values (crossed by the sampler)."""
        return {p.name: p.grid_values(seed) for p in self.params}

    def grid_size(self, seed: int | None) -> int:
        size = 1
        for values in self.grid(seed).values():
            size *= len(values)
        return size

    def suggest(self, trial: Any, seed: int | None = None) -> dict[str, Any]:
        return {p.name: p.suggest(trial, seed) for p in self.params}

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any], prefix: str = "") -> SearchSpace:
        """From a YAML/dict config: ``{"--lr": "loguniform(1e-5, 1e-1)", "--layers": [2, 4]}``.

        Nested mappings join their keys with dots (``model: {lr: ...}`` is ``model.lr``), as LightningCLI
        spells them; YAML lists are lists to sweep; other values are not swept.
        """
        space = cls()
        for key, value in _flatten(mapping, prefix):
            if isinstance(value, list):
                if not value:
                    raise ValueError(f"{key}: an empty list sweeps nothing. Fix: give it values.")
                space.add(Param(key, "list", values=tuple(value), text=repr(value)))
            elif is_expression(value):
                space.add(parse_expression(value, key))
        return space


def _flatten(mapping: dict[str, Any], prefix: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out += _flatten(value, full)
        else:
            out.append((full, value))
    return out


def load_config(path: str) -> dict[str, Any]:
    """Read a sweep YAML file: a mapping whose ``parameters:`` section is the space.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a mapping, or a bad expression (the message names the key).
    """
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path!r}: no such file. Fix: check the path.") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"--config {path!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"--config {path!r} holds {type(data).__name__}, expected a mapping with a 'parameters:' section, e.g.\n"
            "parameters:\n  --lr: loguniform(1e-5, 1e-1)\n  --layers: [2, 4, 8]"
        )
    return data
