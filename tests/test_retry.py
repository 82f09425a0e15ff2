from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from palyra_py.outbound.retry import (
    DEFAULT_SCHEDULE,
    RateLimiter,
    next_attempt_delay,
    parse_duration,
    parse_retry_after,
    parse_schedule,
)

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0s", 0), ("5s", 5), ("5m", 300), ("2h", 7200), ("1d", 86400), ("250ms", 0.25),
     ("30", 30), ("1.5", 1.5), (" 10 m ", 600), ("7d", 604800), ("0.5h", 1800)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "-5s", "1e3", "5 minutes", "inf", "8d", "604801",
                                  "h", "1.s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_parse_schedule_forms() -> None:
    svix = ["0s", "5s", "5m", "30m", "2h", "5h", "10h", "10h"]
    assert parse_schedule(svix) == DEFAULT_SCHEDULE
    assert parse_schedule(",".join(svix)) == DEFAULT_SCHEDULE
    assert parse_schedule("0s, 1m") == (0, 60)
    with pytest.raises(ValueError, match="1-20"):
        parse_schedule([])
    with pytest.raises(ValueError, match="1-20"):
        parse_schedule(["1s"] * 21)
    with pytest.raises(ValueError, match="entry 2"):
        parse_schedule("1s,,2s")
    with pytest.raises(ValueError, match="entry 1: duration"):
        parse_schedule(["9d"])


def test_next_attempt_delay_follows_the_schedule_then_stops() -> None:
    rand = random.Random(1)
    delays = [next_attempt_delay(DEFAULT_SCHEDULE, n, rand, jitter=0) for n in range(9)]
    assert delays == [0, 5, 300, 1800, 7200, 18000, 36000, 36000, None]
    with pytest.raises(ValueError):
        next_attempt_delay(DEFAULT_SCHEDULE, -1, rand)


@given(st.integers(0, 7), st.integers(0, 2**32 - 1))
def test_jitter_stays_within_ten_percent(attempts: int, seed: int) -> None:
    delay = next_attempt_delay(DEFAULT_SCHEDULE, attempts, random.Random(seed))
    base = DEFAULT_SCHEDULE[attempts]
    assert delay is not None
    assert 0.9 * base <= delay <= 1.1 * base


def test_jitter_varies_and_is_never_negative() -> None:
    rand = random.Random(7)
    samples = {next_attempt_delay((100,), 0, rand) or 0.0 for _ in range(50)}
    assert len(samples) > 40
    assert min(samples) < 100 < max(samples)
    assert next_attempt_delay((1,), 0, rand, jitter=5.0) is not None
    assert all((next_attempt_delay((1,), 0, rand, jitter=5.0) or 0) >= 0 for _ in range(100))


def test_parse_retry_after() -> None:
    assert parse_retry_after(None, NOW) is None
    assert parse_retry_after("", NOW) is None
    assert parse_retry_after("120", NOW) == 120
    assert parse_retry_after(" 0 ", NOW) == 0
    assert parse_retry_after("999999", NOW) == 86400
    assert parse_retry_after("-5", NOW) is None
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("1.5", NOW) is None
    later = format_datetime(datetime.fromtimestamp(NOW + 90, UTC), usegmt=True)
    assert parse_retry_after(later, NOW) == 90
    earlier = format_datetime(datetime.fromtimestamp(NOW - 90, UTC), usegmt=True)
    assert parse_retry_after(earlier, NOW) == 0
    far = format_datetime(datetime.fromtimestamp(NOW + 10 * 86400, UTC), usegmt=True)
    assert parse_retry_after(far, NOW) == 86400
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412480.0 - 30) == 30
    assert parse_retry_after("Wed, 32 Foo 2015 07:28:00 GMT", NOW) is None


@given(st.text(max_size=64))
def test_parse_retry_after_never_raises(text: str) -> None:
    result = parse_retry_after(text, NOW)
    assert result is None or 0 <= result <= 86400


def test_rate_limiter_bucket() -> None:
    limiter = RateLimiter(2)
    assert limiter.burst == 2
    assert limiter.take(100.0) == 0
    assert limiter.take(100.0) == 0
    assert limiter.take(100.0) == pytest.approx(0.5)
    assert limiter.take(100.25) == pytest.approx(0.25)  # half a token back, nothing taken
    assert limiter.take(100.5) == 0
    assert limiter.take(100.5) == pytest.approx(0.5)
    assert limiter.take(200.0) == 0  # refilled, but only up to the burst
    assert limiter.take(200.0) == 0
    assert limiter.take(200.0) > 0


def test_rate_limiter_slow_rate_and_clock_going_back() -> None:
    limiter = RateLimiter(0.5)
    assert limiter.burst == 1
    assert limiter.take(10.0) == 0
    assert limiter.take(10.0) == pytest.approx(2.0)
    assert limiter.take(9.0) == pytest.approx(2.0)  # an earlier now adds nothing
    assert limiter.take(12.0) == 0


def test_rate_limiter_unlimited_and_invalid() -> None:
    limiter = RateLimiter(0)
    assert all(limiter.take(1.0) == 0 for _ in range(1000))
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            RateLimiter(bad)


def test_parse_schedule_takes_the_cli_duration_forms_too() -> None:
    assert parse_schedule(["1h30m", "90", "1w", " 5M ", "1d12h"]) == (5400, 90, 604800, 300,
                                                                       129600)
