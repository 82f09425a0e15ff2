"""Durations (``30s``, ``15m``, ``24h``, ``7d``, ``1h30m``, plain seconds) and points in
time (RFC 3339, unix seconds, or a duration meaning "that long ago") for the CLI."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

_PLAIN = re.compile(r"\d+")
_PART = re.compile(r"(\d+)([smhdw])")
_COMPOUND = re.compile(r"(?:\d+[smhdw])+")
_UNIX = re.compile(r"\d+(?:\.\d+)?")


class TimeParseError(ValueError):
    """The text is not a duration or time; the message says what forms are accepted."""


def parse_duration(text: str) -> int:
    """Whole seconds in ``text``: ``"90"`` -> 90, ``"15m"`` -> 900, ``"1h30m"`` -> 5400.

    Units: s, m, h, d, w. Zero is allowed; signs, fractions and spaces are not.
    """
    value = text.strip().lower()
    if _PLAIN.fullmatch(value):
        return int(value)
    if _COMPOUND.fullmatch(value):
        return sum(int(n) * UNIT_SECONDS[unit] for n, unit in _PART.findall(value))
    raise TimeParseError(
        f"invalid duration {text!r}: use seconds (90) or a number with a unit "
        "s, m, h, d or w (30s, 15m, 24h, 7d, 1h30m)"
    )


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
    if _COMPOUND.fullmatch(value.lower()):
        return format_rfc3339(now - timedelta(seconds=parse_duration(value)))
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return format_rfc3339(datetime(day.year, day.month, day.day, tzinfo=UTC))
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise TimeParseError(
            f"invalid time {text!r}: use RFC 3339 (2024-05-01T12:00:00Z), unix seconds "
            "(1714564800) or an age such as 15m, 2h, 7d"
        ) from None
    if moment.tzinfo is None:
        raise TimeParseError(
            f"time {text!r} has no timezone: add Z (UTC) or an offset such as +02:00"
        )
    return format_rfc3339(moment)


def format_rfc3339(moment: datetime) -> str:
    """``moment`` in UTC as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (the journal's own format)."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
