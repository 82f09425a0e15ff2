from __future__ import annotations

import json
from typing import Any

import pytest
import tomlkit
from hypothesis import given
from hypothesis import strategies as st

from palyra_py.events import PublishedEvent
from palyra_py.filters import (
    TYPE_VERDICTS,
    EventMatcher,
    Scalar,
    parse_filter,
    validate_event_patterns,
    validate_filter_table,
)


def published(type_: str = "github.push", data: dict[str, Any] | None = None,
              source: str = "gh-main", actor: str | None = "github") -> PublishedEvent:
    return PublishedEvent(id="01J0000000000000000000000A", type=type_,
                          timestamp="2027-01-15T08:00:00.000Z", data=data or {},
                          source=source, actor=actor, seq=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data.kb=docs", ("data.kb", "docs")),
        ("data.count=3", ("data.count", 3)),
        ("data.ratio=-0.5", ("data.ratio", -0.5)),
        ("data.big=1e3", ("data.big", 1000.0)),
        ("data.ok=true", ("data.ok", True)),
        ("data.ok=false", ("data.ok", False)),
        ('data.n="42"', ("data.n", "42")),
        ('data.t="true"', ("data.t", "true")),
        ('data.q="a \\"b\\""', ("data.q", 'a "b"')),
        ("data.eq=a=b", ("data.eq", "a=b")),
        ("data.empty=", ("data.empty", "")),
        ("data.True=True", ("data.True", "True")),
        ("data.nan=nan", ("data.nan", "nan")),
        ("source=gh-main", ("source", "gh-main")),
    ],
)
def test_parse_filter(text: str, expected: tuple[str, Scalar]) -> None:
    path, value = parse_filter(text)
    assert (path, value) == expected
    assert type(value) is type(expected[1])


@pytest.mark.parametrize(
    "text",
    ["no-equals", "=value", "data..kb=1", ".data=1", "data.k b=1", "a.b.c.d.e.f.g.h.i=1",
     "x" * 129 + "=1", "data.x=1e999", 'data.x="\\q"'],
)
def test_parse_filter_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="filter"):
        parse_filter(text)


def test_validate_filter_table_limits_and_types() -> None:
    doc = tomlkit.parse('[f]\n"data.kb" = "docs"\n"data.n" = 3\n"data.ok" = true\n"data.r" = 1.5\n')
    table = validate_filter_table(doc["f"])
    assert table == {"data.kb": "docs", "data.n": 3, "data.ok": True, "data.r": 1.5}
    assert [type(v) for v in table.values()] == [str, int, bool, float]
    with pytest.raises(ValueError, match="at most 16"):
        validate_filter_table({f"data.k{i}": i for i in range(17)})
    with pytest.raises(ValueError, match="string, a number or true/false"):
        validate_filter_table({"data.x": [1]})
    with pytest.raises(ValueError, match="finite"):
        validate_filter_table({"data.x": float("inf")})
    with pytest.raises(ValueError, match="segments"):
        validate_filter_table({"data..x": 1})


def test_event_patterns() -> None:
    assert validate_event_patterns(["github.*", "github.*", "stripe.invoice.*"]) == (
        "github.*", "stripe.invoice.*")
    for bad in ([f"p{i}" for i in range(65)], [""], ["x" * 129]):
        with pytest.raises(ValueError, match="events"):
            validate_event_patterns(bad)
    with pytest.raises(ValueError, match="not a string"):
        validate_event_patterns("github.*")


def test_globs_on_type() -> None:
    matcher = EventMatcher(["github.*", "stripe.invoice.paid"], {})
    assert matcher.matches(published("github.push"))
    assert matcher.matches(published("stripe.invoice.paid"))
    assert not matcher.matches(published("stripe.invoice.created"))
    assert not matcher.matches(published("GitHub.push"))  # case-sensitive
    assert EventMatcher([], {}).matches(published("anything.at.all"))
    assert EventMatcher(["*.push"], {}).matches(published("gitlab.push"))
    assert not EventMatcher(["github.pus?"], {}).matches(published("github.pushes"))


def test_filter_equality_rules() -> None:
    event = published(data={"n": 1, "f": 1.0, "ok": True, "s": "docs", "nested": {"a": [10, 20]},
                            "obj": {"x": 1}, "none": None})
    assert EventMatcher([], {"data.n": 1.0}).matches(event)
    assert EventMatcher([], {"data.f": 1}).matches(event)
    assert not EventMatcher([], {"data.ok": 1}).matches(event)
    assert not EventMatcher([], {"data.n": True}).matches(event)
    assert EventMatcher([], {"data.ok": True}).matches(event)
    assert not EventMatcher([], {"data.s": "Docs"}).matches(event)
    assert not EventMatcher([], {"data.n": "1"}).matches(event)
    assert EventMatcher([], {"data.nested.a.1": 20}).matches(event)
    assert not EventMatcher([], {"data.nested.a.5": 20}).matches(event)
    assert not EventMatcher([], {"data.obj": 1}).matches(event)
    assert not EventMatcher([], {"data.missing": 1}).matches(event)
    assert not EventMatcher([], {"data.s.deeper": "x"}).matches(event)
    assert not EventMatcher([], {"data.none": "null"}).matches(event)
    assert EventMatcher([], {"source": "gh-main", "actor": "github"}).matches(event)
    # AND of all entries, and of the globs.
    assert not EventMatcher([], {"data.s": "docs", "data.n": 2}).matches(event)
    assert not EventMatcher(["stripe.*"], {"data.s": "docs"}).matches(event)


def test_matcher_validates_at_construction() -> None:
    with pytest.raises(ValueError):
        EventMatcher([], {"bad path": 1})


_scalars = st.one_of(
    st.booleans(), st.integers(-10**6, 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=20),
)


@given(_scalars)
def test_cli_value_round_trips_through_json_text(value: Scalar) -> None:
    # What a user types for a value: strings quoted as JSON, everything else as JSON text.
    text = json.dumps(value)
    path, parsed = parse_filter(f"data.x={text}")
    assert path == "data.x"
    assert parsed == value and type(parsed) is type(value)
    assert EventMatcher([], {path: parsed}).matches(published(data={"x": value}))


def test_matcher_verdicts_per_type_stay_right_past_their_memo() -> None:
    matcher = EventMatcher(["shop.order.*", "ci.*"], {})
    for round_ in range(2):
        for n in range(TYPE_VERDICTS + 50):
            wanted = n % 3 == 0
            type_ = f"shop.order.t{n}" if wanted else f"shop.other.t{n}"
            assert matcher.matches(published(type_)) is wanted, (round_, n)
    assert matcher.matches(published("ci.build"))
    assert not matcher.matches(published("cd.build"))
