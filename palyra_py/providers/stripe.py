"""Stripe: ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`` over ``"{t}.{body}"``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from secrets import choice, randbelow
from typing import Any, ClassVar

from palyra_py.providers import _common as c
from palyra_py.providers.base import Headers, SignedRequest, Verified
from palyra_py.reasons import Reason, Rejection

SIGNATURE = "Stripe-Signature"
KEPT = ("User-Agent",)
_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class StripeSignature:
    """Stripe webhooks.

    The HMAC key is the whole secret string (``whsec_...``) as UTF-8, not decoded. Only ``v1``
    entries are signatures (``v0`` and unknown schemes are ignored); any of the first 16
    matching any secret accepts. A header without ``t`` or without any ``v1`` is malformed
    (``SIGNATURE_MISMATCH``). Unlike stripe-python, a timestamp too far in the *future* is
    refused as well. The delivery id is the event ``id`` from the JSON body (Stripe keeps it on
    retries), the event type its ``type``; either is absent (``None`` / ``"unknown"``) when the
    body is not a JSON object with that string field. No options.
    """

    name: ClassVar[str] = "stripe"
    timestamped: ClassVar[bool] = True
    delivery_id_signed: ClassVar[bool] = True  # the event id is in the signed body

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
        value = c.signature_header(headers, SIGNATURE)
        keys = c.usable_secrets(secrets)
        stamp: str | None = None
        candidates: list[str] = []
        for item in value.split(","):
            scheme, sep, text = item.strip().partition("=")
            if not sep:
                continue
            if scheme == "t" and stamp is None:
                stamp = text
            elif scheme == "v1" and len(candidates) < c.MAX_CANDIDATES:
                candidates.append(text)
        if stamp is None or not candidates:
            raise Rejection(Reason.SIGNATURE_MISMATCH, f"{SIGNATURE} lacks t= or v1=")
        timestamp = c.parse_unix_seconds(stamp, f"{SIGNATURE} t=")
        signed = stamp.encode("ascii") + b"." + body
        if not c.hmac_matches(candidates, keys, signed):
            raise Rejection(Reason.SIGNATURE_MISMATCH, f"no {SIGNATURE} v1 matches")
        c.check_tolerance(timestamp, now, tolerance_s)
        return c.signed_at(self.verify_unsigned(headers, body), timestamp)

    def verify_unsigned(self, headers: Headers, body: bytes) -> Verified:
        event = c.json_object(body) or {}
        return Verified(
            event_type=c.event_type(event.get("type")),
            delivery_id=c.delivery_id(event.get("id")),
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
        """Stripe carries the event type and id in the body, so ``event_type`` and
        ``delivery_id`` are not used: sign a body that already holds them."""
        stamp = str(int(now))
        signature = c.hmac_digest(c.to_bytes(secret), stamp.encode("ascii") + b"." + body)
        return SignedRequest(
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                SIGNATURE: f"t={stamp},v1={signature.hex()}",
            },
            body=body,
        )

    def sample_event(self) -> tuple[str, bytes]:
        """``payment_intent.succeeded`` with a fresh random ``evt_`` id."""
        suffix = "".join(choice(_ID_ALPHABET) for _ in range(24))
        body = {
            "id": f"evt_{suffix}",
            "object": "event",
            "api_version": "2024-06-20",
            "created": 1_700_000_000,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": "payment_intent.succeeded",
            "data": {
                "object": {
                    "id": f"pi_{suffix[::-1]}",
                    "object": "payment_intent",
                    "amount": 1000 + randbelow(9000),
                    "currency": "usd",
                    "status": "succeeded",
                }
            },
        }
        return "payment_intent.succeeded", c.compact_json(body)
