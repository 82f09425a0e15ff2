"""palyra_py.times: the one RFC 3339 writer and reader and the one duration grammar."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from palyra_py.times import (
    InvalidDuration,
    InvalidTime,
    format_rfc3339,
    format_unix_ms,
    parse_duration,
    parse_rfc3339,
    parse_rfc3339_ms,
)

FIRST_MS = -62_135_596_800_000  # 0001-01-01T00:00:00.000Z
LAST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
moments = st.datetimes(
    min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=offsets
)


@settings(max_examples=500, deadline=None)
@given(ts_ms=st.integers(-(10**12), LAST_MS) | st.integers(1714565000000, 1714565003000))
def test_format_unix_ms_is_the_datetime_text(ts_ms: int) -> None:
    expected = datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")
    assert format_unix_ms(ts_ms) == expected + f"{ts_ms % 1000:03d}Z"
    assert format_unix_ms(ts_ms) == format_unix_ms(ts_ms)  # cached second, same text


@settings(max_examples=500, deadline=None)
@given(ts_ms=st.integers(FIRST_MS, LAST_MS))
def test_unix_ms_round_trips(ts_ms: int) -> None:
    text = format_unix_ms(ts_ms)
    assert len(text) == 24 and text.endswith("Z")
    assert parse_rfc3339_ms(text) == ts_ms
    assert format_rfc3339(parse_rfc3339(text)) == text


@settings(max_examples=500, deadline=None)
@given(moment=moments)
def test_datetimes_round_trip_exactly_with_auto_timespec(moment: datetime) -> None:
    text = format_rfc3339(moment, timespec="auto")
    assert text.endswith("Z")
    back = parse_rfc3339(text)
    assert back == moment and back.tzinfo is UTC


@settings(max_examples=500, deadline=None)
@given(moment=moments)
def test_datetimes_round_trip_to_the_millisecond(moment: datetime) -> None:
    back = parse_rfc3339(format_rfc3339(moment))
    assert timedelta(0) <= moment - back < timedelta(milliseconds=1)
    assert back.microsecond % 1000 == 0


def test_auto_timespec_shows_a_fraction_only_when_there_is_one() -> None:
    assert format_rfc3339(datetime(2024, 5, 1, 12, tzinfo=UTC), timespec="auto") == (
        "2024-05-01T12:00:00Z")
    assert format_rfc3339(datetime(2024, 5, 1, 12, 0, 0, 5, tzinfo=UTC), timespec="auto") == (
        "2024-05-01T12:00:00.000005Z")
    assert format_rfc3339(datetime(2024, 5, 1, 12, 0, 0, 123999, tzinfo=UTC)) == (
        "2024-05-01T12:00:00.123Z")


@pytest.mark.parametrize(
    ("text", "expected_ms"),
    [("2024-05-01T12:00:00Z", 1714564800000), ("2024-05-01T12:00:00.123Z", 1714564800123),
     ("2024-05-01t12:00:00.123z", 1714564800123), ("2024-05-01T14:00:00+02:00", 1714564800000),
     ("2024-05-01T07:30:00-04:30", 1714564800000), (" 2024-05-01T12:00:00.1239Z ", 1714564800123),
     ("1970-01-01T00:00:00Z", 0)],
)
def test_parse_accepts_z_offsets_and_fractions(text: str, expected_ms: int) -> None:
    assert parse_rfc3339_ms(text) == expected_ms
    assert parse_rfc3339(text).tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "missing_offset"),
    [("2024-05-01T12:00:00", True), ("2024-05-01", True), ("yesterday", False), ("", False),
     ("2024-13-01T00:00:00Z", False), ("0001-01-01T00:00:00+01:00", False)],
)
def test_parse_refuses(text: str, missing_offset: bool) -> None:
    with pytest.raises(InvalidTime) as caught:
        parse_rfc3339(text)
    assert caught.value.missing_offset is missing_offset


# -- durations: the CLI's forms and the retry schedule's forms, each accepted -------------

CLI_FORMS = [("0", 0), ("90", 90), ("30s", 30), ("15m", 900), ("24h", 86400), ("7d", 604800),
             ("90d", 90 * 86400), ("1h30m", 5400), ("2w", 1209600), (" 5M ", 300)]
RETRY_FORMS = [("0s", 0), ("5s", 5), ("5m", 300), ("2h", 7200), ("1d", 86400),
               ("250ms", 0.25), ("30", 30), ("1.5", 1.5), (" 10 m ", 600), ("0.5h", 1800)]


@pytest.mark.parametrize(("text", "seconds"), CLI_FORMS + RETRY_FORMS)
def test_one_grammar_takes_both_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-5", "-5s", "1e3", "inf", "nan", "10y", "h",
                                  "1.s", "5 minutes", "15m ago", "1" * 65 + "s"])
def test_duration_refusals_name_the_forms(text: str) -> None:
    with pytest.raises(InvalidDuration, match=r"duration .*15m"):
        parse_duration(text)


@given(parts=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from("smhdw")),
                      min_size=1, max_size=5))
def test_combined_units_add_up(parts: list[tuple[int, str]]) -> None:
    size = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = "".join(f"{number}{unit}" for number, unit in parts)
    assert parse_duration(text) == sum(number * size[unit] for number, unit in parts)
