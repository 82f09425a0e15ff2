"""The field checks and record helpers every kind of registry record shares.

A check takes ``(value, field name)`` and returns the normalised value, or raises
``RegistryError`` whose ``field`` is that name and whose message says what is allowed. The
record kinds (``integrations``, ``subscriptions``, ``tokens``) build their own checks from
these and run them through :func:`check_record`; :func:`collect_records` reads the
``[[table]]`` records of one kind from parsed TOML.

This module reads plain values only: it imports neither tomlkit nor anything that does I/O,
so every record kind can build on it.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time
from typing import Any

from palyra_py.registry.positions import RegistryError
from palyra_py.secrets.refs import SecretRefError, parse_secret_ref
from palyra_py.times import InvalidTime, format_rfc3339, parse_rfc3339

Check = Callable[[Any, str], Any]
"""``(value, field name) -> normalised value``; raises ``RegistryError`` naming the field."""

CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
"""ASCII control characters (newlines and tabs too): refused in names, ids and patterns."""

_ID = re.compile(r"[a-z0-9._-]{1,64}")


def fail(field_name: str, message: str) -> RegistryError:
    """The error a check raises: ``"<field>: <message>"``, with ``field`` set (the registry
    file adds the line and column of that field)."""
    return RegistryError(f"{field_name}: {message}", field=field_name)


def show(value: Any) -> str:
    """``repr(value)`` cut to 60 characters, for quoting a refused value in a message. Never
    use it on a value that may be a credential (URLs, header values, secrets)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def normalize_id(value: str, *, field: str = "integration_id") -> str:
    """Trim, lowercase, check ``[a-z0-9._-]{1,64}``; raise ``RegistryError(field=...)``.
    ``.`` and ``..`` are refused too: an id is a URL path segment."""
    rule = "must be 1 to 64 characters of a-z 0-9 . _ - (trimmed and lowercased)"
    if not isinstance(value, str):
        raise fail(field, f"{rule}, got {show(value)}")
    norm = value.strip().lower()
    if not _ID.fullmatch(norm) or norm in (".", ".."):
        raise fail(field, f"{rule}, got {show(value)}")
    return norm


def check_bool(value: Any, name: str) -> bool:
    """``true`` or ``false``; no other value stands for one."""
    if not isinstance(value, bool):
        raise fail(name, f"must be true or false, got {show(value)}")
    return value


def check_datetime(value: Any, name: str) -> datetime:
    """An RFC 3339 date-time with an offset (a string, or a TOML or Python datetime), as a
    plain ``datetime`` in UTC. A date-time without an offset is refused."""
    rule = "must be an RFC 3339 date-time with an offset, e.g. 2024-05-01T12:00:00Z"
    if isinstance(value, str):
        try:
            value = parse_rfc3339(value)
        except InvalidTime as exc:
            problem = " (this one has no offset)" if exc.missing_offset else f", got {show(value)}"
            raise fail(name, rule + problem) from None
    if not isinstance(value, datetime):
        raise fail(name, f"{rule}, got {show(value)}")
    if value.utcoffset() is None:
        raise fail(name, f"{rule} (this one has no offset)")
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise fail(name, f"{rule}, got {show(value)} (out of range)") from None
    # tomlkit's DateTime item is a datetime subclass; records hold plain datetimes.
    return datetime(
        value.year, value.month, value.day,
        value.hour, value.minute, value.second, value.microsecond, tzinfo=UTC,
    )  # fmt: skip


def check_secret_ref(value: Any, name: str) -> str:
    """A secret reference (``keyring:NAME``, ``env:VAR``, ``file:/absolute/path``), trimmed.
    The message of a refusal never repeats the value (it may be a pasted secret)."""
    if not isinstance(value, str):
        raise fail(name, "must be a string: keyring:NAME, env:VAR or file:/absolute/path")
    try:
        parse_secret_ref(value.strip())
    except SecretRefError as exc:
        raise fail(name, str(exc)) from None
    return value.strip()


def int_range(low: int, high: int) -> Check:
    """A check for an integer from ``low`` to ``high`` inclusive (a bool is no integer)."""

    def check(value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise fail(name, f"must be an integer from {low} to {high}, got {show(value)}")
        return int(value)

    return check


def jsonable(value: Any) -> Any:
    """A record field as JSON holds it: datetimes as RFC 3339 strings in UTC (``Z``), dates
    and times in ISO form, tuples as lists, mappings with string keys; others unchanged."""
    if isinstance(value, datetime):
        return format_rfc3339(value, timespec="auto")
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def plain(value: Any) -> Any:
    """A deep copy made of builtin types: tomlkit items unwrapped, mappings as dicts with
    string keys, sequences as lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    unwrap = getattr(value, "unwrap", None)
    return unwrap() if callable(unwrap) else value


def record_defaults(model: Any) -> dict[str, Any]:
    """``{field: default}`` of a record dataclass, for the fields that have one."""
    return {
        f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        for f in dataclasses.fields(model)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }


def check_record(
    fields: Mapping[str, Any], prefix: str, checks: Mapping[str, Check], required: tuple[str, ...]
) -> dict[str, Any]:
    """What every record kind checks: unknown keys refused (the closest known key as a hint),
    each non-``None`` value run through its check in ``checks`` order, ``required`` present.
    Field names are ``prefix + key``."""
    if not isinstance(fields, Mapping):
        raise fail(prefix.rstrip(".") or "fields", "must be a table of fields")
    known = tuple(checks)
    for key in fields:
        if key not in checks:
            hint = difflib.get_close_matches(str(key), known, n=1)
            guess = f" did you mean {hint[0]!r}?" if hint else ""
            raise fail(f"{prefix}{key}", f"unknown key;{guess} allowed: {', '.join(known)}")
    out = {key: check(fields[key], f"{prefix}{key}")
           for key, check in checks.items() if fields.get(key) is not None}
    for key in required:
        if key not in out:
            raise fail(f"{prefix}{key}", "is required")
    return out


def check_rotation_pair(out: Mapping[str, Any], prefix: str) -> None:
    """``previous_secret_ref`` and ``previous_valid_until`` come together or not at all."""
    if ("previous_secret_ref" in out) != ("previous_valid_until" in out):
        missing = "previous_valid_until" if "previous_secret_ref" in out else "previous_secret_ref"
        raise fail(
            f"{prefix}{missing}",
            "is required with the other one: previous_secret_ref stays accepted until"
            " previous_valid_until",
        )


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
        raise fail(table, f"must be an array of tables, written [[{table}]]")
    if len(records) > limit:
        raise fail(f"{table}[{limit}]",
                   f"at most {limit} {noun} are allowed, found {len(records)}")
    out: dict[str, dict[str, Any]] = {}
    first: dict[str, int] = {}
    for index, record in enumerate(records):
        prefix = f"{table}[{index}]"
        if not isinstance(record, dict):
            raise fail(prefix, f"must be a table of fields, got {show(record)}")
        norm = validate(record, prefix + ".")
        record_id = norm[id_key]
        if record_id in first:
            raise fail(
                f"{prefix}.{id_key}",
                f"duplicate id {record_id!r} (already used by {table}[{first[record_id]}])",
            )
        first[record_id] = index
        out[record_id] = norm
    return out
