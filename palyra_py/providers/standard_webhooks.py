"""Standard Webhooks (spec v1, as sent by Svix and others): ``webhook-id``,
``webhook-timestamp``, ``webhook-signature: v1,<base64> [v1,<base64> ...]``; Svix's own
spelling ``svix-id`` / ``svix-timestamp`` / ``svix-signature`` is the same scheme."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from secrets import token_hex
from typing import Any, ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from palyra_py.providers import _common as c
from palyra_py.providers.base import CannotSign, Headers, SignedRequest, Verified
from palyra_py.reasons import Reason, Rejection

ID = "webhook-id"
TIMESTAMP = "webhook-timestamp"
SIGNATURE = "webhook-signature"
SVIX_ID = "svix-id"
SVIX_TIMESTAMP = "svix-timestamp"
SVIX_SIGNATURE = "svix-signature"
SECRET_PREFIX = "whsec_"  # noqa: S105 (a format marker, not a secret)
PUBLIC_KEY_PREFIX = "whpk_"
ED25519_KEY_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


@dataclass(frozen=True, slots=True)
class HeaderFamily:
    """The three header names one request uses; a request never mixes two families."""

    id: str
    timestamp: str
    signature: str

    @property
    def kept(self) -> tuple[str, ...]:
        return (self.id, self.timestamp, "User-Agent")


STANDARD = HeaderFamily(ID, TIMESTAMP, SIGNATURE)
SVIX = HeaderFamily(SVIX_ID, SVIX_TIMESTAMP, SVIX_SIGNATURE)


def header_family(headers: Headers) -> HeaderFamily:
    """``webhook-*`` when ``webhook-signature`` (else ``webhook-id``) is present, else
    ``svix-*`` when ``svix-signature`` (else ``svix-id``) is, else ``webhook-*``."""
    for name in (SIGNATURE, SVIX_SIGNATURE, ID, SVIX_ID):
        if c.optional_header(headers, name) is not None:
            return SVIX if name.startswith("svix-") else STANDARD
    return STANDARD


def _base64(text: str) -> bytes | None:
    """Standard base64 with or without its ``=`` padding (as both reference libraries
    accept); ``None`` for any other character, a bad length or bad padding."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        return None
    body = raw.rstrip(b"=")
    if not set(body) <= _B64_ALPHABET or len(raw) - len(body) > 2 or len(body) % 4 == 1:
        return None
    try:
        return base64.b64decode(body + b"=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def decode_secret(secret: str) -> bytes | None:
    """The HMAC key of a ``whsec_<base64>`` secret (the prefix is optional, the ``=`` padding
    too); ``None`` when the rest is not base64 or decodes to nothing."""
    return _base64(secret.removeprefix(SECRET_PREFIX)) or None


def decode_public_key(secret: str) -> bytes | None:
    """The raw Ed25519 public key of a ``whpk_<base64>`` key (32 bytes), else ``None``."""
    if not secret.startswith(PUBLIC_KEY_PREFIX):
        return None
    key = _base64(secret[len(PUBLIC_KEY_PREFIX) :])
    return key if key is not None and len(key) == ED25519_KEY_BYTES else None


def check_secret(secret: str) -> None:
    """``ValueError`` (never naming the secret) unless ``secret`` is a usable ``whsec_``
    signing secret or ``whpk_`` public key: what ``webhooks add`` refuses."""
    if secret.startswith(PUBLIC_KEY_PREFIX):
        if decode_public_key(secret) is None:
            raise ValueError(
                "a whpk_ key must be whpk_ followed by the base64 of a 32-byte Ed25519 public key"
            )
        return
    if decode_secret(secret) is None:
        raise ValueError(
            "a Standard Webhooks secret must be whsec_ followed by base64 (padding optional),"
            " or a whpk_ Ed25519 public key; this one does not decode"
        )


@lru_cache(maxsize=256)
def _public_key(raw: bytes) -> Ed25519PublicKey | None:
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        return None


def _ed25519_matches(candidates: Sequence[str], keys: Sequence[bytes], signed: bytes) -> bool:
    """Whether any ``v1a`` candidate (base64 of 64 bytes) is a valid signature of ``signed``
    by any public key. Nothing secret is involved, so the first hit may end the search."""
    for candidate in candidates:
        signature = _base64(candidate)
        if signature is None or len(signature) != ED25519_SIGNATURE_BYTES:
            continue
        for raw in keys:
            key = _public_key(raw)
            if key is None:
                continue
            try:
                key.verify(signature, signed)
            except InvalidSignature:
                continue
            return True
    return False


def signed_content(msg_id: str, timestamp: str, body: bytes) -> bytes:
    """``"{id}.{timestamp}.{body}"``: what ``v1`` and ``v1a`` sign."""
    return c.to_bytes(msg_id) + b"." + timestamp.encode("ascii") + b"." + body


def sign_v1(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    """One ``v1,<base64>`` signature entry."""
    signed = signed_content(msg_id, timestamp, body)
    return "v1," + base64.b64encode(c.hmac_digest(key, signed)).decode("ascii")


def verify_signed(
    family: HeaderFamily,
    headers: Headers,
    body: bytes,
    secrets: Sequence[str],
    now: float,
    tolerance_s: float,
) -> int:
    """Check one request's ``family`` headers against ``secrets`` (``whsec_`` secrets check
    ``v1`` entries, ``whpk_`` keys ``v1a`` entries); the signed timestamp, or ``Rejection``.
    Shared with the GitLab provider (its signing tokens are this scheme)."""
    msg_id = c.signature_header(headers, family.id)
    stamp = c.signature_header(headers, family.timestamp)
    value = c.signature_header(headers, family.signature)
    usable = c.usable_secrets(secrets)
    timestamp = c.parse_unix_seconds(stamp, family.timestamp)
    entries = value.split()
    signed = signed_content(msg_id, stamp, body)
    hmac_keys = [key for key in map(decode_secret, usable) if key is not None]
    public_keys = [key for key in map(decode_public_key, usable) if key is not None]
    matched = False
    if hmac_keys:
        v1 = c.prefixed_candidates(entries, "v1,", keep_prefix=False)
        expected = (c.base64_text(c.hmac_digest(key, signed)) for key in hmac_keys)
        matched = bool(v1) and c.any_match(v1, expected)
    if not matched and public_keys:
        v1a = c.prefixed_candidates(entries, "v1a,", keep_prefix=False)
        matched = _ed25519_matches(v1a, public_keys, signed)
    if not matched:
        raise Rejection(Reason.SIGNATURE_MISMATCH, f"no {family.signature} entry matches")
    c.check_tolerance(timestamp, now, tolerance_s)
    return timestamp


class StandardWebhooksSignature:
    """Standard Webhooks receivers (and Svix senders).

    Two header families are accepted, never mixed: ``webhook-id`` / ``webhook-timestamp`` /
    ``webhook-signature`` and Svix's default ``svix-id`` / ``svix-timestamp`` /
    ``svix-signature``. The ``webhook-*`` family is used when ``webhook-signature`` is
    present; otherwise ``svix-*`` when ``svix-signature`` is. All three headers of the family
    are required (``SIGNATURE_MISSING`` without any of them). The timestamp must be whole
    seconds as ASCII digits: a float, negative or non-digit value is malformed, so
    ``SIGNATURE_MISMATCH`` (it cannot be what a conforming sender signed).

    Secrets: ``whsec_<base64>`` (or plain base64; ``=`` padding optional) is an HMAC key
    that checks ``v1,`` entries; ``whpk_<base64>`` is the sender's Ed25519 public key
    (32 bytes) that checks ``v1a,`` entries. Unknown versions are ignored; the first 16 entries
    of each version are read. A secret of neither form never matches (``webhooks add``
    refuses it). Delivery id is the family's id header; event type the body's ``type`` when
    the body is a JSON object with a string ``type``, else ``unknown``. No options.
    """

    name: ClassVar[str] = "standard-webhooks"
    timestamped: ClassVar[bool] = True
    delivery_id_signed: ClassVar[bool] = True  # webhook-id is part of the signed content

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        c.check_options(options, (), self.name)

    def verify(
        self,
        headers: Headers,
        body: bytes,
        secrets: Sequence[str],
        now: float,
        tolerance_s: float,
    ) -> Verified:
        if all(c.optional_header(headers, name) is None for name in (SIGNATURE, SVIX_SIGNATURE)):
            raise Rejection(
                Reason.SIGNATURE_MISSING, f"no {SIGNATURE} (or {SVIX_SIGNATURE}) header"
            )
        family = header_family(headers)
        timestamp = verify_signed(family, headers, body, secrets, now, tolerance_s)
        return c.signed_at(self.verify_unsigned(headers, body), timestamp)

    def verify_unsigned(self, headers: Headers, body: bytes) -> Verified:
        family = header_family(headers)
        event = c.json_object(body) or {}
        return Verified(
            event_type=c.event_type(event.get("type")),
            delivery_id=c.delivery_id(c.optional_header(headers, family.id)),
            timestamp=None,
            headers_kept=c.kept_headers(headers, family.kept),
        )

    def sign(
        self,
        body: bytes,
        secret: str,
        now: float,
        event_type: str,
        delivery_id: str,
    ) -> SignedRequest:
        """``delivery_id`` becomes ``webhook-id``; the event type lives in the body, so
        ``event_type`` is not used. Raise :class:`CannotSign` for a ``whpk_`` public key (only
        the sender holds the private key) or a secret that is not base64."""
        if secret.startswith(PUBLIC_KEY_PREFIX):
            raise CannotSign(
                "the integration holds a whpk_ Ed25519 public key, which only verifies:"
                " the sender signs with its private key, so send a test from the sender"
            )
        key = decode_secret(secret)
        if key is None:
            raise CannotSign("the secret is not whsec_<base64>, so nothing can be signed with it")
        stamp = str(int(now))
        return SignedRequest(
            headers={
                "Content-Type": "application/json",
                ID: delivery_id,
                TIMESTAMP: stamp,
                SIGNATURE: sign_v1(key, delivery_id, stamp, body),
            },
            body=body,
        )

    def sample_event(self) -> tuple[str, bytes]:
        """An ``invoice.paid`` in the spec's ``{type, timestamp, data}`` shape."""
        body = {
            "type": "invoice.paid",
            "timestamp": "2024-01-01T00:00:00Z",
            "data": {"invoice_id": f"inv_{token_hex(8)}", "amount": 4200, "currency": "eur"},
        }
        return "invoice.paid", c.compact_json(body)
