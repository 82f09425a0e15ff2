"""Integrations: the ``[[webhooks]]`` records of ``webhooks.toml``.

The model the ingress reads, the field rules (each error names the field,
``webhooks[2].max_payload_bytes`` when read from the file, and says what is allowed),
parsing (called by ``registry.document.parse_registry``) and the comment-preserving edits
the admin API applies through ``RegistryFile.edit``. The field checks shared with the
other record kinds are in ``registry.fields``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import tomlkit

from palyra_py.providers import PROVIDER_NAMES, get_provider
from palyra_py.registry.edit import RecordKind, add_record, remove_record, update_record
from palyra_py.registry.fields import (
    CONTROL_CHARS,
    Check,
    check_bool,
    check_datetime,
    check_record,
    check_rotation_pair,
    check_secret_ref,
    collect_records,
    fail,
    int_range,
    jsonable,
    normalize_id,
    plain,
    record_defaults,
    show,
)

MAX_INTEGRATIONS = 1024
MAX_ALLOWED_EVENTS = 64
MAX_ALLOWED_SOURCES = 64
MAX_PATTERN_BYTES = 128
MAX_DISPLAY_NAME_BYTES = 128
MAX_TEST_MESSAGE_BYTES = 1024
MAX_PROVIDER_OPTIONS = 64
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_MAX_PAYLOAD_BYTES = 32 * 1024 * 1024
DEFAULT_TIMESTAMP_TOLERANCE_S = 300
MAX_TIMESTAMP_TOLERANCE_S = 24 * 3600
DEFAULT_REPLAY_WINDOW_S = 7 * 24 * 3600
MIN_REPLAY_WINDOW_S = 60
MAX_REPLAY_WINDOW_S = 90 * 24 * 3600
MAX_RESPONSE_BODY_BYTES = 64 * 1024
MAX_CONTENT_TYPE_BYTES = 128
DEFAULT_RESPONSE_CONTENT_TYPE = "text/plain; charset=utf-8"
MAX_RESPONSE_ARGS = 64
MAX_RESPONSE_ARG_BYTES = 4096
DEFAULT_RESPONSE_TIMEOUT_S = 2.5
MAX_RESPONSE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Integration:
    """One integration as the registry holds it: every field checked and normalised
    (:func:`validate_integration_fields`), datetimes in UTC, absent fields at their
    defaults. The ingress serves it at ``POST /hooks/<integration_id>``."""

    integration_id: str
    provider: str
    display_name: str = ""
    secret_ref: str | None = None
    previous_secret_ref: str | None = None
    previous_valid_until: datetime | None = None
    allowed_events: tuple[str, ...] = ()
    allowed_sources: tuple[str, ...] = ()
    enabled: bool = True
    signature_required: bool = True
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    timestamp_tolerance_s: int = DEFAULT_TIMESTAMP_TOLERANCE_S
    replay_window_s: int = DEFAULT_REPLAY_WINDOW_S
    provider_options: Mapping[str, Any] = field(default_factory=dict)
    # The answer to the sender (docs/replies.md): a static ``{status, body, content_type}``
    # and/or a command whose stdout is the answer; the static one is then the fallback.
    response: Mapping[str, Any] | None = None
    response_command: tuple[str, ...] = ()
    response_timeout_s: float = DEFAULT_RESPONSE_TIMEOUT_S
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_test_status: str | None = None
    last_test_at: datetime | None = None
    last_test_message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (datetimes as RFC 3339 strings, tuples as lists)."""
        return {name: jsonable(getattr(self, name)) for name in FIELDS}


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Integration))
DEFAULTS: dict[str, Any] = record_defaults(Integration)
# A new record always shows these, even at their defaults, so that a person reading the
# file sees what matters; everything else is written only when it differs from the default.
ALWAYS_WRITTEN = frozenset(
    {"integration_id", "provider", "display_name", "secret_ref", "enabled", "created_at",
     "updated_at"}
)  # fmt: skip


# ---------------------------------------------------------------------------------------
# Field checks: (value, field name) -> normalised value, or RegistryError naming the field.


_CONTROL_BUT_NEWLINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_STATUS = re.compile(r"[a-z0-9_]{1,64}")


def _check_provider(value: Any, name: str) -> str:
    norm = value.strip().lower() if isinstance(value, str) else None
    if norm not in PROVIDER_NAMES:
        raise fail(name, f"must be one of {', '.join(PROVIDER_NAMES)}, got {show(value)}")
    return norm


def _check_display_name(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise fail(name, f"must be a string, got {show(value)}")
    norm = value.strip()
    if len(norm.encode("utf-8", "surrogatepass")) > MAX_DISPLAY_NAME_BYTES:
        raise fail(name, f"must be at most {MAX_DISPLAY_NAME_BYTES} bytes of UTF-8")
    if CONTROL_CHARS.search(norm):
        raise fail(name, "must not contain control characters")
    return norm


def _check_list(
    value: Any, name: str, limit: int, item: Callable[[Any, str], str]
) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise fail(name, f"must be an array (empty = allow all), got {show(value)}")
    seen: dict[str, None] = {}
    for index, entry in enumerate(value):
        seen.setdefault(item(entry, f"{name}[{index}]"), None)
    if len(seen) > limit:
        raise fail(name, f"must have at most {limit} distinct entries, got {len(seen)}")
    return tuple(seen)


def _check_event_pattern(value: Any, name: str) -> str:
    # Spaces are allowed inside: GitLab's event types are "Push Hook", "Merge Request Hook".
    rule = (
        f"must be an event type or glob pattern (1 to {MAX_PATTERN_BYTES} bytes, no control"
        " characters)"
    )
    if not isinstance(value, str):
        raise fail(name, f"{rule}, got {show(value)}")
    norm = value.strip()
    size = len(norm.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= MAX_PATTERN_BYTES or CONTROL_CHARS.search(norm):
        raise fail(name, f"{rule}, got {show(value)}")
    return norm


def _check_source(value: Any, name: str) -> str:
    rule = "must be an IP address or CIDR network such as 192.0.2.0/24 or 2001:db8::/32"
    if not isinstance(value, str):
        raise fail(name, f"{rule}, got {show(value)}")
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise fail(name, f"{rule}, got {show(value)}") from None


def _check_events(value: Any, name: str) -> tuple[str, ...]:
    return _check_list(value, name, MAX_ALLOWED_EVENTS, _check_event_pattern)


def _check_sources(value: Any, name: str) -> tuple[str, ...]:
    return _check_list(value, name, MAX_ALLOWED_SOURCES, _check_source)


def _check_options(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise fail(name, f"must be a table of provider options, got {show(value)}")
    if len(value) > MAX_PROVIDER_OPTIONS:
        raise fail(name, f"must have at most {MAX_PROVIDER_OPTIONS} options")
    options: dict[str, Any] = plain(value)
    return options


def _check_status(value: Any, name: str) -> str:
    norm = value.strip().lower() if isinstance(value, str) else None
    if norm is None or not _STATUS.fullmatch(norm):
        raise fail(name, f"must be a word of a-z 0-9 _ (e.g. accepted), got {show(value)}")
    return norm


def _check_message(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise fail(name, f"must be a string, got {show(value)}")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_TEST_MESSAGE_BYTES:
        raise fail(name, f"must be at most {MAX_TEST_MESSAGE_BYTES} bytes of UTF-8")
    if _CONTROL_BUT_NEWLINES.search(value):
        raise fail(name, "must not contain control characters other than tab and newline")
    return value


_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;[ -~]*)?")


def _check_response(value: Any, name: str) -> dict[str, Any]:
    """``{status, body, content_type}``: status 200 to 299 only (a sender treats anything
    else as a failed delivery and sends it again), body a string of at most 64 KiB."""
    if not isinstance(value, Mapping):
        raise fail(name, f"must be a table {{status, body, content_type}}, got {show(value)}")
    unknown = sorted(set(value) - {"status", "body", "content_type"})
    if unknown:
        raise fail(f"{name}.{unknown[0]}", "unknown key; allowed: status, body, content_type")
    status = value.get("status", 200)
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 299:
        raise fail(f"{name}.status",
                   f"must be an integer from 200 to 299 (a sender retries any other status),"
                   f" got {show(status)}")
    body = value.get("body", "")
    if not isinstance(body, str):
        raise fail(f"{name}.body", f"must be a string, got {show(body)}")
    if len(body.encode("utf-8", "surrogatepass")) > MAX_RESPONSE_BODY_BYTES:
        raise fail(f"{name}.body", f"must be at most {MAX_RESPONSE_BODY_BYTES} bytes of UTF-8")
    ctype = value.get("content_type", DEFAULT_RESPONSE_CONTENT_TYPE)
    if (not isinstance(ctype, str) or len(ctype) > MAX_CONTENT_TYPE_BYTES
            or not _MEDIA_TYPE.fullmatch(ctype.strip())):
        raise fail(f"{name}.content_type",
                   f"must be a media type such as application/json (at most"
                   f" {MAX_CONTENT_TYPE_BYTES} characters), got {show(ctype)}")
    return {"status": int(status), "body": body, "content_type": ctype.strip()}


def _check_command(value: Any, name: str) -> tuple[str, ...]:
    """An argv list (never a shell): up to 64 strings, the first not empty, no NUL; an
    empty list is no command."""
    rule = "must be an argv array such as [\"/usr/local/bin/reply\", \"--json\"] (never a shell)"
    if not isinstance(value, (list, tuple)):
        raise fail(name, f"{rule}, got {show(value)}")
    if not value:
        return ()
    if len(value) > MAX_RESPONSE_ARGS:
        raise fail(name, f"must have at most {MAX_RESPONSE_ARGS} entries")
    for index, arg in enumerate(value):
        if not isinstance(arg, str):
            raise fail(f"{name}[{index}]", f"must be a string, got {show(arg)}")
        if "\x00" in arg or len(arg.encode("utf-8", "surrogatepass")) > MAX_RESPONSE_ARG_BYTES:
            raise fail(f"{name}[{index}]",
                       f"must be at most {MAX_RESPONSE_ARG_BYTES} bytes, without NUL")
    if not value[0].strip():
        raise fail(f"{name}[0]", "must name the program to run")
    return tuple(value)


def _check_timeout(value: Any, name: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not 0 < value <= MAX_RESPONSE_TIMEOUT_S:
        raise fail(name, f"must be a number of seconds above 0 and at most"
                         f" {MAX_RESPONSE_TIMEOUT_S:g} (Slack waits 3), got {show(value)}")
    return float(value)


CHECKS: dict[str, Check] = {
    "integration_id": lambda value, name: normalize_id(value, field=name),
    "provider": _check_provider,
    "display_name": _check_display_name,
    "secret_ref": check_secret_ref,
    "previous_secret_ref": check_secret_ref,
    "previous_valid_until": check_datetime,
    "allowed_events": _check_events,
    "allowed_sources": _check_sources,
    "enabled": check_bool,
    "signature_required": check_bool,
    "max_payload_bytes": int_range(1, MAX_MAX_PAYLOAD_BYTES),
    "timestamp_tolerance_s": int_range(1, MAX_TIMESTAMP_TOLERANCE_S),
    "replay_window_s": int_range(MIN_REPLAY_WINDOW_S, MAX_REPLAY_WINDOW_S),
    "provider_options": _check_options,
    "response": _check_response,
    "response_command": _check_command,
    "response_timeout_s": _check_timeout,
    "created_at": check_datetime,
    "updated_at": check_datetime,
    "last_test_status": _check_status,
    "last_test_at": check_datetime,
    "last_test_message": _check_message,
}
assert set(CHECKS) == set(FIELDS)


def validate_integration_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise and check a dict of integration fields (as given by the admin API or read
    from TOML); return the normalised dict; raise ``RegistryError`` naming the field.

    ``integration_id`` and ``provider`` are required; a ``None`` value counts as absent, and
    absent keys are absent from the result (``Integration(**result)`` fills the defaults).
    """
    return _validate(fields, "")


def check_replay_window(out: Mapping[str, Any], prefix: str) -> None:
    """For a scheme that signs a timestamp: ``replay_window_s`` more than twice
    ``timestamp_tolerance_s``. A signed timestamp is accepted from ``tolerance`` before it
    to ``tolerance`` after it; a replay key that expired sooner would let the same captured
    request in again while its timestamp still passes."""
    window = out.get("replay_window_s", DEFAULT_REPLAY_WINDOW_S)
    tolerance = out.get("timestamp_tolerance_s", DEFAULT_TIMESTAMP_TOLERANCE_S)
    if window <= 2 * tolerance:
        raise fail(
            f"{prefix}replay_window_s",
            f"must be more than twice timestamp_tolerance_s for a {out['provider']} scheme"
            f" (replay_window_s = {window}, timestamp_tolerance_s = {tolerance}, so at least"
            f" {2 * tolerance + 1}): a signed timestamp is accepted for timestamp_tolerance_s"
            " either side of now, and a captured request would be accepted again once its"
            " replay key expired",
        )


def _validate(fields: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out = check_record(fields, prefix, CHECKS, ("integration_id", "provider"))
    check_rotation_pair(out, prefix)
    try:
        provider = get_provider(out["provider"], out.get("provider_options") or None)
    except Exception as exc:
        # Any failure to build the provider means these options cannot work.
        raise fail(f"{prefix}provider_options", str(exc)) from None
    if provider.timestamped:
        check_replay_window(out, prefix)
    return out


def parse_integrations(data: Mapping[str, Any]) -> dict[str, Integration]:
    """The ``[[webhooks]]`` of parsed registry TOML by id, in file order: at most 1024, ids
    unique. Field names in errors are ``webhooks[i].key``."""
    records = collect_records(
        data, "webhooks", "integration_id", MAX_INTEGRATIONS, "integrations", _validate
    )
    return {key: Integration(**norm) for key, norm in records.items()}


# ---------------------------------------------------------------------------------------
# Edits of the tomlkit document (run them through RegistryFile.edit).


INTEGRATIONS = RecordKind(
    "webhooks", "integration_id", "integration", MAX_INTEGRATIONS, FIELDS, DEFAULTS,
    ALWAYS_WRITTEN, validate_integration_fields,
)  # fmt: skip


def add_integration(doc: tomlkit.TOMLDocument, fields: Mapping[str, Any], now: datetime) -> None:
    """Append a ``[[webhooks]]`` record (sets created_at/updated_at); raise ``RegistryError``
    if the id exists (field ``integration_id``) or the limit is reached."""
    norm = validate_integration_fields({**fields, "created_at": now, "updated_at": now})
    add_record(doc, INTEGRATIONS, norm)


def update_integration(
    doc: tomlkit.TOMLDocument, integration_id: str, changes: Mapping[str, Any], now: datetime
) -> None:
    """Change fields of one record in place (``None`` removes a key), bump updated_at, keep
    comments and order. Raise ``KeyError`` if the id is unknown, ``RegistryError`` naming
    the field for a bad value or an attempt to change ``integration_id``."""
    update_record(doc, INTEGRATIONS, integration_id, changes, now)


def remove_integration(doc: tomlkit.TOMLDocument, integration_id: str) -> None:
    """Remove one record; raise ``KeyError`` if unknown (see ``edit.remove_record``)."""
    remove_record(doc, INTEGRATIONS, integration_id)
