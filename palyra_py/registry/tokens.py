"""API tokens: the ``[[tokens]]`` records of ``webhooks.toml``.

A token lets an HTTP client publish events, read events and scrape ``/metrics`` on the
ingress listener, as far as its ``scopes`` allow. Its text is ``plt_<token_id>_<random>``;
the registry holds the id, a name, its scopes, an optional expiry, and the ``secret_ref`` of
the whole token text (``keyring:token:<token_id>``), never the token. The daemon takes the
id out of a presented token with ``split_token``, resolves that token's ``secret_ref``,
compares the whole text in constant time and then acts for a :class:`Principal`.

Scopes (``docs/admin-api.md``, "Token scopes"):

- ``publish`` / ``publish:<glob>``: ``POST /v1/events`` for event types the glob matches.
- ``read`` / ``read:<glob>``: ``GET /v1/events`` and ``/v1/events/stream`` for the events
  whose published type the glob matches. Received webhooks (``github.push``) and the
  daemon's own events (``subscription.created``) need a glob that starts with their
  namespace (``read:github.*``, ``read:subscription.*``): bare ``read`` and ``read:*`` give
  the events applications publish, and nothing else.
- ``metrics``: ``GET /metrics``. ``admin``: ``GET /metrics`` now; reserved for the remote
  admin API and the dashboard.

A record without ``scopes`` (written before scopes existed) is a *legacy* token: it keeps
exactly the rights tokens had then (publish any type the daemon allows, read every event).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import tomlkit

from palyra_py.events import SYSTEM_SOURCES, published_type
from palyra_py.providers._common import same_secret
from palyra_py.registry.edit import RecordKind, add_record, remove_record
from palyra_py.registry.fields import (
    Check,
    check_datetime,
    check_record,
    check_secret_ref,
    collect_records,
    fail,
    jsonable,
    record_defaults,
    show,
)

if TYPE_CHECKING:
    from palyra_py.events import JournalEvent

MAX_TOKENS = 256
MAX_NAME_CHARS = 64
MAX_DESCRIPTION_CHARS = 256
TOKEN_PREFIX = "plt_"  # noqa: S105 (the public prefix of every token, not a secret)
TOKEN_ID_CHARS = 12
# Lowercase base32: no "_" (the separator inside a token) and nothing to mistype or quote.
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_TOKEN_ID = re.compile(r"[a-z0-9]{8,32}")
_TOKEN_RANDOM = re.compile(r"[A-Za-z0-9_-]{16,128}")  # what secrets.token_urlsafe gives
_MAX_TOKEN_CHARS = len(TOKEN_PREFIX) + 32 + 1 + 128

SCOPE_KINDS = ("publish", "read", "admin", "metrics")
"""``publish`` and ``read`` take an optional ``:<glob>``; ``admin`` and ``metrics`` none."""
GLOB_SCOPES = ("publish", "read")
MAX_SCOPES = 32
MAX_SCOPE_GLOB_CHARS = 128
_SCOPE_GLOB = re.compile(r"[a-z0-9._:*?-]{1,128}")
DEFAULT_SCOPES = ("publish",)
"""What ``POST /v1/tokens`` gives a token created without ``scopes``."""
MAX_EXPIRES_IN_S = 10 * 366 * 86400


@dataclass(frozen=True, slots=True)
class ApiToken:
    token_id: str
    name: str
    secret_ref: str
    description: str = ""
    created_at: datetime | None = None
    scopes: tuple[str, ...] | None = None
    """``None``: a legacy token (the record has no ``scopes``)."""
    expires_at: datetime | None = None

    @property
    def legacy(self) -> bool:
        return self.scopes is None

    def to_dict(self) -> dict[str, Any]:
        """``{token_id, name, description, scopes, legacy, expires_at, created_at}``,
        JSON-ready; neither the token nor where it is kept. ``scopes`` is ``null`` for a
        legacy token."""
        out = {name: jsonable(getattr(self, name)) for name in PUBLIC_FIELDS}
        out["legacy"] = self.legacy
        return out


PUBLIC_FIELDS = ("token_id", "name", "description", "scopes", "expires_at", "created_at")
# The order a new record is written in.
FIELDS = ("token_id", "name", "description", "scopes", "expires_at", "secret_ref", "created_at")
assert set(FIELDS) == {f.name for f in dataclasses.fields(ApiToken)}
DEFAULTS: dict[str, Any] = record_defaults(ApiToken)


def new_token_id() -> str:
    """A fresh random token id: 12 lowercase base32 characters (60 bits)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(TOKEN_ID_CHARS))


def token_secret_ref(token_id: str) -> str:
    """Where the daemon keeps a token's text: ``keyring:token:<token_id>``."""
    return f"keyring:token:{token_id}"


def format_token(token_id: str, secret_random: str) -> str:
    """``plt_<token_id>_<random>``. ``ValueError`` unless ``token_id`` is 8 to 32 of a-z 0-9
    and ``secret_random`` 16 to 128 of A-Z a-z 0-9 _ - (e.g. ``secrets.token_urlsafe(32)``)."""
    if not _TOKEN_ID.fullmatch(token_id):
        raise ValueError("token_id must be 8 to 32 characters of a-z 0-9")
    if not _TOKEN_RANDOM.fullmatch(secret_random):
        raise ValueError("the random part must be 16 to 128 characters of A-Z a-z 0-9 _ -")
    return f"{TOKEN_PREFIX}{token_id}_{secret_random}"


def split_token(text: str) -> tuple[str, str] | None:
    """``(token_id, text)`` when ``text`` has the shape ``format_token`` gives, else
    ``None``. It says nothing about whether the token is valid: compare ``text`` with the
    stored token (:func:`token_matches`) for that."""
    if len(text) > _MAX_TOKEN_CHARS or not text.startswith(TOKEN_PREFIX):
        return None
    token_id, sep, random_part = text[len(TOKEN_PREFIX) :].partition("_")
    if not sep or not _TOKEN_ID.fullmatch(token_id) or not _TOKEN_RANDOM.fullmatch(random_part):
        return None
    return token_id, text


def token_matches(expected: str, given: str) -> bool:
    """Whether a presented token equals the stored one, in time that depends on neither's
    length: the providers' ``same_secret``, which hashes both to SHA-256 before
    ``hmac.compare_digest``."""
    return same_secret(given.encode(), expected.encode())


# ---------------------------------------------------------------------------------------
# Field checks.


def _check_token_id(value: Any, name: str) -> str:
    norm = value.strip().lower() if isinstance(value, str) else None
    if norm is None or not _TOKEN_ID.fullmatch(norm):
        raise fail(name, f"must be 8 to 32 characters of a-z 0-9, got {show(value)}")
    return norm


def _printable(low: int, high: int) -> Check:
    def check(value: Any, name: str) -> str:
        norm = value.strip() if isinstance(value, str) else None
        if norm is None or not low <= len(norm) <= high or not norm.isprintable():
            raise fail(name, f"must be {low} to {high} printable characters, got {show(value)}")
        return norm

    return check


def parse_scope(text: str) -> str:
    """One scope, trimmed and lowercased: ``publish``, ``publish:<glob>``, ``read``,
    ``read:<glob>``, ``admin`` or ``metrics``; ``ValueError`` saying what is wrong. A glob is
    1 to 128 characters of ``a-z 0-9 . _ : - * ?`` (fnmatch, matched against event
    types)."""
    norm = text.strip().lower()
    kind, sep, glob = norm.partition(":")
    if kind not in SCOPE_KINDS:
        raise ValueError(f"unknown scope {text[:60]!r}: use {', '.join(SCOPE_KINDS)}"
                         " (publish and read may take :<glob>, e.g. publish:entry.*)")
    if not sep:
        return kind
    if kind not in GLOB_SCOPES:
        raise ValueError(f"scope {kind} takes no glob, got {text[:60]!r}")
    if not _SCOPE_GLOB.fullmatch(glob):
        raise ValueError(f"scope {text[:60]!r}: the glob must be 1 to {MAX_SCOPE_GLOB_CHARS}"
                         " characters of a-z 0-9 . _ : - * ?")
    return f"{kind}:{glob}"


def _check_scopes(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise fail(name, f"must be an array of 1 to {MAX_SCOPES} scopes, got {show(value)}"
                   " (publish[:glob], read[:glob], admin, metrics)")
    seen: dict[str, None] = {}
    for index, entry in enumerate(value):
        if not isinstance(entry, str):
            raise fail(f"{name}[{index}]", f"must be a string, got {show(entry)}")
        try:
            seen.setdefault(parse_scope(entry), None)
        except ValueError as exc:
            raise fail(f"{name}[{index}]", str(exc)) from None
    if len(seen) > MAX_SCOPES:
        raise fail(name, f"must have at most {MAX_SCOPES} distinct scopes, got {len(seen)}")
    return tuple(seen)


CHECKS: dict[str, Check] = {
    "token_id": _check_token_id,
    "name": _printable(1, MAX_NAME_CHARS),
    "description": _printable(0, MAX_DESCRIPTION_CHARS),
    "scopes": _check_scopes,
    "expires_at": check_datetime,
    "secret_ref": check_secret_ref,
    "created_at": check_datetime,
}
assert tuple(CHECKS) == FIELDS


def validate_token_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise and check token fields; return the normalised dict (``ApiToken(**result)``);
    raise ``RegistryError`` naming the field. ``token_id``, ``name`` and ``secret_ref`` are
    required; ``None`` counts as absent."""
    return _validate(fields, "")


def _validate(fields: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return check_record(fields, prefix, CHECKS, ("token_id", "name", "secret_ref"))


def parse_tokens(data: Mapping[str, Any]) -> dict[str, ApiToken]:
    """The ``[[tokens]]`` of parsed registry TOML by id, in file order: at most 256, ids
    unique. Field names in errors are ``tokens[i].key``."""
    records = collect_records(data, "tokens", "token_id", MAX_TOKENS, "tokens", _validate)
    return {key: ApiToken(**norm) for key, norm in records.items()}


TOKENS = RecordKind(
    "tokens", "token_id", "token", MAX_TOKENS, FIELDS, DEFAULTS, frozenset(FIELDS),
    validate_token_fields,
)  # fmt: skip


def add_token(doc: tomlkit.TOMLDocument, fields: Mapping[str, Any], now: datetime) -> None:
    """Append a ``[[tokens]]`` record with ``created_at = now``. Without ``token_id`` a new
    one is drawn (give one: the caller must know it to store the token's text first); without
    ``secret_ref`` it is ``token_secret_ref(token_id)``. ``RegistryError`` if the id exists
    (field ``token_id``), 256 tokens exist already, or a field is invalid."""
    token_id = fields.get("token_id") or new_token_id()
    merged = {**fields, "token_id": token_id, "created_at": now}
    if merged.get("secret_ref") is None and isinstance(token_id, str):
        merged["secret_ref"] = token_secret_ref(token_id.strip().lower())
    norm = validate_token_fields(merged)
    add_record(doc, TOKENS, norm)


def remove_token(doc: tomlkit.TOMLDocument, token_id: str) -> None:
    """Remove one token record with the comment block right above it; ``KeyError`` if
    unknown. The caller deletes the token's secret."""
    remove_record(doc, TOKENS, token_id)


# ---------------------------------------------------------------------------------------
# What a token may do.


def _globs(scopes: tuple[str, ...], kind: str) -> tuple[str, ...]:
    prefix = kind + ":"
    return tuple("*" if scope == kind else scope[len(prefix):]
                 for scope in scopes if scope == kind or scope.startswith(prefix))


def type_namespace(name: str) -> str:
    """``github`` for ``github.push`` (and for ``github:push``): the namespace a read scope
    must name to see a received webhook, and that publishers may not use for a provider."""
    return re.split(r"[.:]", name, maxsplit=1)[0]


@dataclass(frozen=True, slots=True)
class ReadScope:
    """Which events a scoped token may read: a journal event is visible when one of
    ``globs`` matches its published type (``github.push`` for a received GitHub push, the
    kind for every other event). A received webhook, or an event of the daemon's own
    (``subscription.created``, ``webhook.rejected``), also needs that glob to name its
    namespace: to be the type itself or to start with ``<namespace>.``. So ``read`` and
    ``read:*`` show what applications publish and nothing the daemon received or did.
    Hashable (stream clients with the same filter and scope share one group)."""

    globs: tuple[str, ...]

    def __call__(self, event: JournalEvent) -> bool:
        type_ = published_type(event)
        protected = event.kind == "webhook.received" or event.source in SYSTEM_SOURCES
        namespace = type_namespace(type_) + "."
        for glob in self.globs:
            if fnmatch.fnmatchcase(type_, glob) and (
                not protected or glob == type_ or glob.startswith(namespace)
            ):
                return True
        return False


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid token speaks for, and what it may do."""

    token_id: str
    name: str
    scopes: tuple[str, ...] | None
    """``None``: a legacy token (publish any type the daemon allows, read every event)."""

    @classmethod
    def of(cls, token: ApiToken) -> Principal:
        return cls(token.token_id, token.name, token.scopes)

    @property
    def legacy(self) -> bool:
        return self.scopes is None

    @property
    def tag(self) -> str:
        """``token:<token_id>``: how published events name the token that published them."""
        return f"token:{self.token_id}"

    def can_publish(self, event_type: str) -> bool:
        if self.scopes is None:
            return True
        return any(fnmatch.fnmatchcase(event_type, glob)
                   for glob in _globs(self.scopes, "publish"))

    @property
    def can_read(self) -> bool:
        return self.scopes is None or bool(_globs(self.scopes, "read"))

    def read_scope(self) -> ReadScope | None:
        """The filter on what it reads; ``None`` for a legacy token (everything)."""
        return None if self.scopes is None else ReadScope(_globs(self.scopes, "read"))

    @property
    def can_scrape_metrics(self) -> bool:
        return self.scopes is not None and ("metrics" in self.scopes or "admin" in self.scopes)

    @property
    def can_administer(self) -> bool:
        """The ``admin`` scope: the registry's export and import on the TCP listener
        (never a legacy token)."""
        return self.scopes is not None and "admin" in self.scopes
