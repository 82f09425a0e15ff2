"""GitLab: a shared ``X-Gitlab-Token``, compared in constant time (nothing signs the body),
or, with GitLab's signing tokens, Standard Webhooks signatures over the body."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from secrets import token_hex
from typing import Any, ClassVar

from palyra_py.providers import _common as c
from palyra_py.providers import standard_webhooks as sw
from palyra_py.providers.base import Headers, SignedRequest, Verified
from palyra_py.reasons import Reason, Rejection

TOKEN = "X-Gitlab-Token"  # noqa: S105 (a header name, not a secret)
EVENT = "X-Gitlab-Event"
EVENT_UUID = "X-Gitlab-Event-UUID"
IDEMPOTENCY_KEY = "Idempotency-Key"
KEPT = (
    EVENT,
    EVENT_UUID,
    IDEMPOTENCY_KEY,
    "X-Gitlab-Webhook-UUID",
    "X-Gitlab-Instance",
    "User-Agent",
    sw.ID,
    sw.TIMESTAMP,
)


def signing_secret(secret: str) -> bool:
    """Whether ``secret`` is a GitLab signing token (``whsec_<base64>``), not a plain token."""
    return secret.startswith(sw.SECRET_PREFIX) and sw.decode_secret(secret) is not None


def check_secret(secret: str) -> None:
    """``ValueError`` for a secret that looks like a signing token but does not decode (any
    other text is a plain ``X-Gitlab-Token``)."""
    if secret.startswith(sw.SECRET_PREFIX) and not signing_secret(secret):
        raise ValueError(
            "a GitLab signing token must be whsec_ followed by base64; this one does not decode"
        )


class GitLabToken:
    """GitLab webhooks.

    Two ways to authenticate, chosen per request:

    - Signing token (``whsec_<base64>`` secret): when the request carries ``webhook-signature``
      and one of the secrets is a signing token, the Standard Webhooks headers
      (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) are verified as the
      ``standard-webhooks`` provider does, timestamp tolerance included; a mismatch is refused
      even if an ``X-Gitlab-Token`` is also sent. The delivery id is then the signed
      ``webhook-id`` (GitLab sets it to the ``Idempotency-Key``).
    - Secret token: otherwise ``X-Gitlab-Token`` must equal one of the secrets. Both sides are
      hashed (SHA-256) and the digests compared with ``hmac.compare_digest``, so the time taken
      says nothing about the secret's length; every secret is compared. GitLab signs neither
      the body nor a time this way, so a changed body with the right token is accepted: this
      authenticates the sender only, and replays are caught by the daemon's dedupe. Delivery
      id ``Idempotency-Key`` (kept across retries), else ``X-Gitlab-Event-UUID``, else
      ``None``.

    Neither header: ``SIGNATURE_MISSING``. Event type ``X-Gitlab-Event`` (``Push Hook``),
    which no scheme signs. No options.
    """

    name: ClassVar[str] = "gitlab"
    timestamped: ClassVar[bool] = False
    # Nothing is signed with X-Gitlab-Token; with a signing token webhook-id is, but a
    # class attribute cannot say which: the content-hash key covers both.
    delivery_id_signed: ClassVar[bool] = False

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
        usable = c.usable_secrets(secrets)
        signing = [secret for secret in usable if signing_secret(secret)]
        if signing and c.optional_header(headers, sw.SIGNATURE) is not None:
            stamp = sw.verify_signed(sw.STANDARD, headers, body, signing, now, tolerance_s)
            found = self.verify_unsigned(headers, body)
            signed_id = c.delivery_id(c.optional_header(headers, sw.ID))
            return c.signed_at(dataclasses.replace(found, delivery_id=signed_id), stamp)
        if c.optional_header(headers, TOKEN) is None:
            raise Rejection(Reason.SIGNATURE_MISSING, f"no {TOKEN} or {sw.SIGNATURE} header")
        token = c.to_bytes(c.signature_header(headers, TOKEN))
        matched = False
        for secret in usable:
            matched |= c.same_secret(token, c.to_bytes(secret))
        if not matched:
            raise Rejection(Reason.SIGNATURE_MISMATCH, f"{TOKEN} does not match")
        return self.verify_unsigned(headers, body)

    def verify_unsigned(self, headers: Headers, body: bytes) -> Verified:
        delivery = c.optional_header(headers, IDEMPOTENCY_KEY) or c.optional_header(
            headers, EVENT_UUID
        )
        return Verified(
            event_type=c.event_type(c.optional_header(headers, EVENT)),
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
        """The headers GitLab sends. With a signing token (``whsec_...``) the Standard
        Webhooks headers sign the body (``webhook-id`` = ``Idempotency-Key``); otherwise
        ``X-Gitlab-Token`` *is* the secret."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitLab/17.0.0",
            EVENT: event_type,
            EVENT_UUID: delivery_id,
            IDEMPOTENCY_KEY: delivery_id,
            "X-Gitlab-Instance": "https://gitlab.example.com",
        }
        if signing_secret(secret):
            signed = sw.StandardWebhooksSignature().sign(body, secret, now, event_type, delivery_id)
            headers.update({k: v for k, v in signed.headers.items() if k != "Content-Type"})
        else:
            headers[TOKEN] = secret
        return SignedRequest(headers=headers, body=body)

    def sample_event(self) -> tuple[str, bytes]:
        """A ``Push Hook`` of one commit with random SHAs."""
        before, after = token_hex(20), token_hex(20)
        body = {
            "object_kind": "push",
            "event_name": "push",
            "before": before,
            "after": after,
            "ref": "refs/heads/main",
            "checkout_sha": after,
            "user_id": 4,
            "user_name": "John Smith",
            "user_username": "jsmith",
            "project_id": 15,
            "project": {
                "id": 15,
                "name": "Diaspora",
                "path_with_namespace": "mike/diaspora",
                "default_branch": "main",
                "web_url": "https://gitlab.example.com/mike/diaspora",
            },
            "commits": [
                {
                    "id": after,
                    "message": "Update README\n",
                    "timestamp": "2024-01-01T00:00:00+00:00",
                    "author": {"name": "John Smith", "email": "jsmith@example.com"},
                    "added": [],
                    "modified": ["README.md"],
                    "removed": [],
                }
            ],
            "total_commits_count": 1,
            "repository": {"name": "Diaspora", "homepage": "https://gitlab.example.com/mike/diaspora"},
        }
        return "Push Hook", c.compact_json(body)
