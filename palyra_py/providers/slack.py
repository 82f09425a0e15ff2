"""Slack: ``X-Slack-Signature: v0=<hex>`` over ``"v0:{ts}:{body}"``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from secrets import choice
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from palyra_py.providers import _common as c
from palyra_py.providers.base import Headers, SignedRequest, Verified
from palyra_py.reasons import Reason, Rejection

SIGNATURE = "X-Slack-Signature"
TIMESTAMP = "X-Slack-Request-Timestamp"
KEPT = (TIMESTAMP, "X-Slack-Retry-Num", "X-Slack-Retry-Reason", "User-Agent")
# Slash commands and interactivity payloads have a dozen fields; a bound keeps a hostile
# form body from costing more than reading it once.
_MAX_FORM_FIELDS = 256
_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _form_fields(body: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=_MAX_FORM_FIELDS
        )
    except ValueError:
        return {}
    fields: dict[str, str] = {}
    for key, value in pairs:
        fields.setdefault(key, value)
    return fields


class SlackSignature:
    """Slack Events API, slash commands and interactivity.

    The timestamp header is required (``SIGNATURE_MISSING`` without it) and must be whole
    seconds; tolerance applies in both directions, as in slack_sdk. Event type:

    - JSON body: its ``type``; for ``event_callback`` the inner ``event.type`` (``message``);
      ``url_verification`` sets ``Verified.challenge`` to the body's ``challenge``.
    - form body with a ``payload`` field holding a JSON object (interactivity): its ``type``
      (``block_actions``, ``view_submission``, ...).
    - form body with ``command`` (slash command): the command itself, e.g. ``/deploy``
      (``slash_command`` if the field is empty).
    - anything else: ``unknown``.

    Delivery id: the ``event_id`` of an ``event_callback``; ``None`` otherwise (Slack gives
    commands and interactions no idempotency key). No options.
    """

    name: ClassVar[str] = "slack"
    timestamped: ClassVar[bool] = True
    delivery_id_signed: ClassVar[bool] = True  # event_id is in the signed body

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
        stamp = c.signature_header(headers, TIMESTAMP)
        keys = c.usable_secrets(secrets)
        timestamp = c.parse_unix_seconds(stamp, TIMESTAMP)
        candidate = c.without_prefix(value, "v0=", SIGNATURE)
        signed = b"v0:" + stamp.encode("ascii") + b":" + body
        if not c.hmac_matches([candidate], keys, signed):
            raise Rejection(Reason.SIGNATURE_MISMATCH, f"{SIGNATURE} does not match")
        c.check_tolerance(timestamp, now, tolerance_s)
        return c.signed_at(self.verify_unsigned(headers, body), timestamp)

    def verify_unsigned(self, headers: Headers, body: bytes) -> Verified:
        kept = c.kept_headers(headers, KEPT)
        event = c.json_object(body)
        if event is not None:
            kind = event.get("type")
            challenge = event.get("challenge") if kind == "url_verification" else None
            delivery = None
            if kind == "event_callback":
                inner = event.get("event")
                if isinstance(inner, dict) and isinstance(inner.get("type"), str):
                    kind = inner["type"]
                delivery = event.get("event_id")
            return Verified(
                event_type=c.event_type(kind),
                delivery_id=c.delivery_id(delivery),
                timestamp=None,
                challenge=challenge if isinstance(challenge, str) else None,
                headers_kept=kept,
            )
        fields = _form_fields(body)
        if "payload" in fields:
            payload = c.json_object(fields["payload"].encode("utf-8", "surrogatepass")) or {}
            kind = payload.get("type")
        elif "command" in fields:
            kind = fields["command"] or "slash_command"
        else:
            kind = None
        return Verified(
            event_type=c.event_type(kind), delivery_id=None, timestamp=None, headers_kept=kept
        )

    def sign(
        self,
        body: bytes,
        secret: str,
        now: float,
        event_type: str,
        delivery_id: str,
    ) -> SignedRequest:
        """Slack carries the event type and ``event_id`` in the body, so ``event_type`` and
        ``delivery_id`` are not used. Content-Type is JSON for a JSON body, else form-encoded
        (slash commands and interactivity)."""
        stamp = str(int(now))
        signature = c.hmac_digest(c.to_bytes(secret), b"v0:" + stamp.encode("ascii") + b":" + body)
        is_json = c.parse_json(body) is not None
        return SignedRequest(
            headers={
                "Content-Type": (
                    "application/json" if is_json else "application/x-www-form-urlencoded"
                ),
                "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
                TIMESTAMP: stamp,
                SIGNATURE: "v0=" + signature.hex(),
            },
            body=body,
        )

    def sample_event(self) -> tuple[str, bytes]:
        """An ``event_callback`` carrying a ``message``, with a fresh random ``event_id``."""
        event_id = "Ev" + "".join(choice(_ID_ALPHABET) for _ in range(10))
        body = {
            "team_id": "T123ABC456",
            "api_app_id": "A123ABC456",
            "type": "event_callback",
            "event_id": event_id,
            "event_time": 1_700_000_000,
            "event": {
                "type": "message",
                "channel": "C123ABC456",
                "user": "U123ABC456",
                "text": "Hello from palyra",
                "ts": "1700000000.000100",
                "channel_type": "channel",
            },
        }
        return "message", c.compact_json(body)
