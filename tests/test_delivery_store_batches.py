"""The delivery store's batched paths, on real SQLite files: attempts recorded in one turn
of the loop share one writer job, each with the result and the health it would have had
alone; enqueue returns what it created; the scheduler's reads; delivery ids."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from palyra_py.delivery.store import (
    AttemptRecord,
    Delivery,
    DeliveryNotFound,
    DeliveryStatus,
    DeliveryStore,
    NewDelivery,
)

T0 = 1_700_000_000_000


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[DeliveryStore]:
    s = DeliveryStore(tmp_path / "deliveries.db")
    await s.start()
    yield s
    await s.close()


def new(seq: int, sub: str = "s1", next_ms: int = T0) -> NewDelivery:
    return NewDelivery(sub, seq, f"evt-{sub}-{seq}", "x.y", next_ms)


def attempt(d: Delivery, no: int, at: int, code: int | None,
            error_class: str | None) -> AttemptRecord:
    return AttemptRecord(d.delivery_id, no, at, 5, code, error_class, error_class and "boom",
                         "ok")


def record(store: DeliveryStore, d: Delivery, no: int, at: int, *, ok: bool,
           status: DeliveryStatus | None = None, next_ms: int | None = None
           ) -> asyncio.Future[Delivery]:
    """Start recording now (the call is made in this turn of the loop)."""
    rec = attempt(d, no, at, 200 if ok else 500, None if ok else "http_status")
    chosen: DeliveryStatus = status or ("succeeded" if ok else "pending")
    if chosen == "pending" and next_ms is None:
        next_ms = at + 1000
    return asyncio.ensure_future(
        store.record_attempt(rec, status=chosen, next_attempt_ms=next_ms, now_ms=at + 5))


async def test_enqueue_created_returns_what_get_shows_and_skips_what_exists(
    store: DeliveryStore,
) -> None:
    created = await store.enqueue_created("s1", 3, [new(1), new(2)], now_ms=T0)
    assert [x.event_seq for x in created] == [1, 2]
    for x in created:
        found = await store.get(x.delivery_id)
        assert found is not None and found[0] == x
    again = await store.enqueue_created("s1", 4, [new(2), new(3), new(1)], now_ms=T0 + 1)
    assert [x.event_seq for x in again] == [3]
    assert (await store.get(again[0].delivery_id)) is not None
    assert await store.cursor("s1") == 4
    assert await store.enqueue("s1", 5, [new(3), new(4)], now_ms=T0 + 2) == 1


async def test_attempts_of_one_turn_share_a_commit_and_keep_their_own_results(
    store: DeliveryStore,
) -> None:
    deliveries = await store.enqueue_created("s1", 40, [new(n) for n in range(1, 41)],
                                             now_ms=T0)
    before = store.commits
    results = await asyncio.gather(*(
        record(store, x, 1, T0 + n, ok=n % 2 == 0) for n, x in enumerate(deliveries)))
    assert store.commits - before < 5, store.commits - before
    for n, (x, got) in enumerate(zip(deliveries, results, strict=True)):
        assert got.delivery_id == x.delivery_id and got.attempts == 1
        assert got.status == ("succeeded" if n % 2 == 0 else "pending")
        assert got.updated_ms == T0 + n + 5
        stored = await store.get(x.delivery_id)
        assert stored is not None and stored[0] == got
        assert [(a.attempt_no, a.status_code) for a in stored[1]] == [
            (1, 200 if n % 2 == 0 else 500)]


async def test_attempts_recorded_while_the_writer_is_busy_join_one_job(
    store: DeliveryStore,
) -> None:
    """Attempts that finish in many turns of the loop while the writer works on something
    else all go into its next job: one read, one insert and one update for all of them."""
    deliveries = await store.enqueue_created("s1", 30, [new(n) for n in range(1, 31)],
                                             now_ms=T0)
    started, release = threading.Event(), threading.Event()

    def hold(_: object) -> None:  # a write job that keeps the writer busy until released
        started.set()
        release.wait(10)

    busy = asyncio.ensure_future(store._write(hold))
    assert await asyncio.to_thread(started.wait, 10)
    jobs = store.write_jobs
    pending = []
    for n, x in enumerate(deliveries):
        pending.append(record(store, x, 1, T0 + n, ok=True))
        await asyncio.sleep(0)  # one turn of the loop each: not one job per turn any more
    release.set()
    await busy
    results = await asyncio.gather(*pending)
    assert store.write_jobs - jobs == 2  # the busy job, then ONE job of 30 attempts
    assert [r.delivery_id for r in results] == [x.delivery_id for x in deliveries]
    assert all(r.status == "succeeded" and r.attempts == 1 for r in results)
    more = await record(store, deliveries[0], 2, T0 + 100, ok=True)  # a new job after it
    assert more.attempts == 2 and store.write_jobs - jobs == 3


async def test_a_refused_attempt_does_not_undo_the_others_of_its_batch(
    store: DeliveryStore,
) -> None:
    a, b = await store.enqueue_created("s1", 2, [new(1), new(2)], now_ms=T0)
    assert (await record(store, a, 1, T0, ok=False)).attempts == 1
    ghost = Delivery("01HF7YAT3VHNPC1W9WCRC07483", "s1", 9, "e", "x.y", "pending", 0, T0, T0,
                     T0, None, None)
    results = await asyncio.gather(
        record(store, a, 1, T0 + 10, ok=True),  # attempt 1 of a is already recorded
        record(store, ghost, 1, T0 + 10, ok=True),
        record(store, b, 1, T0 + 10, ok=True),
        return_exceptions=True,
    )
    assert isinstance(results[0], ValueError) and "already recorded" in str(results[0])
    assert isinstance(results[1], DeliveryNotFound)
    assert isinstance(results[2], Delivery) and results[2].status == "succeeded"
    found = await store.get(a.delivery_id)
    assert found is not None and found[0].attempts == 1 and found[0].status == "pending"
    assert [x.status_code for x in found[1]] == [500]


async def test_two_attempts_of_one_delivery_in_one_batch_apply_in_order(
    store: DeliveryStore,
) -> None:
    (a,) = await store.enqueue_created("s1", 1, [new(1)], now_ms=T0)
    first, second = await asyncio.gather(record(store, a, 1, T0, ok=False),
                                         record(store, a, 2, T0 + 100, ok=True))
    assert (first.attempts, first.status) == (1, "pending")
    assert (second.attempts, second.status, second.next_attempt_ms) == (2, "succeeded", None)
    found = await store.get(a.delivery_id)
    assert found is not None and found[0] == second


@pytest.mark.parametrize("outcomes", [
    [False, True, False, False],
    [True, False, True],
    [False, False],
    [True, True],
])
async def test_health_after_a_batch_is_what_one_by_one_gives(
    tmp_path: Path, outcomes: list[bool],
) -> None:
    stores = [DeliveryStore(tmp_path / "batched.db"), DeliveryStore(tmp_path / "single.db")]
    for s in stores:
        await s.start()
    try:
        batched, single = stores
        news = [new(n + 1) for n in range(len(outcomes))]
        b = await batched.enqueue_created("s1", len(news), news, now_ms=T0)
        s = await single.enqueue_created("s1", len(news), news, now_ms=T0)
        await asyncio.gather(*(record(batched, x, 1, T0 + 100 * n, ok=ok)
                               for n, (x, ok) in enumerate(zip(b, outcomes, strict=True))))
        for n, (x, ok) in enumerate(zip(s, outcomes, strict=True)):
            await record(single, x, 1, T0 + 100 * n, ok=ok)
        assert await batched.health("s1") == await single.health("s1")
    finally:
        for s in stores:
            await s.close()


async def test_an_attempt_on_an_ended_delivery_keeps_it_ended(store: DeliveryStore) -> None:
    (a,) = await store.enqueue_created("s1", 1, [new(1)], now_ms=T0)
    assert await store.forget_subscription("s1", T0 + 1) == 1
    got = await record(store, a, 1, T0 + 2, ok=False)
    assert (got.status, got.next_attempt_ms, got.attempts) == ("failed", None, 1)
    assert await store.health("s1") == (None, None)


async def test_close_commits_an_attempt_recorded_in_the_same_turn(tmp_path: Path) -> None:
    store = DeliveryStore(tmp_path / "deliveries.db")
    await store.start()
    (a,) = await store.enqueue_created("s1", 1, [new(1)], now_ms=T0)
    pending = record(store, a, 1, T0, ok=True)
    await asyncio.sleep(0)  # the record call has run; its batch is not submitted yet
    await store.close()
    assert (await asyncio.wait_for(pending, 10)).status == "succeeded"
    again = DeliveryStore(tmp_path / "deliveries.db")
    await again.start()
    found = await again.get(a.delivery_id)
    await again.close()
    assert found is not None and found[0].status == "succeeded"


async def test_due_page_and_oldest_pending_of(store: DeliveryStore) -> None:
    await store.enqueue("s1", 3, [new(1, next_ms=T0 + 5), new(2), new(3, next_ms=T0 + 900)],
                        now_ms=T0)
    await store.enqueue("s2", 1, [new(1, "s2")], now_ms=T0)
    due, next_due = await store.due_page(T0 + 10, 100, ["s1"])
    assert [(x.subscription_id, x.event_seq) for x in due] == [("s1", 2), ("s1", 1)]
    assert next_due == T0 + 900
    due, next_due = await store.due_page(T0 + 10, 1, ["s1", "s2"])
    assert len(due) == 1 and next_due == T0 + 900
    assert await store.due_page(T0 + 1000, 100, []) == ([], None)
    oldest = await store.oldest_pending_of(["s1", "s2", "s3"])
    assert {k: v.event_seq for k, v in oldest.items()} == {"s1": 1, "s2": 1}


async def test_on_committed_runs_at_the_commit_before_the_caller_resumes(
    store: DeliveryStore,
) -> None:
    a, b = await store.enqueue_created("s1", 2, [new(1), new(2)], now_ms=T0)
    await record(store, b, 1, T0, ok=True)
    seen: list[tuple[str, str]] = []

    async def recorded(d: Delivery, ok: bool) -> None:
        rec = attempt(d, 1, T0 + 1, 200 if ok else 500, None if ok else "http_status")
        try:
            await store.record_attempt(
                rec, status="succeeded" if ok else "failed", next_attempt_ms=None,
                now_ms=T0 + 2, on_committed=lambda got: seen.append(("committed", got.status)))
        finally:
            seen.append(("resumed", d.delivery_id))

    results = await asyncio.gather(recorded(a, True), recorded(b, True),
                                   return_exceptions=True)
    assert results[0] is None and isinstance(results[1], ValueError)  # b: already recorded
    assert seen[0] == ("committed", "succeeded")
    assert sorted(seen[1:]) == [("resumed", a.delivery_id), ("resumed", b.delivery_id)]


async def test_texts_with_nul_are_stored_whole(store: DeliveryStore) -> None:
    # The bulk statements pass rows as JSON, which SQLite cuts at NUL: such rows go the
    # row-by-row way instead, and arrive intact.
    (a,) = await store.enqueue_created("s1", 1, [NewDelivery("s1", 1, "e\x00vt", "x.y", T0)],
                                       now_ms=T0)
    rec = AttemptRecord(a.delivery_id, 1, T0, 5, 500, "http_status", "bad\x00detail",
                        "bin\x00ary")
    got = await store.record_attempt(rec, status="pending", next_attempt_ms=T0 + 10,
                                     now_ms=T0 + 5)
    found = await store.get(a.delivery_id)
    assert found is not None and found[0] == got and got.event_id == "e\x00vt"
    assert (found[1][0].error_detail, found[1][0].response_excerpt) == (
        "bad\x00detail", "bin\x00ary")
