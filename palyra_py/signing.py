"""Signing outbound deliveries: Standard Webhooks headers (every delivery) and, for
``signature_format = "github"``, GitHub's ``X-Hub-Signature-256``. Pure apart from
``generate_subscription_secret`` (the OS random source).

The HMAC helpers are the inbound verifiers' (``providers.standard_webhooks``,
``providers._common``), so what we sign is exactly what our own ingress accepts.
"""

from __future__ import annotations

import base64
import secrets as _random
from collections.abc import Sequence

from palyra_py.providers import _common as c
from palyra_py.providers.standard_webhooks import (
    ID,
    SECRET_PREFIX,
    SIGNATURE,
    TIMESTAMP,
    decode_secret,
    sign_v1,
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
        self._keys = tuple(keys)

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` (one
        space-separated ``v1,<base64>`` per secret, current first). ``msg_id`` must stay the
        same across retries of one message: receivers dedupe on it."""
        stamp = str(int(timestamp))
        signatures = " ".join(sign_v1(key, msg_id, stamp, body) for key in self._keys)
        return {ID: msg_id, TIMESTAMP: stamp, SIGNATURE: signatures}


def github_signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>`` of the body, for ``X-Hub-Signature-256``.

    Keyed by the secret *string's UTF-8 bytes* (the whole ``whsec_...`` text, not its decoded
    base64): a GitHub-style receiver is configured with a plain shared secret and HMACs with
    those bytes, so the operator pastes the subscription secret as it is shown."""
    return "sha256=" + c.hmac_digest(c.to_bytes(secret), body).hex()


def generate_subscription_secret() -> str:
    """A new ``whsec_`` secret: base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(_random.token_bytes(SECRET_BYTES)).decode("ascii")
