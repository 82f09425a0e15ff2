"""``[[subscriptions]]`` and ``[[tokens]]`` in the registry: field rules, parsing with
positions, dump/load identity, comment-preserving edits next to ``[[webhooks]]``, tokens."""

from __future__ import annotations

import dataclasses
import json
import secrets
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from hypothesis import given, settings
from hypothesis import strategies as st

from palyra_py.outbound.retry import DEFAULT_SCHEDULE, parse_duration
from palyra_py.registry.document import Registry, parse_registry
from palyra_py.registry.file import RegistryFile
from palyra_py.registry.integrations import (
    add_integration,
    remove_integration,
    update_integration,
)
from palyra_py.registry.positions import RegistryError
from palyra_py.registry.subscriptions import (
    MAX_SUBSCRIPTIONS,
    Subscription,
    add_subscription,
    format_duration,
    remove_subscription,
    update_subscription,
    validate_subscription_fields,
)
from palyra_py.registry.tokens import (
    MAX_TOKENS,
    ApiToken,
    add_token,
    format_token,
    new_token_id,
    remove_token,
    split_token,
    validate_token_fields,
)

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
SVIX = ["0s", "5s", "5m", "30m", "2h", "5h", "10h", "10h"]

MIXED = """\
# Our registry.
version = 1

# GitHub org hooks
[[webhooks]]
integration_id = "gh"   # the org hook
provider = "github"

# ---- outbound ----
# Docs indexer
[[subscriptions]]
subscription_id = "docs"    # keep this name
url = "https://indexer.example/hook"
events = [
  "github.push",   # pushes only
]
filter = { data.kb = "docs" }

# Billing ledger, strictly ordered
[[subscriptions]]
subscription_id = "ledger"
url = "https://ledger.example/in"
ordered = true
retry_schedule = ["0s", "1m"]

# ---- tokens ----
[[tokens]]
token_id = "abcdefgh2345"
name = "ci"
secret_ref = "keyring:token:abcdefgh2345"
"""


def _edit(text: str, change: Any) -> str:
    doc = tomlkit.parse(text)
    change(doc)
    out = doc.as_string()
    parse_registry(out, Path("webhooks.toml"))
    return out


def _sub(**fields: Any) -> Subscription:
    return Subscription(**validate_subscription_fields(
        {"subscription_id": "s", "url": "https://receiver.example/hook", **fields}
    ))


# -- field rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("subscription_id", "has space", "1 to 64 characters of a-z 0-9 . _ -"),
        ("subscription_id", "..", "1 to 64 characters"),
        ("url", "ftp://files.example/x", "scheme must be http or https"),
        ("url", "https://user:pw@receiver.example/", "must not contain credentials"),
        ("url", "receiver.example/hook", "http:// or https://"),
        ("url", "https:///nohost", "no host"),
        ("url", "https://receiver.example:99999/", "malformed"),
        ("url", "https://receiver.example/" + "a" * 2048, "longer than 2048"),
        ("url", "https://receiver.example/a b", "whitespace"),
        ("url", 42, "http:// or https://"),
        ("events", "github.*", "array of glob patterns"),
        ("events", ["ok", " "], "glob pattern of 1 to 128"),
        ("events", ["x" * 129], "1 to 128"),
        ("events", ["bell\x07"], "no control characters"),
        ("events", [f"e{i}" for i in range(65)], "at most 64 patterns"),
        ("filter", "data.kb=docs", "table of path = value"),
        ("filter", {"data..kb": 1}, "segments"),
        ("filter", {"data.kb": [1]}, "a string, a number or true/false"),
        ("filter", {"n": float("nan")}, "finite"),
        ("filter", {f"k{i}": i for i in range(17)}, "at most 16 entries"),
        ("filter", {"a.b": 1, "a": {"b": 2}}, "given twice"),
        ("secret_ref", "whsec_abc", "keyring:NAME, env:VAR or file:/absolute/path"),
        ("enabled", "yes", "true or false"),
        ("owner", "Docs Team", "1 to 64 characters"),
        ("rate_limit_per_s", -1, "from 0 to 10000"),
        ("rate_limit_per_s", float("inf"), "from 0 to 10000"),
        ("rate_limit_per_s", True, "a number"),
        ("rate_limit_per_s", "5", "a number"),
        ("max_in_flight", 0, "from 1 to 100"),
        ("max_in_flight", 101, "from 1 to 100"),
        ("max_in_flight", 1.5, "an integer"),
        ("ordered", 1, "true or false"),
        ("format", "teams", "one of standard, slack, discord"),
        ("signature_format", "sha1", "one of standard, github"),
        ("timeout_s", 0.5, "from 1 to 60"),
        ("timeout_s", 61, "from 1 to 60"),
        ("timeout_s", float("nan"), "from 1 to 60"),
        ("retry_schedule", [], "1 to 20 durations"),
        ("retry_schedule", ["1s"] * 21, "1 to 20 durations"),
        ("retry_schedule", ["0s", "8d"], "at most 7 days"),
        ("retry_schedule", ["5 parsecs"], "ms, s, m, h or d"),
        ("retry_schedule", [-1], "durations"),
        ("retry_schedule", [True], "durations"),
        ("retry_schedule", {"a": 1}, "durations"),
        ("headers", ["X-A: 1"], "table of header name = value"),
        ("headers", {"Host": "evil.example"}, "'Host' is set by palyra"),
        ("headers", {"content-length": "1"}, "cannot be given"),
        ("headers", {"Content-Type": "text/plain"}, "cannot be given"),
        ("headers", {"Transfer-Encoding": "chunked"}, "cannot be given"),
        ("headers", {"Connection": "close"}, "cannot be given"),
        ("headers", {"Webhook-Signature": "v1,x"}, "webhook-*"),
        ("headers", {"webhook-id": "x"}, "webhook-*"),
        ("headers", {"X-Hub-Signature-256": "sha256=x"}, "X-Hub-Signature*"),
        ("headers", {"x-hub-signature": "sha1=x"}, "X-Hub-Signature*"),
        ("headers", {"Bad Name": "x"}, "is not a header name"),
        ("headers", {"X-A": 1}, "must be a string"),
        ("headers", {"X-A": "1", "x-a": "2"}, "given twice"),
        ("headers", {f"X-H{i}": "v" for i in range(33)}, "at most 32 headers"),
        ("description", "x" * 257, "at most 256 characters"),
        ("disabled_reason", "nul\x00", "no control characters"),
        ("created_at", "yesterday", "RFC 3339 date-time"),
        ("previous_valid_until", datetime(2025, 1, 1), "has no offset"),
    ],
)
def test_each_refusal_names_the_field_and_what_is_allowed(
    field: str, value: Any, fragment: str
) -> None:
    fields = {"subscription_id": "s", "url": "https://receiver.example/hook", field: value}
    with pytest.raises(RegistryError) as info:
        validate_subscription_fields(fields)
    error = info.value
    assert error.field is not None
    assert error.field == field or error.field.startswith(f"{field}[")
    assert str(error).startswith(f"{error.field}: ")
    assert fragment in str(error)
    if field != "created_at":  # add_subscription sets created_at itself
        doc = tomlkit.parse("version = 1\n")
        with pytest.raises(RegistryError):
            add_subscription(doc, fields, NOW)
        assert doc.as_string() == "version = 1\n"


@pytest.mark.parametrize(
    "value", ["a\r\nX-Injected: 1", "a\nb", "bell\x07", "caf\u00e9", "x" * 4097]
)
def test_header_values_are_refused_without_being_repeated(value: str) -> None:
    secret_value = "s3cr3t-" + value
    with pytest.raises(RegistryError) as info:
        validate_subscription_fields({"subscription_id": "s", "url": "https://r.example/",
                                      "headers": {"Authorization": secret_value}})
    assert info.value.field == "headers"
    assert "Authorization: the value must be" in str(info.value)
    assert "s3cr3t" not in str(info.value)


def test_a_url_with_credentials_is_not_repeated_in_the_error() -> None:
    with pytest.raises(RegistryError) as info:
        validate_subscription_fields(
            {"subscription_id": "s", "url": "https://bob:hunter2@receiver.example/"}
        )
    assert "hunter2" not in str(info.value)


def test_required_fields_unknown_keys_and_rotation_pairs() -> None:
    for missing in ("subscription_id", "url"):
        fields = {"subscription_id": "s", "url": "https://r.example/"}
        del fields[missing]
        with pytest.raises(RegistryError) as info:
            validate_subscription_fields(fields)
        assert info.value.field == missing
        assert "is required" in str(info.value)
    with pytest.raises(RegistryError) as info:
        validate_subscription_fields(
            {"subscription_id": "s", "url": "https://r.example/", "timeout": 5}
        )
    assert info.value.field == "timeout"
    assert "did you mean 'timeout_s'" in str(info.value)
    with pytest.raises(RegistryError) as info:
        validate_subscription_fields({"subscription_id": "s", "url": "https://r.example/",
                                      "previous_secret_ref": "keyring:old"})
    assert info.value.field == "previous_valid_until"


def test_normalisation() -> None:
    norm = validate_subscription_fields(
        {
            "subscription_id": " Docs ",
            "url": " https://r.example/hook ",
            "events": [" github.push ", "docs.*", "github.push"],
            "filter": {"data": {"kb": "docs"}, "source": "gh", "n": 1},
            "owner": " Team-A ",
            "rate_limit_per_s": 5,
            "timeout_s": 10,
            "format": " Slack ",
            "signature_format": "GitHub",
            "retry_schedule": ["0s", 90, "1.5s", "2h"],
            "headers": {"X-Team": "  infra  "},
            "description": "  Docs  ",
            "created_at": "2025-03-01T14:00:00+02:00",
        }
    )
    assert norm == {
        "subscription_id": "docs",
        "url": "https://r.example/hook",
        "events": ("github.push", "docs.*"),
        "filter": {"data.kb": "docs", "source": "gh", "n": 1},
        "owner": "team-a",
        "rate_limit_per_s": 5.0,
        "timeout_s": 10.0,
        "format": "slack",
        "signature_format": "github",
        "retry_schedule": (0.0, 90.0, 1.5, 7200.0),
        "headers": {"X-Team": "infra"},
        "description": "Docs",
        "created_at": NOW,
    }
    assert isinstance(norm["rate_limit_per_s"], float)
    # Normalised fields are accepted again unchanged (the admin API validates, then adds).
    assert validate_subscription_fields(norm) == norm


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (5, "5s"), (300, "5m"), (1800, "30m"), (7200, "2h"), (36000, "10h"),
     (90, "90s"), (5400, "90m"), (86400, "1d"), (604800, "7d"), (1.5, "1500ms"),
     (0.25, "250ms"), (0.0004, "0s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.floats(min_value=0, max_value=7 * 86400))
def test_format_duration_reads_back_to_the_millisecond(seconds: float) -> None:
    text = format_duration(seconds)
    back = parse_duration(text)
    assert abs(back - seconds) <= 0.0005 + 1e-9
    assert format_duration(back) == text


def test_to_dict_is_json_ready() -> None:
    sub = _sub(
        events=["github.*"],
        filter={"data.kb": "docs"},
        headers={"X-Team": "docs"},
        previous_secret_ref="keyring:subscription:s:previous",
        previous_valid_until="2025-03-02T01:00:00+01:00",
        created_at=NOW,
    )
    data = sub.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(Subscription)}
    assert data["retry_schedule"] == SVIX
    assert data["events"] == ["github.*"]
    assert data["filter"] == {"data.kb": "docs"}
    assert data["headers"] == {"X-Team": "docs"}
    assert data["previous_valid_until"] == "2025-03-02T00:00:00Z"
    assert data["created_at"] == "2025-03-01T12:00:00Z"
    assert data["updated_at"] is None
    assert json.loads(json.dumps(data)) == data
    assert Subscription(**validate_subscription_fields(data)) == sub
    assert _sub().retry_schedule == DEFAULT_SCHEDULE
    assert _sub(retry_schedule=["0s", "90m"]).to_dict()["retry_schedule"] == ["0s", "90m"]


# -- dump -> load identity ----------------------------------------------------------------

_ids = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,15}", fullmatch=True)
_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True).filter(
    lambda n: n.lower() not in {"host", "connection", "te", "trailer", "upgrade", "keep-alive"}
    and not n.lower().startswith(("webhook-", "x-hub-signature"))
)
_header_values = st.from_regex(r"([\x21-\x7e]([\x20-\x7e]{0,20}[\x21-\x7e])?)?", fullmatch=True)
_paths = st.from_regex(r"[A-Za-z0-9_-]{1,6}(\.[A-Za-z0-9_-]{1,6}){0,3}", fullmatch=True)
_scalars = st.one_of(
    st.text(max_size=20),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
_urls = st.from_regex(
    r"https?://[a-z][a-z0-9-]{0,10}\.example(:[0-9]{2,4})?(/[A-Za-z0-9_/?=&.-]{0,20})?",
    fullmatch=True,
)
_plain_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=40)
_times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
)


@st.composite
def subscription_fields(draw: st.DrawFn) -> dict[str, Any]:
    fields: dict[str, Any] = {"subscription_id": draw(_ids), "url": draw(_urls)}
    optional: dict[str, st.SearchStrategy[Any]] = {
        "events": st.lists(st.from_regex(r"[a-z0-9._*?:-]{1,20}", fullmatch=True), max_size=5),
        "filter": st.dictionaries(_paths, _scalars, max_size=5),
        "secret_ref": st.sampled_from(["keyring:subscription:x", "env:HOOK_SECRET"]),
        "enabled": st.booleans(),
        "owner": _ids,
        "rate_limit_per_s": st.floats(0, 10_000),
        "max_in_flight": st.integers(1, 100),
        "ordered": st.booleans(),
        "format": st.sampled_from(["standard", "slack", "discord"]),
        "signature_format": st.sampled_from(["standard", "github"]),
        "timeout_s": st.floats(1, 60),
        "retry_schedule": st.lists(
            st.one_of(st.integers(0, 7 * 86400), st.sampled_from(["0s", "5m", "2h", "250ms"])),
            min_size=1, max_size=20,
        ),
        "headers": st.dictionaries(_names, _header_values, max_size=4).filter(
            lambda h: len({k.lower() for k in h}) == len(h)
        ),
        "description": _plain_text.map(lambda t: t[:256]),
        "disabled_reason": _plain_text,
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            fields[key] = draw(strategy)
    if draw(st.booleans()):
        fields["previous_secret_ref"] = "keyring:subscription:x:previous"
        fields["previous_valid_until"] = draw(_times)
    return fields


@settings(max_examples=150, deadline=None)
@given(subscription_fields(), st.booleans())
def test_dump_then_load_gives_the_same_subscription(fields: dict[str, Any], nested: bool) -> None:
    expected = dataclasses.replace(
        Subscription(**validate_subscription_fields(fields)), created_at=NOW, updated_at=NOW
    )
    start = '[[webhooks]]\nintegration_id = "gh"\nprovider = "github"\n' if nested else ""
    out = _edit(start, lambda doc: add_subscription(doc, fields, NOW))
    loaded = parse_registry(out, Path("w")).subscriptions
    assert loaded == {expected.subscription_id: expected}
    # And through the JSON shape the admin API answers with.
    assert Subscription(**validate_subscription_fields(expected.to_dict())) == expected


_anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
    | st.datetimes(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*(f.name for f in dataclasses.fields(Subscription)),
                                        "bogus"]), _anything))
def test_any_input_is_either_accepted_or_a_registry_error(fields: dict[str, Any]) -> None:
    fields.setdefault("subscription_id", "s")
    fields.setdefault("url", "https://r.example/")
    try:
        norm = validate_subscription_fields(fields)
    except RegistryError as exc:
        assert exc.field is not None
        return
    assert validate_subscription_fields(norm) == norm
    json.dumps(Subscription(**norm).to_dict())


# -- parsing, with positions ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field", "line", "col", "fragment"),
    [
        (
            '[[webhooks]]\nintegration_id = "a"\nprovider = "github"\n\n'
            '[[subscriptions]]\nsubscription_id = "s"\nurl = "https://r.example/"\n\n'
            '[[subscriptions]]\nsubscription_id = "t"\n  url = "ftp://r.example/"\n',
            "subscriptions[1].url", 11, 3, "http or https",
        ),
        (
            '[[subscriptions]]\nsubscription_id = "s"\nurl = "https://r.example/"\n'
            'max_inflight = 3\n',
            "subscriptions[0].max_inflight", 4, 1, "did you mean 'max_in_flight'",
        ),
        (
            '[[subscriptions]]\nurl = "https://r.example/"\n',
            "subscriptions[0].subscription_id", 1, 1, "is required",
        ),
        (
            '[[subscriptions]]\nsubscription_id = "s"\nurl = "https://r.example/"\n'
            '[[subscriptions]]\nsubscription_id = " S"\nurl = "https://r.example/"\n',
            "subscriptions[1].subscription_id", 5, 1,
            "duplicate id 's' (already used by subscriptions[0])",
        ),
        (
            '[[subscriptions]]\nsubscription_id = "s"\nurl = "https://r.example/"\n'
            'retry_schedule = [\n  "0s",\n  "9d",\n]\n',
            "subscriptions[0].retry_schedule[1]", 4, 1, "at most 7 days",
        ),
        (
            '[[subscriptions]]\nsubscription_id = "s"\nurl = "https://r.example/"\n'
            '[subscriptions.headers]\nX-Team = "a"\nHost = "b"\n',
            "subscriptions[0].headers", 4, 1, "'Host' is set by palyra",
        ),
        (
            'version = 1\nsubscriptions = "all"\n',
            "subscriptions", 2, 1, "[[subscriptions]]",
        ),
        (
            'version = 1\n[[subscription]]\nx = 1\n',
            "subscription", 2, 1, "did you mean 'subscriptions'",
        ),
        (
            '[[tokens]]\ntoken_id = "abcdefgh"\nname = "ci"\nsecret_ref = "keyring:token:x"\n\n'
            '[[tokens]]\ntoken_id = "ABC"\nname = "x"\nsecret_ref = "keyring:token:y"\n',
            "tokens[1].token_id", 7, 1, "8 to 32 characters of a-z 0-9",
        ),
        (
            '[[tokens]]\ntoken_id = "abcdefgh"\nname = ""\nsecret_ref = "keyring:token:x"\n',
            "tokens[0].name", 3, 1, "1 to 64 printable characters",
        ),
        (
            '[[tokens]]\ntoken_id = "abcdefgh"\nname = "ci"\n',
            "tokens[0].secret_ref", 1, 1, "is required",
        ),
        (
            '[[tokens]]\ntoken_id = "abcdefgh"\nname = "ci"\nsecret_ref = "keyring:t"\n'
            'secret = "plt_x"\n',
            "tokens[0].secret", 5, 1, "did you mean 'secret_ref'",
        ),
    ],
)
def test_errors_carry_the_field_line_and_column(
    text: str, field: str, line: int, col: int, fragment: str
) -> None:
    path = Path("webhooks.toml")
    with pytest.raises(RegistryError) as info:
        parse_registry(text, path)
    error = info.value
    assert error.field == field
    assert (error.line, error.col) == (line, col)
    assert str(error).startswith(f"{path}:{line}:{col}: {field}: ")
    assert fragment in str(error)


def test_records_of_each_kind_are_counted_apart_when_interleaved() -> None:
    text = (
        '[[subscriptions]]\nsubscription_id = "s"\nurl = "https://r.example/"\n'
        '[[webhooks]]\nintegration_id = "a"\nprovider = "github"\n'
        '[[subscriptions]]\nsubscription_id = "t"\nurl = "https://r.example/"\n'
        "timeout_s = 0\n"
    )
    with pytest.raises(RegistryError) as info:
        parse_registry(text, Path("w"))
    assert info.value.field == "subscriptions[1].timeout_s"
    assert info.value.line == 10


def test_limits_on_subscriptions_and_tokens() -> None:
    subs = "".join(
        f'[[subscriptions]]\nsubscription_id = "s{n}"\nurl = "https://r.example/"\n'
        for n in range(MAX_SUBSCRIPTIONS + 1)
    )
    with pytest.raises(RegistryError) as info:
        parse_registry(subs, Path("w"))
    assert "at most 1024 subscriptions" in str(info.value)
    assert info.value.line == 3 * MAX_SUBSCRIPTIONS + 1
    full = subs.rsplit("[[subscriptions]]", 1)[0]
    assert len(parse_registry(full, Path("w")).subscriptions) == MAX_SUBSCRIPTIONS
    with pytest.raises(RegistryError) as info:
        add_subscription(tomlkit.parse(full), {"subscription_id": "more",
                                               "url": "https://r.example/"}, NOW)
    assert "at most 1024 subscriptions" in str(info.value)

    doc = tomlkit.parse("version = 1\n")
    for _ in range(MAX_TOKENS):
        add_token(doc, {"name": "t"}, NOW)
    registry = parse_registry(doc.as_string(), Path("w"))
    assert len(registry.tokens) == MAX_TOKENS
    with pytest.raises(RegistryError) as info:
        add_token(doc, {"name": "one more"}, NOW)
    assert "at most 256 tokens" in str(info.value)
    over = doc.as_string() + '[[tokens]]\ntoken_id = "zzzzzzzz"\nname = "x"\nsecret_ref = "env:X"\n'
    with pytest.raises(RegistryError) as info:
        parse_registry(over, Path("w"))
    assert info.value.field == "tokens[256]"


def test_a_registry_without_outbound_records_has_empty_mappings(tmp_path: Path) -> None:
    assert Registry(tmp_path, {}).subscriptions == {}
    assert Registry(tmp_path, {}).tokens == {}
    loaded = RegistryFile(tmp_path / "none.toml").load()
    assert (loaded.integrations, loaded.subscriptions, loaded.tokens) == ({}, {}, {})
    parsed = parse_registry(MIXED, Path("w"))
    assert list(parsed.integrations) == ["gh"]
    assert list(parsed.subscriptions) == ["docs", "ledger"]
    assert parsed.subscriptions["docs"].filter == {"data.kb": "docs"}
    assert parsed.subscriptions["ledger"].retry_schedule == (0.0, 60.0)
    assert list(parsed.tokens) == ["abcdefgh2345"]


# -- edits keep what a person wrote --------------------------------------------------------


def test_add_subscription_goes_after_the_last_one_and_above_the_next_section() -> None:
    out = _edit(MIXED, lambda doc: add_subscription(
        doc, {"subscription_id": "Slack", "url": "https://hooks.slack.example/x",
              "format": "slack", "retry_schedule": ["0s", "5m"], "secret_ref": "env:S"}, NOW))
    assert out == MIXED.replace(
        'retry_schedule = ["0s", "1m"]\n',
        'retry_schedule = ["0s", "1m"]\n'
        "\n"
        "[[subscriptions]]\n"
        'subscription_id = "slack"\n'
        'url = "https://hooks.slack.example/x"\n'
        "events = []\n"
        'secret_ref = "env:S"\n'
        "enabled = true\n"
        'format = "slack"\n'
        'retry_schedule = ["0s", "5m"]\n'
        "created_at = 2025-03-01T12:00:00Z\n"
        "updated_at = 2025-03-01T12:00:00Z\n",
    )
    assert list(parse_registry(out, Path("w")).subscriptions) == ["docs", "ledger", "slack"]


def test_add_integration_stays_above_the_subscriptions_and_their_comments() -> None:
    out = _edit(MIXED, lambda doc: add_integration(
        doc, {"integration_id": "stripe", "provider": "stripe"}, NOW))
    assert out.index('integration_id = "stripe"') < out.index("# ---- outbound ----")
    assert out.startswith(MIXED.split("# ---- outbound ----")[0])
    assert out.endswith("# ---- outbound ----" + MIXED.split("# ---- outbound ----")[1])


def test_update_subscription_changes_values_in_place_and_keeps_comments() -> None:
    out = _edit(MIXED, lambda doc: update_subscription(
        doc, "DOCS", {"events": ["github.push", "docs.*"], "timeout_s": 5}, LATER))
    assert out == MIXED.replace(
        'events = [\n  "github.push",   # pushes only\n]\n',
        'events = ["github.push", "docs.*"]\n',
    ).replace(
        'filter = { data.kb = "docs" }\n',
        'filter = { data.kb = "docs" }\ntimeout_s = 5.0\nupdated_at = 2025-03-01T13:00:00Z\n',
    )
    sub = parse_registry(out, Path("w")).subscriptions["docs"]
    assert (sub.events, sub.timeout_s, sub.updated_at) == (("github.push", "docs.*"), 5.0, LATER)


def test_update_with_none_goes_back_to_the_default() -> None:
    out = _edit(MIXED, lambda doc: update_subscription(
        doc, "ledger", {"retry_schedule": None, "ordered": None}, LATER))
    assert "retry_schedule" not in out
    assert "# Billing ledger, strictly ordered\n" in out
    ledger = parse_registry(out, Path("w")).subscriptions["ledger"]
    assert ledger.retry_schedule == DEFAULT_SCHEDULE
    assert ledger.ordered is False


def test_update_refuses_unknown_ids_bad_values_and_renames() -> None:
    doc = tomlkit.parse(MIXED)
    with pytest.raises(KeyError):
        update_subscription(doc, "nope", {"enabled": False}, LATER)
    with pytest.raises(KeyError):
        update_subscription(doc, "gh", {"enabled": False}, LATER)  # an integration's id
    with pytest.raises(RegistryError) as info:
        update_subscription(doc, "docs", {"max_in_flight": 0}, LATER)
    assert info.value.field == "max_in_flight"
    with pytest.raises(RegistryError) as info:
        update_subscription(doc, "docs", {"subscription_id": "other"}, LATER)
    assert info.value.field == "subscription_id"
    assert "remove the subscription and add it again" in str(info.value)
    assert doc.as_string() == MIXED


def test_remove_subscription_takes_its_own_comment_and_keeps_the_others() -> None:
    out = _edit(MIXED, lambda doc: remove_subscription(doc, "ledger"))
    assert out == MIXED.replace(
        "# Billing ledger, strictly ordered\n"
        "[[subscriptions]]\n"
        'subscription_id = "ledger"\n'
        'url = "https://ledger.example/in"\n'
        "ordered = true\n"
        'retry_schedule = ["0s", "1m"]\n'
        "\n",
        "",
    )
    with pytest.raises(KeyError):
        remove_subscription(tomlkit.parse(out), "ledger")


def test_removing_every_subscription_leaves_the_rest_alone() -> None:
    def change(doc: tomlkit.TOMLDocument) -> None:
        remove_subscription(doc, "docs")
        remove_subscription(doc, "ledger")

    out = _edit(MIXED, change)
    assert "[[subscriptions]]" not in out
    assert "subscriptions" not in tomlkit.parse(out)
    assert "# GitHub org hooks\n[[webhooks]]\n" in out
    assert "# ---- tokens ----\n[[tokens]]\n" in out
    registry = parse_registry(out, Path("w"))
    assert (list(registry.integrations), registry.subscriptions, list(registry.tokens)) == (
        ["gh"], {}, ["abcdefgh2345"])


def test_integration_edits_leave_subscriptions_byte_for_byte() -> None:
    tail = MIXED[MIXED.index("# ---- outbound ----"):]
    out = _edit(MIXED, lambda doc: update_integration(doc, "gh", {"enabled": False}, LATER))
    assert out.endswith(tail)
    out = _edit(out, lambda doc: remove_integration(doc, "gh"))
    assert "[[webhooks]]" not in out
    assert out.endswith(tail)
    assert list(parse_registry(out, Path("w")).subscriptions) == ["docs", "ledger"]


def test_integrations_subscriptions_and_tokens_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.toml"
    file = RegistryFile(path)
    file.edit(lambda doc: add_integration(doc, {"integration_id": "gh", "provider": "github"},
                                          NOW))
    # Ids are per kind: a subscription may share an integration's id.
    file.edit(lambda doc: add_subscription(doc, {"subscription_id": "gh",
                                                 "url": "https://r.example/"}, NOW))
    file.edit(lambda doc: add_token(doc, {"token_id": "abcdefgh", "name": "ci"}, NOW))
    registry = file.edit(lambda doc: update_subscription(doc, "gh", {"enabled": False}, LATER))
    assert list(registry.integrations) == ["gh"]
    assert registry.subscriptions["gh"].enabled is False
    assert registry.tokens["abcdefgh"].secret_ref == "keyring:token:abcdefgh"
    with pytest.raises(RegistryError) as info:
        file.edit(lambda doc: add_subscription(doc, {"subscription_id": "GH",
                                                     "url": "https://r.example/"}, NOW))
    assert info.value.field == "subscription_id"
    assert "already exists" in str(info.value)
    assert file.load() == registry

    # A hand-made error in a subscription is reported where it is, and nothing is written.
    text = path.read_text() + '\n[[subscriptions]]\nsubscription_id = "x"\nurl = "mailto:a"\n'
    path.write_text(text)
    with pytest.raises(RegistryError) as info:
        file.edit(lambda doc: remove_token(doc, "abcdefgh"))
    assert info.value.field == "subscriptions[1].url"
    assert info.value.line == text.count("\n")
    assert path.read_text() == text


def test_interleaved_kinds_are_refused_before_an_edit_would_move_them(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.toml"
    text = (
        'version = 1\n\n# the first hook\n[[webhooks]]\nintegration_id = "a"\n'
        'provider = "github"\n\n# a subscription between the hooks\n[[subscriptions]]\n'
        'subscription_id = "s"\nurl = "https://r.example/"\n\n# the second hook\n'
        '[[webhooks]]\nintegration_id = "b"\nprovider = "stripe"\n'
    )
    path.write_text(text)
    file = RegistryFile(path)
    assert list(file.load().integrations) == ["a", "b"]  # valid TOML, and loaded as such
    with pytest.raises(RegistryError) as info:
        file.edit(lambda doc: update_subscription(doc, "s", {"enabled": False}, LATER))
    assert (info.value.line, info.value.col) == (14, 1)
    assert "[[webhooks]] here comes after [[subscriptions]] records" in str(info.value)
    assert path.read_text() == text  # nothing moved, nothing written

    grouped = text.replace(
        '\n# a subscription between the hooks\n[[subscriptions]]\nsubscription_id = "s"\n'
        'url = "https://r.example/"\n', "") + (
        '\n# a subscription after the hooks\n[[subscriptions]]\nsubscription_id = "s"\n'
        'url = "https://r.example/"\n')
    path.write_text(grouped)
    file.edit(lambda doc: update_subscription(doc, "s", {"enabled": False}, LATER))
    edited = path.read_text()
    assert edited.startswith(grouped.rstrip("\n"))  # every line kept, in place
    assert "enabled = false" in edited


# -- tokens -------------------------------------------------------------------------------


def test_tokens_round_trip_and_never_show_the_secret() -> None:
    out = _edit(MIXED, lambda doc: add_token(
        doc, {"token_id": "k3x9q2m7a4bd", "name": " Billing app ", "description": "prod"}, NOW))
    assert out.endswith(
        "\n[[tokens]]\n"
        'token_id = "k3x9q2m7a4bd"\n'
        'name = "Billing app"\n'
        'description = "prod"\n'
        'secret_ref = "keyring:token:k3x9q2m7a4bd"\n'
        "created_at = 2025-03-01T12:00:00Z\n"
    )
    token = parse_registry(out, Path("w")).tokens["k3x9q2m7a4bd"]
    assert token == ApiToken("k3x9q2m7a4bd", "Billing app", "keyring:token:k3x9q2m7a4bd",
                             "prod", NOW)
    assert token.to_dict() == {"token_id": "k3x9q2m7a4bd", "name": "Billing app",
                               "description": "prod", "created_at": "2025-03-01T12:00:00Z",
                               "scopes": None, "legacy": True, "expires_at": None}
    assert ApiToken(**validate_token_fields(dataclasses.asdict(token))) == token
    out = _edit(out, lambda doc: remove_token(doc, "k3x9q2m7a4bd"))
    assert out == MIXED
    with pytest.raises(KeyError):
        remove_token(tomlkit.parse(out), "k3x9q2m7a4bd")


def test_add_token_draws_an_id_and_refuses_duplicates() -> None:
    doc = tomlkit.parse(MIXED)
    add_token(doc, {"name": "drawn"}, NOW)
    tokens = parse_registry(doc.as_string(), Path("w")).tokens
    (drawn,) = [t for t in tokens.values() if t.name == "drawn"]
    assert len(drawn.token_id) == 12
    assert drawn.secret_ref == f"keyring:token:{drawn.token_id}"
    with pytest.raises(RegistryError) as info:
        add_token(doc, {"token_id": "abcdefgh2345", "name": "again"}, NOW)
    assert info.value.field == "token_id"
    assert "already exists" in str(info.value)


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("token_id", "short", "8 to 32 characters of a-z 0-9"),
        ("token_id", "has_underscore", "8 to 32"),
        ("token_id", "x" * 33, "8 to 32"),
        ("name", "", "1 to 64 printable"),
        ("name", "x" * 65, "1 to 64 printable"),
        ("name", "bell\x07", "printable"),
        ("name", None, "is required"),
        ("description", "x" * 257, "0 to 256 printable"),
        ("secret_ref", "plt_abc", "keyring:NAME, env:VAR or file:/absolute/path"),
        ("created_at", "now", "RFC 3339"),
    ],
)
def test_token_refusals_name_the_field(field: str, value: Any, fragment: str) -> None:
    fields = {"token_id": "abcdefgh", "name": "ci", "secret_ref": "keyring:token:abcdefgh",
              field: value}
    with pytest.raises(RegistryError) as info:
        validate_token_fields(fields)
    assert info.value.field == field
    assert fragment in str(info.value)


def test_new_token_ids_are_random_lowercase_base32() -> None:
    ids = {new_token_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 12 and set(i) <= set("abcdefghijklmnopqrstuvwxyz234567") for i in ids)


def test_format_and_split_token() -> None:
    random_part = secrets.token_urlsafe(32)
    token = format_token("k3x9q2m7a4bd", random_part)
    assert token == f"plt_k3x9q2m7a4bd_{random_part}"
    assert split_token(token) == ("k3x9q2m7a4bd", token)
    assert split_token("plt_abcdefgh_a_b-c_d-e_f-g_h-i_j") == (
        "abcdefgh", "plt_abcdefgh_a_b-c_d-e_f-g_h-i_j")
    for bad in (
        "",
        "plt_",
        "Bearer plt_abcdefgh_" + "a" * 20,
        "plx_abcdefgh_" + "a" * 20,
        "plt_abcdefgh" + "a" * 20,  # no separator
        "plt_abc_" + "a" * 20,  # id too short
        "plt_ABCDEFGH_" + "a" * 20,  # ids are lowercase
        "plt_abcdefgh_" + "a" * 15,  # random part too short
        "plt_abcdefgh_" + "a" * 129,  # too long
        "plt_abcdefgh_" + "a" * 19 + "=",
        "plt_abcdefgh_" + "a" * 19 + " ",
        "plt_abcdefgh_" + "a" * 19 + "\u00e9",
    ):
        assert split_token(bad) is None, bad
    for token_id, random_value in (("abc", "a" * 20), ("abcdefgh", "short"),
                                   ("abcdefgh", "a" * 19 + "!")):
        with pytest.raises(ValueError):
            format_token(token_id, random_value)


@given(st.from_regex(r"[a-z0-9]{8,32}", fullmatch=True),
       st.from_regex(r"[A-Za-z0-9_-]{16,128}", fullmatch=True))
def test_split_token_inverts_format_token(token_id: str, random_part: str) -> None:
    token = format_token(token_id, random_part)
    assert split_token(token) == (token_id, token)


# -- the example file and imports ---------------------------------------------------------


def test_example_file_shows_every_subscription_field() -> None:
    path = REPO / "webhooks.example.toml"
    text = path.read_text(encoding="utf-8")
    registry = parse_registry(text, path)
    subs = registry.subscriptions
    assert {s.format for s in subs.values()} >= {"standard", "slack"}
    assert any(s.filter for s in subs.values())
    assert any(s.ordered and s.retry_schedule != DEFAULT_SCHEDULE for s in subs.values())
    doc = tomlkit.parse(text)
    shown = {key for record in doc["subscriptions"] for key in record}
    assert shown == {f.name for f in dataclasses.fields(Subscription)}
    assert registry.tokens == {}
    assert "# [[tokens]]" in text and "palyra tokens create" in text


def test_the_registry_imports_without_aiohttp() -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from palyra_py.registry.document import parse_registry\n"
        "import palyra_py.registry.file\n"
        f"path = Path({str(REPO / 'webhooks.example.toml')!r})\n"
        "assert parse_registry(path.read_text(), path).subscriptions\n"
        "assert 'aiohttp' not in sys.modules, 'aiohttp was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_retry_schedule_takes_the_cli_duration_forms_too() -> None:
    # One grammar: the CLI's compound and week forms read the same in the registry.
    sub = _sub(retry_schedule=["0", "90", "1h30m", "1W", " 5M ", "250ms", "0.5h"])
    assert sub.retry_schedule == (0, 90, 5400, 604800, 300, 0.25, 1800)
    assert sub.to_dict()["retry_schedule"] == ["0s", "90s", "90m", "7d", "5m", "250ms", "30m"]
