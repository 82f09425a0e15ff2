"""The delivery store on real SQLite files: cursor + rows in one commit, idempotent
enqueue, the due queue, attempt transitions and health, operator actions, listing and
paging, stats on a known history, pruning, file modes, concurrency and draining on close."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from palyra_py.delivery.store import (
    SUBSCRIPTION_REMOVED,
    AttemptRecord,
    Delivery,
    DeliveryNotFound,
    DeliveryStatus,
    DeliveryStore,
    DeliveryStoreUnavailable,
    NewDelivery,
    response_excerpt,
)

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20.000Z

StoreFactory = Callable[[], DeliveryStore]


@pytest.fixture
async def make_store(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    opened: list[DeliveryStore] = []

    def make() -> DeliveryStore:
        store = DeliveryStore(tmp_path / "deliveries.db")
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> DeliveryStore:
    s = make_store()
    await s.start()
    return s


def new(seq: int, sub: str = "s1", *, next_ms: int = T0, event_type: str = "github.push"
        ) -> NewDelivery:
    return NewDelivery(sub, seq, f"evt-{sub}-{seq}", event_type, next_ms)


def raw(path: Path) -> sqlite3.Connection:
    """A connection of its own, behind the store's back."""
    return sqlite3.connect(path, isolation_level=None)


async def one(store: DeliveryStore, seq: int, sub: str = "s1", *, now_ms: int = T0,
              next_ms: int | None = None) -> Delivery:
    """Enqueue one delivery and return it."""
    assert await store.enqueue(sub, seq, [new(seq, sub, next_ms=next_ms or now_ms)],
                               now_ms=now_ms) == 1
    found = await store.list(subscription_id=sub, limit=1000)
    return next(d for d in found if d.event_seq == seq)


async def play(
    store: DeliveryStore, delivery: Delivery, *, at: int, duration: int, code: int | None,
    error_class: str | None, status: DeliveryStatus, next_ms: int | None = None,
) -> Delivery:
    """Record the delivery's next attempt."""
    record = AttemptRecord(delivery.delivery_id, delivery.attempts + 1, at, duration, code,
                           error_class, None if error_class is None else "boom", "ok")
    return await store.record_attempt(record, status=status, next_attempt_ms=next_ms,
                                      now_ms=at + duration)


# -- enqueue and cursors --------------------------------------------------------------


async def test_enqueue_writes_rows_and_cursor_in_one_commit_that_survives_reopen(
    make_store: StoreFactory,
) -> None:
    first = make_store()
    await first.start()
    assert await first.cursor("s1") is None
    inserted = await first.enqueue("s1", 7, [new(5), new(7)], now_ms=T0)
    assert inserted == 2 and first.commits == 1
    await first.close()

    again = make_store()
    await again.start()
    assert await again.cursor("s1") == 7
    rows = await again.list(subscription_id="s1")
    assert [(d.event_seq, d.event_id, d.status, d.attempts) for d in rows] == [
        (5, "evt-s1-5", "pending", 0), (7, "evt-s1-7", "pending", 0),
    ]
    d = rows[0]
    assert (d.created_ms, d.updated_ms, d.next_attempt_ms) == (T0, T0, T0)
    assert (d.event_type, d.last_status_code, d.last_error_class) == ("github.push", None, None)


async def test_a_failing_enqueue_writes_neither_rows_nor_cursor(store: DeliveryStore) -> None:
    await store.enqueue("s1", 3, [new(3)], now_ms=T0)
    bad = NewDelivery("s1", 9, "evt-\ud800", "x", T0)  # a lone surrogate cannot be stored
    with pytest.raises(ValueError):
        await store.enqueue("s1", 9, [new(8), bad], now_ms=T0)
    assert await store.cursor("s1") == 3
    assert [d.event_seq for d in await store.list()] == [3]
    with pytest.raises(ValueError, match="subscription"):
        await store.enqueue("s1", 10, [new(10, "other")], now_ms=T0)


async def test_enqueue_is_idempotent_and_the_cursor_never_goes_back(
    store: DeliveryStore,
) -> None:
    assert await store.enqueue("s1", 2, [new(1), new(2)], now_ms=T0) == 2
    assert await store.enqueue("s1", 3, [new(1), new(2), new(3)], now_ms=T0 + 5) == 1
    assert await store.enqueue("s1", 3, [new(4), new(4)], now_ms=T0 + 6) == 1  # same event twice
    assert await store.cursor("s1") == 3
    assert await store.enqueue("s1", 1, [], now_ms=T0) == 0
    assert await store.cursor("s1") == 3  # enqueue never moves it backwards
    assert await store.enqueue("s2", 3, [new(1, "s2")], now_ms=T0) == 1  # other subscription
    assert [d.event_seq for d in await store.list(subscription_id="s1")] == [1, 2, 3, 4]

    await store.set_cursor("s1", 1)  # a catch-up choice may
    assert await store.cursor("s1") == 1
    await store.set_cursor("new", 42)
    assert await store.cursor("new") == 42


# -- the queue ------------------------------------------------------------------------


async def test_due_orders_by_next_attempt_then_seq_and_honours_exclusion(
    store: DeliveryStore,
) -> None:
    await store.enqueue("a", 4, [new(3, "a", next_ms=T0 + 10), new(4, "a", next_ms=T0)],
                        now_ms=T0)
    await store.enqueue("b", 2, [new(1, "b", next_ms=T0 + 10), new(2, "b", next_ms=T0 + 99)],
                        now_ms=T0)

    due = await store.due(T0 + 10, 100)
    assert [(d.subscription_id, d.event_seq) for d in due] == [("a", 4), ("b", 1), ("a", 3)]
    assert [d.event_seq for d in await store.due(T0 + 10, 2)] == [4, 1]
    assert await store.due(T0 - 1, 100) == []
    assert [(d.subscription_id, d.event_seq) for d in await store.due(T0 + 1000, 100, ["a"])
            ] == [("b", 1), ("b", 2)]
    assert await store.due(T0 + 1000, 100, ["a", "b"]) == []

    assert await store.next_due_ms() == T0
    assert await store.next_due_ms(["a"]) == T0 + 10
    assert await store.next_due_ms(["a", "b"]) is None
    with pytest.raises(ValueError):
        await store.due(T0, 0)


async def test_oldest_pending_counts_and_age(store: DeliveryStore) -> None:
    assert await store.oldest_pending("a") is None
    assert await store.oldest_pending_age_ms(T0) is None
    await store.enqueue("a", 9, [new(9, "a", next_ms=T0), new(8, "a", next_ms=T0 + 500)],
                        now_ms=T0)
    first = await one(store, 1, "b", now_ms=T0 + 100)

    oldest = await store.oldest_pending("a")
    assert oldest is not None and oldest.event_seq == 8  # lowest seq, due or not
    assert (await store.pending_count(), await store.pending_count("a")) == (3, 2)
    assert await store.pending_count("nobody") == 0
    assert await store.oldest_pending_age_ms(T0 + 2000) == 2000
    assert await store.oldest_pending_age_ms(T0 - 5) == 0  # a clock behind: never negative

    await play(store, first, at=T0 + 200, duration=5, code=200, error_class=None,
               status="succeeded")
    assert await store.pending_count("b") == 0 and await store.oldest_pending("b") is None


# -- attempts and health --------------------------------------------------------------


async def test_record_attempt_transitions_and_health(store: DeliveryStore) -> None:
    d = await one(store, 1)
    assert await store.health("s1") == (None, None)

    d = await play(store, d, at=T0 + 10, duration=90, code=500, error_class="http_status",
                   status="pending", next_ms=T0 + 5000)
    assert (d.status, d.attempts, d.next_attempt_ms) == ("pending", 1, T0 + 5000)
    assert (d.last_status_code, d.last_error_class, d.updated_ms) == (500, "http_status", T0 + 100)
    assert await store.health("s1") == (None, T0 + 100)

    d = await play(store, d, at=T0 + 5000, duration=15_000, code=None, error_class="timeout",
                   status="pending", next_ms=T0 + 99_000)
    assert (d.attempts, d.last_status_code, d.last_error_class) == (2, None, "timeout")
    assert await store.health("s1") == (None, T0 + 100)  # failing since the FIRST failure

    d = await play(store, d, at=T0 + 99_000, duration=20, code=204, error_class=None,
                   status="succeeded")
    assert (d.status, d.attempts, d.next_attempt_ms) == ("succeeded", 3, None)
    assert (d.last_status_code, d.last_error_class) == (204, None)
    assert await store.health("s1") == (T0 + 99_020, None)

    e = await one(store, 2, now_ms=T0 + 100_000)
    e = await play(store, e, at=T0 + 100_000, duration=1, code=410, error_class="http_status",
                   status="failed", next_ms=T0 + 1)  # a final failure keeps no next attempt
    assert (e.status, e.next_attempt_ms, e.attempts) == ("failed", None, 1)
    assert await store.health("s1") == (T0 + 99_020, T0 + 100_001)
    assert await store.due(T0 + 10**9, 100) == []


async def test_record_attempt_refusals_change_nothing(store: DeliveryStore) -> None:
    d = await one(store, 1)
    d = await play(store, d, at=T0, duration=1, code=500, error_class="http_status",
                   status="pending", next_ms=T0 + 10)
    again = AttemptRecord(d.delivery_id, 1, T0 + 10, 1, 200, None, None, None)
    with pytest.raises(ValueError, match="already recorded"):
        await store.record_attempt(again, status="succeeded", next_attempt_ms=None, now_ms=T0)
    with pytest.raises(ValueError):
        await store.record_attempt(again, status="pending", next_attempt_ms=None, now_ms=T0)
    with pytest.raises(ValueError):
        await store.record_attempt(again, status="done", next_attempt_ms=None,  # type: ignore[arg-type]
                                   now_ms=T0)
    ghost = AttemptRecord("01HF7YAT3VHNPC1W9WCRC07483", 1, T0, 1, 200, None, None, None)
    with pytest.raises(DeliveryNotFound):
        await store.record_attempt(ghost, status="succeeded", next_attempt_ms=None, now_ms=T0)

    found = await store.get(d.delivery_id)
    assert found is not None
    assert found[0] == d and [a.attempt_no for a in found[1]] == [1]
    assert await store.health("s1") == (None, T0 + 1)


async def test_long_detail_and_excerpt_are_cut_to_their_bounds(store: DeliveryStore) -> None:
    d = await one(store, 1)
    record = AttemptRecord(d.delivery_id, 1, T0, 3, 500, "http_status", "x" * 600 + "\ud800",
                           "é" * 3000)
    await store.record_attempt(record, status="failed", next_attempt_ms=None, now_ms=T0)
    found = await store.get(d.delivery_id)
    assert found is not None
    stored = found[1][0]
    assert stored.error_detail == "x" * 512
    assert stored.response_excerpt == "é" * 2048  # 4096 bytes of UTF-8

    excerpt = response_excerpt(b"\xff" + b"a" * 5000)
    assert excerpt.startswith("\ufffda") and len(excerpt.encode()) <= 4096


async def test_get_returns_attempts_in_order_and_dicts_are_json_ready(
    store: DeliveryStore,
) -> None:
    assert await store.get("01HF7YAT3VHNPC1W9WCRC07483") is None
    d = await one(store, 1)
    for n in range(3):
        d = await play(store, d, at=T0 + 1000 * n + 123, duration=7, code=503,
                       error_class="http_status", status="pending", next_ms=T0 + 10**6)
    found = await store.get(d.delivery_id)
    assert found is not None
    delivery, attempts = found
    assert delivery == d and delivery.attempts == 3
    assert [(a.attempt_no, a.started_ms) for a in attempts] == [
        (1, T0 + 123), (2, T0 + 1123), (3, T0 + 2123)
    ]
    assert attempts[0].error_detail == "boom" and attempts[0].response_excerpt == "ok"

    dd = delivery.to_dict()
    assert dd["created_at"] == "2023-11-14T22:13:20.000Z"
    assert dd["next_attempt_at"] == "2023-11-14T22:30:00.000Z"  # T0 + 1000 s
    assert dd["status"] == "pending" and dd["delivery_id"] == d.delivery_id
    ad = attempts[2].to_dict()
    assert ad["started_at"] == "2023-11-14T22:13:22.123Z" and ad["status_code"] == 503
    json.dumps([dd, ad])


# -- operator actions -----------------------------------------------------------------


async def test_retry_brings_a_delivery_back_and_keeps_its_attempts(
    store: DeliveryStore,
) -> None:
    d = await one(store, 1)
    d = await play(store, d, at=T0, duration=1, code=500, error_class="http_status",
                   status="failed")
    retried = await store.retry(d.delivery_id, T0 + 777)
    assert retried is not None
    assert (retried.status, retried.next_attempt_ms, retried.attempts) == ("pending", T0 + 777, 1)
    assert (retried.last_error_class, retried.updated_ms) == ("http_status", T0 + 777)
    assert [x.delivery_id for x in await store.due(T0 + 777, 10)] == [d.delivery_id]

    done = await play(store, retried, at=T0 + 800, duration=1, code=200, error_class=None,
                      status="succeeded")
    again = await store.retry(done.delivery_id, T0 + 900)  # a redelivery: the same ids
    assert again is not None and (again.delivery_id, again.event_seq) == (
        done.delivery_id, done.event_seq)
    assert (again.status, again.next_attempt_ms, again.attempts) == ("pending", T0 + 900, 2)
    assert await store.retry("01HF7YAT3VHNPC1W9WCRC07483", T0) is None


async def test_recover_revives_failed_deliveries_in_the_range_only(
    store: DeliveryStore,
) -> None:
    ds = [await one(store, n, now_ms=T0 + n * 1000) for n in range(1, 5)]
    other = await one(store, 1, "s2", now_ms=T0 + 2000)
    for d in [*ds[:3], other]:
        await play(store, d, at=T0 + 10_000, duration=1, code=500, error_class="http_status",
                   status="failed")
    # ds[3] stays pending; ds[0] was created before the range.

    assert await store.recover("s1", T0 + 2000, T0 + 4000, T0 + 20_000) == 2
    by_seq = {d.event_seq: d for d in await store.list(subscription_id="s1")}
    assert [by_seq[n].status for n in (1, 2, 3, 4)] == ["failed", "pending", "pending", "pending"]
    assert by_seq[2].next_attempt_ms == T0 + 20_000 and by_seq[2].attempts == 1
    assert (await store.list(subscription_id="s2"))[0].status == "failed"
    assert await store.recover("s1", T0, None, T0 + 30_000) == 1  # open-ended: ds[0]


async def test_forget_subscription_keeps_history_and_ends_pending(
    store: DeliveryStore,
) -> None:
    kept = await one(store, 1)
    kept = await play(store, kept, at=T0, duration=1, code=200, error_class=None,
                      status="succeeded")
    in_flight = await one(store, 2)
    await play(store, await one(store, 3), at=T0, duration=1, code=500,
               error_class="http_status", status="pending", next_ms=T0 + 60_000)
    await one(store, 1, "s2")

    assert await store.forget_subscription("s1", T0 + 5) == 2
    assert await store.cursor("s1") is None
    assert await store.health("s1") == (None, None)
    rows = {d.event_seq: d for d in await store.list(subscription_id="s1")}
    assert rows[1] == kept
    assert [(rows[n].status, rows[n].last_error_class, rows[n].next_attempt_ms)
            for n in (2, 3)] == [("failed", SUBSCRIPTION_REMOVED, None)] * 2
    assert await store.pending_count("s2") == 1 and await store.cursor("s2") == 1

    # An attempt that was in flight meanwhile is logged but revives nothing.
    late = await play(store, rows[2], at=T0 + 6, duration=1, code=500,
                      error_class="http_status", status="pending", next_ms=T0 + 7)
    assert (late.status, late.attempts, late.next_attempt_ms) == ("failed", 1, None)
    assert await store.health("s1") == (None, None)
    assert in_flight.delivery_id == late.delivery_id


# -- listing --------------------------------------------------------------------------


async def test_list_filters_and_pages_oldest_first(store: DeliveryStore) -> None:
    # Several deliveries in the same ms still get ids in creation order.
    await store.enqueue("a", 3, [new(1, "a"), new(2, "a"), new(3, "a")], now_ms=T0)
    await store.enqueue("b", 1, [new(1, "b")], now_ms=T0 + 1000)
    await store.enqueue("a", 5, [new(4, "a"), new(5, "a")], now_ms=T0 + 2000)
    await store.enqueue("b", 2, [new(2, "b")], now_ms=T0 - 1)  # the clock stepped back
    everything = await store.list()
    assert [(d.subscription_id, d.event_seq) for d in everything] == [
        ("a", 1), ("a", 2), ("a", 3), ("b", 1), ("a", 4), ("a", 5), ("b", 2)
    ]
    ids = [d.delivery_id for d in everything]
    assert ids == sorted(ids) and len(set(ids)) == 7

    a4 = everything[4]
    await play(store, a4, at=T0 + 3000, duration=1, code=500, error_class="http_status",
               status="failed")
    assert [d.event_seq for d in await store.list(subscription_id="b")] == [1, 2]
    assert [d.event_seq for d in await store.list(status="failed")] == [4]
    assert [d.event_seq for d in await store.list(subscription_id="a", status="pending")
            ] == [1, 2, 3, 5]
    window = await store.list(since_ms=T0, until_ms=T0 + 2000)
    assert [(d.subscription_id, d.event_seq) for d in window] == [
        ("a", 1), ("a", 2), ("a", 3), ("b", 1)
    ]

    pages: list[list[str]] = []
    after: str | None = None
    while True:
        page = await store.list(after=after, limit=3)
        if not page:
            break
        pages.append([d.delivery_id for d in page])
        after = page[-1].delivery_id
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == ids
    page = await store.list(subscription_id="a", after=ids[1], limit=2)
    assert [d.delivery_id for d in page] == [ids[2], ids[4]]
    with pytest.raises(ValueError):
        await store.list(limit=1001)


# -- stats ----------------------------------------------------------------------------


async def test_stats_on_a_known_history(store: DeliveryStore) -> None:
    empty = await store.stats()
    assert empty == {
        "deliveries": {"pending": 0, "succeeded": 0, "failed": 0}, "attempts": 0,
        "success_rate": None, "latency_ms": {"p50": None, "p95": None},
        "failures_by_class": {}, "busiest": [],
    }

    a1, a2, a3 = [await one(store, n, "a") for n in (1, 2, 3)]
    b1, b2 = [await one(store, n, "b") for n in (1, 2)]
    c1 = await one(store, 1, "c", now_ms=T0 + 10_000)
    a1 = await play(store, a1, at=T0 + 1000, duration=100, code=500,
                    error_class="http_status", status="pending", next_ms=T0 + 2000)
    await play(store, a1, at=T0 + 2000, duration=50, code=200, error_class=None,
               status="succeeded")
    await play(store, a2, at=T0 + 1000, duration=15_000, code=None, error_class="timeout",
               status="failed")
    await play(store, b1, at=T0 + 1500, duration=30, code=200, error_class=None,
               status="succeeded")
    await play(store, b2, at=T0 + 1500, duration=5, code=None, error_class="connect",
               status="pending", next_ms=T0 + 9000)
    await play(store, c1, at=T0 + 10_000, duration=200, code=202, error_class=None,
               status="succeeded")
    assert a3.status == "pending"

    assert await store.stats() == {
        "deliveries": {"pending": 2, "succeeded": 3, "failed": 1},
        "attempts": 6,
        "success_rate": 0.5,
        # sorted durations 5, 30, 50, 100, 200, 15000: nearest rank 3 and 6
        "latency_ms": {"p50": 50, "p95": 15_000},
        "failures_by_class": {"connect": 1, "http_status": 1, "timeout": 1},
        "busiest": [{"subscription_id": "a", "deliveries": 3},
                    {"subscription_id": "b", "deliveries": 2},
                    {"subscription_id": "c", "deliveries": 1}],
    }
    only_a = await store.stats(subscription_id="a")
    assert only_a["deliveries"] == {"pending": 1, "succeeded": 1, "failed": 1}
    assert only_a["attempts"] == 3 and only_a["success_rate"] == pytest.approx(1 / 3)
    assert only_a["latency_ms"] == {"p50": 100, "p95": 15_000}
    assert only_a["failures_by_class"] == {"http_status": 1, "timeout": 1}
    assert only_a["busiest"] == [{"subscription_id": "a", "deliveries": 3}]

    recent = await store.stats(since_ms=T0 + 10_000)
    assert recent == {
        "deliveries": {"pending": 0, "succeeded": 1, "failed": 0}, "attempts": 1,
        "success_rate": 1.0, "latency_ms": {"p50": 200, "p95": 200},
        "failures_by_class": {}, "busiest": [{"subscription_id": "c", "deliveries": 1}],
    }


async def test_busiest_lists_at_most_five(store: DeliveryStore) -> None:
    for i in range(7):
        subscription = f"s{i}"
        await store.enqueue(subscription, i, [new(n, subscription) for n in range(i + 1)],
                            now_ms=T0)
    busiest = (await store.stats())["busiest"]
    assert [b["subscription_id"] for b in busiest] == ["s6", "s5", "s4", "s3", "s2"]
    assert busiest[0]["deliveries"] == 7


# -- pruning --------------------------------------------------------------------------


async def test_prune_removes_old_finished_deliveries_with_their_attempts(
    store: DeliveryStore, tmp_path: Path
) -> None:
    old_ok = await one(store, 1, now_ms=T0)
    old_failed = await one(store, 2, now_ms=T0)
    old_pending = await one(store, 3, now_ms=T0)
    recent = await one(store, 4, now_ms=T0 + 50_000)
    await play(store, old_ok, at=T0, duration=10, code=200, error_class=None,
               status="succeeded")
    await play(store, old_failed, at=T0, duration=10, code=500, error_class="http_status",
               status="failed")
    await play(store, old_pending, at=T0, duration=10, code=500, error_class="http_status",
                status="pending", next_ms=T0 + 10**6)
    await play(store, recent, at=T0 + 50_000, duration=10, code=200, error_class=None,
               status="succeeded")

    assert await store.prune(T0 + 40_000) == 2
    assert [d.event_seq for d in await store.list()] == [3, 4]
    assert await store.get(old_ok.delivery_id) is None
    with raw(tmp_path / "deliveries.db") as conn:
        left = conn.execute("SELECT delivery_id FROM attempts ORDER BY delivery_id").fetchall()
    assert [row[0] for row in left] == [old_pending.delivery_id, recent.delivery_id]
    assert await store.prune(T0 + 40_000) == 0


# -- files, concurrency, lifecycle ----------------------------------------------------


async def test_files_are_private_and_in_wal_mode(make_store: StoreFactory, tmp_path: Path
                                                 ) -> None:
    old = os.umask(0)
    try:
        store = make_store()
        await store.start()
        await store.enqueue("s1", 1, [new(1)], now_ms=T0)
    finally:
        os.umask(old)
    for name in ("deliveries.db", "deliveries.db-wal", "deliveries.db-shm"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    with raw(tmp_path / "deliveries.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1


async def test_concurrent_writers_all_land_and_share_commits(store: DeliveryStore) -> None:
    counts = await asyncio.gather(*(
        store.enqueue(f"s{i}", 3, [new(n, f"s{i}") for n in (1, 2, 3)], now_ms=T0 + i)
        for i in range(100)
    ))
    assert counts == [3] * 100
    assert store.commits < 100, store.commits  # queued jobs shared transactions
    assert await store.pending_count() == 300
    assert [await store.cursor(f"s{i}") for i in (0, 50, 99)] == [3, 3, 3]

    pending = await store.list(limit=1000)
    ids = [d.delivery_id for d in pending]
    assert len(set(ids)) == 300 and ids == sorted(ids)
    done = await asyncio.gather(*(
        play(store, d, at=T0 + 10, duration=n % 7, code=200, error_class=None,
             status="succeeded")
        for n, d in enumerate(pending)
    ))
    assert {d.status for d in done} == {"succeeded"}
    stats = await store.stats()
    assert stats["attempts"] == 300 and stats["deliveries"]["succeeded"] == 300


async def test_a_refused_job_does_not_fail_the_jobs_batched_with_it(
    store: DeliveryStore,
) -> None:
    bad = NewDelivery("bad", 1, "\udcff", "x", T0)
    results = await asyncio.gather(
        *(store.enqueue(f"s{i}", 1, [new(1, f"s{i}")], now_ms=T0) for i in range(10)),
        store.enqueue("bad", 1, [bad], now_ms=T0),
        *(store.enqueue(f"t{i}", 1, [new(1, f"t{i}")], now_ms=T0) for i in range(10)),
        return_exceptions=True,
    )
    assert results[:10] == [1] * 10 and results[11:] == [1] * 10
    assert isinstance(results[10], ValueError)
    assert store.commits < 21, store.commits  # they did share transactions
    assert await store.pending_count() == 20 and await store.cursor("bad") is None


async def test_close_drains_queued_writes(make_store: StoreFactory) -> None:
    store = make_store()
    await store.start()
    tasks = [asyncio.create_task(store.enqueue(f"s{i}", i, [new(i, f"s{i}")], now_ms=T0))
             for i in range(50)]
    await asyncio.sleep(0)  # every task has queued its job; none is answered yet
    await store.close()
    assert [t.result() for t in tasks] == [1] * 50
    with pytest.raises(DeliveryStoreUnavailable):
        await store.enqueue("s1", 1, [], now_ms=T0)
    with pytest.raises(DeliveryStoreUnavailable):
        await store.pending_count()

    again = make_store()
    await again.start()
    await again.start()  # idempotent
    assert await again.pending_count() == 50
    assert await again.cursor("s49") == 49
    # Ids stay increasing across a restart, even with an earlier clock.
    before = await again.list(limit=1000)
    await again.enqueue("late", 1, [new(1, "late")], now_ms=T0 - 10_000)
    after = await again.list(after=before[-1].delivery_id)
    assert [d.subscription_id for d in after] == ["late"]
