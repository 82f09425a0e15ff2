"""The ``DeliveryQueue`` and ``DeliveryLog`` contract, through their public methods only,
on every engine: deliveries created with the cursor moved in the same commit, the due
queue, attempts and their outcomes, subscription health, the operator's actions on the
log, and the figures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from palyra_py.delivery.backend import (
    DeliveryBackend,
    DeliveryLog,
    DeliveryQueue,
    DeliveryStoreUnavailable,
)
from palyra_py.delivery.records import (
    SUBSCRIPTION_REMOVED,
    AttemptRecord,
    Delivery,
    DeliveryNotFound,
    DeliveryStatus,
    NewDelivery,
)
from tests.contract.conftest import DELIVERY_ENGINES, Engine, engine_fixture

engine = engine_fixture(DELIVERY_ENGINES)

T0 = 1_700_000_000_000


@pytest.fixture
async def store(engine: Engine) -> AsyncIterator[DeliveryBackend]:
    backend = engine.deliveries()
    await backend.start()
    yield backend


def new(seq: int, sub: str = "s1", *, next_ms: int = T0) -> NewDelivery:
    return NewDelivery(sub, seq, f"evt-{seq}", "github.push", next_ms)


async def create(queue: DeliveryQueue, sub: str, seqs: list[int], *, cursor: int,
                 now_ms: int = T0) -> list[Delivery]:
    return await queue.enqueue_created(sub, cursor, [new(s, sub) for s in seqs],
                                       now_ms=now_ms)


async def attempt(queue: DeliveryQueue, delivery: Delivery, *, at: int, status: DeliveryStatus,
                  code: int | None = 200, error_class: str | None = None,
                  next_ms: int | None = None) -> Delivery:
    record = AttemptRecord(delivery.delivery_id, delivery.attempts + 1, at, 25, code,
                           error_class, None if error_class is None else "boom", "ok")
    return await queue.record_attempt(record, status=status, next_attempt_ms=next_ms,
                                      now_ms=at + 25)


async def test_create_moves_the_cursor_in_the_same_commit(store: DeliveryBackend) -> None:
    queue: DeliveryQueue = store
    assert await queue.cursor("s1") is None
    created = await create(queue, "s1", [1, 2, 3], cursor=5)
    assert [d.event_seq for d in created] == [1, 2, 3]
    assert all(d.status == "pending" and d.attempts == 0 and d.next_attempt_ms == T0
               for d in created)
    ids = [d.delivery_id for d in created]
    assert ids == sorted(ids) and len(set(ids)) == 3  # ids sort in creation order
    assert await queue.cursor("s1") == 5
    # Again after a crash: nothing twice; the cursor never goes back by enqueueing.
    again = await create(queue, "s1", [3, 4], cursor=4)
    assert [d.event_seq for d in again] == [4]
    assert await queue.cursor("s1") == 5
    # A subscription's deliveries are its own.
    with pytest.raises(ValueError, match="every delivery"):
        await queue.enqueue_created("s1", 6, [new(6, "s2")], now_ms=T0)
    # set_cursor sets exactly, backwards too.
    await queue.set_cursor("s1", 2)
    assert await queue.cursor("s1") == 2
    assert await queue.pending_count() == 4 and await queue.pending_count("s1") == 4
    assert await store.resume_seq() == 1


async def test_the_due_queue_in_order(store: DeliveryBackend) -> None:
    queue: DeliveryQueue = store
    await queue.enqueue_created("a", 3, [new(1, "a", next_ms=T0 + 500), new(2, "a"),
                                         new(3, "a", next_ms=T0 + 9_000)], now_ms=T0)
    await create(queue, "b", [7], cursor=7)
    due, next_due = await queue.due_page(T0 + 1000, 100, ["a", "b"])
    # Earliest next attempt first, then lowest seq.
    assert [(d.subscription_id, d.event_seq) for d in due] == [("a", 2), ("b", 7), ("a", 1)]
    assert next_due == T0 + 9_000
    only_b, _ = await queue.due_page(T0 + 1000, 100, ["b"])
    assert [d.event_seq for d in only_b] == [7]
    first, _ = await queue.due_page(T0 + 1000, 1, ["a", "b"])
    assert len(first) == 1
    oldest = await queue.oldest_pending_of(["a", "b", "c"])
    assert {s: d.event_seq for s, d in oldest.items()} == {"a": 1, "b": 7}
    assert await queue.oldest_pending_age_ms(T0 + 40) == 40


async def test_attempts_record_outcomes_and_health(store: DeliveryBackend) -> None:
    queue: DeliveryQueue = store
    log: DeliveryLog = store
    one, two = await create(queue, "s1", [1, 2], cursor=2)
    assert await queue.health("s1") == (None, None)
    retried = await attempt(queue, one, at=T0 + 100, status="pending", code=503,
                            error_class="http_5xx", next_ms=T0 + 5_000)
    assert (retried.status, retried.attempts, retried.next_attempt_ms) == (
        "pending", 1, T0 + 5_000)
    assert (retried.last_status_code, retried.last_error_class) == (503, "http_5xx")
    assert await queue.health("s1") == (None, T0 + 125)
    due, _ = await queue.due_page(T0 + 1_000, 100, ["s1"])
    assert [d.delivery_id for d in due] == [two.delivery_id]  # the retry is not due yet
    done = await attempt(queue, retried, at=T0 + 6_000, status="succeeded")
    assert (done.status, done.attempts, done.next_attempt_ms) == ("succeeded", 2, None)
    assert await queue.health("s1") == (T0 + 6_025, None)
    failed = await attempt(queue, two, at=T0 + 7_000, status="failed", code=None,
                           error_class="timeout")
    assert failed.status == "failed" and await queue.health("s1") == (T0 + 6_025, T0 + 7_025)
    found = await log.get(one.delivery_id)
    assert found is not None
    shown, attempts = found
    assert shown == done
    assert [(a.attempt_no, a.status_code, a.error_class) for a in attempts] == [
        (1, 503, "http_5xx"), (2, 200, None)]
    # Refusals leave nothing behind.
    with pytest.raises(ValueError, match="already recorded"):
        await queue.record_attempt(
            AttemptRecord(one.delivery_id, 2, T0, 1, 200, None, None, None),
            status="succeeded", next_attempt_ms=None, now_ms=T0)
    with pytest.raises(DeliveryNotFound):
        await queue.record_attempt(
            AttemptRecord("D" * 26, 1, T0, 1, 200, None, None, None),
            status="succeeded", next_attempt_ms=None, now_ms=T0)
    assert await queue.pending_count("s1") == 0


async def test_attempts_recorded_together_apply_in_order(store: DeliveryBackend) -> None:
    queue: DeliveryQueue = store
    created = await create(queue, "s1", list(range(1, 21)), cursor=20)
    outcomes = await asyncio.gather(*(
        attempt(queue, d, at=T0 + i, status="succeeded" if i % 2 else "failed",
                error_class=None if i % 2 else "http_4xx")
        for i, d in enumerate(created)))
    assert [d.status for d in outcomes] == ["failed", "succeeded"] * 10
    stats = await store.stats()
    assert stats["deliveries"] == {"pending": 0, "succeeded": 10, "failed": 10}
    # Health as if recorded one after another: the last success, then a failure after it.
    last_success, failing_since = await queue.health("s1")
    assert last_success == T0 + 19 + 25 and failing_since is None


async def test_an_ended_delivery_is_never_made_pending_again(store: DeliveryBackend) -> None:
    (delivery,) = await create(store, "s1", [1], cursor=1)
    assert await store.forget_subscription("s1", now_ms=T0 + 10) == 1
    assert await store.cursor("s1") is None
    ended = await store.get(delivery.delivery_id)
    assert ended is not None and ended[0].last_error_class == SUBSCRIPTION_REMOVED
    late = await attempt(store, delivery, at=T0 + 20, status="pending", code=503,
                         error_class="http_5xx", next_ms=T0 + 99)
    assert late.status == "failed" and late.next_attempt_ms is None
    assert await store.health("s1") == (None, None)


async def test_the_log_lists_retries_and_recovers(store: DeliveryBackend) -> None:
    log: DeliveryLog = store
    created = await create(store, "s1", [1, 2, 3], cursor=3)
    await create(store, "s2", [1], cursor=1, now_ms=T0 + 50)
    listed = await log.list()
    assert [d.delivery_id for d in listed] == sorted(d.delivery_id for d in listed)
    page = await log.list(limit=2)
    rest = await log.list(after=page[-1].delivery_id)
    assert [d.delivery_id for d in page + rest] == [d.delivery_id for d in listed]
    assert [d.event_seq for d in await log.list(subscription_id="s1")] == [1, 2, 3]
    assert [d.subscription_id for d in await log.list(since_ms=T0 + 50)] == ["s2"]
    assert len(await log.list(until_ms=T0 + 50)) == 3
    for delivery in created:
        await attempt(store, delivery, at=T0 + 100, status="failed", code=500,
                      error_class="http_5xx")
    assert [d.event_seq for d in await log.list(status="failed")] == [1, 2, 3]
    retried = await log.retry(created[0].delivery_id, T0 + 200)
    assert retried is not None
    assert (retried.status, retried.next_attempt_ms, retried.attempts) == (
        "pending", T0 + 200, 1)
    assert await log.retry("D" * 26, T0) is None
    assert await log.recover("s1", T0, None, T0 + 300) == 2
    assert await log.pending_count("s1") == 3
    oldest = await log.oldest_pending("s1")
    assert oldest is not None and oldest.event_seq == 1
    with pytest.raises(ValueError):
        await log.list(limit=0)
    assert log.check_file() is None


async def test_anything_can_be_sent_again(store: DeliveryBackend) -> None:
    done, waiting, fresh, _ = await create(store, "s1", [1, 2, 3, 4], cursor=4)
    await attempt(store, done, at=T0 + 10, status="succeeded")
    await attempt(store, waiting, at=T0 + 10, status="pending", code=503,
                  error_class="http_5xx", next_ms=T0 + 3_600_000)
    # A succeeded delivery goes back to pending (a redelivery), its attempts kept.
    again = await store.retry(done.delivery_id, T0 + 20)
    assert again is not None
    assert (again.status, again.next_attempt_ms, again.attempts) == ("pending", T0 + 20, 1)
    # recover: the pending one that failed and waits an hour is due now; one never tried
    # (fresh) and one due already are left as they are.
    assert await store.recover("s1", T0, None, T0 + 30) == 1
    found = await store.get(waiting.delivery_id)
    assert found is not None and found[0].next_attempt_ms == T0 + 30
    found = await store.get(fresh.delivery_id)
    assert found is not None and found[0].next_attempt_ms == T0
    due, _ = await store.due_page(T0 + 30, 10, ["s1"])
    assert {d.event_seq for d in due} == {1, 2, 3, 4}


async def test_a_replay_creates_or_resends_and_leaves_the_cursor(
    store: DeliveryBackend,
) -> None:
    (done,) = await create(store, "s1", [5], cursor=9)
    await attempt(store, done, at=T0 + 10, status="succeeded")
    assert await store.replay("s1", [new(2, next_ms=T0 + 50), new(5, next_ms=T0 + 50)],
                              T0 + 50) == 2
    assert await store.cursor("s1") == 9
    listed = {d.event_seq: d for d in await store.list(subscription_id="s1")}
    assert set(listed) == {2, 5}
    assert listed[5].delivery_id == done.delivery_id  # the same delivery, sent again
    assert (listed[5].status, listed[5].attempts, listed[5].next_attempt_ms) == (
        "pending", 1, T0 + 50)
    assert (listed[2].status, listed[2].attempts) == ("pending", 0)
    # The enqueuer reaching an event replayed before it does not create it twice.
    assert [d.event_seq for d in await create(store, "s1", [2, 11], cursor=11)] == [11]
    assert len(await store.list(subscription_id="s1")) == 3
    assert await store.replay("s1", [], T0) == 0
    with pytest.raises(ValueError):
        await store.replay("s1", [new(1, "s2")], T0)


async def test_the_figures(store: DeliveryBackend) -> None:
    a1, a2 = await create(store, "a", [1, 2], cursor=2)
    (b1,) = await create(store, "b", [1], cursor=1)
    await attempt(store, a1, at=T0 + 10, status="succeeded")
    await attempt(store, a2, at=T0 + 20, status="failed", code=500, error_class="http_5xx")
    await attempt(store, b1, at=T0 + 30, status="pending", code=None, error_class="timeout",
                  next_ms=T0 + 1000)
    stats = await store.stats()
    assert stats["deliveries"] == {"pending": 1, "succeeded": 1, "failed": 1}
    assert stats["attempts"] == 3
    assert stats["success_rate"] == pytest.approx(1 / 3)
    assert stats["latency_ms"] == {"p50": 25, "p95": 25}
    assert stats["failures_by_class"] == {"http_5xx": 1, "timeout": 1}
    assert stats["busiest"] == [{"subscription_id": "a", "deliveries": 2},
                                {"subscription_id": "b", "deliveries": 1}]
    of_b = await store.stats(subscription_id="b")
    assert of_b["attempts"] == 1 and of_b["success_rate"] == 0.0
    empty = await store.stats(since_ms=T0 + 10_000)
    assert empty["attempts"] == 0 and empty["success_rate"] is None
    assert empty["latency_ms"] == {"p50": None, "p95": None}


async def test_prune_keeps_pending_deliveries(store: DeliveryBackend) -> None:
    done, waiting = await create(store, "s1", [1, 2], cursor=2)
    await attempt(store, done, at=T0 + 10, status="succeeded")
    assert await store.prune(T0 + 1_000) == 1
    assert await store.get(done.delivery_id) is None
    assert await store.get(waiting.delivery_id) is not None


async def test_closed_and_empty_answers(engine: Engine) -> None:
    backend = engine.deliveries()
    await backend.start()
    assert await backend.resume_seq() is None
    assert await backend.oldest_pending_age_ms(T0) is None
    assert await backend.oldest_pending_of([]) == {}
    assert await backend.due_page(T0, 10, []) == ([], None)
    assert await backend.oldest_pending("s1") is None
    assert await backend.get("D" * 26) is None
    assert backend.unavailable_reason is None and backend.check_file() is None
    await create(backend, "s1", [4], cursor=9)
    assert await backend.resume_seq() == 4
    await backend.close()
    with pytest.raises(DeliveryStoreUnavailable):
        await backend.cursor("s1")
    with pytest.raises(DeliveryStoreUnavailable):
        await backend.set_cursor("s1", 1)


async def test_attempt_texts_are_kept_to_their_bounds(store: DeliveryBackend) -> None:
    one, two = await create(store, "s1", [1, 2], cursor=2)
    long_detail = "é" * 2000
    long_excerpt = "ü" * 5000  # 10,000 bytes of UTF-8
    await store.record_attempt(
        AttemptRecord(one.delivery_id, 1, T0, 5, 500, "http_5xx", long_detail, long_excerpt),
        status="failed", next_attempt_ms=None, now_ms=T0)
    # A receiver's body may hold any byte: recording it never fails.
    await store.record_attempt(
        AttemptRecord(two.delivery_id, 1, T0, 5, 500, "http_5xx", "a\x00b", "c\x00d"),
        status="failed", next_attempt_ms=None, now_ms=T0)
    found = await store.get(one.delivery_id)
    assert found is not None
    (kept,) = found[1]
    assert kept.error_detail == "é" * 512
    assert kept.response_excerpt is not None
    assert len(kept.response_excerpt.encode()) <= 4096
    assert kept.response_excerpt == "ü" * 2048
    other = await store.get(two.delivery_id)
    assert other is not None
    (odd,) = other[1]
    assert odd.error_detail is not None and len(odd.error_detail) == 3
    assert odd.error_detail[::2] == "ab"


async def test_a_refused_attempt_in_a_burst_leaves_the_others(store: DeliveryBackend) -> None:
    created = await create(store, "s1", [1, 2, 3], cursor=3)
    await attempt(store, created[1], at=T0, status="pending", code=503,
                  error_class="http_5xx", next_ms=T0 + 10)
    # Recorded together: attempt 1 of the second delivery again, and an unknown one.
    outcomes = await asyncio.gather(
        attempt(store, created[0], at=T0 + 1, status="succeeded"),
        store.record_attempt(
            AttemptRecord(created[1].delivery_id, 1, T0, 1, 200, None, None, None),
            status="succeeded", next_attempt_ms=None, now_ms=T0 + 2),
        store.record_attempt(
            AttemptRecord("D" * 26, 1, T0, 1, 200, None, None, None),
            status="succeeded", next_attempt_ms=None, now_ms=T0 + 3),
        attempt(store, created[2], at=T0 + 4, status="succeeded"),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], ValueError) and "already recorded" in str(outcomes[1])
    assert isinstance(outcomes[2], DeliveryNotFound)
    assert [o.status for o in (outcomes[0], outcomes[3]) if isinstance(o, Delivery)] == [
        "succeeded", "succeeded"]
    second = await store.get(created[1].delivery_id)
    assert second is not None
    assert second[0].status == "pending" and second[0].attempts == 1
    assert [a.status_code for a in second[1]] == [503]


# -- several writers on one storage (engines whose storage is shared by nodes) -----------


def shared_pair(engine: Engine) -> tuple[DeliveryBackend, DeliveryBackend]:
    if engine.name == "sqlite":
        pytest.skip("deliveries.db has one writer process (the control process) by design")
    return engine.deliveries(), engine.deliveries()


async def test_two_writers_create_each_delivery_once(engine: Engine) -> None:
    a, b = shared_pair(engine)
    await a.start()
    await b.start()
    seqs = list(range(1, 41))
    # Both enqueue the same events at once, each moving the cursor to its own page end.
    made = await asyncio.gather(*(
        w.enqueue_created("s1", cursor, [new(s) for s in seqs[:cursor]], now_ms=T0)
        for w, cursor in ((a, 40), (b, 25), (a, 30), (b, 40))
    ))
    created = [d.event_seq for batch in made for d in batch]
    assert sorted(created) == seqs  # each event once, whichever writer made it
    listed = await b.list(subscription_id="s1", limit=1000)
    assert sorted(d.event_seq for d in listed) == seqs
    assert {d.delivery_id for batch in made for d in batch} == {d.delivery_id for d in listed}
    # The cursor never went back, whichever commit came last.
    assert await a.cursor("s1") == 40 and await b.cursor("s1") == 40
    await b.enqueue_created("s1", 12, [new(3)], now_ms=T0)
    assert await a.cursor("s1") == 40


async def test_two_writers_record_one_attempt_once(engine: Engine) -> None:
    a, b = shared_pair(engine)
    await a.start()
    await b.start()
    (delivery,) = await create(a, "s1", [1], cursor=1)
    outcomes = await asyncio.gather(
        attempt(a, delivery, at=T0 + 10, status="succeeded"),
        attempt(b, delivery, at=T0 + 20, status="succeeded"),
        return_exceptions=True,
    )
    refused = [o for o in outcomes if isinstance(o, ValueError)]
    done = [o for o in outcomes if isinstance(o, Delivery)]
    assert len(refused) == 1 and len(done) == 1, outcomes
    found = await b.get(delivery.delivery_id)
    assert found is not None
    assert found[0].attempts == 1 and len(found[1]) == 1
    # Each writer sees what the other committed.
    assert await a.health("s1") == await b.health("s1") != (None, None)
    assert await b.pending_count() == 0
