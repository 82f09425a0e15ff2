"""GitLab: a shared ``X-Gitlab-Token``, compared in constant time. Nothing signs the body."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from secrets import token_hex
from typing import Any, ClassVar

from palyra_py.providers import _common as c
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
)


class GitLabToken:
    """GitLab webhooks.

    The token header must equal one of the secrets: both are hashed (SHA-256) and the digests
    compared with ``hmac.compare_digest``, so the time taken says nothing about the secret's
    length; every secret is compared. GitLab signs neither the body nor a time, so a changed
    body with the right token is accepted: this scheme authenticates the sender only, and
    replays are caught by the daemon's dedupe. Event type ``X-Gitlab-Event`` (``Push Hook``);
    delivery id ``Idempotency-Key`` (kept across retries), else ``X-Gitlab-Event-UUID``, else
    ``None``. No options.
    """

    name: ClassVar[str] = "gitlab"
    timestamped: ClassVar[bool] = False
    delivery_id_signed: ClassVar[bool] = False  # nothing is signed

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
        token = c.to_bytes(c.signature_header(headers, TOKEN))
        matched = False
        for secret in c.usable_secrets(secrets):
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
        """The headers GitLab sends; note that ``X-Gitlab-Token`` *is* the secret."""
        return SignedRequest(
            headers={
                "Content-Type": "application/json",
                "User-Agent": "GitLab/17.0.0",
                EVENT: event_type,
                EVENT_UUID: delivery_id,
                IDEMPOTENCY_KEY: delivery_id,
                "X-Gitlab-Instance": "https://gitlab.example.com",
                TOKEN: secret,
            },
            body=body,
        )

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
