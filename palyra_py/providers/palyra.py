"""Palyra: the sender posts a v1 envelope itself, signed ``X-Palyra-Signature: sha256=<hex>``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from secrets import token_hex
from typing import Any, ClassVar

from palyra_py.ids import random_ulid
from palyra_py.providers import _common as c
from palyra_py.providers.base import Headers, SignedRequest, Verified
from palyra_py.reasons import Reason, Rejection

SIGNATURE = "X-Palyra-Signature"
PREFIX = "sha256="
KEPT = ("User-Agent",)
_MAX_MS = 2**53


def _envelope(body: bytes) -> dict[str, Any]:
    """The parsed envelope with the fields the ingress relies on checked.

    Only ``event`` (string), ``replay_protection.nonce`` (string) and
    ``replay_protection.timestamp_unix_ms`` (integer in 0..2**53, not a boolean) are checked
    here; the daemon validates the whole envelope against the v1 schema afterwards.
    """
    try:
        parsed = c.parse_json_strict(body)
    except c.NotJson as exc:
        raise Rejection(Reason.MALFORMED_JSON, "body is not UTF-8 JSON") from exc
    if not isinstance(parsed, dict):
        raise Rejection(Reason.SCHEMA_VIOLATION, "envelope is not a JSON object")
    if not isinstance(parsed.get("event"), str):
        raise Rejection(Reason.SCHEMA_VIOLATION, "envelope 'event' is not a string")
    replay = parsed.get("replay_protection")
    if not isinstance(replay, dict):
        raise Rejection(Reason.SCHEMA_VIOLATION, "envelope 'replay_protection' is not an object")
    if not isinstance(replay.get("nonce"), str):
        raise Rejection(Reason.SCHEMA_VIOLATION, "replay_protection 'nonce' is not a string")
    stamp = replay.get("timestamp_unix_ms")
    # The upper bound keeps ms / 1000 a float (JSON integers may have 4,300 digits); 2**53 ms
    # is 285,000 years away, so no sender is refused for it.
    if not isinstance(stamp, int) or isinstance(stamp, bool) or not 0 <= stamp <= _MAX_MS:
        raise Rejection(
            Reason.SCHEMA_VIOLATION,
            "replay_protection 'timestamp_unix_ms' is not an integer in 0..2**53",
        )
    return parsed


def _seconds(envelope: dict[str, Any]) -> float:
    ms: int = envelope["replay_protection"]["timestamp_unix_ms"]
    return ms / 1000


def _found(envelope: dict[str, Any], headers: Headers) -> Verified:
    replay = envelope["replay_protection"]
    return Verified(
        event_type=c.event_type(envelope["event"]),
        delivery_id=c.delivery_id(replay["nonce"]),
        timestamp=_seconds(envelope),
        envelope=envelope,
        headers_kept=c.kept_headers(headers, KEPT),
    )


class PalyraSignature:
    """Senders speaking Palyra's own format: the body *is* a v1 envelope.

    The signature is checked first (HMAC-SHA256 of the raw body, lower-case hex), then the body
    is parsed: not JSON -> ``MALFORMED_JSON``; no ``event`` / ``replay_protection.nonce`` /
    ``replay_protection.timestamp_unix_ms`` of the right types -> ``SCHEMA_VIOLATION``. The
    tolerance applies to ``timestamp_unix_ms / 1000``. Delivery id is the nonce, event type
    ``event``, and ``Verified.envelope`` the parsed object. No options.
    """

    name: ClassVar[str] = "palyra"
    timestamped: ClassVar[bool] = True
    delivery_id_signed: ClassVar[bool] = True  # the nonce is in the signed envelope

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
        candidate = c.without_prefix(value, PREFIX, SIGNATURE)
        if not c.hmac_matches([candidate], keys, body):
            raise Rejection(Reason.SIGNATURE_MISMATCH, f"{SIGNATURE} does not match")
        envelope = _envelope(body)
        c.check_tolerance(_seconds(envelope), now, tolerance_s)
        return _found(envelope, headers)

    def verify_unsigned(self, headers: Headers, body: bytes) -> Verified:
        """Parse and check the envelope as :meth:`verify` does, but neither the signature nor
        the timestamp (no clock here); ``timestamp`` is the envelope's."""
        return _found(_envelope(body), headers)

    def sign(
        self,
        body: bytes,
        secret: str,
        now: float,
        event_type: str,
        delivery_id: str,
    ) -> SignedRequest:
        """Sign ``body`` as a Palyra sender would.

        When ``body`` is a JSON object, its ``replay_protection`` is first rewritten to
        ``{"nonce": delivery_id, "timestamp_unix_ms": int(now * 1000)}`` (other keys kept) and
        the object re-serialised compactly, so that a :meth:`sample_event` body, which has no
        clock, is fresh. ``event_type`` is not used (``event`` is in the envelope). Any other
        body is signed unchanged.
        """
        parsed = c.parse_json(body)
        if isinstance(parsed, dict):
            replay = parsed.get("replay_protection")
            replay = dict(replay) if isinstance(replay, dict) else {}
            replay["nonce"] = delivery_id
            replay["timestamp_unix_ms"] = int(now * 1000)
            parsed["replay_protection"] = replay
            body = c.compact_json(parsed)
        signature = c.hmac_digest(c.to_bytes(secret), body).hex()
        return SignedRequest(
            headers={
                "Content-Type": "application/json",
                "User-Agent": "palyra-webhooks/1",
                SIGNATURE: PREFIX + signature,
            },
            body=body,
        )

    def sample_event(self) -> tuple[str, bytes]:
        """A ``palyra.test`` envelope with a random ULID-shaped ``id`` and nonce and a zero
        timestamp (:meth:`sign` sets the real one)."""
        body = {
            "v": 1,
            "id": random_ulid(),
            "event": "palyra.test",
            "source": "palyra-py",
            "payload": {"message": "hello from palyra-py"},
            "replay_protection": {"nonce": token_hex(16), "timestamp_unix_ms": 0},
        }
        return "palyra.test", c.compact_json(body)
