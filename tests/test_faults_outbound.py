"""Fault injection on the outbound side of the real daemon: receivers that reset, hang up,
stream forever or stall, a host that does not resolve, the delivery store locked by another
process, a journal that vanished between two runs, and retries across a wall-clock jump.

As in ``test_faults.py``: each test asserts the documented behaviour, and where palyra_py
falls short the test states the correct behaviour under ``xfail(strict=True)``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from palyra_py.server.daemon import Daemon, DaemonError
from palyra_py.testing import CapturingReceiver, ManualClock, running_daemon
from tests.fault_helpers import (
    admin_session,
    endless_response,
    hang_up_mid_response_body,
    publish,
    raw_receiver,
    reset_mid_request_body,
    stall_in_headers,
    subscribe,
    wait_out_the_busy_timeout,
    write_lock_held_elsewhere,
)
from tests.helpers import events

JOURNAL_FILES = ("journal.db", "journal.db-wal", "journal.db-shm")


@pytest.fixture
def clock() -> ManualClock:
    """Today's wall-clock time (the conftest ``outbound`` daemon runs on it)."""
    return ManualClock(start=time.time())


async def only_delivery(admin: aiohttp.ClientSession, sid: str) -> dict[str, Any]:
    async with admin.get("/v1/deliveries", params={"subscription": sid}) as resp:
        (row,) = (await resp.json())["deliveries"]
    async with admin.get(f"/v1/deliveries/{row['delivery_id']}") as resp:
        shown: dict[str, Any] = await resp.json()
    return shown


async def assert_still_delivering(admin: aiohttp.ClientSession, good: CapturingReceiver) -> None:
    """A healthy subscription next to the bad one is served as if nothing happened."""
    await subscribe(admin, "healthy", good.url, events=["healthy.*"])
    assert (await publish(admin, "healthy.ping"))[0] == 201
    (got,) = await good.wait_for(1)
    assert got.json()["type"] == "healthy.ping"


# -- receivers that misbehave, names that do not resolve ---------------------------------


async def test_receiver_resetting_mid_request_body_is_a_connect_failure(
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: CapturingReceiver,
) -> None:
    async with raw_receiver(reset_mid_request_body) as bad:
        await subscribe(admin_o, "bad", bad.url, events=["app.*"],
                        retry_schedule=["0s", "1m"])
        assert (await publish(admin_o, "app.big", blob="z" * 7000))[0] == 201
        await outbound.dispatcher.wait_for_attempts(1)
        shown = await only_delivery(admin_o, "bad")
    (attempt,) = shown["attempts"]
    assert (attempt["error_class"], attempt["status_code"]) == ("connect", None), attempt
    assert shown["delivery"]["status"] == "pending"  # retried in a minute
    assert bad.requests == 1  # a POST is never re-sent on the spot by the HTTP client
    await assert_still_delivering(admin_o, receiver)


async def test_receiver_hanging_up_mid_response_body_is_judged_by_its_status(
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: CapturingReceiver,
) -> None:
    """The status line is the receiver's answer: a 200 whose body is cut short counts as
    delivered (re-sending it would only make a duplicate), with what arrived as excerpt."""
    async with raw_receiver(hang_up_mid_response_body) as bad:
        await subscribe(admin_o, "bad", bad.url, events=["app.*"])
        assert (await publish(admin_o, "app.cut"))[0] == 201
        await outbound.dispatcher.wait_for_attempts(1)
        shown = await only_delivery(admin_o, "bad")
    (attempt,) = shown["attempts"]
    assert (attempt["status_code"], attempt["error_class"]) == (200, None), attempt
    assert attempt["response_excerpt"] == "partial..."
    assert shown["delivery"]["status"] == "succeeded"
    await assert_still_delivering(admin_o, receiver)


@pytest.mark.parametrize("status", [200, 500])
async def test_endless_response_is_read_4_kib_and_hung_up_on(
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: CapturingReceiver, status: int,
) -> None:
    """The daemon reads 4 KiB of an answer that never ends and closes the connection; the
    status line decides success (Standard Webhooks: only the status counts)."""
    async with raw_receiver(endless_response(status)) as bad:
        await subscribe(admin_o, "bad", bad.url, events=["app.*"], timeout_s=5,
                        retry_schedule=["0s", "1m"])
        assert (await publish(admin_o, "app.talkative"))[0] == 201
        await outbound.dispatcher.wait_for_attempts(1)
        await asyncio.wait_for(bad.peer_closed.wait(), 5)
        shown = await only_delivery(admin_o, "bad")
    (attempt,) = shown["attempts"]
    assert attempt["status_code"] == status
    assert attempt["response_excerpt"] == "y" * 4096
    assert attempt["duration_ms"] < 5000
    assert attempt["error_class"] == (None if status == 200 else "http_status")
    assert shown["delivery"]["status"] == ("succeeded" if status == 200 else "pending")
    await assert_still_delivering(admin_o, receiver)


async def test_receiver_stalling_in_its_headers_times_out_within_the_subscription_timeout(
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: CapturingReceiver,
) -> None:
    async with raw_receiver(stall_in_headers) as bad:
        await subscribe(admin_o, "bad", bad.url, events=["app.*"], timeout_s=1,
                        retry_schedule=["0s", "1m"])
        assert (await publish(admin_o, "app.slow"))[0] == 201
        await outbound.dispatcher.wait_for_attempts(1, timeout=5)
        await asyncio.wait_for(bad.peer_closed.wait(), 5)
        shown = await only_delivery(admin_o, "bad")
    (attempt,) = shown["attempts"]
    assert attempt["error_class"] == "timeout"
    assert 900 <= attempt["duration_ms"] < 3000
    assert shown["delivery"]["status"] == "pending"
    await assert_still_delivering(admin_o, receiver)


async def test_unresolvable_host_is_a_dns_failure_and_is_retried(
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: CapturingReceiver,
) -> None:
    clock = outbound.clock
    assert isinstance(clock, ManualClock)
    await subscribe(admin_o, "nowhere", "http://hooks.palyra-faults.invalid/in",
                    events=["app.*"], retry_schedule=["0s", "10s"])
    assert (await publish(admin_o, "app.lost"))[0] == 201
    await outbound.dispatcher.wait_for_attempts(1)
    assert (await only_delivery(admin_o, "nowhere"))["delivery"]["status"] == "pending"
    clock.advance(12)  # 10 s and its 10 % jitter
    outbound.dispatcher.wake()
    await outbound.dispatcher.wait_for_attempts(2)
    shown = await only_delivery(admin_o, "nowhere")
    assert [a["error_class"] for a in shown["attempts"]] == ["dns", "dns"]
    assert "hooks.palyra-faults.invalid" in shown["attempts"][0]["error_detail"]
    assert shown["delivery"]["status"] == "failed"  # the two-step schedule is spent
    (exhausted,) = await events(admin_o, type="delivery.exhausted")
    assert exhausted["payload"]["last_error_class"] == "dns"
    await assert_still_delivering(admin_o, receiver)


# -- the retry schedule across a wall-clock jump ----------------------------------------


async def test_retry_scheduled_before_a_backward_jump_waits_for_the_clock_to_catch_up(
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: CapturingReceiver,
) -> None:
    """Retry times are wall-clock instants: after a step back of an hour, a retry due in
    10 s is due in 1 h 10 s. It is not lost: it runs once the clock gets there. New
    deliveries of an unordered subscription are not held up meanwhile."""
    clock = outbound.clock
    assert isinstance(clock, ManualClock)
    receiver.script = [500]
    await subscribe(admin_o, "app", receiver.url, retry_schedule=["0s", "10s"])
    first = (await publish(admin_o, "app.first"))[1]
    await outbound.dispatcher.wait_for_attempts(1)

    clock.advance(-3600)
    next_ms = await outbound.dispatcher.schedule_once()
    assert next_ms is not None
    # 10 s (with the schedule's jitter) from the failed attempt, which is now 1 h ahead.
    assert 3609_000 <= next_ms - int(clock() * 1000) <= 3611_001
    second = (await publish(admin_o, "app.second"))[1]
    await outbound.dispatcher.wait_for_attempts(2)
    assert [r.headers["webhook-id"] for r in receiver.received] == [
        first["event_id"], second["event_id"]]

    clock.advance(3600 + 16)
    outbound.dispatcher.wake()
    await outbound.dispatcher.wait_for_attempts(3)
    clock.advance(2 * 86400)
    third = (await publish(admin_o, "app.third"))[1]
    await outbound.dispatcher.wait_for_attempts(4)
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert ids == [first["event_id"], second["event_id"], first["event_id"],
                   third["event_id"]]
    async with admin_o.get("/v1/deliveries", params={"status": "pending"}) as resp:
        assert (await resp.json())["deliveries"] == []


# -- storage faults seen from the outbound side -----------------------------------------


async def test_delivery_store_locked_by_another_process_delays_deliveries_only(
    state_dir: Path, memory_keyring: Any, receiver: CapturingReceiver,
) -> None:
    # The daemon is started here, not by a fixture: today its stop() raises, and that
    # must fail this test rather than error its teardown.
    async with running_daemon(state_dir, clock=ManualClock(start=time.time()),
                              keyring=memory_keyring,
                              delivery__allow_private_networks=True) as daemon, \
            admin_session(daemon.socket_path) as admin:
        await subscribe(admin, "app", receiver.url, events=["app.*"])
        assert (await publish(admin, "app.before"))[0] == 201
        await receiver.wait_for(1)
        async with write_lock_held_elsewhere(daemon.deliveries.path):
            assert (await publish(admin, "app.during"))[0] == 201  # the journal is fine
            await wait_out_the_busy_timeout(daemon.deliveries.path, 6.0)
        assert (await publish(admin, "app.after"))[0] == 201
        got = await receiver.wait_for(3, timeout=10)
        assert [r.json()["type"] for r in got] == ["app.before", "app.during", "app.after"]


async def test_restart_after_the_journal_was_removed_still_delivers(
    state_dir: Path, memory_keyring: Any, receiver: CapturingReceiver
) -> None:
    clock = ManualClock(start=time.time())
    settings = {"delivery__allow_private_networks": True}
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring, **settings) as d, \
            admin_session(d.socket_path) as admin:
        await subscribe(admin, "app", receiver.url)
        for i in range(5):
            assert (await publish(admin, "app.step", i=i))[0] == 201
        await receiver.wait_for(5)
    for name in JOURNAL_FILES:
        (state_dir / name).unlink(missing_ok=True)
    try:
        async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                                  **settings) as d, admin_session(d.socket_path) as admin:
            assert (await publish(admin, "app.step", i=5))[0] == 201
            got = await receiver.wait_for(6, timeout=5)
            assert got[-1].json()["data"] == {"i": 5}
    except DaemonError:
        pass  # refusing to start on a journal that went missing is the other correct answer
