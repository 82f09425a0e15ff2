"""Replay and backfill: past journal events delivered (again) to a subscription, new or
existing, a page at a time. Each event the subscription wants (its ``events`` patterns and
filter, as the dispatcher decides: ``SubState.wants``) gets its delivery created, or the
delivery it has made pending and due now (sent again, same ids). The subscription's cursor
does not move, so the events after it are enqueued as before and none is created twice;
the dispatcher (of the node holding the lease) sends what the store holds as pending.
"""

from __future__ import annotations

from dataclasses import dataclass

from palyra_py.delivery.backend import DeliveryLog
from palyra_py.delivery.records import NewDelivery
from palyra_py.events import EventFilter, from_journal
from palyra_py.journal.journal import Journal
from palyra_py.outbound.substate import SubState
from palyra_py.registry.subscriptions import Subscription

__all__ = ["PAGE", "ReplayPage", "ReplaySpan", "replay_page"]

PAGE = 500
"""Journal events one page reads at most (one store transaction for its deliveries)."""


@dataclass(frozen=True, slots=True)
class ReplaySpan:
    """The journal events to replay: seqs in ``(after_seq, to_seq]`` and, when given,
    times in ``[since_ms, until_ms)``."""

    after_seq: int
    to_seq: int
    since_ms: int | None = None
    until_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ReplayPage:
    scanned: int
    """Journal events of the span read by this page."""
    replayed: int
    """Of those, the ones the subscription wants: deliveries created or made due again."""
    last_seq: int
    """The seq this page read up to: the next page starts after it."""
    done: bool
    """No event of the span is left after ``last_seq``."""


async def replay_page(journal: Journal, store: DeliveryLog, sub: Subscription,
                      span: ReplaySpan, *, now_ms: int, limit: int = PAGE) -> ReplayPage:
    """Replay the first ``limit`` journal events of ``span`` to ``sub``, due at
    ``now_ms``, in one store transaction."""
    flt = EventFilter(since_ms=span.since_ms, until_ms=span.until_ms)
    found = await journal.list(flt, after_seq=span.after_seq, limit=limit)
    events = [e for e in found if e.seq <= span.to_seq]
    state = SubState.build(sub)
    wanted = [
        NewDelivery(sub.subscription_id, e.seq, e.event_id, published.type, now_ms)
        for e in events
        if (published := from_journal(e)) is not None and state.wants(e, published)
    ]
    written = await store.replay(sub.subscription_id, wanted, now_ms) if wanted else 0
    last_seq = events[-1].seq if events else span.to_seq
    done = len(found) < limit or len(events) < len(found) or last_seq >= span.to_seq
    return ReplayPage(len(events), written, last_seq, done)
