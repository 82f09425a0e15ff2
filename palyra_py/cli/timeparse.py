"""Durations and points in time as the CLI's options take them.

The grammar is ``palyra_py.times``'s, the same the registry reads: a DURATION is plain
seconds (``90``) or numbers with units ``ms``, ``s``, ``m``, ``h``, ``d``, ``w``, alone or
combined (``30s``, ``15m``, ``24h``, ``90d``, ``1h30m``, ``1.5h``); the CLI's options want
whole seconds. A TIME is RFC 3339, unix seconds, or a duration with a unit meaning "that
long ago"."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from palyra_py.times import (
    InvalidDuration,
    InvalidTime,
    format_rfc3339,
    parse_rfc3339,
)
from palyra_py.times import parse_duration as parse_duration_seconds

_UNIX = re.compile(r"\d+(?:\.\d+)?")


class TimeParseError(ValueError):
    """The text is not a duration or time; the message says what forms are accepted."""


def parse_duration(text: str) -> int:
    """Whole seconds in ``text``: ``"90"`` -> 90, ``"15m"`` -> 900, ``"1h30m"`` -> 5400,
    ``"1.5h"`` -> 5400. Raises ``TimeParseError`` for text outside the grammar and for a
    duration that is not a whole number of seconds (``250ms``)."""
    try:
        seconds = parse_duration_seconds(text)
    except InvalidDuration as exc:
        raise TimeParseError(str(exc)) from None
    if not seconds.is_integer():
        raise TimeParseError(
            f"duration {text.strip()[:40]!r} is not a whole number of seconds (e.g. 15m, 90)"
        )
    return int(seconds)


def parse_time(text: str, *, now: datetime) -> str:
    """An RFC 3339 UTC timestamp with milliseconds (``2024-05-01T12:00:00.000Z``) for:

    - RFC 3339 with ``Z`` or an offset (``2024-05-01T14:00:00+02:00``), or a bare date
      (midnight UTC);
    - unix seconds (``1714564800``, fractions allowed);
    - a duration with a unit, meaning that long before ``now`` (``15m``, ``2h``, ``7d``).

    ``now`` must be timezone-aware.
    """
    value = text.strip()
    if _UNIX.fullmatch(value):
        return format_rfc3339(datetime.fromtimestamp(float(value), tz=UTC))
    try:
        ago = parse_duration_seconds(value)
    except InvalidDuration:
        pass
    else:
        return format_rfc3339(now - timedelta(seconds=ago))
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return format_rfc3339(datetime(day.year, day.month, day.day, tzinfo=UTC))
        moment = parse_rfc3339(value)
    except InvalidTime as exc:
        if exc.missing_offset:
            raise TimeParseError(
                f"time {text!r} has no timezone: add Z (UTC) or an offset such as +02:00"
            ) from None
        raise _invalid_time(text) from None
    except ValueError:
        raise _invalid_time(text) from None
    return format_rfc3339(moment)


def _invalid_time(text: str) -> TimeParseError:
    return TimeParseError(
        f"invalid time {text!r}: use RFC 3339 (2024-05-01T12:00:00Z), unix seconds "
        "(1714564800) or an age such as 15m, 2h, 7d"
    )
