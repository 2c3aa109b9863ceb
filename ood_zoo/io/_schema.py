"""The schema language of ``detector.json``: typed, bounded JSON values, checked field by field.

Every check yields ``(field, problem)`` pairs, so a load names every invalid field at once.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FITTED_VALUE",
    "INT_LIMIT",
    "NULLABLE_TEXT",
    "NUMBER",
    "ListOf",
    "MapOf",
    "Record",
    "Schema",
    "Value",
    "bounded_text",
    "finite",
    "fitted_value",
    "integer",
    "nesting_depth",
    "param_value",
    "preview",
    "refuse_constant",
]


@dataclass(frozen=True)
class Value:
    """A JSON scalar of one of ``kinds`` (``bool`` is never an ``int`` or ``float`` here)."""

    kinds: tuple[type, ...]
    expected: str
    accept: Callable[[Any], bool] = lambda value: True
    nullable: bool = False

    def problems(self, value: Any, field: str) -> Iterator[tuple[str, str]]:
        if value is None and self.nullable:
            return
        stray_bool = isinstance(value, bool) and bool not in self.kinds
        if stray_bool or not isinstance(value, self.kinds) or not self.accept(value):
            yield field, f"must be {self.expected}, got {preview(value)}"


@dataclass(frozen=True)
class ListOf:
    """A JSON array of at most ``max_items`` items, each ``item``."""

    item: Schema
    max_items: int

    def problems(self, value: Any, field: str) -> Iterator[tuple[str, str]]:
        if not isinstance(value, list) or len(value) > self.max_items:
            yield field, f"must be a list of at most {self.max_items} items, got {preview(value)}"
            return
        for i, item in enumerate(value):
            yield from self.item.problems(item, f"{field}[{i}]")


@dataclass(frozen=True)
class MapOf:
    """A JSON object of at most ``max_items`` keys, each mapped to a ``value``."""

    value: Schema
    max_items: int

    def problems(self, value: Any, field: str) -> Iterator[tuple[str, str]]:
        if not isinstance(value, dict) or len(value) > self.max_items:
            expected = f"an object of at most {self.max_items} keys"
            yield field, f"must be {expected}, got {preview(value)}"
            return
        for key, item in value.items():
            yield from self.value.problems(item, f"{field}.{key}")


@dataclass(frozen=True)
class Record:
    """A JSON object with exactly the keys of ``fields`` (all required), each of its schema."""

    fields: Mapping[str, Schema]

    def problems(self, value: Any, field: str) -> Iterator[tuple[str, str]]:
        if not isinstance(value, dict):
            yield field, f"must be an object, got {preview(value)}"
            return
        for key in self.fields.keys() - value.keys():
            yield _join(field, key), "is missing"
        for key in sorted(value.keys() - self.fields.keys()):
            yield _join(field, key), "is not a field of the format"
        for key, schema in self.fields.items():
            if key in value:
                yield from schema.problems(value[key], _join(field, key))


Schema = Value | ListOf | MapOf | Record


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def preview(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def bounded_text(max_length: int, pattern: str | None = None) -> Value:
    regex = re.compile(pattern) if pattern else None
    return Value(
        (str,), f"a string of at most {max_length} characters"
        + (f" matching {pattern!r}" if pattern else ""),
        lambda s: len(s) <= max_length and (regex is None or regex.fullmatch(s) is not None),
    )


def integer(minimum: int, *, nullable: bool = False) -> Value:
    return Value((int,), f"an integer >= {minimum}" + (" or null" if nullable else ""),
                 lambda n: minimum <= n < INT_LIMIT, nullable)


def finite(number: int | float) -> bool:
    """A float, or an int small enough for torch and float64."""
    return abs(number) < INT_LIMIT if isinstance(number, int) else math.isfinite(number)


def param_value(value: bool | int | float | str) -> bool:
    return len(value) <= 10_000 if isinstance(value, str) else finite(value)


def fitted_value(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return len(items) <= 100_000 and all(
        item is None or (isinstance(item, bool | int | float | str) and param_value(item))
        for item in items
    )


#: JSON integers beyond int64 are refused (JSON itself has no bound).
INT_LIMIT = 2**63
NUMBER = Value((int, float), "a finite number", finite)
FITTED_VALUE = Value(
    (bool, int, float, str, list), "null, a bool, a finite number, a string of at most 10,000 "
    "characters, or a list of at most 100,000 of them", fitted_value, nullable=True,
)
NULLABLE_TEXT = Value((str,), "a string of at most 200 characters or null",
                       lambda s: len(s) <= 200, nullable=True)

JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
BRACKET = re.compile(r"[\[\]{}]")


def nesting_depth(text: str) -> int:
    """How deep the arrays and objects of JSON ``text`` nest (brackets inside strings ignored)."""
    depth = deepest = 0
    for match in BRACKET.finditer(JSON_STRING.sub('""', text)):
        depth += 1 if match.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")
