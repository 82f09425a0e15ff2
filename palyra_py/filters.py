"""Which published events a subscription receives: type globs and a ``path = value`` filter.
Pure: no I/O.

Equality is JSON equality: ``1 == 1.0``, but a boolean never equals a number (``true`` is
not ``1``), strings compare exactly (case-sensitive), and an object or array never equals a
scalar. A path that does not resolve (a missing key, a non-object on the way) never matches.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # at run time only the matcher needs it: the CLI imports the parsers
    from palyra_py.events import PublishedEvent

Scalar = str | int | float | bool

MAX_FILTER_ENTRIES = 16
MAX_PATH_CHARS = 128
MAX_PATH_DEPTH = 8
MAX_VALUE_CHARS = 1024
MAX_PATTERNS = 64
MAX_PATTERN_CHARS = 128
TYPE_VERDICTS = 1024
"""Event types whose glob verdict an ``EventMatcher`` remembers (then it starts again)."""

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?")


def validate_path(path: str) -> tuple[str, ...]:
    """The segments of a filter path, or ``ValueError``: 1-8 dot-separated segments of
    ``A-Z a-z 0-9 _ -``, at most 128 characters in all (e.g. ``data.kb``)."""
    if not path or len(path) > MAX_PATH_CHARS:
        raise ValueError(f"filter path must be 1-{MAX_PATH_CHARS} characters")
    segments = tuple(path.split("."))
    if len(segments) > MAX_PATH_DEPTH:
        raise ValueError(f"filter path {path!r}: at most {MAX_PATH_DEPTH} segments")
    if not all(_SEGMENT.fullmatch(s) for s in segments):
        raise ValueError(
            f"filter path {path!r}: dot-separated segments of A-Z a-z 0-9 _ - (none empty)"
        )
    return segments


def parse_value(text: str) -> Scalar:
    """A CLI filter value: ``true``/``false`` -> bool, an integer or a finite decimal number ->
    number, ``"..."`` -> the string inside (JSON escapes allowed), anything else -> the text
    as it is. Quote a value to keep it a string (``"42"``, ``"true"``)."""
    if len(text) > MAX_VALUE_CHARS:
        raise ValueError(f"filter value: at most {MAX_VALUE_CHARS} characters")
    if text in ("true", "false"):
        return text == "true"
    if _INTEGER.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        number = float(text)
        if math.isfinite(number):
            return number
        raise ValueError(f"filter value {text[:40]!r}: number out of range")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            value = json.loads(text)
        except ValueError:
            raise ValueError(f"filter value {text[:40]!r}: bad escape in quoted string") from None
        if isinstance(value, str):
            return value
    return text


def parse_filter(text: str) -> tuple[str, Scalar]:
    """A CLI ``PATH=VALUE`` (split at the first ``=``) -> ``(path, value)``, or ``ValueError``.
    See ``validate_path`` and ``parse_value``."""
    path, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"filter {text[:80]!r}: expected PATH=VALUE, e.g. data.kb=docs")
    path = path.strip()
    validate_path(path)
    return path, parse_value(value)


def validate_filter_table(mapping: Mapping[str, object]) -> dict[str, Scalar]:
    """A registry ``filter`` table checked and copied to plain Python values: at most 16
    entries, valid paths, each value a string, a finite number or a bool."""
    if len(mapping) > MAX_FILTER_ENTRIES:
        raise ValueError(f"filter: at most {MAX_FILTER_ENTRIES} entries")
    out: dict[str, Scalar] = {}
    for path, value in mapping.items():
        if not isinstance(path, str):
            raise ValueError("filter: paths must be strings")
        validate_path(path)
        out[path] = _plain_scalar(path, value)
    return out


def validate_event_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
    """A subscription's ``events`` globs: at most 64 non-empty patterns of at most 128
    characters, duplicates dropped, order kept."""
    if isinstance(patterns, str):
        raise ValueError("events: a list of glob patterns, not a string")
    if len(patterns) > MAX_PATTERNS:
        raise ValueError(f"events: at most {MAX_PATTERNS} patterns")
    out: dict[str, None] = {}
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN_CHARS:
            raise ValueError(f"events: each pattern is 1-{MAX_PATTERN_CHARS} characters")
        out[pattern] = None
    return tuple(out)


class EventMatcher:
    """Whether a published event is one a subscription wants. Build once per subscription
    (the globs and paths are compiled here), call ``matches`` per event.

    ``events``: ``fnmatch`` globs, case-sensitive, on the published type; empty = every type.
    ``filter``: every path must resolve in ``PublishedEvent.body()`` to a value equal to the
    expected one (see the module docstring). A path segment of digits also indexes an array.
    """

    def __init__(self, events: Sequence[str], filter: Mapping[str, Scalar]) -> None:
        patterns = validate_event_patterns(events)
        self._types: re.Pattern[str] | None = None
        if patterns:
            self._types = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
        table = validate_filter_table(filter)
        self._checks = tuple((validate_path(path), value) for path, value in table.items())
        # Few distinct types go by, each matched against the globs once per subscription.
        self._type_verdicts: dict[str, bool] = {}

    def matches(self, published: PublishedEvent) -> bool:
        if self._types is not None and not self._type_matches(published.type):
            return False
        if not self._checks:
            return True
        body = published.body()
        return all(_equal(_resolve(body, path), expected) for path, expected in self._checks)

    def _type_matches(self, event_type: str) -> bool:
        verdict = self._type_verdicts.get(event_type)
        if verdict is None:
            assert self._types is not None
            verdict = self._types.match(event_type) is not None
            if len(self._type_verdicts) >= TYPE_VERDICTS:
                self._type_verdicts.clear()
            self._type_verdicts[event_type] = verdict
        return verdict


_MISSING = object()


def _resolve(node: Any, path: tuple[str, ...]) -> Any:
    for segment in path:
        if isinstance(node, dict):
            if segment not in node:
                return _MISSING
            node = node[segment]
        elif isinstance(node, list) and segment.isdigit():
            index = int(segment)
            if index >= len(node):
                return _MISSING
            node = node[index]
        else:
            return _MISSING
    return node


def _equal(actual: Any, expected: Scalar) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and actual == expected
    if isinstance(expected, str):
        return isinstance(actual, str) and actual == expected
    return isinstance(actual, int | float) and actual == expected


def _plain_scalar(path: str, value: object) -> Scalar:
    # tomlkit items: Bool wraps a bool; the others subclass str/int/float, so the conversions
    # below also give plain values. bool first: it is an int subclass.
    unwrap = getattr(value, "unwrap", None)
    if callable(unwrap):
        value = unwrap()
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"filter {path}: the number must be finite")
        return float(value)
    if isinstance(value, str):
        if len(value) > MAX_VALUE_CHARS:
            raise ValueError(f"filter {path}: at most {MAX_VALUE_CHARS} characters")
        return str(value)
    raise ValueError(f"filter {path}: value must be a string, a number or true/false")
