"""The TOML registry ``webhooks.toml``: integrations, outbound subscriptions, API tokens.

The file is meant to be edited by people as well as by the daemon, so it is read and written
with tomlkit: comments, blank lines and key order survive every change the daemon makes.
Every value is checked on load; an error names the field (``webhooks[2].max_payload_bytes``,
records counted from 0), says what is allowed and, when it comes from the file, carries the
line and column. Writes are atomic and serialised between threads and processes.

Here: the integration model and field rules, the checks the other record kinds share, and
``parse_registry``. ``RegistryFile`` and the document edits are in ``registry_edit`` (and
importable from here); ``[[subscriptions]]`` in ``subscriptions``, ``[[tokens]]`` in ``tokens``;
``RegistryError`` and error positions in ``registry_positions`` (``RegistryError`` is
importable from here).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomlkit
from tomlkit.exceptions import ParseError

from palyra_py.registry.positions import RegistryError as RegistryError
from palyra_py.registry.positions import locate
from palyra_py.secrets.store import SecretRefError, parse_secret_ref
from palyra_py.times import InvalidTime, format_rfc3339, parse_rfc3339

if TYPE_CHECKING:
    from palyra_py.registry.edit import RegistryFile as RegistryFile
    from palyra_py.registry.edit import add_integration as add_integration
    from palyra_py.registry.edit import remove_integration as remove_integration
    from palyra_py.registry.edit import update_integration as update_integration
    from palyra_py.registry.subscriptions import Subscription
    from palyra_py.registry.tokens import ApiToken

REGISTRY_VERSION = 1
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
MAX_REGISTRY_BYTES = 16 * 1024 * 1024
FALLBACK_PROVIDER_NAMES = (
    "generic", "github", "gitlab", "palyra", "shopify", "slack", "standard-webhooks", "stripe",
)
NEW_REGISTRY_TEXT = (
    "# palyra-py webhook registry. Every field is explained in webhooks.example.toml.\n"
    "version = 1\n"
)
TOP_LEVEL_KEYS = ("version", "webhooks", "subscriptions", "tokens")


@dataclass(frozen=True, slots=True)
class Integration:
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
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_test_status: str | None = None
    last_test_at: datetime | None = None
    last_test_message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (datetimes as RFC 3339 strings, tuples as lists)."""
        return {name: _jsonable(getattr(self, name)) for name in FIELDS}


@dataclass(frozen=True, slots=True)
class Registry:
    path: Path
    integrations: Mapping[str, Integration]
    subscriptions: Mapping[str, Subscription] = field(default_factory=dict)
    tokens: Mapping[str, ApiToken] = field(default_factory=dict)


def record_defaults(model: Any) -> dict[str, Any]:
    """``{field: default}`` of a record dataclass, for the fields that have one."""
    return {
        f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        for f in dataclasses.fields(model)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Integration))
DEFAULTS: dict[str, Any] = record_defaults(Integration)
# A new record always shows these, even at their defaults, so that a person reading the
# file sees what matters; everything else is written only when it differs from the default.
ALWAYS_WRITTEN = frozenset(
    {"integration_id", "provider", "display_name", "secret_ref", "enabled", "created_at",
     "updated_at"}
)  # fmt: skip


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_rfc3339(value, timespec="auto")
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _providers_attr(name: str) -> Any:
    # Lazy: providers are written alongside this module; until they offer `name`, the
    # registry falls back to its own list and skips option checks.
    try:
        module = importlib.import_module("palyra_py.providers")
    except ImportError:
        return None
    return getattr(module, name, None)


# ---------------------------------------------------------------------------------------
# Field checks: each takes (value, field name) and returns the normalised value.


Check = Callable[[Any, str], Any]


def _fail(field_name: str, message: str) -> RegistryError:
    return RegistryError(f"{field_name}: {message}", field=field_name)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_ID = re.compile(r"[a-z0-9._-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_NEWLINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_STATUS = re.compile(r"[a-z0-9_]{1,64}")


def normalize_id(value: str, *, field: str = "integration_id") -> str:
    """Trim, lowercase, check ``[a-z0-9._-]{1,64}``; raise ``RegistryError(field=...)``.
    ``.`` and ``..`` are refused too: an id is a URL path segment."""
    rule = "must be 1 to 64 characters of a-z 0-9 . _ - (trimmed and lowercased)"
    if not isinstance(value, str):
        raise _fail(field, f"{rule}, got {_show(value)}")
    norm = value.strip().lower()
    if not _ID.fullmatch(norm) or norm in (".", ".."):
        raise _fail(field, f"{rule}, got {_show(value)}")
    return norm


def _provider_names() -> tuple[str, ...]:
    names = _providers_attr("PROVIDER_NAMES")
    return tuple(names) if names else FALLBACK_PROVIDER_NAMES


def _check_provider(value: Any, name: str) -> str:
    allowed = _provider_names()
    norm = value.strip().lower() if isinstance(value, str) else None
    if norm not in allowed:
        raise _fail(name, f"must be one of {', '.join(allowed)}, got {_show(value)}")
    return norm


def _check_display_name(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise _fail(name, f"must be a string, got {_show(value)}")
    norm = value.strip()
    if len(norm.encode("utf-8", "surrogatepass")) > MAX_DISPLAY_NAME_BYTES:
        raise _fail(name, f"must be at most {MAX_DISPLAY_NAME_BYTES} bytes of UTF-8")
    if _CONTROL.search(norm):
        raise _fail(name, "must not contain control characters")
    return norm


def _check_secret_ref(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise _fail(name, "must be a string: keyring:NAME, env:VAR or file:/absolute/path")
    try:
        parse_secret_ref(value.strip())
    except SecretRefError as exc:
        raise _fail(name, str(exc)) from None
    return value.strip()


def _check_datetime(value: Any, name: str) -> datetime:
    rule = "must be an RFC 3339 date-time with an offset, e.g. 2024-05-01T12:00:00Z"
    if isinstance(value, str):
        try:
            value = parse_rfc3339(value)
        except InvalidTime as exc:
            problem = " (this one has no offset)" if exc.missing_offset else f", got {_show(value)}"
            raise _fail(name, rule + problem) from None
    if not isinstance(value, datetime):
        raise _fail(name, f"{rule}, got {_show(value)}")
    if value.utcoffset() is None:
        raise _fail(name, f"{rule} (this one has no offset)")
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise _fail(name, f"{rule}, got {_show(value)} (out of range)") from None
    # tomlkit's DateTime item is a datetime subclass; keep plain datetimes in Integration.
    return datetime(
        value.year, value.month, value.day,
        value.hour, value.minute, value.second, value.microsecond, tzinfo=UTC,
    )  # fmt: skip


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(name, f"must be true or false, got {_show(value)}")
    return value


def _int_range(low: int, high: int) -> Callable[[Any, str], int]:
    def check(value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _fail(name, f"must be an integer from {low} to {high}, got {_show(value)}")
        return int(value)

    return check


def _check_list(
    value: Any, name: str, limit: int, item: Callable[[Any, str], str]
) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise _fail(name, f"must be an array (empty = allow all), got {_show(value)}")
    seen: dict[str, None] = {}
    for index, entry in enumerate(value):
        seen.setdefault(item(entry, f"{name}[{index}]"), None)
    if len(seen) > limit:
        raise _fail(name, f"must have at most {limit} distinct entries, got {len(seen)}")
    return tuple(seen)


def _check_event_pattern(value: Any, name: str) -> str:
    # Spaces are allowed inside: GitLab's event types are "Push Hook", "Merge Request Hook".
    rule = (
        f"must be an event type or glob pattern (1 to {MAX_PATTERN_BYTES} bytes, no control"
        " characters)"
    )
    if not isinstance(value, str):
        raise _fail(name, f"{rule}, got {_show(value)}")
    norm = value.strip()
    size = len(norm.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= MAX_PATTERN_BYTES or _CONTROL.search(norm):
        raise _fail(name, f"{rule}, got {_show(value)}")
    return norm


def _check_source(value: Any, name: str) -> str:
    rule = "must be an IP address or CIDR network such as 192.0.2.0/24 or 2001:db8::/32"
    if not isinstance(value, str):
        raise _fail(name, f"{rule}, got {_show(value)}")
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise _fail(name, f"{rule}, got {_show(value)}") from None


def _check_events(value: Any, name: str) -> tuple[str, ...]:
    return _check_list(value, name, MAX_ALLOWED_EVENTS, _check_event_pattern)


def _check_sources(value: Any, name: str) -> tuple[str, ...]:
    return _check_list(value, name, MAX_ALLOWED_SOURCES, _check_source)


def _check_options(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(name, f"must be a table of provider options, got {_show(value)}")
    if len(value) > MAX_PROVIDER_OPTIONS:
        raise _fail(name, f"must have at most {MAX_PROVIDER_OPTIONS} options")
    plain: dict[str, Any] = _plain(value)
    return plain


def _plain(value: Any) -> Any:
    """A deep copy made of builtin types (tomlkit items unwrapped)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    unwrap = getattr(value, "unwrap", None)
    return unwrap() if callable(unwrap) else value


def _check_status(value: Any, name: str) -> str:
    norm = value.strip().lower() if isinstance(value, str) else None
    if norm is None or not _STATUS.fullmatch(norm):
        raise _fail(name, f"must be a word of a-z 0-9 _ (e.g. accepted), got {_show(value)}")
    return norm


def _check_message(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise _fail(name, f"must be a string, got {_show(value)}")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_TEST_MESSAGE_BYTES:
        raise _fail(name, f"must be at most {MAX_TEST_MESSAGE_BYTES} bytes of UTF-8")
    if _CONTROL_BUT_NEWLINES.search(value):
        raise _fail(name, "must not contain control characters other than tab and newline")
    return value


CHECKS: dict[str, Check] = {
    "integration_id": lambda value, name: normalize_id(value, field=name),
    "provider": _check_provider,
    "display_name": _check_display_name,
    "secret_ref": _check_secret_ref,
    "previous_secret_ref": _check_secret_ref,
    "previous_valid_until": _check_datetime,
    "allowed_events": _check_events,
    "allowed_sources": _check_sources,
    "enabled": _check_bool,
    "signature_required": _check_bool,
    "max_payload_bytes": _int_range(1, MAX_MAX_PAYLOAD_BYTES),
    "timestamp_tolerance_s": _int_range(1, MAX_TIMESTAMP_TOLERANCE_S),
    "replay_window_s": _int_range(MIN_REPLAY_WINDOW_S, MAX_REPLAY_WINDOW_S),
    "provider_options": _check_options,
    "created_at": _check_datetime,
    "updated_at": _check_datetime,
    "last_test_status": _check_status,
    "last_test_at": _check_datetime,
    "last_test_message": _check_message,
}
assert set(CHECKS) == set(FIELDS)


def validate_integration_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise and check a dict of integration fields (as given by the admin API or read
    from TOML); return the normalised dict; raise ``RegistryError`` naming the field.

    ``integration_id`` and ``provider`` are required; a ``None`` value counts as absent, and
    absent keys are absent from the result (``Integration(**result)`` fills the defaults).
    """
    return _validate_record(fields, "")


def check_record(
    fields: Mapping[str, Any], prefix: str, checks: Mapping[str, Check], required: tuple[str, ...]
) -> dict[str, Any]:
    """What every record kind checks: unknown keys refused (the closest known key as a hint),
    each non-``None`` value run through its check in ``checks`` order, ``required`` present.
    Field names are ``prefix + key``."""
    if not isinstance(fields, Mapping):
        raise _fail(prefix.rstrip(".") or "fields", "must be a table of fields")
    known = tuple(checks)
    for key in fields:
        if key not in checks:
            hint = difflib.get_close_matches(str(key), known, n=1)
            guess = f" did you mean {hint[0]!r}?" if hint else ""
            raise _fail(f"{prefix}{key}", f"unknown key;{guess} allowed: {', '.join(known)}")
    out = {key: check(fields[key], f"{prefix}{key}")
           for key, check in checks.items() if fields.get(key) is not None}
    for key in required:
        if key not in out:
            raise _fail(f"{prefix}{key}", "is required")
    return out


def check_rotation_pair(out: Mapping[str, Any], prefix: str) -> None:
    """``previous_secret_ref`` and ``previous_valid_until`` come together or not at all."""
    if ("previous_secret_ref" in out) != ("previous_valid_until" in out):
        missing = "previous_valid_until" if "previous_secret_ref" in out else "previous_secret_ref"
        raise _fail(
            f"{prefix}{missing}",
            "is required with the other one: previous_secret_ref stays accepted until"
            " previous_valid_until",
        )


def check_replay_window(out: Mapping[str, Any], prefix: str) -> None:
    """For a scheme that signs a timestamp: ``replay_window_s`` more than twice
    ``timestamp_tolerance_s``. A signed timestamp is accepted from ``tolerance`` before it
    to ``tolerance`` after it; a replay key that expired sooner would let the same captured
    request in again while its timestamp still passes."""
    window = out.get("replay_window_s", DEFAULT_REPLAY_WINDOW_S)
    tolerance = out.get("timestamp_tolerance_s", DEFAULT_TIMESTAMP_TOLERANCE_S)
    if window <= 2 * tolerance:
        raise _fail(
            f"{prefix}replay_window_s",
            f"must be more than twice timestamp_tolerance_s for a {out['provider']} scheme"
            f" (replay_window_s = {window}, timestamp_tolerance_s = {tolerance}, so at least"
            f" {2 * tolerance + 1}): a signed timestamp is accepted for timestamp_tolerance_s"
            " either side of now, and a captured request would be accepted again once its"
            " replay key expired",
        )


def _validate_record(fields: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out = check_record(fields, prefix, CHECKS, ("integration_id", "provider"))
    check_rotation_pair(out, prefix)
    get_provider = _providers_attr("get_provider")
    if callable(get_provider):
        try:
            provider = get_provider(out["provider"], out.get("provider_options") or None)
        except Exception as exc:
            # Any failure to build the provider means these options cannot work.
            raise _fail(f"{prefix}provider_options", str(exc)) from None
        if provider.timestamped:
            check_replay_window(out, prefix)
    return out


# ---------------------------------------------------------------------------------------
# Parsing, with positions for errors.


def parse_registry(text: str, path: Path) -> Registry:
    """Parse and validate registry text; errors carry line and column."""
    try:
        data = tomlkit.parse(text).unwrap()
    except ParseError as exc:
        message = str(exc).rsplit(" at line ", 1)[0]
        # tomlkit reports the end of the text as the character NUL.
        message = message.replace("Unexpected character: '\\x00'", "unexpected end of file")
        # tomlkit counts columns from 0; editors and compilers count from 1.
        raise RegistryError(
            f"TOML syntax error: {message}", path=path, line=exc.line, col=exc.col + 1
        ) from None
    except Exception as exc:
        # tomlkit may fail on pathological input with other exceptions (deep nesting...);
        # the daemon must get a RegistryError whatever the text.
        raise RegistryError(f"TOML syntax error ({type(exc).__name__})", path=path) from None
    try:
        return _build(data, path)
    except RegistryError as exc:
        line, col = locate(text, exc.field or "")
        raise RegistryError(exc.message, path=path, line=line, col=col, field=exc.field) from None


def _build(data: Mapping[str, Any], path: Path) -> Registry:
    from palyra_py.registry.subscriptions import parse_subscriptions  # both build on this module
    from palyra_py.registry.tokens import parse_tokens

    for key in data:
        if key not in TOP_LEVEL_KEYS:
            hint = difflib.get_close_matches(key, TOP_LEVEL_KEYS, n=1)
            guess = f" did you mean {hint[0]!r}?" if hint else ""
            allowed = "version, [[webhooks]], [[subscriptions]], [[tokens]]"
            raise _fail(key, f"unknown top-level key;{guess} allowed: {allowed}")
    version = data.get("version", REGISTRY_VERSION)
    if isinstance(version, bool) or version != REGISTRY_VERSION:
        raise _fail(
            "version",
            f"must be {REGISTRY_VERSION} (the only format this palyra-py reads),"
            f" got {_show(version)}",
        )
    records = collect_records(
        data, "webhooks", "integration_id", MAX_INTEGRATIONS, "integrations", _validate_record
    )
    integrations = {key: Integration(**norm) for key, norm in records.items()}
    return Registry(path, integrations, parse_subscriptions(data), parse_tokens(data))


def collect_records(
    data: Mapping[str, Any],
    table: str,
    id_key: str,
    limit: int,
    noun: str,
    validate: Callable[[Mapping[str, Any], str], dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """The ``[[table]]`` records of parsed TOML, each validated by ``validate(record,
    "table[i].")``, keyed by their ``id_key`` in file order: at most ``limit``, ids unique."""
    records = data.get(table, [])
    if not isinstance(records, list):
        raise _fail(table, f"must be an array of tables, written [[{table}]]")
    if len(records) > limit:
        raise _fail(f"{table}[{limit}]",
                    f"at most {limit} {noun} are allowed, found {len(records)}")
    out: dict[str, dict[str, Any]] = {}
    first: dict[str, int] = {}
    for index, record in enumerate(records):
        prefix = f"{table}[{index}]"
        if not isinstance(record, dict):
            raise _fail(prefix, f"must be a table of fields, got {_show(record)}")
        norm = validate(record, prefix + ".")
        record_id = norm[id_key]
        if record_id in first:
            raise _fail(
                f"{prefix}.{id_key}",
                f"duplicate id {record_id!r} (already used by {table}[{first[record_id]}])",
            )
        first[record_id] = index
        out[record_id] = norm
    return out


# registry_edit builds on this module, so its names are re-exported on first use: importing
# them at load time would be circular. mypy reads the TYPE_CHECKING imports at the top
# instead, which keeps a misspelt import from this module an error.
_FROM_REGISTRY_EDIT = frozenset(
    {"RegistryFile", "add_integration", "remove_integration", "update_integration"}
)

if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        if name in _FROM_REGISTRY_EDIT:
            return getattr(importlib.import_module("palyra_py.registry.edit"), name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
