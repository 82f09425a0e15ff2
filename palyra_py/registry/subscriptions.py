"""Outbound subscriptions: the ``[[subscriptions]]`` records of ``webhooks.toml``.

The model the dispatcher reads, the field rules of docs/outbound.md, parsing (called by
``registry.document.parse_registry``) and the comment-preserving edits the admin API
applies through ``RegistryFile.edit``. Errors are ``RegistryError`` naming the field
(``retry_schedule[2]``, or ``subscriptions[0].url`` when read from the file) and what is
allowed. A message never repeats a URL or a header value: both may carry credentials.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import tomlkit

from palyra_py.filters import MAX_PATTERN_CHARS, validate_event_patterns, validate_filter_table
from palyra_py.outbound.placeholders import TemplateError, check_template
from palyra_py.outbound.retry import (
    DEFAULT_SCHEDULE,
    MAX_DELAY_S,
    MAX_SCHEDULE_ENTRIES,
    parse_duration,
)
from palyra_py.outbound.urls import MAX_URL_CHARS, check_url
from palyra_py.redact import is_secret_key
from palyra_py.registry.edit import (
    RecordKind,
    add_record,
    remove_record,
    toml_value,
    update_record,
)
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
    record_defaults,
    show,
)
from palyra_py.secrets.refs import SecretRefError, parse_secret_ref

Scalar = str | int | float | bool
DEFAULT_MAX_IN_FLIGHT = 10
DEFAULT_TIMEOUT_S = 15.0
DEFAULT_OWNER = "default"
DEFAULT_MAX_CONCURRENT = 1
MAX_CONCURRENT = 32
MAX_COMMAND_ARGS = 256
MAX_COMMAND_ARG_CHARS = 4096
MAX_COMMAND_TIMEOUT_S = 86_400.0
MAX_ENV = 64
MAX_ENV_VALUE_CHARS = 8192
COMMAND_FIELDS = ("command", "env", "working_dir", "max_concurrent", "success_exit_codes",
                  "run_as")
"""The fields of the command destination; set only through the registry's owner (the CLI
on the admin socket, or the file), never with a token (docs/outbound.md)."""
DESTINATIONS = ("url", "command", "email")
MAX_EMAIL_RECIPIENTS = 20
MAX_EMAIL_CHARS = 254
MAX_SUBSCRIPTIONS = 1024
MAX_IN_FLIGHT = 100
MIN_TIMEOUT_S = 1.0
MAX_TIMEOUT_S = 60.0
MAX_RATE_LIMIT_PER_S = 10_000.0
MAX_HEADERS = 32
MAX_HEADER_NAME_CHARS = 128
MAX_HEADER_VALUE_CHARS = 4096
MAX_DESCRIPTION_CHARS = 256
MAX_DISABLED_REASON_CHARS = 256
FORMATS = ("standard", "slack", "discord")
SIGNATURE_FORMATS = ("standard", "github")
# Set by palyra on every delivery (or by HTTP itself): a subscription may not override them.
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection",
     "keep-alive", "te", "trailer", "upgrade", "proxy-connection"}
)  # fmt: skip
RESERVED_HEADER_PREFIXES = ("webhook-", "x-hub-signature")


@dataclass(frozen=True, slots=True)
class Subscription:
    subscription_id: str
    url: str = ""
    """The HTTP destination; ``""`` for a subscription with another destination."""
    events: tuple[str, ...] = ()
    filter: Mapping[str, Scalar] = field(default_factory=dict)
    secret_ref: str | None = None
    previous_secret_ref: str | None = None
    previous_valid_until: datetime | None = None
    enabled: bool = True
    owner: str = DEFAULT_OWNER
    rate_limit_per_s: float = 0.0
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    ordered: bool = False
    format: Literal["standard", "slack", "discord"] = "standard"
    signature_format: Literal["standard", "github"] = "standard"
    timeout_s: float = DEFAULT_TIMEOUT_S
    retry_schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    headers: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    disabled_reason: str | None = None
    # The command destination (outbound.command); ``()`` for an HTTP subscription.
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    success_exit_codes: tuple[int, ...] = (0,)
    run_as: str | None = None
    # The email destination (outbound.email): its recipients; ``()`` for another one.
    email: tuple[str, ...] = ()

    @property
    def destination(self) -> Literal["url", "command", "email"]:
        """Which destination the subscription has (exactly one of them is set)."""
        if self.email:
            return "email"
        return "command" if self.command else "url"

    @property
    def concurrency(self) -> int:
        """Most attempts open at once: ``max_concurrent`` runs of a command, else
        ``max_in_flight`` requests."""
        return self.max_concurrent if self.command else self.max_in_flight

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (datetimes RFC 3339 Z; retry_schedule as duration strings)."""
        data = {name: jsonable(getattr(self, name)) for name in FIELDS}
        data["retry_schedule"] = [format_duration(s) for s in self.retry_schedule]
        return data


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Subscription))
DEFAULTS: dict[str, Any] = record_defaults(Subscription)
# Written in a new record even at their defaults (`events = []` says "every event").
ALWAYS_WRITTEN = frozenset(
    {"subscription_id", "events", "secret_ref", "enabled", "created_at", "updated_at"}
)


def format_duration(seconds: float) -> str:
    """The retry-schedule spelling of a delay: the largest of ``d``, ``h``, ``m``, ``s`` that
    divides it (``"0s"``, ``"5s"``, ``"5m"``, ``"2h"``, ``"7d"``), else whole milliseconds
    (``"1500ms"``). ``retry.parse_duration`` reads it back."""
    millis = round(seconds * 1000)
    if millis % 1000:
        return f"{millis}ms"
    whole = millis // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


# ---------------------------------------------------------------------------------------
# Field checks: (value, field name) -> normalised value, or RegistryError naming the field.


URL_REF_PREFIXES = ("keyring:", "db:", "env:", "file:")


def is_url_ref(url: str) -> bool:
    """True when a subscription's ``url`` is a secret reference (``keyring:NAME``,
    ``db:NAME``, ``env:VAR``, ``file:PATH``) whose value is the URL: for URLs that carry
    their own credential, as Slack's and Discord's incoming-webhook URLs do."""
    return url.startswith(URL_REF_PREFIXES)


def is_ref(value: str) -> bool:
    """True when a ``url`` or a header value is a secret reference (``keyring:NAME``,
    ``db:NAME``, ``env:VAR``, ``file:PATH``) whose value the daemon reads when it
    delivers."""
    return value.startswith(URL_REF_PREFIXES)


# Words of a header or query parameter name (split at - _ .) that say it holds a
# credential, besides redact.SECRET_KEY_PARTS (token, secret, authorization, cookie...).
_CREDENTIAL_WORDS = frozenset({"auth", "key", "apikey", "sig", "jwt", "bearer", "pass", "pwd"})
_CREDENTIAL_QUERY_WORDS = _CREDENTIAL_WORDS | {"code", "hash", "hmac"}
# Header values that are credentials whatever the header is called.
_CREDENTIAL_VALUE_PREFIXES = ("bearer ", "basic ", "token ", "digest ")


def _credential_name(name: str, words: frozenset[str]) -> bool:
    lower = name.lower()
    return is_secret_key(lower) or "auth" in lower or any(
        word in words for word in re.split(r"[-_.]+", lower))


def is_credential_header(name: str, value: str) -> bool:
    """Whether a custom header looks like it carries a credential: its name
    (``Authorization``, ``X-Api-Key``, ``*token*``, ``*secret*``, ``Cookie``, ``*auth*``...)
    or its value (``Bearer ...``, ``Basic ...``). Such values are kept in the keyring."""
    return _credential_name(name, _CREDENTIAL_WORDS) or value.lower().startswith(
        _CREDENTIAL_VALUE_PREFIXES)


def is_credential_url(url: str) -> bool:
    """Whether a plain URL carries a credential we can see: a query parameter named like
    one (``token``, ``access_token``, ``api_key``, ``key``, ``sig``, ``code``...) or
    ``user:password@``. Such URLs are kept in the keyring."""
    try:
        parts = urlsplit(url)
        names = [name for name, _ in parse_qsl(parts.query, keep_blank_values=True)]
        userinfo = "@" in parts.netloc
    except ValueError:
        return False
    return userinfo or any(_credential_name(n, _CREDENTIAL_QUERY_WORDS) for n in names)


def valid_header_value(text: str) -> bool:
    """At most 4096 characters of printable ASCII and tabs: what a header value may be."""
    return len(text) <= MAX_HEADER_VALUE_CHARS and _HEADER_VALUE.fullmatch(text) is not None


def _check_url(value: Any, name: str) -> str:
    rule = (f"must be an http:// or https:// URL of at most {MAX_URL_CHARS} characters, or a"
            " secret reference holding one (keyring:NAME, env:VAR, file:/absolute/path)")
    if not isinstance(value, str):
        raise fail(name, f"{rule}, got {type(value).__name__}")
    url = value.strip()
    if is_url_ref(url):
        return check_secret_ref(url, name)
    problem = check_url(url)
    if problem is not None:
        raise fail(name, f"{rule}: {problem}")
    return url


def _check_events(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise fail(name, f"must be an array of glob patterns (empty = every event), got"
                         f" {show(value)}")
    patterns: dict[str, None] = {}
    for index, entry in enumerate(value):
        norm = entry.strip() if isinstance(entry, str) else ""
        if not 1 <= len(norm) <= MAX_PATTERN_CHARS or CONTROL_CHARS.search(norm):
            raise fail(f"{name}[{index}]", f"must be a glob pattern of 1 to {MAX_PATTERN_CHARS}"
                                           f" characters, no control characters, got"
                                           f" {show(entry)}")
        patterns.setdefault(norm, None)
    try:
        return validate_event_patterns(tuple(patterns))
    except ValueError as exc:
        raise fail(name, str(exc).removeprefix("events: ")) from None


def _flatten(table: Mapping[Any, Any], prefix: str, out: dict[str, Any], name: str) -> None:
    # `filter = { data.kb = "docs" }` is, in TOML, a nested table: its path is data.kb.
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if path.count(".") >= 8:
                raise fail(name, f"path {path[:64]!r}...: too deep")
            _flatten(value, path + ".", out, name)
        elif path in out:
            raise fail(name, f"path {path[:128]!r} is given twice")
        else:
            out[path] = value


def _check_filter(value: Any, name: str) -> dict[str, Scalar]:
    if not isinstance(value, Mapping):
        raise fail(name, f'must be a table of path = value, e.g. {{ "data.kb" = "docs" }}, got'
                         f" {show(value)}")
    flat: dict[str, Any] = {}
    _flatten(value, "", flat, name)
    try:
        return validate_filter_table(flat)
    except ValueError as exc:
        raise fail(name, str(exc).removeprefix("filter").lstrip(": ")) from None


def _check_schedule(value: Any, name: str) -> tuple[float, ...]:
    rule = (f'must be an array of 1 to {MAX_SCHEDULE_ENTRIES} durations such as ["0s", "5m",'
            ' "2h"], each at most 7d')
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_SCHEDULE_ENTRIES:
        raise fail(name, f"{rule}, got {show(value)}")
    out: list[float] = []
    for index, entry in enumerate(value):
        if isinstance(entry, str):
            try:
                seconds = parse_duration(entry)
            except ValueError as exc:
                raise fail(f"{name}[{index}]", str(exc)) from None
        elif isinstance(entry, (int, float)) and not isinstance(entry, bool) and (
            0 <= entry <= MAX_DELAY_S
        ):
            seconds = float(entry)
        else:
            raise fail(f"{name}[{index}]", f"{rule}, got {show(entry)}")
        # Kept to the millisecond, as written back, so the file reads back to equal values.
        out.append(parse_duration(format_duration(seconds)))
    return tuple(out)


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token characters
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")


def _check_headers(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise fail(name, f"must be a table of header name = value, got {show(value)}")
    if len(value) > MAX_HEADERS:
        raise fail(name, f"at most {MAX_HEADERS} headers, got {len(value)}")
    out: dict[str, str] = {}
    seen: set[str] = set()
    for key, raw in value.items():
        header = str(key)
        if len(header) > MAX_HEADER_NAME_CHARS or not _HEADER_NAME.fullmatch(header):
            raise fail(name, f"{show(header)} is not a header name (1 to"
                             f" {MAX_HEADER_NAME_CHARS} of A-Z a-z 0-9 ! # $ % & ' * + . ^ _"
                             " ` | ~ -)")
        lower = header.lower()
        if lower in RESERVED_HEADERS or lower.startswith(RESERVED_HEADER_PREFIXES):
            raise fail(name, f"{header!r} is set by palyra or HTTP and cannot be given; not"
                             " allowed: Host, Content-Length, Content-Type, Transfer-Encoding,"
                             " Connection (and other hop-by-hop headers), webhook-*,"
                             " X-Hub-Signature*")
        if lower in seen:
            raise fail(name, f"{header!r} is given twice (header names ignore case)")
        seen.add(lower)
        # The value is never shown: custom headers often carry credentials.
        if not isinstance(raw, str):
            raise fail(name, f"{header}: the value must be a string")
        text = str(raw).strip()
        if not valid_header_value(text):
            raise fail(name, f"{header}: the value must be at most {MAX_HEADER_VALUE_CHARS}"
                             " characters of printable ASCII and tabs (no CR, LF or other"
                             " control characters), or a secret reference holding one"
                             " (keyring:NAME, env:VAR, file:/absolute/path)")
        if is_ref(text):
            try:
                parse_secret_ref(text)
            except SecretRefError as exc:
                raise fail(name, f"{header}: {exc}") from None
        out[header] = text
    return out


def _float_range(low: float, high: float) -> Check:
    def check(value: Any, name: str) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not low <= value <= high:  # NaN fails the comparison too
            raise fail(name, f"must be a number from {low:g} to {high:g}, got {show(value)}")
        return float(value)

    return check


def _choice(allowed: tuple[str, ...]) -> Check:
    def check(value: Any, name: str) -> str:
        norm = value.strip().lower() if isinstance(value, str) else None
        if norm not in allowed:
            raise fail(name, f"must be one of {', '.join(allowed)}, got {show(value)}")
        return norm

    return check


def _text(limit: int) -> Check:
    def check(value: Any, name: str) -> str:
        if not isinstance(value, str):
            raise fail(name, f"must be a string, got {show(value)}")
        norm = value.strip()
        if len(norm) > limit or CONTROL_CHARS.search(norm):
            raise fail(name, f"must be at most {limit} characters, no control characters")
        return norm

    return check


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")


def _check_timeout(value: Any, name: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not MIN_TIMEOUT_S <= value <= MAX_COMMAND_TIMEOUT_S:
        raise fail(name, f"must be a number from {MIN_TIMEOUT_S:g} to {MAX_TIMEOUT_S:g}"
                         f" (a command: to {MAX_COMMAND_TIMEOUT_S:g}), got {show(value)}")
    return float(value)


def _check_command(value: Any, name: str) -> tuple[str, ...]:
    rule = (f"must be an array of 1 to {MAX_COMMAND_ARGS} strings: the program (an absolute"
            " path, or a name looked up in PATH) and its arguments; never run by a shell")
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise fail(name, f"{rule}, got {show(value)}")
    if not 1 <= len(value) <= MAX_COMMAND_ARGS:
        raise fail(name, f"{rule}, got {len(value)} entries")
    out: list[str] = []
    for index, arg in enumerate(value):
        if not isinstance(arg, str) or len(arg) > MAX_COMMAND_ARG_CHARS or "\x00" in arg:
            raise fail(f"{name}[{index}]", f"must be a string of at most"
                                           f" {MAX_COMMAND_ARG_CHARS} characters, no NUL")
        try:
            check_template(arg)
        except TemplateError as exc:
            raise fail(f"{name}[{index}]", str(exc)) from None
        out.append(arg)
    program = out[0]
    if not program.strip() or "{" in program or "}" in program:
        raise fail(f"{name}[0]", "the program must be a fixed, non-empty path (no"
                                 " placeholders): only its arguments may come from events")
    return tuple(out)


def _check_env(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise fail(name, f"must be a table of NAME = value, got {show(value)}")
    if len(value) > MAX_ENV:
        raise fail(name, f"at most {MAX_ENV} variables, got {len(value)}")
    out: dict[str, str] = {}
    for key, raw in value.items():
        var = str(key)
        if not _ENV_NAME.fullmatch(var):
            raise fail(name, f"{show(var)} is not a variable name (A-Z a-z 0-9 _, not"
                             " starting with a digit)")
        if var.upper().startswith("PALYRA_"):
            raise fail(name, f"{var}: PALYRA_* variables are set by palyra")
        # The value is never shown: it may be a credential.
        if not isinstance(raw, str) or len(raw) > MAX_ENV_VALUE_CHARS or "\x00" in raw:
            raise fail(name, f"{var}: the value must be a string of at most"
                             f" {MAX_ENV_VALUE_CHARS} characters, no NUL, or a secret"
                             " reference (keyring:NAME, db:NAME, env:VAR, file:/absolute/path)")
        if is_ref(raw):
            try:
                parse_secret_ref(raw)
            except SecretRefError as exc:
                raise fail(name, f"{var}: {exc}") from None
        out[var] = raw
    return out


def _check_working_dir(value: Any, name: str) -> str:
    if (not isinstance(value, str) or not value.startswith("/") or len(value) > 4096
            or CONTROL_CHARS.search(value)):
        raise fail(name, f"must be an absolute directory path, got {show(value)}")
    return value


def _check_exit_codes(value: Any, name: str) -> tuple[int, ...]:
    rule = "must be an array of 1 to 32 exit codes (integers from 0 to 255)"
    if isinstance(value, (str, bool)) or not isinstance(value, (list, tuple)) or not (
            1 <= len(value) <= 32):
        raise fail(name, f"{rule}, got {show(value)}")
    codes: dict[int, None] = {}
    for index, code in enumerate(value):
        codes.setdefault(int_range(0, 255)(code, f"{name}[{index}]"), None)
    return tuple(codes)


_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@"
                      r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def _check_email(value: Any, name: str) -> tuple[str, ...]:
    rule = (f"must be an array of 1 to {MAX_EMAIL_RECIPIENTS} addresses such as"
            ' ["ops@example.com"] (local@domain, no display names)')
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_EMAIL_RECIPIENTS:
        raise fail(name, f"{rule}, got {show(value)}")
    out: dict[str, None] = {}
    for index, entry in enumerate(value):
        norm = entry.strip() if isinstance(entry, str) else ""
        if len(norm) > MAX_EMAIL_CHARS or not _ADDRESS.fullmatch(norm):
            raise fail(f"{name}[{index}]", f"is not an email address (local@domain, at most"
                                           f" {MAX_EMAIL_CHARS} characters), got"
                                           f" {show(entry)}")
        out.setdefault(norm, None)
    return tuple(out)


def _check_user(value: Any, name: str) -> str:
    norm = value.strip() if isinstance(value, str) else ""
    if not _USER_NAME.fullmatch(norm):
        raise fail(name, f"must be a user name (a-z 0-9 _ . -, at most 32), got {show(value)}")
    return norm


CHECKS: dict[str, Check] = {
    "subscription_id": lambda value, name: normalize_id(value, field=name),
    "url": _check_url,
    "events": _check_events,
    "filter": _check_filter,
    "secret_ref": check_secret_ref,
    "previous_secret_ref": check_secret_ref,
    "previous_valid_until": check_datetime,
    "enabled": check_bool,
    "owner": lambda value, name: normalize_id(value, field=name),
    "rate_limit_per_s": _float_range(0.0, MAX_RATE_LIMIT_PER_S),
    "max_in_flight": int_range(1, MAX_IN_FLIGHT),
    "ordered": check_bool,
    "format": _choice(FORMATS),
    "signature_format": _choice(SIGNATURE_FORMATS),
    "timeout_s": _check_timeout,  # a url's at most 60 s: see _check_destination
    "retry_schedule": _check_schedule,
    "headers": _check_headers,
    "description": _text(MAX_DESCRIPTION_CHARS),
    "created_at": check_datetime,
    "updated_at": check_datetime,
    "disabled_reason": _text(MAX_DISABLED_REASON_CHARS),
    "command": _check_command,
    "env": _check_env,
    "working_dir": _check_working_dir,
    "max_concurrent": int_range(1, MAX_CONCURRENT),
    "success_exit_codes": _check_exit_codes,
    "run_as": _check_user,
    "email": _check_email,
}
assert tuple(CHECKS) == FIELDS


def validate_subscription_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise and check a dict of subscription fields (from the admin API, from TOML, or
    ``Subscription.to_dict()``); return the normalised dict; raise ``RegistryError`` naming
    the field. ``subscription_id`` and exactly one destination (``url`` or ``command``, with
    the command's own fields only beside it) are required; ``None`` counts as absent and
    absent keys stay absent (``Subscription(**result)`` fills the defaults).

    Normalised: ids and ``owner`` trimmed and lowercased, ``events`` a tuple without
    duplicates, ``filter`` flat ``{"data.kb": value}``, ``retry_schedule`` a tuple of seconds
    (to the millisecond; duration strings or numbers of seconds accepted), ``format`` and
    ``signature_format`` lowercased, floats as floats, datetimes in UTC.
    """
    return _validate(fields, "")


def _validate(fields: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out = check_record(_unset_dropped(fields), prefix, CHECKS, ("subscription_id",))
    check_rotation_pair(out, prefix)
    _check_destination(out, prefix)
    return out


def _unset_dropped(fields: Mapping[str, Any]) -> Mapping[str, Any]:
    """``fields`` without what ``to_dict`` gives for the destination a subscription does not
    have (``url = ""``, ``command = []``, the other's fields at their defaults), so that a
    record's ``to_dict`` validates back to it."""
    if not isinstance(fields, Mapping):
        return fields
    unset: dict[str, Any] = {"url": "", "command": (), "env": {}, "headers": {},
                             "email": ()}
    if fields.get("command"):
        unset["max_in_flight"] = DEFAULT_MAX_IN_FLIGHT
    else:
        unset["max_concurrent"] = DEFAULT_MAX_CONCURRENT
        unset["success_exit_codes"] = (0,)
    dropped = {}
    for key, value in fields.items():
        if key in unset and not isinstance(value, bool):
            empty = unset[key]
            if (value == empty or (isinstance(empty, tuple) and isinstance(value, list)
                                   and tuple(value) == empty)):
                continue
        dropped[key] = value
    return dropped


def _check_destination(out: Mapping[str, Any], prefix: str) -> None:
    """Exactly one destination, and only the fields of the one given."""
    given = [key for key in DESTINATIONS if key in out]
    if not given:
        raise fail(f"{prefix}url", "is required (or command, or email: give exactly one"
                                   " destination)")
    if len(given) > 1:
        raise fail(f"{prefix}{given[1]}", f"give exactly one destination (url, command or"
                                          f" email), not {' and '.join(given)}")
    if "command" in out:
        for key in ("headers", "max_in_flight"):
            if key in out:
                hint = " (use max_concurrent)" if key == "max_in_flight" else ""
                raise fail(f"{prefix}{key}", f"is for a url destination{hint}")
        return
    for key in COMMAND_FIELDS[1:]:
        if key in out:
            raise fail(f"{prefix}{key}", "is for a command destination")
    if "email" in out:
        for key in ("headers", "format", "signature_format"):
            if (key == "headers" and key in out) or out.get(key, "standard") != "standard":
                raise fail(f"{prefix}{key}", "is for a url destination")
    if out.get("timeout_s", DEFAULT_TIMEOUT_S) > MAX_TIMEOUT_S:
        raise fail(f"{prefix}timeout_s", f"must be a number from {MIN_TIMEOUT_S:g} to"
                                         f" {MAX_TIMEOUT_S:g} (a command: to"
                                         f" {MAX_COMMAND_TIMEOUT_S:g}), got"
                                         f" {show(out['timeout_s'])}")


# What a destination cannot have beside it: dropped when a subscription is switched to it.
_NOT_BESIDE: dict[str, tuple[str, ...]] = {
    "url": (*COMMAND_FIELDS, "email"),
    "command": ("url", "email", "headers", "max_in_flight"),
    "email": ("url", *COMMAND_FIELDS, "headers", "format", "signature_format"),
}


def left_behind(sub: Subscription, changes: Mapping[str, Any]) -> tuple[str, ...]:
    """When ``changes`` (an edit) give ``sub`` another destination, the fields of the old one
    that the new one cannot have beside it and that ``sub`` sets (not at their defaults),
    which ``changes`` do not mention: the edit removes them, so ``--url`` alone switches a
    command subscription to HTTP. ``()`` when the destination stays."""
    given = [key for key in DESTINATIONS if changes.get(key)]
    if len(given) != 1 or given[0] == sub.destination:
        return ()
    return tuple(key for key in _NOT_BESIDE[given[0]]
                 if key not in changes and getattr(sub, key) != DEFAULTS.get(key))


def parse_subscriptions(data: Mapping[str, Any]) -> dict[str, Subscription]:
    """The ``[[subscriptions]]`` of parsed registry TOML by id, in file order: at most
    1024, ids unique. Field names in errors are ``subscriptions[i].key``."""
    records = collect_records(
        data, "subscriptions", "subscription_id", MAX_SUBSCRIPTIONS, "subscriptions", _validate
    )
    return {key: Subscription(**norm) for key, norm in records.items()}


# ---------------------------------------------------------------------------------------
# Edits of the tomlkit document (run them through RegistryFile.edit).


def _to_toml(key: str, value: Any) -> Any:
    if key == "retry_schedule":
        value = [format_duration(seconds) for seconds in value]
    return toml_value(value)


SUBSCRIPTIONS = RecordKind(
    "subscriptions", "subscription_id", "subscription", MAX_SUBSCRIPTIONS, FIELDS, DEFAULTS,
    ALWAYS_WRITTEN, validate_subscription_fields, _to_toml,
)  # fmt: skip


def add_subscription(
    doc: tomlkit.TOMLDocument, fields: Mapping[str, Any], now: datetime
) -> None:
    """Append a ``[[subscriptions]]`` record (sets created_at/updated_at to ``now``); only
    fields that differ from their defaults are written, plus the ones a reader should see.
    Raise ``RegistryError`` if the id exists (field ``subscription_id``), the limit of 1024
    is reached, or a field is invalid."""
    norm = validate_subscription_fields({**fields, "created_at": now, "updated_at": now})
    add_record(doc, SUBSCRIPTIONS, norm)


def update_subscription(
    doc: tomlkit.TOMLDocument, subscription_id: str, changes: Mapping[str, Any], now: datetime
) -> None:
    """Change fields of one record in place (``None`` removes the key: back to the default),
    set updated_at, keep comments and key order. ``KeyError`` for an unknown id;
    ``RegistryError`` naming the field for a bad value or a changed ``subscription_id``."""
    update_record(doc, SUBSCRIPTIONS, subscription_id, changes, now)


def remove_subscription(doc: tomlkit.TOMLDocument, subscription_id: str) -> None:
    """Remove one record with the comment block right above it; ``KeyError`` if unknown."""
    remove_record(doc, SUBSCRIPTIONS, subscription_id)
