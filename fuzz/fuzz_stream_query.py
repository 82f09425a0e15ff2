"""Fuzz the admin API's query parsing for ``GET /v1/events`` and ``/v1/events/stream``
(query string and ``Last-Event-ID``) with arbitrary text. The only exception allowed is
``ApiError``, and only a 400 ``invalid_request`` or ``too_many_patterns`` (what the error
middleware turns into an answer naming the field).

What parses must be usable downstream: the cursor is inside ``0..2**62``, ``limit`` inside
its range, and ``since``/``until`` fit a SQLite INTEGER (the journal binds them as such);
the filter judges a fixed journal event without raising, and the stream hub's compiled form
of it (``GroupMatcher``) judges it the same.

Input: the bytes, decoded as UTF-8 (invalid sequences replaced); the first line is the query
string (after the ``?``), the second the ``Last-Event-ID`` value (CR and LF cannot occur in
a header: they are dropped), the rest is ignored. The request is built with aiohttp's own
``make_mocked_request``; a query aiohttp itself cannot parse is skipped, since it never
reaches a handler.

Run with atheris (``pip install atheris``)::

    python fuzz/fuzz_stream_query.py fuzz/corpus/stream_query

Without atheris, the same command replays the given files (or every file of the given
directories) once each, which is how the tests use the seed corpus.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

if str(Path(__file__).resolve().parent) not in sys.path:  # the shared harness sits here
    sys.path.append(str(Path(__file__).resolve().parent))

from _harness import run

from palyra_py.admin.errors import ApiError
from palyra_py.admin.events import (
    MAX_LIST_LIMIT,
    check_stream_patterns,
    filter_from_query,
    parse_int,
    parse_time_ms,
)
from palyra_py.journal.journal import JournalEvent
from palyra_py.stream.hub import GroupMatcher

MAX_CURSOR = 2**62
SQLITE_MIN, SQLITE_MAX = -(2**63), 2**63 - 1
LAST_SEQ = 41  # the journal head a stream without a cursor starts from
MAX_PATTERNS = 16  # stream.max_patterns by default
EVENT = JournalEvent(
    seq=42, event_id="01HF0000000000000000000000", ts_unix_ms=1_700_000_000_000,
    kind="webhook.received", source="github-acme", actor="github",
    integration_id="github-acme", event_type="push", severity="info",
    payload={"event": "push"}, redacted=False, prev_hash="0" * 64, hash="1" * 64,
)


def split_input(data: bytes) -> tuple[str, str]:
    """``(query string, Last-Event-ID value)`` from one fuzz input."""
    text = data.decode("utf-8", "replace")
    query, _, rest = text.partition("\n")
    last_id = rest.split("\n", 1)[0].replace("\r", "")
    return query, last_id


def _request(query: str, last_id: str) -> web.Request | None:
    headers = CIMultiDict({"Last-Event-ID": last_id}) if last_id else CIMultiDict()
    try:
        request = make_mocked_request("GET", "/v1/events/stream?" + query, headers=headers)
        request.query  # noqa: B018 (parsed lazily: make aiohttp's own failures happen here)
    except (ValueError, UnicodeError):
        return None
    return request


def _check_error(exc: ApiError) -> None:
    assert exc.status == 400 and exc.code in ("invalid_request", "too_many_patterns"), (
        exc.status, exc.code)
    # The message quotes at most 40 characters of the value (repr may escape each one).
    assert len(exc.message) <= 600, len(exc.message)


def _check(request: web.Request) -> None:
    # The order EventsApi.stream and EventsApi.list parse in.
    flt = filter_from_query(request)
    for bound in (flt.since_ms, flt.until_ms):
        assert bound is None or SQLITE_MIN <= bound <= SQLITE_MAX, f"{bound} overflows SQLite"
    verdict = flt.matches(EVENT)
    assert isinstance(verdict, bool)
    assert GroupMatcher(flt).matches(EVENT) is verdict
    cursor = parse_int(request.query.get("after_seq"), "after_seq", LAST_SEQ, 0, MAX_CURSOR)
    assert 0 <= cursor <= MAX_CURSOR
    last_id = request.headers.get("Last-Event-ID", "")
    if last_id.strip():
        cursor = parse_int(last_id.strip(), "Last-Event-ID", cursor, 0, MAX_CURSOR)
        assert 0 <= cursor <= MAX_CURSOR
    limit = parse_int(request.query.get("limit"), "limit", 100, 1, MAX_LIST_LIMIT)
    assert 1 <= limit <= MAX_LIST_LIMIT
    check_stream_patterns(flt, MAX_PATTERNS)  # what a stream checks further
    assert len(flt.types) <= MAX_PATTERNS


def test_one_input(data: bytes) -> None:
    query, last_id = split_input(data)
    request = _request(query, last_id)
    if request is not None:
        try:
            _check(request)
        except ApiError as exc:
            _check_error(exc)
    # The time parser on the raw text too, unencoded (the deliveries API reads it from JSON
    # bodies as well as from queries).
    for text in (query, last_id):
        try:
            ms = parse_time_ms(text, "since")
        except ApiError as exc:
            _check_error(exc)
        else:
            assert SQLITE_MIN <= ms <= SQLITE_MAX, f"{ms} overflows SQLite"


def main(argv: list[str]) -> None:
    run(argv, test_one_input, instrument=("palyra_py", "yarl", "multidict", "fnmatch"))


if __name__ == "__main__":
    main(sys.argv)
