"""Published events: the shape outbound subscribers and streams receive, built from journal
events (``docs/outbound.md``, "Published events"). Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from palyra_py.journal.journal import JournalEvent
from palyra_py.times import format_unix_ms

EVENT_TYPE_RE = re.compile(r"[a-z0-9._:-]{1,64}")
"""A published (operator) event name, after trimming and lowercasing. ``validate_event_type``
also requires every dot-separated segment to be non-empty."""

RESERVED_PREFIXES: tuple[str, ...] = (
    "webhook.", "integration.", "subscription.", "delivery.", "daemon.", "stream.", "palyra.",
)
"""Prefixes only the daemon may publish; ``POST /v1/events`` refuses them."""

SYSTEM_SOURCES = frozenset({"daemon", "admin", "ingress"})
"""Journal sources of the daemon's own events; any other non-webhook source published the
event through ``POST /v1/events`` and keeps its data under ``payload["data"]``."""

NOT_PUBLISHED_PREFIX = "delivery."
"""Delivery events are not published: delivering them would feed the dispatcher its own
output."""

TEST_KIND = "palyra.test"

_NOT_TYPE_CHAR = re.compile(r"[^a-z0-9._:-]")


@dataclass(frozen=True, slots=True)
class PublishedEvent:
    id: str
    """The journal event id (a ULID); also the ``webhook-id`` of every delivery of it."""
    type: str
    timestamp: str
    """RFC 3339, UTC, milliseconds, ``Z``."""
    data: dict[str, Any]
    source: str
    actor: str | None
    seq: int
    """The journal seq: the SSE id, never part of the body."""
    published_by: str | None = None
    """``token:<token_id>`` for an event an API token published (``POST /v1/events`` on the
    ingress listener); ``None`` otherwise. A received webhook never has it."""

    def body(self) -> dict[str, Any]:
        """The JSON object subscribers receive (a new dict each call; ``data`` is shared),
        with ``published_by`` only when the event has one."""
        out = {"id": self.id, "type": self.type, "timestamp": self.timestamp,
               "data": self.data, "source": self.source, "actor": self.actor}
        if self.published_by is not None:
            out["published_by"] = self.published_by
        return out


def publish_type(provider: str, event: str) -> str:
    """``<provider>.<event>`` with the event name lowercased and every character outside
    ``[a-z0-9._:-]`` replaced by ``_`` (GitLab ``Push Hook`` -> ``gitlab.push_hook``).
    An empty event name becomes ``unknown``. The provider is lowercased as it is."""
    name = _NOT_TYPE_CHAR.sub("_", event.strip().lower()) or "unknown"
    return f"{provider.strip().lower()}.{name}"


def published_type(event: JournalEvent) -> str:
    """The type subscribers and streams see for a journal event: ``<provider>.<event>`` for
    a received webhook (``github.push``), the kind for every other event."""
    if event.kind != "webhook.received":
        return event.kind
    name = event.event_type
    if name is None:
        found = event.payload.get("event")
        name = found if isinstance(found, str) else ""
    return publish_type(event.actor or "webhook", name)


def from_journal(event: JournalEvent) -> PublishedEvent | None:
    """The published form of a journal event; ``None`` for ``delivery.*`` events."""
    if event.kind.startswith(NOT_PUBLISHED_PREFIX):
        return None
    payload = event.payload
    published_by: str | None = None
    if event.kind == "webhook.received":
        provider = event.actor or "webhook"
        type_ = published_type(event)
        data = _object(payload.get("payload"))
        actor: str | None = provider
    elif event.source not in SYSTEM_SOURCES:
        type_, data, actor = event.kind, _object(payload.get("data")), event.actor
        found = payload.get("published_by")
        published_by = found if isinstance(found, str) else None
    else:
        type_, data, actor = event.kind, payload, event.actor
    return PublishedEvent(
        id=event.event_id, type=type_, timestamp=format_unix_ms(event.ts_unix_ms), data=data,
        source=event.source, actor=actor, seq=event.seq, published_by=published_by,
    )


def target_subscription(event: JournalEvent | PublishedEvent) -> str | None:
    """The only subscription a ``palyra.test`` event goes to (its ``subscription_id``);
    ``None`` for every other event (and for a test event without a usable id)."""
    if isinstance(event, JournalEvent):
        if event.kind != TEST_KIND:
            return None
        found = event.payload.get("subscription_id")
    else:
        if event.type != TEST_KIND:
            return None
        found = event.data.get("subscription_id")
    return found if isinstance(found, str) and found else None


def validate_event_type(name: str) -> str:
    """The trimmed, lowercased name, or ``ValueError`` saying what is wrong. Allowed:
    1-64 characters of ``a-z 0-9 . _ : -``, no empty dot-separated segment
    (``entry.created`` is fine, ``.x``, ``x.`` and ``x..y`` are not). Reserved prefixes are
    not checked here: see ``is_reserved``."""
    text = name.strip().lower()
    if not EVENT_TYPE_RE.fullmatch(text):
        raise ValueError(f"event type {name[:80]!r}: use 1-64 characters of a-z 0-9 . _ : -")
    if "" in text.split("."):
        raise ValueError(f"event type {text!r}: empty segment (leading, trailing or double dot)")
    return text


def is_reserved(name: str) -> bool:
    """Whether ``name`` (already normalised) starts with a daemon-only prefix."""
    return name.startswith(RESERVED_PREFIXES)


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
