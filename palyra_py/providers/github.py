"""GitHub: ``X-Hub-Signature-256: sha256=<hex>``, HMAC-SHA256 of the raw body."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from secrets import randbelow
from typing import Any, ClassVar

from palyra_py.providers import _common as c
from palyra_py.providers.base import Headers, SignedRequest, Verified
from palyra_py.reasons import Reason, Rejection

SIGNATURE_256 = "X-Hub-Signature-256"
SIGNATURE_SHA1 = "X-Hub-Signature"
EVENT = "X-GitHub-Event"
DELIVERY = "X-GitHub-Delivery"
KEPT = (
    EVENT,
    DELIVERY,
    "X-GitHub-Hook-ID",
    "X-GitHub-Hook-Installation-Target-Type",
    "X-GitHub-Hook-Installation-Target-ID",
    "User-Agent",
)


class GitHubSignature:
    """GitHub webhooks. Not timestamped: GitHub keeps ``X-GitHub-Delivery`` on redelivery, so
    replays are caught by the daemon's dedupe on the delivery id, not by a clock; that id and
    ``X-GitHub-Event`` are not signed, so the body's hash is a replay key too.

    Options: ``allow_sha1`` (bool, default false). When true and ``X-Hub-Signature-256`` is
    absent, the legacy ``X-Hub-Signature: sha1=<hex>`` is checked instead; a present SHA-256
    header is always the one checked. Hex digests must be lower-case, as GitHub sends them.
    ``ping`` is an ordinary event type.
    """

    name: ClassVar[str] = "github"
    timestamped: ClassVar[bool] = False
    delivery_id_signed: ClassVar[bool] = False  # X-GitHub-Delivery/-Event: unsigned

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        opts = c.check_options(options, ("allow_sha1",), self.name)
        allow_sha1 = opts.get("allow_sha1", False)
        if not isinstance(allow_sha1, bool):
            raise ValueError("provider option 'allow_sha1' must be true or false")
        self.allow_sha1 = allow_sha1

    def verify(
        self,
        headers: Headers,
        body: bytes,
        secrets: Sequence[str],
        now: float,
        tolerance_s: float,
    ) -> Verified:
        algorithm: c.Algorithm = "sha256"
        header, prefix = SIGNATURE_256, "sha256="
        if self.allow_sha1 and c.optional_header(headers, SIGNATURE_256) is None:
            algorithm, header, prefix = "sha1", SIGNATURE_SHA1, "sha1="
        value = c.signature_header(headers, header)
        keys = c.usable_secrets(secrets)
        candidate = c.without_prefix(value, prefix, header)
        if not c.hmac_matches([candidate], keys, body, algorithm=algorithm):
            raise Rejection(Reason.SIGNATURE_MISMATCH, f"{header} does not match")
        return self.verify_unsigned(headers, body)

    def verify_unsigned(self, headers: Headers, body: bytes) -> Verified:
        return Verified(
            event_type=c.event_type(c.optional_header(headers, EVENT)),
            delivery_id=c.delivery_id(c.optional_header(headers, DELIVERY)),
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
        """Both signature headers, as GitHub sends both (the SHA-1 one is legacy)."""
        key = c.to_bytes(secret)
        return SignedRequest(
            headers={
                "Content-Type": "application/json",
                "User-Agent": "GitHub-Hookshot/palyra-test",
                EVENT: event_type,
                DELIVERY: delivery_id,
                SIGNATURE_SHA1: "sha1=" + c.hmac_digest(key, body, "sha1").hex(),
                SIGNATURE_256: "sha256=" + c.hmac_digest(key, body).hex(),
            },
            body=body,
        )

    def sample_event(self) -> tuple[str, bytes]:
        """A ``ping`` as GitHub sends when a hook is created (random ``hook_id``)."""
        hook_id = 100_000_000 + randbelow(900_000_000)
        body = {
            "zen": "Design for failure.",
            "hook_id": hook_id,
            "hook": {
                "type": "Repository",
                "id": hook_id,
                "name": "web",
                "active": True,
                "events": ["push", "pull_request"],
                "config": {
                    "content_type": "json",
                    "insecure_ssl": "0",
                    "url": "https://example.com/hooks/github",
                },
            },
            "repository": {"id": 35129377, "full_name": "octo-org/octo-repo", "private": False},
            "sender": {"login": "octocat", "id": 1, "type": "User"},
        }
        return "ping", c.compact_json(body)
