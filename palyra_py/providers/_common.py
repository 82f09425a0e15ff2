"""Rules every scheme shares: header bounds, constant-time matching, tolerance, id limits.

These are the documented limits callers may rely on:

- A signature (or signed timestamp / id) header that is absent, or empty after trimming
  whitespace, is ``SIGNATURE_MISSING``. One longer than :data:`MAX_HEADER_CHARS` is malformed:
  ``SIGNATURE_MISMATCH``.
- Of a header listing several signatures, only the first :data:`MAX_CANDIDATES` of the
  scheme's current version are compared; later ones never match. So a 1,000-entry header
  costs no more than 16 comparisons per secret.
- An empty ``secrets`` sequence, or a secret that is the empty string, never matches.
- Timestamps are 1 to 15 ASCII digits (whole seconds); anything else is malformed
  (``SIGNATURE_MISMATCH``). A timestamp is out of tolerance when ``abs(now - ts) >
  tolerance_s``: exactly ``tolerance_s`` away is accepted, in both directions. The check runs
  only after a signature matched, so unsigned garbage is always ``SIGNATURE_MISMATCH``.
- Event types longer than :data:`MAX_EVENT_TYPE_CHARS` are cut to that length; an empty or
  absent one is ``"unknown"``. Delivery ids longer than :data:`MAX_DELIVERY_ID_CHARS` are
  replaced by the SHA-256 hex of their UTF-8 bytes (stable, so dedupe still works); an empty
  one is ``None``. Kept header values are cut to :data:`MAX_KEPT_HEADER_CHARS`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, Literal

from palyra_py.providers.base import CASE_INSENSITIVE, Headers, Verified, get_header
from palyra_py.reasons import Reason, Rejection

MAX_HEADER_CHARS = 8192
MAX_CANDIDATES = 16
MAX_EVENT_TYPE_CHARS = 128
MAX_DELIVERY_ID_CHARS = 256
MAX_KEPT_HEADER_CHARS = 256
MAX_TIMESTAMP_DIGITS = 15
UNKNOWN_EVENT = "unknown"

_SURROGATE = re.compile("[\ud800-\udfff]")

Algorithm = Literal["sha1", "sha256", "sha512"]


def to_bytes(text: str) -> bytes:
    """UTF-8 bytes of ``text`` that never raise.

    Secrets read with ``surrogateescape`` turn back into their original bytes; any other lone
    surrogate (only ever seen in hostile headers) is encoded with ``surrogatepass`` so that the
    comparison simply fails instead of raising.
    """
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def signature_header(headers: Headers, name: str) -> str:
    """The trimmed value of a required header, or a ``Rejection``."""
    value = get_header(headers, name)
    if value is None or not value.strip():
        raise Rejection(Reason.SIGNATURE_MISSING, f"no {name} header")
    if len(value) > MAX_HEADER_CHARS:
        raise Rejection(Reason.SIGNATURE_MISMATCH, f"{name} header is too long")
    return value.strip()


def optional_header(headers: Headers, name: str | None) -> str | None:
    """The trimmed value of an informational header, ``None`` when absent or empty."""
    if name is None:
        return None
    value = get_header(headers, name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def kept_headers(headers: Headers, names: Iterable[str]) -> dict[str, str]:
    """The named headers that are present, under their canonical spelling, cut to length."""
    kept: dict[str, str] = {}
    # aiohttp's case-insensitive headers answer directly (the request path).
    get = headers.get if isinstance(headers, CASE_INSENSITIVE) else partial(get_header, headers)
    for name in names:
        value = get(name)
        if value is not None:
            kept[name] = value[:MAX_KEPT_HEADER_CHARS]
    return kept


def usable_secrets(secrets: Sequence[str]) -> list[str]:
    """The non-empty secrets, or ``SIGNATURE_MISMATCH`` when there is none."""
    usable = [secret for secret in secrets if secret]
    if not usable:
        raise Rejection(Reason.SIGNATURE_MISMATCH, "no secret configured")
    return usable


def parse_unix_seconds(text: str, what: str) -> int:
    """Whole seconds from 1-15 ASCII digits; else ``SIGNATURE_MISMATCH`` (malformed)."""
    if not (0 < len(text) <= MAX_TIMESTAMP_DIGITS and text.isascii() and text.isdigit()):
        raise Rejection(Reason.SIGNATURE_MISMATCH, f"{what} is not a unix timestamp")
    return int(text)


def check_tolerance(timestamp: float, now: float, tolerance_s: float) -> None:
    """Refuse a timestamp further than ``tolerance_s`` from ``now`` (either direction)."""
    skew = now - timestamp
    if abs(skew) > tolerance_s:
        direction = "in the past" if skew > 0 else "in the future"
        raise Rejection(
            Reason.TIMESTAMP_OUT_OF_TOLERANCE,
            f"signed timestamp is {abs(skew):.0f}s {direction} (tolerance {tolerance_s:g}s)",
        )


def hmac_digest(key: bytes, message: bytes, algorithm: Algorithm = "sha256") -> bytes:
    # The one-shot form runs in OpenSSL without building an HMAC object in Python.
    return hmac.digest(key, message, algorithm)


def any_match(candidates: Sequence[str], expected: Iterable[bytes]) -> bool:
    """Whether any candidate equals any expected encoded signature.

    Every pair is compared with ``hmac.compare_digest`` and none is skipped on a hit, so the
    time taken does not depend on where a match is. Candidates past ``MAX_CANDIDATES`` are
    ignored (callers usually trim earlier; this is the backstop).
    """
    wanted = list(expected)
    matched = False
    for candidate in candidates[:MAX_CANDIDATES]:
        raw = to_bytes(candidate)
        for value in wanted:
            matched |= hmac.compare_digest(raw, value)
    return matched


def same_secret(given: bytes, secret: bytes) -> bool:
    """Whether a presented credential equals a secret, in time that depends on neither's
    length: ``hmac.compare_digest`` returns early on unequal lengths, so both sides are first
    hashed to 32 bytes (SHA-256) and the digests compared."""
    return hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(secret).digest())


def hex_text(digest: bytes) -> bytes:
    """Lower-case hex of ``digest``, as ASCII bytes (how most schemes spell a signature)."""
    return digest.hex().encode("ascii")


def base64_text(digest: bytes) -> bytes:
    """Padded standard base64 of ``digest``, as ASCII bytes."""
    return base64.b64encode(digest)


def hmac_matches(
    candidates: Sequence[str],
    secrets: Iterable[str],
    signed: bytes,
    *,
    algorithm: Algorithm = "sha256",
    encode: Callable[[bytes], bytes] = hex_text,
) -> bool:
    """Whether any candidate equals ``encode(HMAC(secret, signed))`` for any secret (the
    secret's UTF-8 bytes are the key), compared as :func:`any_match` does."""
    expected = (encode(hmac_digest(to_bytes(key), signed, algorithm)) for key in secrets)
    return any_match(candidates, expected)


def without_prefix(value: str, prefix: str, header: str) -> str:
    """``value`` after ``prefix``; ``SIGNATURE_MISMATCH`` when it does not start with it."""
    if not value.startswith(prefix):
        raise Rejection(Reason.SIGNATURE_MISMATCH, f"{header} does not start with {prefix}")
    return value[len(prefix) :]


def prefixed_candidates(entries: Iterable[str], prefix: str, *, keep_prefix: bool) -> list[str]:
    """The first :data:`MAX_CANDIDATES` entries that start with ``prefix`` (the prefix cut
    off unless ``keep_prefix``); later ones are never read."""
    candidates: list[str] = []
    for entry in entries:
        if entry.startswith(prefix):
            candidates.append(entry if keep_prefix else entry[len(prefix) :])
            if len(candidates) == MAX_CANDIDATES:
                break
    return candidates


def signed_at(found: Verified, timestamp: float | None) -> Verified:
    """``found`` (from ``verify_unsigned``) with the verified signed ``timestamp``."""
    return dataclasses.replace(found, timestamp=None if timestamp is None else float(timestamp))


def _valid_unicode(value: str) -> str:
    # JSON escapes can smuggle lone surrogates into a string; they would break UTF-8 encoding
    # further down (journal, logs), so they become U+FFFD here.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", value)
    return value


def event_type(value: object) -> str:
    """A bounded event type: strings cut to 128 chars (lone surrogates replaced by U+FFFD);
    anything else, or an empty string, ``"unknown"``."""
    if not isinstance(value, str) or not value:
        return UNKNOWN_EVENT
    return _valid_unicode(value[:MAX_EVENT_TYPE_CHARS])


def delivery_id(value: object) -> str | None:
    """A bounded delivery id: ``None`` unless a non-empty string; over 256 chars, the SHA-256
    hex of its UTF-8 bytes; lone surrogates replaced by U+FFFD."""
    if not isinstance(value, str) or not value:
        return None
    if len(value) > MAX_DELIVERY_ID_CHARS:
        return hashlib.sha256(to_bytes(value)).hexdigest()
    return _valid_unicode(value)


class NotJson(ValueError):
    """``body`` is not valid JSON (or nests deeper than the parser allows)."""


def parse_json(body: bytes) -> Any:
    """Parse ``body`` or return ``None`` when it is not JSON; see :func:`parse_json_strict`."""
    try:
        return parse_json_strict(body)
    except NotJson:
        return None


def parse_json_strict(body: bytes) -> Any:
    """Parse ``body`` as UTF-8 JSON; raise :class:`NotJson` (never ``RecursionError``)."""
    try:
        return json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8 and over-long integer literals too.
        raise NotJson(type(exc).__name__) from None


def json_object(body: bytes) -> dict[str, Any] | None:
    """``body`` parsed as a JSON object, or ``None`` (not JSON, not an object, too deep)."""
    parsed = parse_json(body)
    return parsed if isinstance(parsed, dict) else None


def check_options(
    options: Mapping[str, Any] | None, allowed: Iterable[str], provider: str
) -> dict[str, Any]:
    """A copy of ``options``; ``ValueError`` naming any key the provider does not know."""
    given = dict(options or {})
    known = set(allowed)
    for key in given:
        if key not in known:
            expected = ", ".join(sorted(known)) or "none"
            raise ValueError(
                f"unknown provider option {key!r} for provider {provider!r} (allowed: {expected})"
            )
    return given


def compact_json(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON; lone surrogates (only in hostile input) are escaped."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode("ascii")
