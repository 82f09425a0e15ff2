"""The registry file: validation, error positions, comment-preserving edits, atomic and
concurrent writes."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from hypothesis import given, settings
from hypothesis import strategies as st

from palyra_py.registry.document import parse_registry
from palyra_py.registry.fields import normalize_id
from palyra_py.registry.file import RegistryFile
from palyra_py.registry.integrations import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_ALLOWED_EVENTS,
    MAX_INTEGRATIONS,
    Integration,
    add_integration,
    remove_integration,
    update_integration,
    validate_integration_fields,
)
from palyra_py.registry.positions import RegistryError

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)

HAND_WRITTEN = """\
# Our webhooks. Ask #infra before changing.
version = 1

# GitHub org hooks
[[webhooks]]
integration_id = "gh"   # the org hook
provider = "github"

max_payload_bytes = 2048  # small repos only
allowed_events = [
  "push",   # deploys
  "issues",
]

# Stripe production account
[[webhooks]]
provider = "stripe"          # key order is ours
integration_id = "stripe"
secret_ref = "env:STRIPE_SECRET"

# Slack workspace
[[webhooks]]
integration_id = "slack"
provider = "slack"
"""


def _doc_edit(text: str, change: Any) -> str:
    doc = tomlkit.parse(text)
    change(doc)
    out = doc.as_string()
    parse_registry(out, Path("webhooks.toml"))
    return out


# -- keeping what a person wrote ----------------------------------------------------------


def test_add_appends_and_leaves_the_rest_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.toml"
    path.write_text(HAND_WRITTEN)
    registry = RegistryFile(path).edit(
        lambda doc: add_integration(
            doc, {"integration_id": " New ", "provider": "GitLab", "secret_ref": "env:GL"}, NOW
        )
    )
    text = path.read_text()
    assert text == HAND_WRITTEN + (
        "\n"
        "[[webhooks]]\n"
        'integration_id = "new"\n'
        'provider = "gitlab"\n'
        'display_name = ""\n'
        'secret_ref = "env:GL"\n'
        "enabled = true\n"
        "created_at = 2025-03-01T12:00:00Z\n"
        "updated_at = 2025-03-01T12:00:00Z\n"
    )
    assert list(registry.integrations) == ["gh", "stripe", "slack", "new"]
    assert registry.integrations["new"].created_at == NOW


def test_add_writes_non_default_fields_only() -> None:
    out = _doc_edit(
        "version = 1\n",
        lambda doc: add_integration(
            doc,
            {
                "integration_id": "ci",
                "provider": "generic",
                "secret_ref": "keyring:webhook:ci",
                "max_payload_bytes": DEFAULT_MAX_PAYLOAD_BYTES,  # the default: not written
                "timestamp_tolerance_s": 60,
                "provider_options": {"header": "X-CI-Signature"},
                "allowed_sources": ["10.0.0.1"],
            },
            NOW,
        ),
    )
    record = tomlkit.parse(out)["webhooks"][0]
    assert list(record) == [
        "integration_id",
        "provider",
        "display_name",
        "secret_ref",
        "allowed_sources",
        "enabled",
        "timestamp_tolerance_s",
        "provider_options",
        "created_at",
        "updated_at",
    ]
    assert record["allowed_sources"] == ["10.0.0.1/32"]
    assert 'provider_options = {header = "X-CI-Signature"}' in out


def test_update_changes_values_in_place_and_keeps_comments() -> None:
    out = _doc_edit(
        HAND_WRITTEN,
        lambda doc: update_integration(
            doc, "GH", {"max_payload_bytes": 4096, "enabled": False}, LATER
        ),
    )
    assert out == HAND_WRITTEN.replace(
        "max_payload_bytes = 2048  # small repos only\n",
        "max_payload_bytes = 4096  # small repos only\n",
    ).replace(
        '  "issues",\n]\n',
        '  "issues",\n]\nenabled = false\nupdated_at = 2025-03-01T13:00:00Z\n',
    )


TIMESTAMPED = [("stripe", {}), ("slack", {}), ("standard-webhooks", {}), ("palyra", {}),
               ("generic", {"timestamp_header": "X-Timestamp"})]


@pytest.mark.parametrize(("provider", "options"), TIMESTAMPED, ids=lambda v: str(v or ""))
def test_replay_window_must_outlast_twice_the_timestamp_tolerance(
    provider: str, options: dict[str, str]
) -> None:
    """A signed timestamp passes for timestamp_tolerance_s either side of now; a replay
    key that expired before it stops passing lets the captured request in again."""
    base = {"integration_id": "t", "provider": provider, "provider_options": options}
    for fields in ({"replay_window_s": 120}, {"replay_window_s": 600},
                   {"timestamp_tolerance_s": 3600, "replay_window_s": 7200}):
        with pytest.raises(RegistryError) as info:
            validate_integration_fields({**base, **fields})
        assert info.value.field == "replay_window_s"
        assert "replay_window_s" in info.value.message
        assert "timestamp_tolerance_s" in info.value.message
    assert validate_integration_fields({**base, "replay_window_s": 601})
    assert validate_integration_fields({**base, "timestamp_tolerance_s": 86400})  # 7 days


@pytest.mark.parametrize(("provider", "options"), [("github", {}), ("gitlab", {}),
                                                   ("shopify", {}), ("generic", {})])
def test_untimestamped_schemes_take_any_window(provider: str, options: dict[str, str]) -> None:
    # Nothing there is judged against timestamp_tolerance_s.
    assert validate_integration_fields({"integration_id": "t", "provider": provider,
                                        "timestamp_tolerance_s": 86400, "replay_window_s": 60})


def test_replay_window_rule_holds_for_updates_and_hand_edits() -> None:
    doc = tomlkit.parse(HAND_WRITTEN)
    with pytest.raises(RegistryError) as info:  # the window alone
        update_integration(doc, "stripe", {"replay_window_s": 300}, LATER)
    assert info.value.field == "replay_window_s"
    with pytest.raises(RegistryError) as info:  # the tolerance alone, past a set window
        update_integration(doc, "stripe", {"replay_window_s": 3600}, LATER)
        update_integration(doc, "stripe", {"timestamp_tolerance_s": 1800}, LATER)
    assert "timestamp_tolerance_s = 1800" in info.value.message
    # A hand edit (what a reload reads) is refused at the line of the stripe record's key.
    text = HAND_WRITTEN.replace('secret_ref = "env:STRIPE_SECRET"\n',
                                'secret_ref = "env:STRIPE_SECRET"\nreplay_window_s = 300\n')
    with pytest.raises(RegistryError) as info:
        parse_registry(text, Path("webhooks.toml"))
    assert info.value.line is not None
    assert text.splitlines()[info.value.line - 1] == "replay_window_s = 300"


def test_update_with_none_removes_a_key() -> None:
    out = _doc_edit(
        HAND_WRITTEN, lambda doc: update_integration(doc, "stripe", {"secret_ref": None}, LATER)
    )
    assert 'secret_ref = "env:STRIPE_SECRET"' not in out
    assert "provider = \"stripe\"          # key order is ours\n" in out
    assert parse_registry(out, Path("w")).integrations["stripe"].secret_ref is None


def test_update_refuses_unknown_ids_bad_values_and_renames() -> None:
    doc = tomlkit.parse(HAND_WRITTEN)
    with pytest.raises(KeyError):
        update_integration(doc, "nope", {"enabled": False}, LATER)
    with pytest.raises(RegistryError) as info:
        update_integration(doc, "gh", {"replay_window_s": 10}, LATER)
    assert info.value.field == "replay_window_s"
    with pytest.raises(RegistryError) as info:
        update_integration(doc, "gh", {"integration_id": "other"}, LATER)
    assert info.value.field == "integration_id"
    with pytest.raises(RegistryError) as info:
        update_integration(doc, "gh", {"max_payload_byte": 1}, LATER)
    assert "did you mean 'max_payload_bytes'" in str(info.value)
    assert doc.as_string() == HAND_WRITTEN


def test_remove_takes_its_own_comment_and_keeps_the_others() -> None:
    out = _doc_edit(HAND_WRITTEN, lambda doc: remove_integration(doc, "stripe"))
    assert out == HAND_WRITTEN.replace(
        "# Stripe production account\n"
        "[[webhooks]]\n"
        'provider = "stripe"          # key order is ours\n'
        'integration_id = "stripe"\n'
        'secret_ref = "env:STRIPE_SECRET"\n'
        "\n",
        "",
    )


def test_remove_first_and_last() -> None:
    first = _doc_edit(HAND_WRITTEN, lambda doc: remove_integration(doc, "gh"))
    assert "# GitHub org hooks" not in first
    assert first.startswith("# Our webhooks. Ask #infra before changing.\nversion = 1\n\n")
    assert "# Stripe production account\n[[webhooks]]\n" in first
    assert "# Slack workspace\n[[webhooks]]\n" in first

    last = _doc_edit(HAND_WRITTEN, lambda doc: remove_integration(doc, "slack"))
    assert "# Slack workspace" not in last
    assert "# GitHub org hooks" in last
    assert "# Stripe production account" in last

    everything = tomlkit.parse(HAND_WRITTEN)
    for integration_id in ("slack", "gh", "stripe"):
        remove_integration(everything, integration_id)
    text = everything.as_string()
    assert text.startswith("# Our webhooks. Ask #infra before changing.\nversion = 1\n")
    assert "webhooks" not in tomlkit.parse(text)
    with pytest.raises(KeyError):
        remove_integration(everything, "gh")


def test_remove_keeps_a_comment_that_introduces_the_next_record() -> None:
    text = (
        "version = 1\n\n"
        '[[webhooks]]\nintegration_id = "a"\nprovider = "github"\n\n'
        '[[webhooks]]\nintegration_id = "b"\nprovider = "github"\n\n'
        "# C belongs to the payments team\n"
        '[[webhooks]]\nintegration_id = "c"\nprovider = "stripe"\n'
    )
    out = _doc_edit(text, lambda doc: remove_integration(doc, "b"))
    assert out == (
        "version = 1\n\n"
        '[[webhooks]]\nintegration_id = "a"\nprovider = "github"\n\n'
        "# C belongs to the payments team\n"
        '[[webhooks]]\nintegration_id = "c"\nprovider = "stripe"\n'
    )


def test_records_written_as_an_inline_array_can_be_edited() -> None:
    text = 'version = 1\nwebhooks = [{integration_id = "a", provider = "github"}]\n'
    out = _doc_edit(text, lambda doc: add_integration(doc, {"integration_id": "b",
                                                            "provider": "slack"}, NOW))
    out = _doc_edit(out, lambda doc: update_integration(doc, "a", {"enabled": False}, NOW))
    out = _doc_edit(out, lambda doc: remove_integration(doc, "b"))
    integrations = parse_registry(out, Path("w")).integrations
    assert list(integrations) == ["a"]
    assert integrations["a"].enabled is False


# -- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("integration_id", "has space", "1 to 64 characters of a-z 0-9 . _ -"),
        ("integration_id", "x" * 65, "1 to 64 characters"),
        ("integration_id", "..", "1 to 64 characters"),
        ("provider", "bitbucket", "must be one of generic, github"),
        ("display_name", "é" * 65, "at most 128 bytes"),
        ("display_name", "bell\x07", "control characters"),
        ("secret_ref", "whsec_abc", "keyring:NAME, env:VAR or file:/absolute/path"),
        ("secret_ref", "file:relative", "absolute path"),
        ("allowed_events", "push", "must be an array"),
        ("allowed_events", ["push", ""], "event type or glob pattern"),
        ("allowed_events", ["x" * 129], "1 to 128 bytes"),
        ("allowed_sources", ["10.0.0.300"], "IP address or CIDR network"),
        ("allowed_sources", [167772161], "IP address or CIDR network"),
        ("enabled", "yes", "must be true or false"),
        ("signature_required", 1, "must be true or false"),
        ("max_payload_bytes", 0, "must be an integer from 1 to 33554432, got 0"),
        ("max_payload_bytes", 32 * 1024 * 1024 + 1, "from 1 to 33554432"),
        ("max_payload_bytes", True, "must be an integer"),
        ("timestamp_tolerance_s", 86401, "from 1 to 86400"),
        ("replay_window_s", 59, "from 60 to 7776000"),
        ("replay_window_s", 90 * 86400 + 1, "from 60 to 7776000"),
        ("provider_options", "header=X", "table of provider options"),
        ("last_test_at", "yesterday", "RFC 3339 date-time"),
        ("last_test_at", datetime(2025, 1, 1), "has no offset"),
        ("last_test_status", "Not OK!", "a-z 0-9 _"),
        ("last_test_message", "x" * 1025, "at most 1024 bytes"),
    ],
)
def test_add_errors_name_the_field_and_what_is_allowed(
    field: str, value: Any, fragment: str
) -> None:
    doc = tomlkit.parse("version = 1\n")
    fields = {"integration_id": "gh", "provider": "github", field: value}
    with pytest.raises(RegistryError) as info:
        add_integration(doc, fields, NOW)
    error = info.value
    # A bad list entry is named with its index: allowed_events[1].
    assert error.field is not None
    assert error.field == field or error.field.startswith(f"{field}[")
    assert str(error).startswith(f"{error.field}: ")
    assert fragment in str(error)
    assert doc.as_string() == "version = 1\n"


def test_required_fields_and_rotation_pairs() -> None:
    with pytest.raises(RegistryError) as info:
        validate_integration_fields({"integration_id": "gh"})
    assert info.value.field == "provider"
    with pytest.raises(RegistryError) as info:
        validate_integration_fields(
            {"integration_id": "gh", "provider": "github", "previous_secret_ref": "env:OLD"}
        )
    assert info.value.field == "previous_valid_until"
    ok = validate_integration_fields(
        {
            "integration_id": "gh",
            "provider": "github",
            "previous_secret_ref": "env:OLD",
            "previous_valid_until": "2025-03-02T00:00:00+02:00",
        }
    )
    assert ok["previous_valid_until"] == datetime(2025, 3, 1, 22, 0, tzinfo=UTC)


def test_provider_options_are_checked_by_the_provider() -> None:
    with pytest.raises(RegistryError) as info:
        validate_integration_fields(
            {"integration_id": "ci", "provider": "generic", "provider_options": {"hdr": "X"}}
        )
    assert info.value.field == "provider_options"
    with pytest.raises(RegistryError) as info:
        validate_integration_fields(
            {"integration_id": "s", "provider": "stripe", "provider_options": {"x": 1}}
        )
    assert info.value.field == "provider_options"


def test_normalisation() -> None:
    assert normalize_id("  GitHub-Org.1_x ") == "github-org.1_x"
    norm = validate_integration_fields(
        {
            "integration_id": " GH ",
            "provider": " GitHub ",
            "display_name": "  Org hooks ",
            "allowed_events": [" push ", "issues.*", "push", "Push Hook"],
            "allowed_sources": ["10.1.2.3/8", "2001:DB8::1", "10.0.0.0/8"],
        }
    )
    assert norm["integration_id"] == "gh"
    assert norm["provider"] == "github"
    assert norm["display_name"] == "Org hooks"
    assert norm["allowed_events"] == ("push", "issues.*", "Push Hook")
    assert norm["allowed_sources"] == ("10.0.0.0/8", "2001:db8::1/128")


def test_allowed_events_limit_counts_distinct_patterns() -> None:
    base = {"integration_id": "gh", "provider": "github"}
    sixty_four = [f"e{i}" for i in range(MAX_ALLOWED_EVENTS)]
    with_duplicate = validate_integration_fields({**base, "allowed_events": [*sixty_four, "e0"]})
    assert with_duplicate["allowed_events"] == tuple(sixty_four)
    with pytest.raises(RegistryError) as info:
        validate_integration_fields({**base, "allowed_events": [*sixty_four, "e64"]})
    assert info.value.field == "allowed_events"
    assert "at most 64 distinct entries, got 65" in str(info.value)


def test_to_dict_is_json_ready() -> None:
    integration = Integration(
        **validate_integration_fields(
            {
                "integration_id": "gh",
                "provider": "github",
                "allowed_events": ["push"],
                "provider_options": {"allow_sha1": True},
                "created_at": datetime(2025, 1, 1, 9, 0, tzinfo=timezone(timedelta(hours=2))),
                "last_test_at": "2025-01-01T07:00:00.250Z",
            }
        )
    )
    data = integration.to_dict()
    assert data["created_at"] == "2025-01-01T07:00:00Z"
    assert data["last_test_at"] == "2025-01-01T07:00:00.250000Z"
    assert data["allowed_events"] == ["push"]
    assert data["allowed_sources"] == []
    assert data["provider_options"] == {"allow_sha1": True}
    assert data["secret_ref"] is None
    assert json.loads(json.dumps(data)) == data
    assert Integration(**validate_integration_fields(data)) == integration


# -- parsing and error positions ---------------------------------------------------------


def test_syntax_error_carries_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.toml"
    text = 'version = 1\n\n[[webhooks]]\nintegration_id = "gh\nprovider = "github"\n'
    with pytest.raises(RegistryError) as info:
        parse_registry(text, path)
    error = info.value
    assert (error.line, error.col) == (4, 21)
    assert error.location == f"{path}:4:21"
    assert str(error).startswith(f"{path}:4:21: TOML syntax error")


def test_semantic_error_carries_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.toml"
    text = (
        "version = 1\n\n"
        '[[webhooks]]\nintegration_id = "a"\nprovider = "github"\n\n'
        '[[webhooks]]\nintegration_id = "b"\nprovider = "github"\n\n'
        '[[webhooks]]\nintegration_id = "c"\nprovider = "github"\n'
        "  max_payload_bytes = 0\n"
    )
    with pytest.raises(RegistryError) as info:
        parse_registry(text, path)
    error = info.value
    assert error.field == "webhooks[2].max_payload_bytes"
    assert str(error) == (
        f"{path}:14:3: webhooks[2].max_payload_bytes: must be an integer from 1 to 33554432,"
        " got 0"
    )


def test_positions_skip_multiline_strings_and_find_sub_tables(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.toml"
    text = (
        '[[webhooks]]\nintegration_id = "a"\nprovider = "github"\n'
        'last_test_message = """\n[[webhooks]]\nmax_payload_bytes = 0\n"""\n\n'
        '[[webhooks]]\nintegration_id = "b"\nprovider = "generic"\n'
        "[webhooks.provider_options]\nalgorithm = \"md5\"\n"
    )
    with pytest.raises(RegistryError) as info:
        parse_registry(text, path)
    assert info.value.field == "webhooks[1].provider_options"
    assert (info.value.line, info.value.col) == (12, 1)


@pytest.mark.parametrize(
    ("text", "field", "line", "fragment"),
    [
        ("version = 2\n", "version", 1, "must be 1"),
        ("version = 1\n[webhook]\nx = 1\n", "webhook", 2, "did you mean 'webhooks'"),
        ("version = 1\nwebhooks = 3\n", "webhooks", 2, "[[webhooks]]"),
        ('[[webhooks]]\nprovider = "github"\n', "webhooks[0].integration_id", 1, "required"),
        (
            '\n[[webhooks]]\nintegration_id = "a"\nprovider = "github"\nmax_payload_byte = 1\n',
            "webhooks[0].max_payload_byte",
            5,
            "did you mean 'max_payload_bytes'",
        ),
        (
            '[[webhooks]]\nintegration_id = "a"\nprovider = "github"\n'
            '[[webhooks]]\nintegration_id = " A"\nprovider = "slack"\n',
            "webhooks[1].integration_id",
            5,
            "duplicate id 'a' (already used by webhooks[0])",
        ),
        (
            '[[webhooks]]\nintegration_id = "a"\nprovider = "github"\n'
            "allowed_sources = [\n  \"10.0.0.0/8\",\n  \"nope\",\n]\n",
            "webhooks[0].allowed_sources[1]",
            4,
            "got 'nope'",
        ),
        (
            '[[webhooks]]\nintegration_id = "a"\nprovider = "github"\n'
            "created_at = 2025-01-01T00:00:00\n",
            "webhooks[0].created_at",
            4,
            "has no offset",
        ),
    ],
)
def test_semantic_errors(text: str, field: str, line: int, fragment: str) -> None:
    with pytest.raises(RegistryError) as info:
        parse_registry(text, Path("w.toml"))
    assert info.value.field == field
    assert info.value.line == line
    assert fragment in str(info.value)


def test_version_defaults_to_1_and_subscriptions_are_validated() -> None:
    # [[subscriptions]] used to be ignored; it is now checked like [[webhooks]].
    text = '[[webhooks]]\nintegration_id = "a"\nprovider = "github"\n[[subscriptions]]\nx = 1\n'
    with pytest.raises(RegistryError) as info:
        parse_registry(text, Path("w"))
    assert info.value.field == "subscriptions[0].x"
    assert info.value.line == 5
    text = text.replace("x = 1", 'subscription_id = "s"\nurl = "https://example.com/hook"')
    registry = parse_registry(text, Path("w"))
    assert list(registry.integrations) == ["a"]
    assert list(registry.subscriptions) == ["s"]
    assert parse_registry("", Path("w")).integrations == {}


def test_rfc3339_strings_are_accepted_for_datetimes() -> None:
    text = (
        '[[webhooks]]\nintegration_id = "a"\nprovider = "github"\n'
        'created_at = "2025-01-01T10:00:00+01:00"\n'
    )
    integration = parse_registry(text, Path("w")).integrations["a"]
    assert integration.created_at == datetime(2025, 1, 1, 9, 0, tzinfo=UTC)


def test_more_than_1024_integrations_is_refused() -> None:
    records = "".join(
        f'[[webhooks]]\nintegration_id = "i{n}"\nprovider = "github"\n'
        for n in range(MAX_INTEGRATIONS + 1)
    )
    with pytest.raises(RegistryError) as info:
        parse_registry(records, Path("w"))
    assert "at most 1024 integrations" in str(info.value)
    assert info.value.line == 3 * MAX_INTEGRATIONS + 1

    full = records.rsplit("[[webhooks]]", 1)[0]
    doc = tomlkit.parse(full)
    assert len(parse_registry(full, Path("w")).integrations) == MAX_INTEGRATIONS
    with pytest.raises(RegistryError) as info:
        add_integration(doc, {"integration_id": "one-more", "provider": "github"}, NOW)
    assert "at most 1024" in str(info.value)


def test_duplicate_ids_are_refused_on_add() -> None:
    doc = tomlkit.parse(HAND_WRITTEN)
    with pytest.raises(RegistryError) as info:
        add_integration(doc, {"integration_id": " GH", "provider": "github"}, NOW)
    assert info.value.field == "integration_id"
    assert "already exists" in str(info.value)


def test_example_file_parses_with_one_integration_per_provider() -> None:
    path = REPO / "webhooks.example.toml"
    registry = parse_registry(path.read_text(encoding="utf-8"), path)
    providers = sorted(i.provider for i in registry.integrations.values())
    assert providers == sorted(
        ["generic", "github", "gitlab", "palyra", "shopify", "slack", "slack", "standard-webhooks",
         "stripe"]
    )
    # Every field appears in the example at least once.
    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    shown = {key for record in doc["webhooks"] for key in record}
    assert shown == set(Integration.__dataclass_fields__)


def test_fuzz_seeds_replay() -> None:
    target = REPO / "fuzz" / "fuzz_registry.py"
    spec = importlib.util.spec_from_file_location("fuzz_registry", target)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seeds = sorted((REPO / "fuzz" / "corpus" / "registry").iterdir())
    assert seeds
    for seed in seeds:
        module.test_one_input(seed.read_bytes())


# -- the file ----------------------------------------------------------------------------


def _add(integration_id: str) -> Any:
    return lambda doc: add_integration(
        doc, {"integration_id": integration_id, "provider": "github"}, NOW
    )


def test_missing_file_is_an_empty_registry_and_edit_creates_it(tmp_path: Path) -> None:
    path = tmp_path / "state" / "webhooks.toml"
    registry_file = RegistryFile(path)
    assert registry_file.load().integrations == {}
    registry = registry_file.edit(_add("gh"))
    assert list(registry.integrations) == ["gh"]
    assert registry_file.load() == registry
    assert path.read_text().startswith("# palyra-py webhook registry.")


def test_write_is_private_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.toml"
    path.write_text(HAND_WRITTEN)
    path.chmod(0o644)
    RegistryFile(path).edit(_add("new"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "webhooks.toml.lock").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["webhooks.toml", "webhooks.toml.lock"]


def test_an_edit_that_breaks_the_registry_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.toml"
    path.write_text(HAND_WRITTEN)
    before = path.read_bytes()
    inode = path.stat().st_ino

    def break_it(doc: tomlkit.TOMLDocument) -> None:
        doc["webhooks"][0]["max_payload_bytes"] = 0

    with pytest.raises(RegistryError) as info:
        RegistryFile(path).edit(break_it)
    assert info.value.field == "webhooks[0].max_payload_bytes"
    assert info.value.line is None  # the broken text was never written, so no position

    def fail(doc: tomlkit.TOMLDocument) -> None:
        doc["version"] = 7
        raise RuntimeError("change failed half-way")

    with pytest.raises(RuntimeError):
        RegistryFile(path).edit(fail)
    assert path.read_bytes() == before
    assert path.stat().st_ino == inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["webhooks.toml", "webhooks.toml.lock"]

    missing = tmp_path / "new" / "webhooks.toml"
    with pytest.raises(RegistryError):
        RegistryFile(missing).edit(lambda doc: doc.__setitem__("version", 2))
    assert not missing.exists()


def test_an_error_already_on_disk_is_reported_where_it_is(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.toml"
    broken = HAND_WRITTEN.replace('provider = "slack"', 'provider = "slak"')
    path.write_text(broken)
    with pytest.raises(RegistryError) as info:
        RegistryFile(path).edit(_add("new"))
    assert info.value.field == "webhooks[2].provider"
    assert info.value.line == 24
    assert path.read_text() == broken
    # A change that repairs the file is accepted.
    RegistryFile(path).edit(lambda doc: remove_integration(doc, "slack"))
    assert "slak" not in path.read_text()


def test_not_utf8_is_an_error_with_a_position(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.toml"
    path.write_bytes(b'version = 1\n# caf\xe9\n')
    with pytest.raises(RegistryError) as info:
        RegistryFile(path).load()
    assert (info.value.line, info.value.col) == (2, 6)


@pytest.mark.parametrize("shared", [True, False], ids=["one-instance", "one-per-thread"])
def test_concurrent_edits_from_threads_all_land(tmp_path: Path, shared: bool) -> None:
    path = tmp_path / "webhooks.toml"
    path.write_text(HAND_WRITTEN)
    common = RegistryFile(path)
    start = threading.Barrier(20)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            start.wait()
            (common if shared else RegistryFile(path)).edit(_add(f"t{n}"))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    integrations = RegistryFile(path).load().integrations
    assert sorted(integrations) == sorted(["gh", "stripe", "slack"] + [f"t{n}" for n in range(20)])
    assert path.read_text().startswith(HAND_WRITTEN)


ADD_FROM_ANOTHER_PROCESS = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from palyra_py.registry.file import RegistryFile
from palyra_py.registry.integrations import add_integration
path, integration_id = Path(sys.argv[1]), sys.argv[2]
sys.stdin.read()  # wait for the go signal so that all processes start together
RegistryFile(path).edit(lambda doc: add_integration(
    doc, {"integration_id": integration_id, "provider": "github"}, datetime.now(UTC)))
"""


@pytest.mark.slow
def test_concurrent_edits_from_processes_all_land(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.toml"
    path.write_text(HAND_WRITTEN)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ADD_FROM_ANOTHER_PROCESS, str(path), f"p{n}"],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for n in range(20)
    ]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
    for proc in procs:
        assert proc.stderr is not None
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
        proc.stderr.close()
    integrations = RegistryFile(path).load().integrations
    assert sorted(integrations) == sorted(["gh", "stripe", "slack"] + [f"p{n}" for n in range(20)])
    assert len(integrations) == 23


# -- round trip --------------------------------------------------------------------------

_TEXT = st.characters(blacklist_categories=("Cc", "Cs"))
_IDS = st.from_regex(r"[a-z0-9_-][a-z0-9._-]{0,63}", fullmatch=True)
_REFS = st.one_of(
    st.from_regex(r"keyring:[A-Za-z0-9._:/-]{1,128}", fullmatch=True),
    st.from_regex(r"env:[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True),
    st.from_regex(r"file:/[a-z0-9/._-]{1,40}", fullmatch=True),
)
_DATES = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
)
_SOURCES = st.one_of(
    st.ip_addresses().map(str),
    st.tuples(st.ip_addresses(v=4), st.integers(0, 32)).map(lambda t: f"{t[0]}/{t[1]}"),
    st.tuples(st.ip_addresses(v=6), st.integers(0, 128)).map(lambda t: f"{t[0]}/{t[1]}"),
)
_PROVIDER_AND_OPTIONS: st.SearchStrategy[tuple[str, dict[str, Any]]] = st.one_of(
    st.tuples(
        st.sampled_from(["gitlab", "palyra", "shopify", "slack", "standard-webhooks", "stripe"]),
        st.just({}),
    ),
    st.tuples(st.just("github"), st.fixed_dictionaries({}, optional={"allow_sha1": st.booleans()})),
    st.tuples(
        st.just("generic"),
        st.fixed_dictionaries(
            {},
            optional={
                "header": st.just("X-Sig"),
                "algorithm": st.sampled_from(["sha1", "sha256", "sha512"]),
                "encoding": st.sampled_from(["hex", "base64"]),
                "prefix": st.sampled_from(["", "sha256="]),
            },
        ),
    ),
)


@st.composite
def integration_fields(draw: st.DrawFn) -> dict[str, Any]:
    provider, options = draw(_PROVIDER_AND_OPTIONS)
    fields: dict[str, Any] = {
        "integration_id": draw(_IDS.filter(lambda s: s not in (".", ".."))),
        "provider": provider,
    }
    optional: dict[str, st.SearchStrategy[Any]] = {
        "display_name": st.text(_TEXT, max_size=30),
        "secret_ref": _REFS,
        "allowed_events": st.lists(st.text(_TEXT, min_size=1, max_size=20).filter(str.strip),
                                   max_size=8),
        "allowed_sources": st.lists(_SOURCES, max_size=5),
        "enabled": st.booleans(),
        "signature_required": st.booleans(),
        "max_payload_bytes": st.integers(1, 32 * 1024 * 1024),
        "timestamp_tolerance_s": st.integers(1, 86400),
        "replay_window_s": st.integers(60, 90 * 86400),
        "last_test_status": st.from_regex(r"[a-z0-9_]{1,20}", fullmatch=True),
        "last_test_at": _DATES,
        "last_test_message": st.text(st.one_of(_TEXT, st.sampled_from("\n\t")), max_size=60),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            fields[key] = draw(strategy)
    tolerance = fields.get("timestamp_tolerance_s", 300)
    if fields.get("replay_window_s", 7 * 86400) <= 2 * tolerance:  # refused when timestamped
        fields["replay_window_s"] = 2 * tolerance + 1
    if options or draw(st.booleans()):
        fields["provider_options"] = options
    if draw(st.booleans()):
        fields["previous_secret_ref"] = draw(_REFS)
        fields["previous_valid_until"] = draw(_DATES)
    return fields


@settings(max_examples=150, deadline=None)
@given(fields=integration_fields(), now=_DATES)
def test_add_then_parse_gives_back_the_same_integration(
    fields: dict[str, Any], now: datetime
) -> None:
    expected = Integration(
        **{**validate_integration_fields(fields), "created_at": now, "updated_at": now}
    )
    doc = tomlkit.parse(HAND_WRITTEN)
    add_integration(doc, fields, now)
    text = doc.as_string()
    assert text.startswith(HAND_WRITTEN)
    parsed = parse_registry(text, Path("w")).integrations[expected.integration_id]
    assert parsed == expected
    # And through JSON, as the admin API hands it around.
    data = json.loads(json.dumps(parsed.to_dict()))
    assert Integration(**validate_integration_fields(data)) == expected
