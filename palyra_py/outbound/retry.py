"""Retry schedules, ``Retry-After`` and per-subscription rate limits. Pure: no I/O and no
clock of their own (``now`` and the random source are passed in).

Schedule semantics: ``schedule[0]`` is the delay before the first attempt (``0`` =
immediately) and ``schedule[k]`` the delay before attempt ``k + 1``, counted from the end of
attempt ``k``. So a schedule of ``n`` entries allows ``n`` attempts in all; Svix's default
(immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h) is eight attempts.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime

from palyra_py.times import parse_duration as parse_duration_seconds

DEFAULT_SCHEDULE: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
MAX_DELAY_S = 7 * 86400
MAX_SCHEDULE_ENTRIES = 20
MAX_RETRY_AFTER_S = 86400.0
DEFAULT_JITTER = 0.10

_DELTA_SECONDS = re.compile(r"[0-9]{1,12}")


def parse_duration(text: str) -> float:
    """Seconds of one retry delay, in the grammar of ``times.parse_duration`` (``250ms``,
    ``0s``, ``5m``, ``2h``, ``1d``, ``1h30m``, plain seconds ``30`` or ``1.5``); at most
    7 days; otherwise ``ValueError``."""
    seconds = parse_duration_seconds(text)
    if seconds > MAX_DELAY_S:
        raise ValueError(f"duration {text.strip()!r}: at most 7 days")
    return seconds


def parse_schedule(items: Sequence[str] | str) -> tuple[float, ...]:
    """A retry schedule from a comma-separated string or a list of durations: 1-20 entries,
    each ``parse_duration``-able."""
    parts = items.split(",") if isinstance(items, str) else list(items)
    if not 1 <= len(parts) <= MAX_SCHEDULE_ENTRIES:
        raise ValueError(f"retry schedule: 1-{MAX_SCHEDULE_ENTRIES} durations")
    out: list[float] = []
    for index, part in enumerate(parts):
        if not isinstance(part, str):
            raise ValueError(f"retry schedule entry {index + 1}: a duration string, e.g. 5m")
        try:
            out.append(parse_duration(part))
        except ValueError as exc:
            raise ValueError(f"retry schedule entry {index + 1}: {exc}") from None
    return tuple(out)


def next_attempt_delay(
    schedule: Sequence[float],
    attempts_made: int,
    rand: random.Random,
    jitter: float = DEFAULT_JITTER,
) -> float | None:
    """Seconds to wait before attempt ``attempts_made + 1``: ``schedule[attempts_made]``
    scaled by a uniform factor in ``[1 - jitter, 1 + jitter]``, never negative (so a ``0``
    entry stays ``0``). ``None`` when the schedule is exhausted (no attempt left)."""
    if attempts_made < 0:
        raise ValueError("attempts_made must be >= 0")
    if attempts_made >= len(schedule):
        return None
    base = float(schedule[attempts_made])
    return max(0.0, base * (1.0 + rand.uniform(-jitter, jitter)))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from ``now`` (unix seconds) a ``Retry-After`` header asks to wait:
    delta-seconds or an HTTP-date, capped at 1 day, ``0`` for a date in the past. ``None``
    when absent or unparseable."""
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > 128:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": RFC 5322 says UTC with no zone information
        when = when.replace(tzinfo=UTC)
    delay = when.timestamp() - now
    if math.isnan(delay):
        return None
    return min(max(delay, 0.0), MAX_RETRY_AFTER_S)


class RateLimiter:
    """Token bucket: ``rate_per_s`` tokens a second, a burst of ``max(1, rate_per_s)``,
    starting full. ``rate_per_s = 0`` means unlimited. Time is whatever monotonic clock the
    caller passes as ``now``; a ``now`` earlier than the last one adds no tokens."""

    def __init__(self, rate_per_s: float) -> None:
        if not math.isfinite(rate_per_s) or rate_per_s < 0:
            raise ValueError("rate_per_s must be a finite number >= 0")
        self.rate_per_s = float(rate_per_s)
        self.burst = max(1.0, self.rate_per_s)
        self._tokens = self.burst
        self._last: float | None = None

    def take(self, now: float) -> float:
        """``0`` and one token taken when a request may go now; otherwise the seconds until
        one may (nothing is taken: call again after waiting)."""
        if self.rate_per_s == 0:
            return 0.0
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_per_s)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s
