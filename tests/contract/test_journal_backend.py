"""The ``JournalBackend`` contract, through its public methods only, on every engine:
gap-free seqs under concurrent appends, a chain that verifies, replay keys decided in the
append's own commit, retention that keeps the chain verifiable, reads by seq and filter."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from itertools import pairwise

import pytest
import ulid

from palyra_py.events import AppendResult, EventFilter
from palyra_py.journal.backend import (
    DuplicateEventId,
    EventRow,
    JournalBackend,
    JournalUnavailable,
    PendingRow,
)
from palyra_py.journal.chain import encode_payload
from palyra_py.testing import ManualClock
from tests.contract.conftest import Engine


def row(
    n: int = 0,
    *,
    kind: str = "test.event",
    source: str = "test",
    integration_id: str | None = None,
    event_type: str | None = None,
    key: tuple[str, str, int] | None = None,
    content_key: str | None = None,
    event_id: str | None = None,
) -> PendingRow:
    return PendingRow(
        event_id or str(ulid.ULID()), kind, source, None, integration_id, event_type, "info",
        encode_payload({"n": n}), False, key, content_key,
    )


async def started(engine: Engine, clock: ManualClock,
                  on_commit: Callable[[int, int], None] | None = None) -> JournalBackend:
    backend = engine.journal(clock=clock, on_commit=on_commit)
    await backend.start()
    return backend


async def append_all(backend: JournalBackend, rows: list[PendingRow]) -> list[AppendResult]:
    return list(await asyncio.gather(*(backend.append(r) for r in rows)))


async def read_all(backend: JournalBackend, flt: EventFilter | None = None) -> list[EventRow]:
    return await backend.read_events(flt or EventFilter(), after_seq=0, limit=10_000)


async def test_concurrent_appends_get_gap_free_seqs(engine: Engine, clock: ManualClock
                                                    ) -> None:
    commits: list[tuple[int, int]] = []
    backend = await started(engine, clock,
                            on_commit=lambda seq, events: commits.append((seq, events)))
    results = await append_all(backend, [row(n) for n in range(300)])
    committed = [seq for seq, _ in commits]
    assert sorted(r.seq for r in results) == list(range(1, 301))
    assert not any(r.duplicate for r in results)
    assert await backend.last_seq() == 300
    rows = await read_all(backend)
    assert [r.seq for r in rows] == list(range(1, 301))
    assert {r.event_id for r in rows} == {r.event_id for r in results}
    assert committed and committed[-1] == 300 and committed == sorted(committed)
    # Each commit says how many events it wrote: together, every append.
    assert sum(events for _, events in commits) == 300
    # A second round after the first committed goes on from the head.
    more = await append_all(backend, [row(n) for n in range(5)])
    assert sorted(r.seq for r in more) == [301, 302, 303, 304, 305]


async def test_appenders_sharing_one_storage_keep_one_gap_free_chain(
    engine: Engine, clock: ManualClock
) -> None:
    backends = [engine.journal(clock=clock, shared=True) for _ in range(2)]
    await asyncio.gather(*(b.start() for b in backends))
    results = await asyncio.gather(*(backends[n % 2].append(row(n)) for n in range(200)))
    assert sorted(r.seq for r in results) == list(range(1, 201))
    key = ("github", "shared-1", 60_000)
    keyed = await asyncio.gather(*(b.append(row(key=key)) for b in backends for _ in "ab"))
    assert len({(r.seq, r.event_id) for r in keyed}) == 1
    assert [await b.last_seq() for b in backends] == [201, 201]
    rows = await read_all(backends[1])
    assert [r.seq for r in rows] == list(range(1, 202))
    assert all(later.prev_hash == earlier.hash for earlier, later in pairwise(rows))
    assert (await backends[0].verify()).reason == "ok"


async def test_the_chain_verifies_and_links_every_row(engine: Engine, clock: ManualClock
                                                      ) -> None:
    backend = await started(engine, clock)
    assert (await backend.verify()).reason == "ok"
    for _ in range(3):
        await append_all(backend, [row(n) for n in range(50)])
        clock.advance(1)
    walk = await backend.verify()
    assert (walk.checked, walk.first_seq, walk.last_seq) == (150, 1, 150)
    assert (walk.first_broken_seq, walk.reason) == (None, "ok")
    rows = await read_all(backend)
    assert all(later.prev_hash == earlier.hash for earlier, later in pairwise(rows))
    await backend.close()
    # Also after close.
    assert (await backend.verify()).checked == 150


async def test_a_replay_key_is_decided_in_the_appends_own_commit(
    engine: Engine, clock: ManualClock
) -> None:
    backend = await started(engine, clock)
    key = ("github", "delivery-1", 60_000)
    results = await append_all(backend, [row(n, key=key) for n in range(20)])
    new = [r for r in results if not r.duplicate]
    assert len(new) == 1
    assert {(r.seq, r.event_id) for r in results} == {(new[0].seq, new[0].event_id)}
    assert len(await read_all(backend)) == 1
    # Another integration's key with the same delivery id is its own.
    other = await backend.append(row(key=("stripe", "delivery-1", 60_000)))
    assert not other.duplicate
    # A content key matches under the same integration, whatever the delivery id.
    first = await backend.append(row(key=("slack", "a", 60_000), content_key="digest"))
    again = await backend.append(row(key=("slack", "b", 60_000), content_key="digest"))
    assert again.duplicate and (again.seq, again.event_id) == (first.seq, first.event_id)
    # Once the window is over, the same key is journaled again.
    clock.advance(61)
    later = await backend.append(row(key=key))
    assert not later.duplicate and later.seq > new[0].seq
    assert (await backend.verify()).reason == "ok"


async def test_a_taken_event_id_fails_only_its_own_append(engine: Engine, clock: ManualClock
                                                         ) -> None:
    backend = await started(engine, clock)
    taken = await backend.append(row())
    batch = [row(1), row(2, event_id=taken.event_id), row(3)]
    outcomes = await asyncio.gather(*(backend.append(r) for r in batch),
                                    return_exceptions=True)
    assert isinstance(outcomes[1], DuplicateEventId)
    good = [o for o in outcomes if isinstance(o, AppendResult)]
    assert sorted(o.seq for o in good) == [2, 3]
    assert (await backend.verify()).reason == "ok"


async def test_retention_removes_the_oldest_and_keeps_the_chain_verifiable(
    engine: Engine, clock: ManualClock
) -> None:
    backend = await started(engine, clock)
    await append_all(backend, [row(n) for n in range(10)])
    clock.advance(100)
    await append_all(backend, [row(n) for n in range(10, 20)])
    clock.advance(20)
    assert await backend.apply_retention(max_age_s=None, max_bytes=None) == 0
    assert await backend.apply_retention(max_age_s=50, max_bytes=None) == 10
    assert [r.seq for r in await read_all(backend)] == list(range(11, 21))
    walk = await backend.verify()
    assert (walk.reason, walk.checked, walk.first_seq, walk.last_seq) == ("ok", 10, 11, 20)
    # The newest row always stays, so the head and the next seq survive.
    clock.advance(1000)
    assert await backend.apply_retention(max_age_s=1, max_bytes=None) == 9
    assert await backend.last_seq() == 20
    assert (await backend.append(row())).seq == 21
    assert (await backend.verify()).reason == "ok"
    # By size: what is left fits.
    await append_all(backend, [row(n) for n in range(30)])
    removed = await backend.apply_retention(max_age_s=None, max_bytes=1)
    assert removed > 0 and len(await read_all(backend)) == 1


async def test_reads_by_seq_and_filter(engine: Engine, clock: ManualClock) -> None:
    backend = await started(engine, clock)
    await append_all(backend, [row(0, kind="webhook.received", source="gh-1",
                                   integration_id="gh-1", event_type="push")])
    clock.advance(10)
    await backend.append(row(1, kind="integration.created", source="admin"))
    clock.advance(10)
    await backend.append(row(2, kind="order.paid", source="app"))
    start_ms = int((clock() - 20) * 1000)

    async def seqs(flt: EventFilter, after: int = 0, limit: int = 100) -> list[int]:
        return [r.seq for r in await backend.read_events(flt, after_seq=after, limit=limit)]

    assert await seqs(EventFilter()) == [1, 2, 3]
    assert await seqs(EventFilter(), after=1) == [2, 3]
    assert await seqs(EventFilter(), limit=2) == [1, 2]
    assert await seqs(EventFilter(types=("push",))) == [1]  # event_type
    assert await seqs(EventFilter(types=("integration.*", "order.*"))) == [2, 3]
    assert await seqs(EventFilter(integration_id="gh-1")) == [1]
    assert await seqs(EventFilter(source="app")) == [3]
    assert await seqs(EventFilter(since_ms=start_ms + 10_000)) == [2, 3]
    assert await seqs(EventFilter(until_ms=start_ms + 10_000)) == [1]
    assert backend.filters_exactly(("order.*", "x?")) is True
    # A class may be read coarsely; the rows asked for are among those returned.
    coarse = EventFilter(types=("order.pai[d]",))
    assert 3 in await seqs(coarse)
    if backend.filters_exactly(coarse.types):
        assert await seqs(coarse) == [3]
    first = (await backend.read_events(EventFilter(), after_seq=0, limit=1))[0]
    assert (first.kind, first.source, first.integration_id, first.event_type) == (
        "webhook.received", "gh-1", "gh-1", "push")
    assert first.ts_unix_ms == start_ms and first.payload_json == '{"n":0}'
    assert backend.size_bytes() > 0


async def test_after_close_appends_are_refused(engine: Engine, clock: ManualClock) -> None:
    backend = await started(engine, clock)
    await backend.append(row())
    await backend.close()
    with pytest.raises(JournalUnavailable):
        await backend.append(row())
    assert backend.unavailable_reason is None and not backend.damaged
