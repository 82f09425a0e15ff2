from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from palyra_py.events import (
    RESERVED_PREFIXES,
    PublishedEvent,
    from_journal,
    is_reserved,
    publish_type,
    target_subscription,
    validate_event_type,
)
from palyra_py.journal.journal import EventFilter, Journal, JournalEvent, NewEvent
from palyra_py.journal.sqlite_journal import SqliteJournal
from palyra_py.testing import ManualClock


def journal_event(kind: str, source: str, payload: dict[str, Any], **fields: Any) -> JournalEvent:
    base: dict[str, Any] = {
        "seq": 7, "event_id": "01J0000000000000000000000A", "ts_unix_ms": 1_800_000_000_123,
        "kind": kind, "source": source, "actor": None, "integration_id": None,
        "event_type": None, "severity": "info", "payload": payload, "redacted": False,
        "prev_hash": "", "hash": "",
    }
    base.update(fields)
    return JournalEvent(**base)


@pytest.mark.parametrize(
    ("provider", "event", "expected"),
    [
        ("gitlab", "Push Hook", "gitlab.push_hook"),
        ("github", "pull_request", "github.pull_request"),
        ("stripe", "invoice.paid", "stripe.invoice.paid"),
        ("slack", "event_callback:app_mention", "slack.event_callback:app_mention"),
        ("shopify", "orders/create", "shopify.orders_create"),
        ("generic", "Ünïcode Ev€nt", "generic._n_code_ev_nt"),
        ("github", "", "github.unknown"),
    ],
)
def test_publish_type_normalises(provider: str, event: str, expected: str) -> None:
    assert publish_type(provider, event) == expected


def test_webhook_received_uses_provider_event_and_envelope_payload() -> None:
    envelope = {"v": 1, "id": "x", "event": "Push Hook", "source": "gl",
                "payload": {"ref": "main", "commits": []}}
    event = journal_event("webhook.received", "gl-main", envelope, actor="gitlab",
                          integration_id="gl-main", event_type="Push Hook")
    published = from_journal(event)
    assert published == PublishedEvent(
        id="01J0000000000000000000000A", type="gitlab.push_hook",
        timestamp="2027-01-15T08:00:00.123Z", data={"ref": "main", "commits": []},
        source="gl-main", actor="gitlab", seq=7,
    )
    assert published.body() == {
        "id": "01J0000000000000000000000A", "type": "gitlab.push_hook",
        "timestamp": "2027-01-15T08:00:00.123Z", "data": {"ref": "main", "commits": []},
        "source": "gl-main", "actor": "gitlab",
    }


def test_operator_event_publishes_its_data() -> None:
    event = journal_event("entry.created", "operator",
                          {"data": {"kb": "docs"}, "summary": "new entry"}, actor="ci")
    published = from_journal(event)
    assert published is not None
    assert (published.type, published.data, published.actor) == ("entry.created",
                                                                  {"kb": "docs"}, "ci")


@pytest.mark.parametrize("source", ["daemon", "admin", "ingress"])
def test_system_events_publish_the_whole_payload(source: str) -> None:
    payload = {"integration_id": "gh", "reason": "signature_mismatch", "data": "kept"}
    published = from_journal(journal_event("webhook.rejected", source, payload))
    assert published is not None
    assert published.type == "webhook.rejected"
    assert published.data == payload


@pytest.mark.parametrize("kind", ["delivery.attempted", "delivery.exhausted"])
def test_delivery_events_are_not_published(kind: str) -> None:
    assert from_journal(journal_event(kind, "daemon", {})) is None


def test_target_subscription_only_for_test_events() -> None:
    test = journal_event("palyra.test", "admin", {"subscription_id": "sub-1"})
    assert target_subscription(test) == "sub-1"
    published = from_journal(test)
    assert published is not None
    assert target_subscription(published) == "sub-1"
    other = journal_event("daemon.started", "daemon", {"subscription_id": "sub-1"})
    assert target_subscription(other) is None
    assert target_subscription(journal_event("palyra.test", "admin", {})) is None


@pytest.mark.parametrize("name", ["entry.created", "  Entry.Created ", "a", "deploy:done", "x-y_z"])
def test_valid_event_types(name: str) -> None:
    assert validate_event_type(name) == name.strip().lower()


@pytest.mark.parametrize("name", ["", "a b", ".x", "x.", "x..y", "é", "x" * 65, "a/b"])
def test_invalid_event_types(name: str) -> None:
    with pytest.raises(ValueError, match="event type"):
        validate_event_type(name)


def test_reserved_prefixes() -> None:
    assert "webhook." in RESERVED_PREFIXES
    assert is_reserved("delivery.exhausted")
    assert not is_reserved("deliveryx.done")


async def test_from_real_journal_rows(tmp_path: Path) -> None:
    journal = Journal(SqliteJournal(tmp_path / "journal.db", clock=ManualClock(1_800_000_000.5)))
    await journal.start()
    try:
        await journal.append(NewEvent(
            kind="webhook.received", source="gh-main", actor="github",
            integration_id="gh-main", event_type="push",
            payload={"v": 1, "event": "push", "payload": {"ref": "refs/heads/main"}},
        ))
        await journal.append(NewEvent(kind="delivery.attempted", source="daemon", payload={}))
        await journal.append(NewEvent(kind="kb.updated", source="operator", actor="operator",
                                      payload={"data": {"kb": "docs"}}))
        events = await journal.list(EventFilter(), after_seq=0, limit=10)
    finally:
        await journal.close()
    published = [from_journal(e) for e in events]
    assert published[1] is None
    first, third = published[0], published[2]
    assert first is not None and third is not None
    assert (first.type, first.data, first.seq) == ("github.push", {"ref": "refs/heads/main"}, 1)
    assert first.timestamp == "2027-01-15T08:00:00.500Z"
    assert (third.type, third.data, third.seq) == ("kb.updated", {"kb": "docs"}, 3)
