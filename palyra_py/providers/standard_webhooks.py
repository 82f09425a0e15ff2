"""Standard Webhooks (spec v1, as sent by Svix and others): ``webhook-id``,
``webhook-timestamp``, ``webhook-signature: v1,<base64> [v1,<base64> ...]``."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from secrets import token_hex
from typing import Any, ClassVar

from palyra_py.providers import _common as c
from palyra_py.providers.base import Headers, SignedRequest, Verified
from palyra_py.reasons import Reason, Rejection

ID = "webhook-id"
TIMESTAMP = "webhook-timestamp"
SIGNATURE = "webhook-signature"
SECRET_PREFIX = "whsec_"  # noqa: S105 (a format marker, not a secret)
KEPT = (ID, TIMESTAMP, "User-Agent")


def decode_secret(secret: str) -> bytes | None:
    """The HMAC key of a ``whsec_<base64>`` secret (the prefix is optional); ``None`` when the
    rest is not strict base64 or decodes to nothing."""
    text = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return None
    return key or None


def sign_v1(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    """One ``v1,<base64>`` signature entry."""
    signed = c.to_bytes(msg_id) + b"." + timestamp.encode("ascii") + b"." + body
    return "v1," + base64.b64encode(c.hmac_digest(key, signed)).decode("ascii")


class StandardWebhooksSignature:
    """Standard Webhooks receivers.

    All three headers are required (``SIGNATURE_MISSING`` without any of them). The timestamp
    must be whole seconds as ASCII digits: a float, negative or non-digit value is malformed,
    so ``SIGNATURE_MISMATCH`` (it cannot be what a conforming sender signed). Only ``v1,``
    entries are checked (``v1a,`` Ed25519 and unknown versions are ignored), the first 16 of
    them; the base64 is compared as text. A secret that is not ``whsec_<base64>`` or plain
    base64 never matches. Delivery id is ``webhook-id``; event type the body's ``type`` when
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
        msg_id = c.signature_header(headers, ID)
        stamp = c.signature_header(headers, TIMESTAMP)
        value = c.signature_header(headers, SIGNATURE)
        secret_keys = c.usable_secrets(secrets)
        timestamp = c.parse_unix_seconds(stamp, TIMESTAMP)
        candidates = c.prefixed_candidates(value.split(), "v1,", keep_prefix=True)
        keys = [key for key in map(decode_secret, secret_keys) if key is not None]
        expected = (sign_v1(key, msg_id, stamp, body).encode("ascii") for key in keys)
        if not candidates or not c.any_match(candidates, expected):
            raise Rejection(Reason.SIGNATURE_MISMATCH, f"no {SIGNATURE} v1 entry matches")
        c.check_tolerance(timestamp, now, tolerance_s)
        return c.signed_at(self.verify_unsigned(headers, body), timestamp)

    def verify_unsigned(self, headers: Headers, body: bytes) -> Verified:
        event = c.json_object(body) or {}
        return Verified(
            event_type=c.event_type(event.get("type")),
            delivery_id=c.delivery_id(c.optional_header(headers, ID)),
            timestamp=None,
            headers_kept=c.kept_headers(headers, KEPT),
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
        ``event_type`` is not used. Raise ``ValueError`` for a secret that is not base64."""
        key = decode_secret(secret)
        if key is None:
            raise ValueError("secret is not whsec_<base64>")
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
