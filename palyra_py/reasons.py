"""Every answer the ingress gives, with its stable reason code and HTTP status.

This table is the single source for the ingress answers, the metric labels and the
table in ``docs/reasons.md`` (a test keeps the two in step).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    URL_VERIFICATION = "url_verification"
    MALFORMED_JSON = "malformed_json"
    SCHEMA_VIOLATION = "schema_violation"
    SIGNATURE_MISSING = "signature_missing"
    SIGNATURE_MISMATCH = "signature_mismatch"
    TIMESTAMP_OUT_OF_TOLERANCE = "timestamp_out_of_tolerance"
    SOURCE_NOT_ALLOWED = "source_not_allowed"
    UNKNOWN_INTEGRATION = "unknown_integration"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TIMEOUT = "request_timeout"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    INTEGRATION_DISABLED = "integration_disabled"
    SECRET_UNAVAILABLE = "secret_unavailable"  # noqa: S105 (a reason code, not a secret)
    JOURNAL_UNAVAILABLE = "journal_unavailable"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    TOO_MANY_SOURCE_CONNECTIONS = "too_many_source_connections"
    HEAD_TOO_LARGE = "head_too_large"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    key: str  # "status" for successes, "error" for rejections
    summary: str


ANSWERS: dict[Reason, Answer] = {
    Reason.ACCEPTED: Answer(
        202, "status", "Verified and journaled (fsync'd); body has event_id and seq."
    ),
    Reason.DUPLICATE: Answer(
        200, "status",
        "Delivery id, or signed content when the id is not signed, already journaled inside"
        " the replay window; not journaled again.",
    ),
    Reason.IGNORED: Answer(
        200, "status", "Verified, but the event type is not in allowed_events."
    ),
    Reason.URL_VERIFICATION: Answer(
        200, "status", "Slack url_verification handshake: the challenge is echoed back."
    ),
    Reason.MALFORMED_JSON: Answer(
        400, "error", "Body is not valid UTF-8 JSON (or form data), or nests deeper than allowed."
    ),
    Reason.SCHEMA_VIOLATION: Answer(
        400, "error", "The envelope built from the request fails webhook-envelope.v1.json."
    ),
    Reason.SIGNATURE_MISSING: Answer(401, "error", "The provider's signature header is absent."),
    Reason.SIGNATURE_MISMATCH: Answer(
        401, "error", "The signature is malformed or does not match any current secret."
    ),
    Reason.TIMESTAMP_OUT_OF_TOLERANCE: Answer(
        401, "error", "The signed timestamp is further than timestamp_tolerance_s from now."
    ),
    Reason.SOURCE_NOT_ALLOWED: Answer(403, "error", "Remote address not in allowed_sources."),
    Reason.UNKNOWN_INTEGRATION: Answer(404, "error", "No integration with this id."),
    Reason.METHOD_NOT_ALLOWED: Answer(405, "error", "Only POST is accepted on /hooks/{id}."),
    Reason.REQUEST_TIMEOUT: Answer(
        408, "error", "The body did not arrive within ingress.body_timeout_s (slow senders)."
    ),
    Reason.PAYLOAD_TOO_LARGE: Answer(
        413, "error", "Content-Length (checked before reading) or body over max_payload_bytes."
    ),
    Reason.UNSUPPORTED_MEDIA_TYPE: Answer(
        415, "error", "Content-Type is neither JSON nor form-encoded."
    ),
    Reason.INTEGRATION_DISABLED: Answer(
        503, "error", "Integration disabled; Retry-After is set so the provider retries later."
    ),
    Reason.SECRET_UNAVAILABLE: Answer(
        503, "error", "The integration's secret_ref cannot be resolved; Retry-After is set."
    ),
    Reason.JOURNAL_UNAVAILABLE: Answer(
        503, "error",
        "The journal could not make the event durable (full, locked, removed or damaged);"
        " nothing was acknowledged.",
    ),
    Reason.TOO_MANY_CONNECTIONS: Answer(
        503, "error",
        "ingress.max_connections are open; answered on connect, nothing read, Retry-After set.",
    ),
    Reason.TOO_MANY_SOURCE_CONNECTIONS: Answer(
        503, "error",
        "This address (IPv6: its /64) holds ingress.max_connections_per_source connections;"
        " answered on connect, nothing read, Retry-After set.",
    ),
    Reason.HEAD_TOO_LARGE: Answer(
        431, "error",
        "The request head (request line and headers) is over ingress.max_head_bytes;"
        " the connection is closed.",
    ),
}


REGISTRY_ANSWERS: dict[str, Answer] = {
    "registry_conflict": Answer(
        409, "error",
        "The registry changed under the write: an import's expected_version is not the"
        " stored version (export again, redo the change, import again).",
    ),
    "registry_unavailable": Answer(
        503, "error",
        "Cluster mode: the registry's database cannot be read or written now; nothing was"
        " changed and the registry in force stays. Retry once PostgreSQL is back.",
    ),
    "command_needs_socket": Answer(
        403, "error",
        "An import with a token (the TCP listener) adds or changes a subscription with a"
        " command destination: commands are set only on the admin socket (the CLI) or in the"
        " file; nothing was changed.",
    ),
    "email_needs_socket": Answer(
        403, "error",
        "An import with a token (the TCP listener) adds or changes a subscription with an"
        " email destination: recipients are set only on the admin socket (the CLI) or in the"
        " file; nothing was changed.",
    ),
}
"""The admin API's refusals of a registry edit or import that depend on where the
registry is kept (``docs/admin-api.md``); ``registry_invalid`` (422) is the document's."""


class Rejection(Exception):
    """A typed refusal of an inbound request. ``detail`` never holds a secret or signature."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail

    @property
    def status(self) -> int:
        return ANSWERS[self.reason].status
