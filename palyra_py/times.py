"""Time as palyra writes and reads it: RFC 3339 text, and the one duration grammar of the
CLI, the admin API and the registry.

A leaf: standard library only, and no clock of its own (a "now" is always passed in).

- **Writing** a time: UTC with ``Z``; milliseconds by default (``2024-05-01T12:00:00.123Z``,
  the journal's own form), or as precise as the value is (``timespec="auto"``: seconds when
  it has no fraction, microseconds when it has one), which is how registry records show the
  times they hold.
- **Reading** a time: RFC 3339 with ``Z`` (either case) or an offset, any fraction; the
  result is an aware ``datetime`` in UTC. Text without an offset is refused: a webhook
  gateway should never guess a zone.
- **Durations**: plain seconds (``90``, ``1.5``) or numbers with units ``ms``, ``s``,
  ``m``, ``h``, ``d``, ``w``, alone or combined (``250ms``, ``30s``, ``5m``, ``24h``,
  ``90d``, ``1h30m``, ``0.5h``); units in either case, spaces allowed around them, no signs,
  no exponents. Each caller adds its own bounds (the retry schedule: at most 7 days; the
  CLI's options: whole seconds).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Literal

__all__ = [
    "DURATION_UNITS",
    "InvalidDuration",
    "InvalidTime",
    "format_rfc3339",
    "format_unix_ms",
    "parse_duration",
    "parse_rfc3339",
    "parse_rfc3339_ms",
]

DURATION_UNITS: dict[str, float] = {
    "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0,
}  # fmt: skip
MAX_DURATION_CHARS = 64

_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
# "ms" before "m" and "s": "5ms" is five milliseconds, never five minutes and an "s".
_PART = re.compile(rf"({_NUMBER})\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_PLAIN = re.compile(_NUMBER)
_WITH_UNITS = re.compile(rf"(?:{_NUMBER}\s*(?:ms|s|m|h|d|w)\s*)+", re.IGNORECASE)


class InvalidTime(ValueError):
    """Text that is not an RFC 3339 date-time with an offset, or a time out of range.
    ``missing_offset`` is true when the only fault is the missing ``Z`` or offset."""

    def __init__(self, message: str, *, missing_offset: bool = False) -> None:
        super().__init__(message)
        self.missing_offset = missing_offset


class InvalidDuration(ValueError):
    """Text that is not a duration; the message names the accepted forms."""


# -- writing ------------------------------------------------------------------------------


def format_rfc3339(
    moment: datetime, *, timespec: Literal["milliseconds", "auto"] = "milliseconds"
) -> str:
    """``moment`` in UTC with ``Z``: ``2024-05-01T12:00:00.123Z`` (milliseconds, truncated),
    or with ``timespec="auto"`` ``2024-05-01T12:00:00Z`` / ``2024-05-01T12:00:00.123456Z``
    (no fraction when it has none). A naive ``moment`` is taken as local time, as
    ``datetime.astimezone`` does."""
    text = moment.astimezone(UTC).isoformat(timespec=timespec)
    return text[: -len("+00:00")] + "Z"


# (second, its text up to the dot): ingress stamps many events a second, and the date part
# is the costly one, so it is made once per second.
_second_text: tuple[int, str] = (0, "1970-01-01T00:00:00.")
_EPOCH_NAIVE = datetime(1970, 1, 1)  # naive on purpose: its text has no offset


def format_unix_ms(ts_unix_ms: int) -> str:
    """``2024-05-01T12:00:00.123Z`` for ``ts_unix_ms`` milliseconds since the epoch (UTC).
    ``ValueError``/``OverflowError`` for a time ``datetime`` cannot hold."""
    global _second_text
    second, ms = divmod(int(ts_unix_ms), 1000)
    cached = _second_text
    if cached[0] != second:
        text = (_EPOCH_NAIVE + timedelta(seconds=second)).isoformat(timespec="seconds") + "."
        cached = _second_text = (second, text)
    return f"{cached[1]}{ms:03d}Z"


# -- reading ------------------------------------------------------------------------------


def parse_rfc3339(text: str) -> datetime:
    """The aware UTC ``datetime`` that ``text`` names: RFC 3339 with ``Z``/``z`` or an
    offset (``2024-05-01T14:00:00+02:00``), any fraction (microseconds kept), surrounding
    spaces ignored. Raises ``InvalidTime``: ``missing_offset`` set when the text is a
    date-time without a zone (or a bare date)."""
    value = text.strip()
    if value[-1:] in ("z", "Z"):
        value = value[:-1] + "+00:00"
    if len(value) > 10 and value[10] == "t":
        value = value[:10] + "T" + value[11:]
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidTime(
            f"not an RFC 3339 date-time: {text[:40]!r} (e.g. 2024-05-01T12:00:00Z)"
        ) from None
    if moment.utcoffset() is None:
        raise InvalidTime(
            f"{text[:40]!r} has no timezone: add Z (UTC) or an offset such as +02:00",
            missing_offset=True,
        )
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise InvalidTime(f"{text[:40]!r} is out of range") from None


def parse_rfc3339_ms(text: str) -> int:
    """``parse_rfc3339`` as milliseconds since the epoch (a fraction below the millisecond
    is dropped, towards the past). Raises ``InvalidTime``."""
    moment = parse_rfc3339(text)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``"90"`` -> 90, ``"1.5"`` -> 1.5, ``"250ms"`` -> 0.25,
    ``"15m"`` -> 900, ``"1h30m"`` -> 5400, ``"2w"`` -> 1209600. Zero is allowed; signs,
    exponents and words are not. Raises ``InvalidDuration``."""
    value = text.strip()
    if len(value) <= MAX_DURATION_CHARS:
        if _PLAIN.fullmatch(value):
            seconds = float(value)
        elif _WITH_UNITS.fullmatch(value):
            seconds = sum(
                float(number) * DURATION_UNITS[unit.lower()]
                for number, unit in _PART.findall(value)
            )
        else:
            seconds = math.nan
        if math.isfinite(seconds):
            return seconds
    raise InvalidDuration(
        f"invalid duration {text[:40]!r}: use seconds (90) or numbers with units "
        "ms, s, m, h or d, or w for weeks (250ms, 30s, 15m, 24h, 7d, 2w, 1h30m)"
    )
