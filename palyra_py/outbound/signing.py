"""Signing outbound deliveries: Standard Webhooks headers (every delivery) and, for
``signature_format = "github"``, GitHub's ``X-Hub-Signature-256``. Pure apart from
``generate_subscription_secret`` (the OS random source).

The secret decoding and the signed content are the inbound verifier's
(``providers.standard_webhooks``), so what we sign is exactly what our own ingress accepts
(``tests/test_signing.py`` checks both that and the reference library).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets as _random
from collections.abc import Sequence

from palyra_py.providers import _common as c
from palyra_py.providers.standard_webhooks import (
    ID,
    SECRET_PREFIX,
    SIGNATURE,
    TIMESTAMP,
    decode_secret,
)

GITHUB_SIGNATURE_HEADER = "X-Hub-Signature-256"
SECRET_BYTES = 32


class StandardWebhooksSigner:
    """Signs with every secret given: the first is the current one, the others are still
    inside their rotation grace. Each must be ``whsec_<base64>`` (the prefix is optional) and
    decode to at least one byte; otherwise ``ValueError`` (naming the position, never the
    secret)."""

    def __init__(self, secrets: Sequence[str]) -> None:
        if isinstance(secrets, str) or not secrets:
            raise ValueError("StandardWebhooksSigner needs a sequence of at least one secret")
        keys: list[bytes] = []
        for index, secret in enumerate(secrets):
            key = decode_secret(secret)
            if key is None:
                raise ValueError(f"signing secret #{index + 1} is not whsec_<base64>")
            keys.append(key)
        # One keyed HMAC per secret, copied for each message: the key schedule (and
        # OpenSSL's digest lookup) once per signer instead of once per delivery.
        self._macs = tuple(hmac.new(key, digestmod=hashlib.sha256) for key in keys)

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` (one
        space-separated ``v1,<base64>`` per secret, current first). ``msg_id`` must stay the
        same across retries of one message: receivers dedupe on it."""
        stamp = str(int(timestamp))
        # The content standard_webhooks.sign_v1 signs: "{id}.{timestamp}.{body}".
        signed = c.to_bytes(msg_id) + b"." + stamp.encode("ascii") + b"." + body
        entries = []
        for keyed in self._macs:
            mac = keyed.copy()
            mac.update(signed)
            entries.append("v1," + base64.b64encode(mac.digest()).decode("ascii"))
        return {ID: msg_id, TIMESTAMP: stamp, SIGNATURE: " ".join(entries)}


def github_signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>`` of the body, for ``X-Hub-Signature-256``.

    Keyed by the secret *string's UTF-8 bytes* (the whole ``whsec_...`` text, not its decoded
    base64): a GitHub-style receiver is configured with a plain shared secret and HMACs with
    those bytes, so the operator pastes the subscription secret as it is shown."""
    return "sha256=" + c.hmac_digest(c.to_bytes(secret), body).hex()


def generate_subscription_secret() -> str:
    """A new ``whsec_`` secret: base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(_random.token_bytes(SECRET_BYTES)).decode("ascii")
