"""The ``DeliveryQueue`` and ``DeliveryLog`` contract, through their public methods only,
on every engine: deliveries created with the cursor moved in the same commit, the due
queue, attempts and their outcomes, subscription health, the operator's actions on the
log, and the figures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from palyra_py.delivery.backend import DeliveryBackend, DeliveryLog, DeliveryQueue
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
