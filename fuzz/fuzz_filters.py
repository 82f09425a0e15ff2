"""Fuzz the subscription filter parser and matcher, and the retry schedule parsers, with
arbitrary text. The only exception allowed is ``ValueError`` (``parse_retry_after`` may not
raise at all: it answers ``None`` for what it cannot read).

Each input line is tried as a CLI filter (``parse_filter``), a duration, a ``Retry-After``
value; the whole text as a comma-separated retry schedule and, when it is a JSON object, as
a registry ``filter`` table. Lines that are no filter become the matcher's type globs, and the
filters parsed become its table; the matcher then judges one fixed published event.
Properties held beyond not crashing:

- a filter the CLI parses is one the registry accepts (``validate_filter_table``), and a value
  written back as JSON text parses to itself (how the CLI shows a filter to edit);
- a match of all filters (AND) implies a match of each alone, and dropping the type globs
  never turns a match into a miss;
- durations, schedules and ``Retry-After`` delays are finite and inside their bounds.

Input: the bytes, decoded as UTF-8 (invalid sequences replaced), split into lines.

Run with atheris (``pip install atheris``)::

    python fuzz/fuzz_filters.py fuzz/corpus/filters

Without atheris, the same command replays the given files (or every file of the given
directories) once each, which is how the tests use the seed corpus.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # the shared harness sits here
    sys.path.append(str(Path(__file__).resolve().parent))

from _harness import run

from palyra_py.events import PublishedEvent
from palyra_py.filters import (
    MAX_FILTER_ENTRIES,
    MAX_PATTERNS,
    MAX_VALUE_CHARS,
    EventMatcher,
    Scalar,
    parse_filter,
    parse_value,
    validate_filter_table,
)
from palyra_py.outbound.retry import (
    MAX_DELAY_S,
    MAX_RETRY_AFTER_S,
    MAX_SCHEDULE_ENTRIES,
    parse_duration,
    parse_retry_after,
    parse_schedule,
)

NOW = 1_700_000_000.0
MAX_LINES = 64  # enough for every limit (16 filters, 64 globs, 20 schedule entries) and more
EVENT = PublishedEvent(
    id="01HF0000000000000000000000",
    type="github.push",
    timestamp="2023-11-14T22:13:20.000Z",
    data={
        "kb": "docs", "n": 1, "f": 1.5, "ok": True, "off": False, "none": None, "empty": "",
        "list": [{"a": "b"}, 2, "three"], "nested": {"x": {"y": "z", "0": 0}},
        "ünï": "cödé", "big": 2**63, "neg": -0.0,
    },
    source="github-acme",
    actor="github",
    seq=7,
)


def _same(a: Scalar, b: Scalar) -> bool:
    return type(a) is type(b) and a == b


def _check_filter(path: str, value: Scalar) -> None:
    assert path and path == path.strip(), repr(path)
    assert isinstance(value, str | int | float), type(value)
    assert not isinstance(value, float) or math.isfinite(value), value
    shown = json.dumps(value)
    if len(shown) <= MAX_VALUE_CHARS:
        again = parse_value(shown)
        assert _same(again, value), f"{value!r} shown as {shown!r} reads back as {again!r}"


def _check_durations(line: str) -> None:
    try:
        seconds = parse_duration(line)
    except ValueError:
        pass
    else:
        assert math.isfinite(seconds) and 0 <= seconds <= MAX_DELAY_S, seconds
    delay = parse_retry_after(line, NOW)  # documented never to raise
    assert delay is None or (math.isfinite(delay) and 0 <= delay <= MAX_RETRY_AFTER_S), delay


def _check_schedule(items: str | list[str]) -> None:
    try:
        schedule = parse_schedule(items)
    except ValueError:
        return
    assert 1 <= len(schedule) <= MAX_SCHEDULE_ENTRIES, len(schedule)
    assert all(math.isfinite(s) and 0 <= s <= MAX_DELAY_S for s in schedule), schedule


def _check_json_table(text: str) -> None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return
    if isinstance(value, dict):
        try:
            table = validate_filter_table(value)
        except ValueError:
            return
        assert len(table) <= MAX_FILTER_ENTRIES


def _check_matcher(patterns: list[str], table: dict[str, Scalar]) -> None:
    try:
        matcher = EventMatcher(patterns[:MAX_PATTERNS], table)
    except ValueError:
        return
    matched = matcher.matches(EVENT)
    assert isinstance(matched, bool)
    if matched:
        assert EventMatcher([], table).matches(EVENT), "dropping the type globs lost a match"
        for path, value in table.items():
            assert EventMatcher([], {path: value}).matches(EVENT), f"{path} alone: no match"


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    lines = text.split("\n")[:MAX_LINES]
    table: dict[str, Scalar] = {}
    patterns: list[str] = []
    for line in lines:
        _check_durations(line)
        try:
            path, value = parse_filter(line)
        except ValueError:
            if line:
                patterns.append(line)
            continue
        _check_filter(path, value)
        table[path] = value
    if len(table) <= MAX_FILTER_ENTRIES:
        # What `palyra subscriptions add --filter` parsed, the registry must accept as is.
        assert validate_filter_table(table) == table
    else:
        try:
            validate_filter_table(table)
        except ValueError:
            pass
        else:
            raise AssertionError(f"{len(table)} filter entries accepted")
        table = dict(list(table.items())[:MAX_FILTER_ENTRIES])
    _check_schedule(text)
    _check_schedule(lines[: MAX_SCHEDULE_ENTRIES + 1])
    _check_json_table(text)
    _check_matcher(patterns, table)


def main(argv: list[str]) -> None:
    run(argv, test_one_input, instrument=("palyra_py", "fnmatch", "email.utils",
                                          "email._parseaddr"))


if __name__ == "__main__":
    main(sys.argv)
