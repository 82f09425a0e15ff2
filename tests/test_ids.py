"""palyra_py.ids: the one ULID source, checked against python-ulid's reading of the text."""

from __future__ import annotations

import os

import pytest
import ulid
from hypothesis import given, settings
from hypothesis import strategies as st

from palyra_py.ids import MAX_ULID_MS, UlidSource, new_ulid, random_ulid, ulid_text, ulid_value

T0 = 1_700_000_000_000


@settings(max_examples=300, deadline=None)
@given(now=st.floats(0, 2**48 / 1000 - 1, allow_nan=False), more=st.integers(1, 5))
def test_ids_are_ulids_of_the_time_counting_up_within_a_ms(now: float, more: int) -> None:
    ids = UlidSource()
    made = [ids.new(int(now * 1000)) for _ in range(1 + more)]
    parsed = [ulid.ULID.from_str(text) for text in made]
    assert [str(u) for u in parsed] == made  # canonical Crockford text, 26 characters
    assert {text[:10] for text in made} == {str(ulid.ULID.from_timestamp(now))[:10]}
    assert [int(u) for u in parsed] == list(range(int(parsed[0]), int(parsed[0]) + 1 + more))
    later = ids.new(int((now + 0.002) * 1000))
    assert later > made[-1] and later[:10] != made[0][:10]


def test_ids_refuse_times_a_ulid_cannot_hold() -> None:
    with pytest.raises(ValueError):
        UlidSource().new(MAX_ULID_MS + 1)
    with pytest.raises(ValueError):
        UlidSource().new(-1)
    with pytest.raises(ValueError):
        new_ulid(MAX_ULID_MS + 1)


def test_ids_only_go_up() -> None:
    for _ in range(500):
        value = int.from_bytes(os.urandom(16), "big")
        assert ulid_text(value) == str(ulid.ULID.from_int(value))
        assert ulid_value(ulid_text(value)) == value
    ids = UlidSource(None)
    made = [ids.new(T0 + step) for step in (0, 0, 0, 5, 5, -100, 6, 6)]
    values = [int(ulid.ULID.from_str(x)) for x in made]
    assert values == sorted(set(values))
    assert [v >> 80 for v in values][:4] == [T0, T0, T0, T0 + 5]
    assert values[5] == values[4] + 1  # a clock step back never goes below the last id
    # Past a "Z" the next id carries into the characters before it.
    carry = UlidSource("01HF7YAT3VHNPC1W9WCRC0748Z")
    assert carry.new(0) == "01HF7YAT3VHNPC1W9WCRC07490"
    restarted = UlidSource(made[-1])
    assert int(ulid.ULID.from_str(restarted.new(T0))) == values[-1] + 1
    assert ulid_value(made[-1].lower()) == values[-1]


@pytest.mark.parametrize("text", ["", "0" * 25, "0" * 27, "8" + "0" * 25, "0" * 25 + "U",
                                  "0" * 25 + "!"])
def test_ulid_value_refuses_what_is_not_a_ulid(text: str) -> None:
    with pytest.raises(ValueError):
        ulid_value(text)


def test_one_off_and_random_ids_are_ulid_text() -> None:
    made = new_ulid(T0)
    assert ulid.ULID.from_str(made).milliseconds == T0
    now = new_ulid()
    assert str(ulid.ULID.from_str(now)) == now
    sample = random_ulid()
    assert str(ulid.ULID.from_str(sample)) == sample
