"""The dispatcher's scheduling on the real daemon: retries that are due at once, the
in-flight cap and the rate limit when a freed slot goes straight to the next delivery, the
slot given back at the answer while the record budget holds, a backlog larger than a page
and a queue, and the per-attempt metrics."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from palyra_py.metrics import Metrics
from palyra_py.outbound.dispatcher import PAGE, RESEND_FACTOR
from palyra_py.outbound.due import QUEUE_MAX
from palyra_py.server.daemon import Daemon
from palyra_py.testing import (
    CapturingReceiver,
    ManualClock,
    MemoryKeyring,
    Received,
    running_daemon,
    running_receiver,
)
from tests.fault_helpers import admin_session


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=time.time())


async def call(admin: aiohttp.ClientSession, method: str, path: str, expect: int,
               **body: Any) -> dict[str, Any]:
    async with admin.request(method, path, json=body) as resp:
        answer: dict[str, Any] = await resp.json()
        assert resp.status == expect, answer
        return answer


async def publish_many(admin: aiohttp.ClientSession, type_: str, count: int) -> None:
    gate = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with gate:
            await call(admin, "POST", "/v1/events", 201, type=type_, data={"i": i})

    await asyncio.gather(*(one(i) for i in range(count)))


async def attempts_of(admin: aiohttp.ClientSession, sub: str) -> list[tuple[Any, ...]]:
    async with admin.get("/v1/deliveries", params={"subscription": sub}) as resp:
        (row,) = (await resp.json())["deliveries"]
    shown = await call(admin, "GET", f"/v1/deliveries/{row['delivery_id']}", 200)
    return [(a["attempt_no"], a["status_code"], a["error_class"]) for a in shown["attempts"]]


async def test_a_retry_due_at_once_is_made_without_being_woken(
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: CapturingReceiver,
) -> None:
    # The clock never moves and nobody calls wake(): the recorded retry alone must bring
    # the delivery back, although it was in flight when the scheduler last looked.
    receiver.script = [500, 503]
    await call(admin_o, "POST", "/v1/subscriptions", 201, subscription_id="again",
               url=receiver.url, retry_schedule=["0s", "0s", "0s"])
    await call(admin_o, "POST", "/v1/events", 201, type="x.y")
    await outbound.dispatcher.wait_for_attempts(3)
    assert await attempts_of(admin_o, "again") == [
        (1, 500, "http_status"), (2, 503, "http_status"), (3, 200, None)]
    # Each retry went out while the attempt before it was still finishing (its health
    # check): that attempt's end must not free the retry for a second send.
    assert len(receiver.received) == 3


async def test_the_end_of_an_attempt_never_frees_its_retry_for_a_second_send(
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: CapturingReceiver,
) -> None:
    # Each first attempt fails and its retry is due at once: the retry can go out while
    # the failed attempt still finishes (its health check). That attempt's end must not
    # free the retry, still in flight, for a second send. (A race: it guards, not proves.)
    events = 40
    seen: set[str] = set()

    def first_fails(got: Any) -> web.Response:
        event_id = got.headers["webhook-id"]
        status = 200 if event_id in seen else 500
        seen.add(event_id)
        return web.Response(status=status)

    receiver.script = [first_fails] * (4 * events)
    for sid, ordered in (("in-order", True), ("any-order", False)):
        await call(admin_o, "POST", "/v1/subscriptions", 201, subscription_id=sid,
                   url=f"{receiver.url}/{sid}", ordered=ordered, events=[f"{sid}.*"],
                   retry_schedule=["0s", "0s", "0s"])
    for i in range(events):
        await call(admin_o, "POST", "/v1/events", 201, type="in-order.x", data={"i": i})
        await call(admin_o, "POST", "/v1/events", 201, type="any-order.x", data={"i": i})
    await outbound.dispatcher.wait_for_attempts(4 * events, timeout=30)
    arrivals = Counter(r.headers["webhook-id"] for r in receiver.received)
    assert len(arrivals) == 2 * events and set(arrivals.values()) == {2}
    in_order = [r.json()["data"]["i"] for r in receiver.received if r.path.endswith("/in-order")]
    assert in_order == [i for i in range(events) for _ in (1, 2)]


async def test_max_in_flight_holds_while_freed_slots_go_to_the_next_delivery(
    outbound: Daemon, admin_o: aiohttp.ClientSession,
) -> None:
    held: list[asyncio.Future[None]] = []
    arrived = asyncio.Condition()
    seen: list[str] = []
    peak = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal peak
        await request.read()
        gate = asyncio.get_running_loop().create_future()
        async with arrived:
            held.append(gate)
            seen.append(request.headers["webhook-id"])
            peak = max(peak, sum(1 for g in held if not g.done()))
            arrived.notify_all()
        await gate
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        await call(admin_o, "POST", "/v1/subscriptions", 201, subscription_id="capped",
                   url=f"http://127.0.0.1:{port}/hook", max_in_flight=3)
        await publish_many(admin_o, "x.y", 12)
        for n in range(3, 13):
            async with arrived:
                await asyncio.wait_for(arrived.wait_for(lambda n=n: len(held) >= n), 15)
            next(g for g in held if not g.done()).set_result(None)  # answer the oldest
        for gate in held:
            if not gate.done():
                gate.set_result(None)
        await outbound.dispatcher.wait_for_attempts(12)
    finally:
        for gate in held:
            if not gate.done():
                gate.set_result(None)
        await runner.cleanup()
    assert peak == 3
    assert len(seen) == len(set(seen)) == 12


async def test_an_answer_frees_the_slot_before_its_record_commits_within_the_budget(
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: CapturingReceiver, state_dir: Path,
) -> None:
    assert RESEND_FACTOR == 2  # max_in_flight 1: two attempts may wait for their records

    def hold(_: Received) -> None:
        return None  # the first request waits for receiver.hang

    receiver.script = [hold]
    await call(admin_o, "POST", "/v1/subscriptions", 201, subscription_id="budget",
               url=receiver.url, max_in_flight=1, enabled=False)
    await publish_many(admin_o, "x.y", 3)
    await call(admin_o, "POST", "/v1/subscriptions/budget/enable", 200, catch_up=True)
    await receiver.wait_for(1)
    # Another writer holds deliveries.db: no attempt outcome can be committed meanwhile.
    lock = sqlite3.connect(state_dir / "deliveries.db", timeout=10, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        receiver.hang.set()
        await receiver.wait_for(2)  # the first answer gave its slot to the second delivery
        async with asyncio.timeout(10):  # the second answered; the third must wait
            while outbound.dispatcher.in_flight("budget") != (2, 0):
                await asyncio.sleep(0.01)
        assert len(receiver.received) == 2
    finally:
        lock.rollback()
        lock.close()
    await outbound.dispatcher.wait_for_attempts(3)
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 3
    assert outbound.dispatcher.in_flight("budget") == (0, 0)


async def test_the_rate_limit_holds_when_a_slot_frees(
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: CapturingReceiver,
    clock: ManualClock,
) -> None:
    await call(admin_o, "POST", "/v1/subscriptions", 201, subscription_id="slow",
               url=receiver.url, rate_limit_per_s=1, max_in_flight=5, enabled=False)
    for i in range(3):
        await call(admin_o, "POST", "/v1/events", 201, type="x.y", data={"i": i})
    # Enabled with catch-up: all three deliveries are created in one commit, before the
    # first attempt (published one by one to an enabled subscription, the later ones may
    # still be on their way to the store when the first attempt is recorded).
    await call(admin_o, "POST", "/v1/subscriptions/slow/enable", 200, catch_up=True)
    await outbound.dispatcher.wait_for_attempts(1)
    # The answer freed a slot, but the bucket is empty until the (manual) clock moves.
    next_ms = await outbound.dispatcher.schedule_once()
    assert next_ms is not None and 0 < next_ms - outbound.now_ms() <= 1001
    assert len(receiver.received) == 1
    for n in (2, 3):
        clock.advance(1.0)
        outbound.dispatcher.wake()
        await outbound.dispatcher.wait_for_attempts(n)
    assert [r.json()["data"]["i"] for r in receiver.received] == [0, 1, 2]


async def test_a_backlog_past_a_page_and_a_queue_is_delivered_once_each(
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: CapturingReceiver,
) -> None:
    count = QUEUE_MAX + PAGE // 2
    await call(admin_o, "POST", "/v1/subscriptions", 201, subscription_id="late",
               url=receiver.url + "/late", max_in_flight=50, enabled=False)
    await call(admin_o, "POST", "/v1/subscriptions", 201, subscription_id="live",
               url=receiver.url + "/live", max_in_flight=20)
    await publish_many(admin_o, "tick.x", count)
    await call(admin_o, "POST", "/v1/subscriptions/late/enable", 200, catch_up=True)
    await outbound.dispatcher.wait_for_attempts(2 * count, timeout=120)
    got = [(r.path, r.headers["webhook-id"], r.json()["data"]["i"]) for r in receiver.received]
    assert len(got) == len(set(got)) == 2 * count
    for path in ("/hook/late", "/hook/live"):
        assert sorted(i for p, _, i in got if p == path) == list(range(count))
    stats = await call(admin_o, "GET", "/v1/deliveries/stats", 200)
    assert stats["deliveries"] == {"pending": 0, "succeeded": 2 * count, "failed": 0}


def never_answer(_: Received) -> None:
    return None  # the request waits for receiver.hang: a black hole


@pytest.mark.parametrize(("owners", "holes", "ordered", "held"), [
    (("noisy", "quiet"), 3, False, 4),  # another owner's subscription: the noisy owner holds half
    (("default", "default"), 2, False, 6),  # the same owner's: 4 + 2 or 3 + 3; 2 stay free
    (("noisy", "quiet"), 5, True, 4),  # five ordered ones, one slot each: the fifth waits
], ids=["other-owner", "same-owner", "ordered"])
async def test_black_hole_subscriptions_hold_only_their_share_of_the_global_slots(
    state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
    owners: tuple[str, str], holes: int, ordered: bool, held: int,
) -> None:
    # Issue 9 item 8. Subscriptions to a receiver that accepts and never answers, with
    # max_in_flight 10 each, against 8 global slots: before, they took all 8 and the other
    # subscription got nothing until their requests timed out.
    total, events = 8, 50
    noisy_owner, calm_owner = owners
    async with (running_receiver() as black, running_receiver() as good,
                running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                               delivery__allow_private_networks=True,
                               delivery__max_in_flight_total=total) as d,
                admin_session(d.socket_path) as admin):
        black.script = [never_answer] * 1000
        noisy = [f"hole-{i}" for i in range(holes)]
        for sid in noisy:
            await call(admin, "POST", "/v1/subscriptions", 201, subscription_id=sid,
                       url=f"{black.url}/{sid}", owner=noisy_owner, events=["noisy.*"],
                       max_in_flight=10, timeout_s=60, ordered=ordered)
        await call(admin, "POST", "/v1/subscriptions", 201, subscription_id="calm",
                   url=good.url, owner=calm_owner, events=["quiet.*"])
        await publish_many(admin, "noisy.x", 10)
        await black.wait_for(held)
        await publish_many(admin, "quiet.x", events)
        got = await good.wait_for(events)
        await d.dispatcher.wait_for_attempts(events)
        assert sorted(r.json()["data"]["i"] for r in got) == list(range(events))
        # Delivered while the black hole kept every request it had: none timed out, none
        # was recorded, and it was given no slot more.
        assert d.dispatcher.stats.attempts == events
        assert len(black.received) == held
        assert sum(d.dispatcher.in_flight(sid)[1] for sid in noisy) == held


def test_attempt_metrics_count_per_subscription_and_result() -> None:
    metrics = Metrics()
    for result in ("succeeded", "succeeded", "timeout"):
        metrics.delivery_attempted("s1", result, 0.02)
    metrics.delivery_attempted("s2", "succeeded", 3.0)
    text = metrics.render().decode()
    assert 'palyra_deliveries_total{result="succeeded",subscription="s1"} 2.0' in text
    assert 'palyra_deliveries_total{result="timeout",subscription="s1"} 1.0' in text
    assert 'palyra_delivery_attempt_seconds_count{subscription="s1"} 3.0' in text
    assert 'palyra_delivery_attempt_seconds_bucket{le="5.0",subscription="s2"} 1.0' in text
    assert 'palyra_delivery_attempt_seconds_bucket{le="2.5",subscription="s2"} 0.0' in text
