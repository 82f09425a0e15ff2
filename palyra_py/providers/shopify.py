"""Shopify: ``X-Shopify-Hmac-Sha256`` = base64(HMAC-SHA256(raw body, app client secret))."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from secrets import randbelow
from typing import Any, ClassVar

from palyra_py.providers import _common as c
from palyra_py.providers.base import Headers, SignedRequest, Verified
from palyra_py.reasons import Reason, Rejection
from palyra_py.times import format_rfc3339

SIGNATURE = "X-Shopify-Hmac-Sha256"
TOPIC = "X-Shopify-Topic"
EVENT_ID = "X-Shopify-Event-Id"
WEBHOOK_ID = "X-Shopify-Webhook-Id"
_SHOPIFY_KEPT = (
    TOPIC,
    EVENT_ID,
    WEBHOOK_ID,
    "X-Shopify-Shop-Domain",
    "X-Shopify-API-Version",
    "X-Shopify-Triggered-At",
)


def unprefixed(name: str) -> str:
    """The newer spelling of a Shopify header, without ``X-`` (``Shopify-Topic``)."""
    return name.removeprefix("X-")


# Every Shopify header in both spellings (the newer Events deliveries drop the ``X-``).
KEPT = (*_SHOPIFY_KEPT, *map(unprefixed, _SHOPIFY_KEPT), "User-Agent")


def _either(headers: Headers, name: str) -> str | None:
    """The trimmed value of ``name`` or, when absent or empty, of its unprefixed spelling."""
    return c.optional_header(headers, name) or c.optional_header(headers, unprefixed(name))


class ShopifySignature:
    """Shopify webhooks. Not timestamped (``X-Shopify-Triggered-At`` is not signed).

    The header must be exactly the padded standard base64 Shopify sends; it is compared as
    text, so any other spelling of the same bytes is refused. Event type ``X-Shopify-Topic``
    (``orders/create``); delivery id ``X-Shopify-Event-Id``, else ``X-Shopify-Webhook-Id``.
    Each header is also read under its newer spelling without ``X-`` (``Shopify-Hmac-Sha256``,
    ``Shopify-Topic``, ``Shopify-Event-Id``, ``Shopify-Webhook-Id``, ...); the ``X-`` one wins
    when both are sent. No options.
    """

    name: ClassVar[str] = "shopify"
    timestamped: ClassVar[bool] = False
    delivery_id_signed: ClassVar[bool] = False  # Event-Id, Topic: unsigned

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
        name = SIGNATURE
        if c.optional_header(headers, SIGNATURE) is None:
            name = unprefixed(SIGNATURE)
            if c.optional_header(headers, name) is None:
                raise Rejection(
                    Reason.SIGNATURE_MISSING, f"no {SIGNATURE} (or {name}) header"
                )
        value = c.signature_header(headers, name)
        keys = c.usable_secrets(secrets)
        if not c.hmac_matches([value], keys, body, encode=c.base64_text):
            raise Rejection(Reason.SIGNATURE_MISMATCH, f"{name} does not match")
        return self.verify_unsigned(headers, body)

    def verify_unsigned(self, headers: Headers, body: bytes) -> Verified:
        delivery = _either(headers, EVENT_ID) or _either(headers, WEBHOOK_ID)
        return Verified(
            event_type=c.event_type(_either(headers, TOPIC)),
            delivery_id=c.delivery_id(delivery),
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
        signature = base64.b64encode(c.hmac_digest(c.to_bytes(secret), body)).decode("ascii")
        return SignedRequest(
            headers={
                "Content-Type": "application/json",
                "User-Agent": "Shopify-Captain-Hook",
                TOPIC: event_type,
                EVENT_ID: delivery_id,
                WEBHOOK_ID: delivery_id,
                "X-Shopify-Shop-Domain": "example.myshopify.com",
                "X-Shopify-API-Version": "2024-07",
                "X-Shopify-Triggered-At": format_rfc3339(datetime.fromtimestamp(now, UTC)),
                SIGNATURE: signature,
            },
            body=body,
        )

    def sample_event(self) -> tuple[str, bytes]:
        """An ``orders/create`` of one line item (random order id)."""
        order_id = 820_982_911_946_154_508 + randbelow(10**9)
        body = {
            "id": order_id,
            "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
            "email": "jon@example.com",
            "created_at": "2024-01-01T12:00:00-05:00",
            "currency": "USD",
            "financial_status": "paid",
            "total_price": "199.65",
            "line_items": [
                {
                    "id": 866550311766439020,
                    "title": "IPod Nano - 8GB",
                    "quantity": 1,
                    "price": "199.00",
                }
            ],
        }
        return "orders/create", c.compact_json(body)
